// A communicator: one POSIX shared-memory segment shared by `size` processes, the sequence
// numbers that order their collectives, and the ring / pairwise / flat algorithms on top.
//
// Synchronisation model. Every rank owns, in the segment:
//   - two entry lines (by collective-number parity) where it publishes the descriptor of the
//     collective it enters; every collective starts by checking all peers' descriptors, so a
//     mismatch is seen by every rank in that very call;
//   - `posted` / `consumed` round counters: data moves in numbered rounds that every rank counts
//     identically (a round count depends only on the descriptor). In round t a rank writes its
//     slot t % nbuf and publishes posted = t; a reader waits for posted >= t, reads, and publishes
//     consumed = t. A writer reuses a slot only after that slot's last readers consumed it.
//   - per-peer point-to-point mailboxes with their own chunk counters (send/recv are not rounds).
// Counters only grow, so no state is ever reused; waits spin briefly, then sleep on a futex, and
// every wait checks the abort word, the awaited peer's liveness and a deadline.
//
// Threads: collectives on one communicator run one at a time (one thread); send and recv may
// run concurrently with each other (one sending and one receiving thread), since every rank of
// an exchange does both.
#pragma once
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/dtypes.h"
#include "comm/rendezvous.h"
#include "comm/shm_sync.h"

namespace shardcore {

struct PeerFailure : std::runtime_error { using std::runtime_error::runtime_error; };
struct Mismatch : std::runtime_error { using std::runtime_error::runtime_error; };
struct Timeout : std::runtime_error { using std::runtime_error::runtime_error; };
// A collective that some rank rejected (Communicator::reject): every rank's call of it throws
// this, and the communicator stays usable.
struct Rejected : std::invalid_argument { using std::invalid_argument::invalid_argument; };

// What traffic is accounted under; "internal" is shardcore's own bookkeeping (split, counts).
enum class Kind : uint32_t {
  kBarrier, kAllReduce, kReduceScatter, kAllGather, kAllToAll, kAllToAllV, kBroadcast, kSend,
  kRecv, kInternal, kCount
};
const char* kind_name(Kind k);

enum class Algo : uint32_t {
  kAuto = 0, kRing, kPairwise, kFlat, kOneShot, kTwoShot, kSymmetric, kCma, kCount
};
const char* algo_name(Algo a);

struct Options {
  size_t slot_bytes = size_t(1) << 19;  // 512 KiB: a chunk's copy (~30 us) dwarfs its sync (~1 us)
  size_t p2p_bytes = size_t(1) << 16;   // 64 KiB per mailbox chunk; n^2 mailboxes per segment
  double timeout_s = 600.0;             // a wait longer than this is a CommTimeoutError
  double spin_us = -1.0;                // < 0: adaptive (50 us-2 ms) if ranks <= cores, else none
  double yield_us = -1.0;               // < 0: yield 1 ms if ranks > cores, else not at all
  // Automatic all-reduce choice by message size (rank 0's values win): one-shot up to
  // one_shot_max bytes, two-shot up to two_shot_max, the ring above. 0 = built-in default.
  size_t one_shot_max = 0;
  size_t two_shot_max = 0;
  // Called about every 100 ms while connecting, as set_interrupt_check's later on (may throw).
  std::function<void()> interrupt_check;
};

// Descriptor of a collective, compared across ranks on entry (24 bytes: it shares the entry
// line's first cache line with the sequence word and a small payload).
struct Desc {
  uint8_t kind, dtype, op, algo;
  int32_t root;
  uint64_t count;  // elements (per-rank block for all_gather / all_to_all, row width for allv)
  uint32_t esz;    // element size in bytes
  uint32_t flags;  // algorithm-specific (e.g. symmetric buffer)
};
static_assert(sizeof(Desc) == 24, "Desc is packed into the entry line");

inline Desc make_desc(Kind k, DType dt, RedOp op, Algo algo, int64_t root, uint64_t count,
                      size_t esz, uint32_t flags = 0) {
  return Desc{uint8_t(k), uint8_t(dt), uint8_t(op), uint8_t(algo), int32_t(root), count,
              uint32_t(esz), flags};
}

// The symmetric all-reduce's pipeline chunk (allreduce_symmetric.cpp): its built-in size, or
// SHARDCORE_SYM_CHUNK_BYTES. Every rank uses rank 0's, since the chunks are counted as rounds.
size_t symmetric_chunk_bytes();

// The automatic choice reads the peers' blocks straight out of a symmetric input from this block
// size up: below it the flat path's copy into a slot costs no more than the symmetric path's
// second synchronisation (waiting until the peers have read). When ranks outnumber cores every
// synchronisation is a round of sleeps and wake-ups, and a rank reads n-1 peers' cold regions
// instead of slots that stay in cache: there the all-gather reads directly only from 1 MiB blocks,
// and the all-to-all only where its flat path does not fit in a slot (measured at 8 ranks on 2
// cores, docs/performance.md).
constexpr size_t kSymmetricGatherMinBytes = size_t(4) << 10;
constexpr size_t kSymmetricGatherMinBytesOversubscribed = size_t(1) << 20;
// ... and above this block size an all-gather of more than two ranks goes through the slots.
constexpr size_t kSymmetricGatherMaxBytesManyRanks = size_t(1) << 20;

// Bytes of payload that ride in a rank's entry line next to its sequence word and descriptor.
constexpr size_t kInlineBytes = kLineBytes - sizeof(SyncWord) - sizeof(Desc);

struct TrafficCounts {
  uint64_t calls = 0, sent = 0, recv = 0;
  uint64_t algo_calls[size_t(Algo::kCount)] = {};
};

struct Header;
struct RankBlock;
struct EntryLine;
class SymmetricSegment;

// Where a collective's input lives in a symmetric buffer of the communicator running it:
// the distance between two ranks' copies (0: an ordinary array), which buffer (its tag, equal on
// every rank), and the input's byte offset from the start of this rank's region.
struct SymmetricPlace {
  int64_t stride = 0;
  uint32_t tag = 0;
  int64_t offset = 0;
};

class Communicator {
 public:
  // Rank 0 creates the segment, memory without a name, and hands it to the others through a
  // socket at the abstract address `name` (rendezvous.h), which exists only while rank 0 waits
  // for them. Returns once every rank has mapped it. Nothing of it outlives the processes.
  Communicator(const std::string& name, int rank, int size, const Options& opt);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  size_t slot_bytes() const { return slot_bytes_; }
  size_t one_shot_max() const { return one_shot_max_; }
  bool cma() const { return cma_; }
  size_t two_shot_max() const { return two_shot_max_; }
  void set_timeout(double seconds) { timeout_ns_ = uint64_t(seconds * 1e9); }
  double timeout() const { return double(timeout_ns_) / 1e9; }
  // Unique among the communicators this process ever made (a closed one's is never reused).
  uint64_t id() const { return id_; }

  void barrier();
  // `sym` is the symmetric buffer `in` lives in (nullptr: none). It counts only where it was
  // made on this communicator and holds the whole input (symmetric_place); any other array,
  // another communicator's buffer included, is an ordinary one. In place on a symmetric buffer,
  // large messages skip the copy in and out.
  Algo all_reduce(const void* in, void* out, size_t count, DType dt, RedOp op, Algo algo,
                  const SymmetricSegment* sym = nullptr);
  void reduce_scatter(const void* in, void* out, size_t count_per_rank, DType dt, RedOp op);
  // algo: kRing (the model's reference), kFlat (each block written once, read by all), kCma
  // (read from the peers' private inputs) or kSymmetric (read where the inputs live); kAuto
  // picks by size (all_gather in allgather_ring.cpp). `sym` as for all_reduce; the ranks' inputs
  // may sit at different offsets of the same buffer (an in-place all-gather into a symmetric
  // output).
  Algo all_gather(const void* in, void* out, size_t count_per_rank, DType dt, size_t esz,
                  Kind account = Kind::kAllGather, Algo algo = Algo::kAuto,
                  const SymmetricSegment* sym = nullptr);
  // algo: kPairwise (n-1 steps of one peer each), kFlat (each round, a piece of every peer's
  // block in one slot, read by all at once; a single round when every block fits), kCma or
  // kSymmetric as for all_gather; kAuto picks by size.
  Algo all_to_all(const void* in, void* out, size_t count_per_rank, DType dt, size_t esz,
                  Algo algo = Algo::kAuto, const SymmetricSegment* sym = nullptr);
  // all_to_allv in two collectives: the counts exchange (returns what this rank receives from
  // each peer, in rows), then the data, which uses the count matrix the first call gathered.
  // `out_rows` is the first dimension of `out`: where it is not what some rank receives, every
  // rank throws the same invalid_argument and nothing moves (the ranks compare in the data
  // phase's entry), and the communicator stays usable.
  std::vector<int64_t> all_to_allv_counts(const std::vector<int64_t>& send_counts,
                                          size_t row_elems, DType dt, size_t esz);
  void all_to_allv_data(const void* in, void* out, int64_t out_rows);

  // Collective: every rank gets a descriptor of the same `bytes` of zero-filled shared memory,
  // which rank 0 creates without a name and sends to the others over the connection sockets;
  // or every rank throws the same runtime_error (`what` names the allocation) and the
  // communicator stays usable.
  UniqueFd share_memory(size_t bytes, const std::string& what);
  // Collective: returns where every rank's `local_error` is empty; otherwise every rank throws
  // the same runtime_error, the lowest failing rank's message. The communicator stays usable.
  void agree(const std::string& local_error);
  // Where `bytes` at `p` sit in `sym` if it is a symmetric buffer of this communicator that
  // holds them whole; an ordinary array's place (stride 0) otherwise.
  SymmetricPlace symmetric_place(const SymmetricSegment* sym, const void* p, size_t bytes) const;
  // The tag of this communicator's next symmetric buffer (SymmetricSegment numbers them).
  uint32_t next_symmetric_tag() { return ++symmetric_buffers_; }
  // Test hook: SHARDCORE_FAULT_AT="step:rank:kill|stop" raises SIGKILL or SIGSTOP in that rank
  // when it reaches `step` of setting up a communicator or a symmetric buffer.
  void fault_point(const char* step) const;
  void broadcast(void* buf, size_t count, DType dt, size_t esz, int root);
  void send(const void* buf, size_t count, DType dt, size_t esz, int dst, int64_t tag);
  void recv(void* buf, size_t count, DType dt, size_t esz, int src, int64_t tag);

  // Collective, for a call of kind `k` whose arguments this rank found wrong (`why`): instead of
  // returning alone and leaving its peers waiting in the call, the rank enters it marked as
  // rejected; every rank's call then throws Rejected (this rank's with `why`, the others' naming
  // it) and the communicator stays usable. Never returns.
  [[noreturn]] void reject(Kind k, const std::string& why);

  // Marks the communicator failed for every rank (first reason wins) and closes nothing.
  void abort(const std::string& reason);
  void close();
  bool closed() const { return base_ == nullptr; }

  const TrafficCounts& traffic(Kind k) const { return traffic_[size_t(k)]; }
  void reset_traffic();
  // The algorithm of the last user-visible collective (kAuto before the first); send, recv,
  // barriers and shardcore's internal exchanges leave it alone.
  Algo last_algorithm() const { return last_algo_; }
  // Called about every 100 ms while a rank sleeps; may throw (Python signal handling).
  void set_interrupt_check(std::function<void()> f) { interrupt_check_ = std::move(f); }

 private:
  // --- segment layout ---
  RankBlock& rb(int r) const;
  EntryLine& entry(int r, uint64_t k) const;
  Counter& posted(int r) const;
  Counter& consumed(int r) const;
  Counter& p2p_posted(int src, int dst) const;
  Counter& p2p_consumed(int dst, int src) const;
  char* slot(int r, uint64_t round) const;
  char* mailbox(int src, int dst, uint64_t chunk) const;
  size_t mailbox_stride() const;

  // --- synchronisation ---
  void wait_geq(SyncWord& c, uint64_t target, int peer);
  bool probe_cma();
  // Copies `bytes` from address `remote` of rank `peer`'s process (process_vm_readv).
  void cma_read(int peer, char* local, uint64_t remote, size_t bytes);
  // The single-copy paths (cma.cpp): every rank reads what it needs straight from the peers'
  // inputs, through process_vm_readv (sym_stride == 0: the address rides in the entry) or where
  // they live in a symmetric buffer (the offset rides in the entry), then waits until no peer
  // still reads its input.
  void single_copy_gather(const Desc& d, const char* in, char* out, size_t block, bool all_to_all,
                          Kind kind, int64_t sym_stride, int64_t sym_offset);
  void check_usable();
  void check_abort();
  [[noreturn]] void fail_from_abort(uint64_t word);
  [[noreturn]] void fail(int reason, const std::string& msg);
  bool peer_gone(int p, std::string* why) const;
  // Publishes d (and an optional payload of up to kInlineBytes) and checks every peer's.
  uint64_t enter(const Desc& d, const void* payload = nullptr, size_t payload_bytes = 0);
  const char* entry_payload(int r, uint64_t k) const;
  void acquire_slot(uint64_t round, const std::vector<int>& readers);
  void publish_posted(uint64_t round);
  void publish_consumed(uint64_t round);
  std::string describe(const Desc& d) const;
  void account(Kind k, Algo a, uint64_t sent, uint64_t recv);
  // Connection (rendezvous.cpp): rank 0 hands `memory` to every other rank; the others return
  // the descriptor they received. Both keep the connection (peer_socks_).
  void serve_joiners(int memory, uint64_t deadline);
  UniqueFd join(uint64_t deadline);
  // Throws invalid_argument unless `p` is another rank of this communicator ("send: dst" ...).
  void check_peer(int p, const char* what) const;

  // --- algorithms (one file each) ---
  Algo choose_all_reduce(size_t bytes, bool symmetric) const;
  void symmetric_all_reduce(char* x, size_t count, DType dt, RedOp op, size_t esz, int64_t stride);
  void ring_all_reduce(const char* in, char* out, size_t count, DType dt, RedOp op, size_t esz);
  void one_shot_all_reduce(const char* in, char* out, size_t count, DType dt, RedOp op, size_t esz,
                           const Desc& d);
  void two_shot_all_reduce(const char* in, char* out, size_t count, DType dt, RedOp op, size_t esz);
  void ring_reduce_scatter(const char* in, char* out, size_t m, DType dt, RedOp op, size_t esz);
  void ring_all_gather(const char* in, char* out, size_t m, size_t esz, Kind account);
  void flat_all_gather(const char* in, char* out, size_t block, const Desc& d, Kind account);
  void pairwise_all_to_all(const char* in, char* out, size_t m, size_t esz);
  void flat_all_to_all(const char* in, char* out, size_t block, const Desc& d);
  void flat_broadcast(char* buf, size_t bytes, int root);

  std::string name_;
  int rank_, size_;
  uint64_t id_;
  // Rank 0: the connection to each other rank; the others: [0], the one to rank 0.
  std::vector<UniqueFd> peer_socks_;
  uint64_t shares_ = 0;  // share_memory calls (numbers the descriptors sent)
  uint32_t symmetric_buffers_ = 0;
  std::string fault_step_;  // SHARDCORE_FAULT_AT, for this rank
  int fault_signal_ = 0;
  char* base_ = nullptr;
  size_t total_bytes_ = 0;
  Header* header_ = nullptr;
  size_t rank_block_bytes_ = 0, data_offset_ = 0, p2p_offset_ = 0;
  size_t slot_bytes_ = 0, p2p_bytes_ = 0;
  uint32_t nbuf_ = 2, p2p_nbuf_ = 2;
  size_t one_shot_max_ = 0, two_shot_max_ = 0;
  size_t sym_chunk_bytes_ = 0;  // rank 0's symmetric_chunk_bytes()
  uint64_t timeout_ns_ = 0, yield_ns_ = 0;
  // The spin budget of a wait; adapted by every wait that had to sleep (communicator.cpp,
  // kSpinMinNs), unless Options::spin_us fixed it. Atomic: send and recv may wait on two threads.
  std::atomic<uint64_t> spin_ns_{0};
  bool adaptive_spin_ = false;
  bool oversubscribed_ = false;
  bool cma_ = false;       // every rank can read every peer's memory (probed at connect)
  // Whether the automatic choice reads a symmetric input directly (all_gather / all_to_all).
  bool symmetric_gather_auto(int64_t sym_stride, size_t block, bool all_to_all) const;
  uint64_t fault_kill_round_ = 0;  // test hook: SIGKILL self when posting this round
  std::string reject_why_;         // the reason of this rank's reject() in progress

  uint64_t coll_seq_ = 0;  // collectives entered
  uint64_t round_ = 0;     // data rounds completed

  struct SlotUse { uint64_t round = 0; std::vector<int> readers; };
  std::vector<SlotUse> slot_use_;
  std::vector<int> succ_only_, all_peers_, one_peer_;
  std::vector<int64_t> allv_matrix_;  // [src * size + dst] rows, from all_to_allv_counts
  size_t allv_row_bytes_ = 0;
  DType allv_dtype_ = DType::kOther;
  uint64_t allv_row_elems_ = 0;
  size_t allv_esz_ = 0;

  // Failure state: send and recv may run on two threads of one communicator (the torch
  // backend's send/recv lanes), so it is atomic / locked; collectives run on one thread.
  std::atomic<bool> broken_{false};
  std::mutex broken_mutex_;
  int broken_reason_ = 0;
  std::string broken_msg_;
  TrafficCounts traffic_[size_t(Kind::kCount)];
  Algo last_algo_ = Algo::kAuto;
  std::function<void()> interrupt_check_;
};

}  // namespace shardcore
