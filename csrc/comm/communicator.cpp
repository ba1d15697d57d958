#include "comm/communicator.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace shardcore {

namespace {

constexpr uint64_t kMagic = 0x524f434452414853ull;  // "SHARDCOR"
constexpr uint32_t kVersion = 1;
constexpr size_t kPage = 4096;
constexpr size_t kAbortMsgBytes = 1024;
// A sleeping waiter wakes at least this often to look at the abort word; liveness of the awaited
// peer is checked every kLivenessPeriodNs, well inside the 10 s the error model promises.
constexpr long kSleepSliceNs = 10'000'000;
constexpr uint64_t kLivenessPeriodNs = 100'000'000;
// When ranks outnumber cores, a waiter yields its core (sched_yield) for up to this long before
// it sleeps on the futex: the rank it waits for is likely runnable but not running, and a yield
// hands it the core at once where a futex sleep would cost a wake-up on both sides; a rank idle
// for longer sleeps and stops burning its core. With a core per rank there is no yield phase: on
// a machine shared with other busy work the outcome of either choice was chaotic (2 ranks beside
// two busy loops on a 16-core Xeon, bench/wait_policy.sh: a 1 ms yield phase gave 0.6 us in one
// run and 3.9 ms in another; no yield phase gave 107 us in one and 1.3 us in another).
// Options::yield_us (SHARDCORE_YIELD_US) sets it for every rank. 1 ms rather than 200 us: 4 ranks on 2 cores, 8 B
// all-reduce 5.3-7.6 us against 8.4-11.3 us (3 alternating runs each on the 2-core VM).
constexpr uint64_t kYieldPhaseNs = 1'000'000;
// With a core per rank a waiter spins before it sleeps, for a budget that adapts between these
// bounds: a wait that had to sleep but ended within kSpinMaxNs doubles it, a longer one halves
// it. A fixed 50 us budget fell into a stable slow mode on a 2-core VM: once one rank sleeps, its
// wake-up (a halted vCPU the host must reschedule: ~85 us there) outlasts its peer's spin, so the
// peer sleeps too, and from then on every collective paid two wake-ups (8 B all-reduce 170 us
// against 0.6 us, in about half of the runs; Open MPI, which spins without bound, 1.9 us in the
// same runs). Options::spin_us (SHARDCORE_SPIN_US) fixes the budget instead.
constexpr uint64_t kSpinMinNs = 50'000;
constexpr uint64_t kSpinMaxNs = 2'000'000;

// The descriptor's algorithm byte of a rejected call (Communicator::reject); no Algo has it.
constexpr uint8_t kRejectedAlgo = 0xff;
static_assert(size_t(Algo::kCount) < kRejectedAlgo, "kRejectedAlgo is no algorithm");

enum AbortReason : int { kReasonUser = 1, kReasonMismatch = 2, kReasonTimeout = 3, kReasonPeer = 4 };

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// What this thread is doing, for error messages (a thread does one operation at a time).
thread_local Kind t_kind = Kind::kBarrier;
thread_local uint64_t t_seq = 0;

}  // namespace

struct Header {
  uint32_t version, world_size;
  uint64_t slot_bytes, p2p_bytes, total_bytes;
  uint32_t nbuf, p2p_nbuf;
  uint64_t one_shot_max, two_shot_max;
  uint64_t sym_chunk_bytes;
  alignas(kLineBytes) Counter attached;
  alignas(kLineBytes) Counter probed;
  alignas(kLineBytes) std::atomic<uint64_t> abort_word;  // (reason << 32) | (rank + 1)
  alignas(kLineBytes) std::atomic<uint64_t> magic;
};

struct alignas(kLineBytes) EntryLine {
  SyncWord seq;
  Desc desc;
  char payload[kInlineBytes];
};
static_assert(sizeof(EntryLine) == kLineBytes, "an entry line is one line pair");

// Fixed part of a rank's block; its p2p counters follow it (2 * size Counters).
struct RankBlock {
  alignas(kLineBytes) std::atomic<int32_t> pid;
  std::atomic<uint32_t> state;  // 0 not attached, 1 attached, 2 closed
  uint64_t base_addr;               // where this rank mapped the segment (for the CMA probe)
  std::atomic<uint32_t> cma_ok;     // 0 not probed, 1 cannot read every peer, 2 can
  char abort_msg[kAbortMsgBytes];
  EntryLine entry[2];
  Counter posted;
  Counter consumed;
};

struct alignas(kLineBytes) ChunkHeader {
  int64_t tag;
  uint64_t count;   // elements in the whole message
  uint32_t dtype;
  uint32_t esz;
};

const char* kind_name(Kind k) {
  static const char* names[] = {"barrier", "all_reduce", "reduce_scatter", "all_gather",
                                "all_to_all", "all_to_allv", "broadcast", "send", "recv",
                                "internal"};
  return size_t(k) < size_t(Kind::kCount) ? names[size_t(k)] : "?";
}

const char* algo_name(Algo a) {
  static const char* names[] = {"auto",     "ring",     "pairwise",  "flat",
                                "one_shot", "two_shot", "symmetric", "cma"};
  return size_t(a) < size_t(Algo::kCount) ? names[size_t(a)] : "?";
}

// ---------------------------------------------------------------------------------------------
// Segment layout and connection

namespace {
std::atomic<uint64_t> g_next_id{1};
}  // namespace

Communicator::Communicator(const std::string& name, int rank, int size, const Options& opt)
    : name_(name), rank_(rank), size_(size), id_(g_next_id.fetch_add(1)) {
  if (size < 1) throw std::invalid_argument("world size must be >= 1, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw std::invalid_argument("rank " + std::to_string(rank) + " is outside [0, " +
                                std::to_string(size) + ")");
  if (name.empty() || name[0] != '/' || name.find('/', 1) != std::string::npos || name.size() > 200)
    throw std::invalid_argument("segment name must look like '/name' (no other '/'), got '" + name + "'");
  if (opt.slot_bytes < 256 || opt.slot_bytes % 64)
    throw std::invalid_argument("slot_bytes must be a multiple of 64 and >= 256");
  if (opt.slot_bytes < 8 * size_t(size))  // all_to_allv exchanges size int64 counts in one slot
    throw std::invalid_argument("slot_bytes must be at least 8 * world size (" +
                                std::to_string(8 * size_t(size)) + ")");
  if (opt.p2p_bytes < 64 || opt.p2p_bytes % 64)
    throw std::invalid_argument("p2p_bytes must be a multiple of 64 and >= 64");
  if (opt.timeout_s <= 0) throw std::invalid_argument("timeout must be > 0 seconds");
  timeout_ns_ = uint64_t(opt.timeout_s * 1e9);
  interrupt_check_ = opt.interrupt_check;
  // The cores this process may run on (taskset/cgroup affinity), not the machine's.
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) cores = std::max(1, CPU_COUNT(&allowed));
  oversubscribed_ = unsigned(size) > cores;
  adaptive_spin_ = opt.spin_us < 0 && !oversubscribed_;
  spin_ns_ = opt.spin_us >= 0 ? uint64_t(opt.spin_us * 1e3) : oversubscribed_ ? 0 : kSpinMinNs;
  yield_ns_ = oversubscribed_ ? kYieldPhaseNs : 0;
  if (opt.yield_us >= 0) yield_ns_ = uint64_t(opt.yield_us * 1e3);
  // Fault injection for the tests of the error model: die in the middle of a collective, or
  // at a step of setting up (fault_point).
  if (const char* k = getenv("SHARDCORE_FAULT_KILL_AT_ROUND")) fault_kill_round_ = strtoull(k, nullptr, 10);
  if (const char* f = getenv("SHARDCORE_FAULT_AT")) {
    const std::string spec(f);
    const size_t a = spec.find(':'), b = spec.rfind(':');
    if (a != std::string::npos && b > a && spec.substr(a + 1, b - a - 1) == std::to_string(rank)) {
      fault_step_ = spec.substr(0, a);
      const std::string action = spec.substr(b + 1);
      fault_signal_ = action == "stop" ? SIGSTOP : action == "kill" ? SIGKILL : 0;
    }
  }
  uint64_t deadline = now_ns() + timeout_ns_;

  auto layout = [&](size_t slot, size_t p2p) {
    slot_bytes_ = slot;
    p2p_bytes_ = p2p;
    rank_block_bytes_ = round_up(sizeof(RankBlock) + 2 * size_t(size_) * sizeof(Counter), kPage);
    data_offset_ = round_up(sizeof(Header), kPage) + size_t(size_) * rank_block_bytes_;
    p2p_offset_ = data_offset_ + size_t(size_) * nbuf_ * slot_bytes_;
    total_bytes_ = p2p_offset_ + size_t(size_) * size_ * p2p_nbuf_ * mailbox_stride();
  };

  UniqueFd fd;
  if (rank == 0) {
    layout(opt.slot_bytes, opt.p2p_bytes);
    std::string err;
    fd = create_unnamed_memory(total_bytes_, &err);
    if (!fd) throw std::runtime_error("segment " + name + ": " + err);
  } else {
    fd = join(deadline);
    // Read the geometry rank 0 chose (its options win, so all ranks agree).
    struct stat st;
    if (fstat(fd.get(), &st) != 0 || size_t(st.st_size) < sizeof(Header))
      throw std::runtime_error("segment " + name + ": rank 0 sent a descriptor of something else");
    void* h = mmap(nullptr, sizeof(Header), PROT_READ, MAP_SHARED, fd.get(), 0);
    if (h == MAP_FAILED)
      throw std::runtime_error("cannot map segment header: " + std::string(strerror(errno)));
    const Header* hdr = static_cast<const Header*>(h);
    // Rank 0 initialises the header before it hands the segment out.
    if (hdr->magic.load(std::memory_order_acquire) != kMagic || hdr->version != kVersion ||
        int(hdr->world_size) != size) {
      std::string msg = "segment " + name + " was created for world size " +
                        std::to_string(hdr->world_size) + ", this rank expects " + std::to_string(size);
      munmap(h, sizeof(Header));
      throw std::invalid_argument(msg);
    }
    nbuf_ = hdr->nbuf;
    p2p_nbuf_ = hdr->p2p_nbuf;
    one_shot_max_ = hdr->one_shot_max;
    two_shot_max_ = hdr->two_shot_max;
    sym_chunk_bytes_ = hdr->sym_chunk_bytes;
    layout(hdr->slot_bytes, hdr->p2p_bytes);
    munmap(h, sizeof(Header));
    if (size_t(st.st_size) != total_bytes_)
      throw std::runtime_error("segment " + name + " has another size than its header says");
  }
  void* p = mmap(nullptr, total_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED)
    throw std::runtime_error("cannot map segment " + name + ": " + strerror(errno));
  base_ = static_cast<char*>(p);
  header_ = reinterpret_cast<Header*>(base_);
  if (rank == 0) {
    header_->version = kVersion;
    header_->world_size = uint32_t(size);
    header_->slot_bytes = slot_bytes_;
    header_->p2p_bytes = p2p_bytes_;
    header_->total_bytes = total_bytes_;
    header_->nbuf = nbuf_;
    header_->p2p_nbuf = p2p_nbuf_;
    // Defaults from crossovers measured by `shardcore tune` on two 16-core Xeon hosts (sessions
    // 2 and 3, bench/results): one-shot reads n-1 whole inputs, so it pays off only below a size
    // that shrinks with n; two-shot beats the ring's 2(n-1) steps up to 4 MiB at 4 and 8 ranks
    // and, at 2 ranks, where the ring is the same two steps, at every size measured (up to 32 MiB
    // on both machines, bench/ab_steps_session3.txt). `shardcore tune` measures this host's own.
    const size_t one_default = size <= 2 ? 256 << 10 : size <= 4 ? 8 << 10 : size <= 8 ? 2 << 10 : 256;
    const size_t two_default = size <= 2 ? SIZE_MAX : size <= 8 ? 4 << 20 : 256 << 10;
    one_shot_max_ = opt.one_shot_max ? opt.one_shot_max : one_default;
    two_shot_max_ = opt.two_shot_max ? opt.two_shot_max : two_default;
    header_->one_shot_max = one_shot_max_;
    header_->two_shot_max = two_shot_max_;
    sym_chunk_bytes_ = symmetric_chunk_bytes();
    header_->sym_chunk_bytes = sym_chunk_bytes_;
    header_->magic.store(kMagic, std::memory_order_release);
    fault_point("created");
    try {
      if (size > 1) serve_joiners(fd.get(), deadline);
    } catch (...) {
      munmap(base_, total_bytes_);
      base_ = nullptr;
      throw;
    }
  }
  fd.reset();  // the mapping keeps the memory; nothing else refers to it
  rb(rank_).pid.store(int32_t(getpid()), std::memory_order_relaxed);
  rb(rank_).base_addr = reinterpret_cast<uint64_t>(base_);
  rb(rank_).state.store(1, std::memory_order_release);
  fault_point("mapped");
  uint64_t attached = header_->attached.value.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (attached == uint64_t(size)) {
    if (header_->attached.waiters.load()) futex_wake_all(&header_->attached.value);
  } else {
    try {
      wait_geq(header_->attached, uint64_t(size), -1);
    } catch (...) {
      munmap(base_, total_bytes_);
      base_ = nullptr;
      throw;
    }
  }

  cma_ = probe_cma();
  slot_use_.resize(nbuf_);
  succ_only_ = {(rank_ + 1) % size_};
  for (int q = 0; q < size_; ++q)
    if (q != rank_) all_peers_.push_back(q);
  one_peer_ = {0};
}

Communicator::~Communicator() { close(); }

// Cross-memory attach (process_vm_readv) lets a rank copy a peer's private buffer in one copy,
// if the kernel allows it (same user, no seccomp or ptrace policy against it). Every rank reads
// a word of each peer's mapping, publishes the result, and all use CMA only if all can.
bool Communicator::probe_cma() {
  const char* env = std::getenv("SHARDCORE_CMA");
  bool ok = !(env && std::string(env) == "0");
  for (int p = 0; p < size_ && ok; ++p) {
    if (p == rank_) continue;
    const RankBlock& peer = rb(p);
    int32_t word = 0;
    const char* remote = reinterpret_cast<const char*>(peer.base_addr) +
                         (reinterpret_cast<const char*>(&peer.pid) - base_);
    iovec local_iov{&word, sizeof(word)}, remote_iov{const_cast<char*>(remote), sizeof(word)};
    ok = process_vm_readv(peer.pid.load(), &local_iov, 1, &remote_iov, 1, 0) == ssize_t(sizeof(word)) &&
         word == peer.pid.load();
  }
  rb(rank_).cma_ok.store(ok ? 2 : 1, std::memory_order_release);
  header_->probed.value.fetch_add(1, std::memory_order_acq_rel);
  if (header_->probed.waiters.load()) futex_wake_all(&header_->probed.value);
  wait_geq(header_->probed, uint64_t(size_), -1);
  bool all = true;
  for (int p = 0; p < size_; ++p) all = all && rb(p).cma_ok.load(std::memory_order_acquire) == 2;
  return all;
}

void Communicator::cma_read(int peer, char* local, uint64_t remote, size_t bytes) {
  const pid_t pid = rb(peer).pid.load();
  while (bytes) {
    iovec l{local, bytes}, r{reinterpret_cast<void*>(remote), bytes};
    ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (got <= 0) {
      std::string why = got < 0 ? strerror(errno) : "no progress";
      fail(kReasonPeer, "rank " + std::to_string(rank_) + " could not read rank " +
                            std::to_string(peer) + "'s buffer (process_vm_readv: " + why + ")");
    }
    local += got;
    remote += uint64_t(got);
    bytes -= size_t(got);
  }
}

void Communicator::fault_point(const char* step) const {
  if (fault_signal_ && fault_step_ == step) raise(fault_signal_);
}

void Communicator::close() {
  peer_socks_.clear();
  if (!base_) return;
  rb(rank_).state.store(2, std::memory_order_release);
  munmap(base_, total_bytes_);
  base_ = nullptr;
  header_ = nullptr;
}

RankBlock& Communicator::rb(int r) const {
  return *reinterpret_cast<RankBlock*>(base_ + round_up(sizeof(Header), kPage) +
                                       size_t(r) * rank_block_bytes_);
}
EntryLine& Communicator::entry(int r, uint64_t k) const { return rb(r).entry[k & 1]; }
Counter& Communicator::posted(int r) const { return rb(r).posted; }
Counter& Communicator::consumed(int r) const { return rb(r).consumed; }
Counter& Communicator::p2p_posted(int src, int dst) const {
  return reinterpret_cast<Counter*>(reinterpret_cast<char*>(&rb(src)) + sizeof(RankBlock))[dst];
}
Counter& Communicator::p2p_consumed(int dst, int src) const {
  return reinterpret_cast<Counter*>(reinterpret_cast<char*>(&rb(dst)) + sizeof(RankBlock))[size_ + src];
}
char* Communicator::slot(int r, uint64_t round) const {
  return base_ + data_offset_ + (size_t(r) * nbuf_ + round % nbuf_) * slot_bytes_;
}
// Each mailbox starts on a line pair: its header is alignas(kLineBytes).
size_t Communicator::mailbox_stride() const {
  return round_up(sizeof(ChunkHeader) + p2p_bytes_, kLineBytes);
}

char* Communicator::mailbox(int src, int dst, uint64_t chunk) const {
  size_t per = mailbox_stride();
  return base_ + p2p_offset_ + ((size_t(src) * size_ + dst) * p2p_nbuf_ + chunk % p2p_nbuf_) * per;
}

// ---------------------------------------------------------------------------------------------
// Failure handling

void Communicator::fail(int reason, const std::string& msg) {
  std::lock_guard<std::mutex> lock(broken_mutex_);
  if (base_) {
    RankBlock& me = rb(rank_);
    size_t n = std::min(msg.size(), kAbortMsgBytes - 1);
    uint64_t expected = 0;
    uint64_t word = (uint64_t(reason) << 32) | uint64_t(rank_ + 1);
    // The message is written before the word is published; only the first abort writes.
    if (header_->abort_word.load(std::memory_order_acquire) == 0) {
      std::memcpy(me.abort_msg, msg.data(), n);
      me.abort_msg[n] = 0;
      header_->abort_word.compare_exchange_strong(expected, word, std::memory_order_acq_rel);
    }
  }
  broken_reason_ = reason;
  broken_msg_ = msg;
  broken_ = true;
  if (reason == kReasonMismatch) throw Mismatch(msg);
  if (reason == kReasonTimeout) throw Timeout(msg);
  throw PeerFailure(msg);
}

void Communicator::fail_from_abort(uint64_t word) {
  int reason = int(word >> 32);
  int who = int(word & 0xffffffffu) - 1;
  std::string text(rb(who).abort_msg);
  std::string msg = reason == kReasonMismatch
                        ? text
                        : "rank " + std::to_string(rank_) + ": the communicator was aborted by rank " +
                              std::to_string(who) + ": " + text;
  {
    std::lock_guard<std::mutex> lock(broken_mutex_);
    broken_reason_ = reason == kReasonMismatch ? kReasonMismatch : kReasonPeer;
    broken_msg_ = msg;
    broken_ = true;
  }
  if (reason == kReasonMismatch) throw Mismatch(msg);
  throw PeerFailure(msg);
}

void Communicator::check_abort() {
  uint64_t w = header_->abort_word.load(std::memory_order_acquire);
  if (w) fail_from_abort(w);
}

void Communicator::check_usable() {
  if (!base_) throw std::runtime_error("the communicator is closed");
  if (broken_.load()) {
    std::string msg;
    int reason;
    {
      std::lock_guard<std::mutex> lock(broken_mutex_);
      msg = broken_msg_;
      reason = broken_reason_;
    }
    if (reason == kReasonMismatch) throw Mismatch(msg);
    throw PeerFailure("the communicator failed earlier and cannot be used: " + msg);
  }
  check_abort();
}

void Communicator::abort(const std::string& reason) {
  if (!base_ || broken_.load()) return;
  try {
    fail(kReasonUser, "rank " + std::to_string(rank_) + " aborted: " + reason);
  } catch (const std::exception&) {
  }
}

bool Communicator::peer_gone(int p, std::string* why) const {
  const RankBlock& b = rb(p);
  if (b.state.load(std::memory_order_acquire) == 2) {
    *why = "closed its communicator";
    return true;
  }
  pid_t pid = b.pid.load(std::memory_order_relaxed);
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) {
    *why = "died (process " + std::to_string(pid) + " no longer exists)";
    return true;
  }
  // A killed child stays a zombie until its parent reaps it; kill() still succeeds on it.
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", int(pid));
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  char buf[512];
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* rp = std::strrchr(buf, ')');
  if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X')) {
    *why = "died (process " + std::to_string(pid) + " exited)";
    return true;
  }
  return false;
}

void Communicator::wait_geq(SyncWord& c, uint64_t target, int peer) {
  if (c.value.load(std::memory_order_acquire) >= target) return;
  uint64_t start = now_ns();
  // Spin only when the awaited rank may be running on another core: 64 pauses alone take
  // microseconds on some CPUs, a loss when the awaited rank needs this very core.
  const uint64_t budget = spin_ns_.load(std::memory_order_relaxed);
  while (budget) {
    for (int i = 0; i < 64; ++i) {
      cpu_relax();
      if (c.value.load(std::memory_order_acquire) >= target) return;
    }
    check_abort();
    if (now_ns() - start >= budget) break;
  }
  // Past the spin: adapt the budget to how long this wait turns out to take (kSpinMinNs).
  struct Adapt {
    Communicator* self;
    uint64_t start, budget;
    ~Adapt() {
      if (!self->adaptive_spin_) return;
      const uint64_t waited = now_ns() - start;
      const uint64_t next = waited <= kSpinMaxNs ? std::min(budget * 2, kSpinMaxNs)
                                                 : std::max(budget / 2, kSpinMinNs);
      self->spin_ns_.store(next, std::memory_order_relaxed);
    }
  } adapt{this, start, budget};
  // Yield the core for a bounded time (see kYieldPhaseNs), then sleep.
  if (yield_ns_) {
    const uint64_t yield_until = now_ns() + yield_ns_;
    while (now_ns() < yield_until) {
      sched_yield();
      if (c.value.load(std::memory_order_acquire) >= target) return;
      check_abort();
    }
  }
  uint64_t next_check = start + kLivenessPeriodNs;
  for (;;) {
    c.waiters.fetch_add(1, std::memory_order_seq_cst);
    uint64_t v = c.value.load(std::memory_order_seq_cst);
    if (v >= target) {
      c.waiters.fetch_sub(1, std::memory_order_seq_cst);
      return;
    }
    futex_wait(&c.value, uint32_t(v), kSleepSliceNs);
    c.waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (c.value.load(std::memory_order_acquire) >= target) return;
    check_abort();
    uint64_t t = now_ns();
    if (t < next_check) continue;
    next_check = t + kLivenessPeriodNs;
    std::string where = std::string(kind_name(t_kind)) + " #" + std::to_string(t_seq);
    if (peer >= 0) {
      std::string why;
      if (peer_gone(peer, &why)) {
        if (c.value.load(std::memory_order_acquire) >= target) return;
        fail(kReasonPeer, "rank " + std::to_string(peer) + " " + why + " while rank " +
                              std::to_string(rank_) + " waited for it in " + where);
      }
    }
    if (interrupt_check_) {
      try {
        interrupt_check_();
      } catch (...) {
        try {
          fail(kReasonUser, "rank " + std::to_string(rank_) + " was interrupted in " + where);
        } catch (...) {
        }
        throw;
      }
    }
    if (t - start >= timeout_ns_) {
      char secs[32];
      std::snprintf(secs, sizeof(secs), "%.1f", double(t - start) / 1e9);
      std::string whom = peer >= 0 ? "rank " + std::to_string(peer) : std::string("all ranks to connect");
      char limit[32];
      std::snprintf(limit, sizeof(limit), "%g", double(timeout_ns_) / 1e9);
      fail(kReasonTimeout, "rank " + std::to_string(rank_) + " waited " + secs + " s for " + whom +
                               " in " + where + " (timeout " + limit + " s)");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry: every collective starts by publishing its descriptor and checking everyone else's.

std::string Communicator::describe(const Desc& d) const {
  std::string s = kind_name(Kind(d.kind));
  s += "(count=" + std::to_string(d.count) + ", dtype=" + dtype_name(DType(d.dtype));
  if (DType(d.dtype) == DType::kOther) s += "[" + std::to_string(d.esz) + " bytes]";
  if (RedOp(d.op) != RedOp::kNone) s += std::string(", op=") + op_name(RedOp(d.op));
  if (Kind(d.kind) == Kind::kBroadcast) s += ", root=" + std::to_string(d.root);
  if (Algo(d.algo) != Algo::kAuto) s += std::string(", algorithm=") + algo_name(Algo(d.algo));
  if (Algo(d.algo) == Algo::kSymmetric) {  // which symmetric buffer (its tag), and where
    s += ", buffer #" + std::to_string(d.flags);
    if (Kind(d.kind) == Kind::kAllReduce) s += " at element " + std::to_string(d.root);
  }
  return s + ")";
}

uint64_t Communicator::enter(const Desc& d, const void* payload, size_t payload_bytes) {
  check_usable();
  uint64_t k = ++coll_seq_;
  t_kind = Kind(d.kind);
  t_seq = k;
  EntryLine& mine = entry(rank_, k);
  mine.desc = d;
  if (payload_bytes) std::memcpy(mine.payload, payload, payload_bytes);
  counter_publish(mine.seq, k);
  for (int p : all_peers_) wait_geq(entry(p, k).seq, k, p);
  // A rank that rejected its arguments: every rank gives up on this call, all in step (each has
  // entered it, so the next call starts afresh), with the lowest rejecting rank's reason.
  for (int p = 0; p < size_; ++p) {
    const EntryLine& e = entry(p, k);
    if (e.desc.algo != kRejectedAlgo) continue;
    // A one-round path claimed a slot before entering; its previous readers are done with it.
    for (SlotUse& u : slot_use_)
      if (u.round > round_) u = SlotUse{};
    if (d.algo == kRejectedAlgo) throw Rejected(reject_why_);
    throw Rejected(std::string(kind_name(Kind(d.kind))) + ": rank " + std::to_string(p) +
                   " rejected its arguments (" + std::string(e.payload, strnlen(e.payload, kInlineBytes)) +
                   ")");
  }
  for (int p : all_peers_) {
    EntryLine& theirs = entry(p, k);
    const Desc& o = theirs.desc;
    if (std::memcmp(&o, &d, sizeof(Desc)) != 0) {
      fail(kReasonMismatch, "collective mismatch at call #" + std::to_string(k) + ": rank " +
                                std::to_string(rank_) + " called " + describe(d) + " but rank " +
                                std::to_string(p) + " called " + describe(o));
    }
  }
  return k;
}

const char* Communicator::entry_payload(int r, uint64_t k) const { return entry(r, k).payload; }

void Communicator::reject(Kind kind, const std::string& why) {
  reject_why_ = why;
  char reason[kInlineBytes] = {};
  std::memcpy(reason, why.data(), std::min(why.size(), kInlineBytes - 1));
  enter(Desc{uint8_t(kind), 0, 0, kRejectedAlgo, 0, 0, 0, 0}, reason, kInlineBytes);
  throw std::logic_error("reject: the entry did not see its own rejection");  // never reached
}

void Communicator::acquire_slot(uint64_t round, const std::vector<int>& readers) {
  SlotUse& u = slot_use_[round % nbuf_];
  for (int q : u.readers) wait_geq(consumed(q), u.round, q);
  u.round = round;
  u.readers = readers;
}

void Communicator::publish_posted(uint64_t round) {
  if (fault_kill_round_ && round >= fault_kill_round_) raise(SIGKILL);
  counter_publish(posted(rank_), round);
}
void Communicator::publish_consumed(uint64_t round) { counter_publish(consumed(rank_), round); }

void Communicator::account(Kind k, Algo a, uint64_t sent, uint64_t recv) {
  TrafficCounts& t = traffic_[size_t(k)];
  t.calls += 1;
  t.sent += sent;
  t.recv += recv;
  t.algo_calls[size_t(a)] += 1;
  if (k != Kind::kSend && k != Kind::kRecv && k != Kind::kBarrier && k != Kind::kInternal)
    last_algo_ = a;
}

void Communicator::reset_traffic() {
  for (auto& t : traffic_) t = TrafficCounts{};
}

void Communicator::barrier() {
  enter(make_desc(Kind::kBarrier, DType::kUInt8, RedOp::kNone,
             Algo::kAuto, 0, 0, 0));
  account(Kind::kBarrier, Algo::kAuto, 0, 0);
}

// ---------------------------------------------------------------------------------------------
// Point to point: a FIFO of chunks per ordered pair; a message that fits in the mailbox's
// buffers completes without the receiver (eager), a longer one streams through them.

void Communicator::check_peer(int p, const char* what) const {
  if (p < 0 || p >= size_ || p == rank_)
    throw std::invalid_argument(std::string(what) + " " + std::to_string(p) + " is not a peer of rank " +
                                std::to_string(rank_) + " (size " + std::to_string(size_) + ")");
}

void Communicator::send(const void* buf, size_t count, DType dt, size_t esz, int dst, int64_t tag) {
  check_usable();
  check_peer(dst, "send: dst");
  t_kind = Kind::kSend;
  size_t bytes = count * esz;
  Counter& mine = p2p_posted(rank_, dst);
  Counter& theirs = p2p_consumed(dst, rank_);
  uint64_t next = mine.value.load(std::memory_order_relaxed);
  t_seq = next;
  size_t nchunks = std::max<size_t>(1, (bytes + p2p_bytes_ - 1) / p2p_bytes_);
  const char* src = static_cast<const char*>(buf);
  for (size_t i = 0; i < nchunks; ++i, ++next) {
    if (next >= p2p_nbuf_) wait_geq(theirs, next + 1 - p2p_nbuf_, dst);
    char* box = mailbox(rank_, dst, next);
    auto* h = reinterpret_cast<ChunkHeader*>(box);
    h->tag = tag;
    h->count = count;
    h->dtype = uint32_t(dt);
    h->esz = uint32_t(esz);
    size_t off = i * p2p_bytes_;
    size_t len = std::min(p2p_bytes_, bytes - std::min(bytes, off));
    if (len) std::memcpy(box + sizeof(ChunkHeader), src + off, len);
    counter_publish(mine, next + 1);
  }
  account(Kind::kSend, Algo::kAuto, bytes, 0);
}

void Communicator::recv(void* buf, size_t count, DType dt, size_t esz, int src, int64_t tag) {
  check_usable();
  check_peer(src, "recv: src");
  t_kind = Kind::kRecv;
  size_t bytes = count * esz;
  Counter& theirs = p2p_posted(src, rank_);
  Counter& mine = p2p_consumed(rank_, src);
  uint64_t next = mine.value.load(std::memory_order_relaxed);
  t_seq = next;
  size_t nchunks = std::max<size_t>(1, (bytes + p2p_bytes_ - 1) / p2p_bytes_);
  char* dst = static_cast<char*>(buf);
  for (size_t i = 0; i < nchunks; ++i, ++next) {
    wait_geq(theirs, next + 1, src);
    const char* box = mailbox(src, rank_, next);
    const auto* h = reinterpret_cast<const ChunkHeader*>(box);
    if (i == 0 && (h->tag != tag || h->count != count || h->dtype != uint32_t(dt) || h->esz != esz)) {
      auto what = [](int64_t tg, uint64_t n, uint32_t d, uint32_t e) {
        std::string s = "(tag=" + std::to_string(tg) + ", count=" + std::to_string(n) + ", dtype=" +
                        dtype_name(DType(d));
        if (DType(d) == DType::kOther) s += "[" + std::to_string(e) + " bytes]";
        return s + ")";
      };
      fail(kReasonMismatch, "send/recv mismatch: rank " + std::to_string(src) + " sent " +
                                what(h->tag, h->count, h->dtype, h->esz) + " but rank " +
                                std::to_string(rank_) + " expects " +
                                what(tag, count, uint32_t(dt), uint32_t(esz)));
    }
    size_t off = i * p2p_bytes_;
    size_t len = std::min(p2p_bytes_, bytes - std::min(bytes, off));
    if (len) std::memcpy(dst + off, box + sizeof(ChunkHeader), len);
    counter_publish(mine, next + 1);
  }
  account(Kind::kRecv, Algo::kAuto, 0, bytes);
}

}  // namespace shardcore
