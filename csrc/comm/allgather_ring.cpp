// Ring all-gather: n-1 steps; each rank copies what its predecessor posted into the output and,
// except on the last step, forwards it as its own next message.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/copy.h"

namespace shardcore {

Algo Communicator::all_gather(const void* in, void* out, size_t m, DType dt, size_t esz,
                              Kind account_as, Algo algo, const SymmetricSegment* sym_buffer) {
  const size_t block = m * esz;
  const SymmetricPlace place = symmetric_place(sym_buffer, in, block);
  // Cross-memory attach is never the automatic choice: since the flat path reads its input once
  // and streams large outputs it was as fast on a 16-core Xeon and 1.4-1.7x faster on the 2-core
  // EPYC VM at 1-32 MiB, two ranks (docs/performance.md, session 3); algorithm="cma" forces it.
  if (algo == Algo::kAuto)
    algo = symmetric_gather_auto(place.stride, block, false) ? Algo::kSymmetric : Algo::kFlat;
  if (algo != Algo::kRing && algo != Algo::kFlat && algo != Algo::kCma && algo != Algo::kSymmetric)
    reject(Kind::kAllGather, std::string("all_gather: algorithm '") + algo_name(algo) +
                                "' does not apply to all_gather (ring, flat, cma or symmetric)");
  if (algo == Algo::kSymmetric && !place.stride)
    reject(Kind::kAllGather, "all_gather: the symmetric algorithm needs an input from this "
                                "communicator's empty/zeros");
  const bool sym = algo == Algo::kSymmetric;
  const Desc d = make_desc(Kind::kAllGather, dt, RedOp::kNone, algo, 0, m, esz, sym ? place.tag : 0);
  if (algo == Algo::kCma || sym) {
    single_copy_gather(d, static_cast<const char*>(in), static_cast<char*>(out), block, false,
                       account_as, sym ? place.stride : 0, place.offset);
    return algo;
  }
  if (algo == Algo::kRing) {  // moved as bytes: an element may be wider than a slot
    enter(d);
    ring_all_gather(static_cast<const char*>(in), static_cast<char*>(out), block, 1, account_as);
  } else {
    flat_all_gather(static_cast<const char*>(in), static_cast<char*>(out), block, d, account_as);
  }
  return algo;
}

// Flat all-gather: every rank writes its chunk once into its slot and copies every peer's
// chunk straight out of theirs; one synchronisation per chunk and no forwarding copies. The
// input is read once: each chunk goes into the slot, and the rank's own output block is filled
// from the slot (still in cache) after the chunk is posted, while the peers read it. When the
// block fits one slot there is one round, written before entering, so the entry doubles as
// "posted". A large output is written with non-temporal stores (nothing reads it before it leaves
// the caches); the slots themselves are small and read at once, so they are written normally.
void Communicator::flat_all_gather(const char* in, char* out, size_t block, const Desc& d,
                                   Kind account_as) {
  const int n = size_, r = rank_;
  const bool stream = should_stream(size_t(n) * block, kStreamMinGatherBytes);
  char* own = out + size_t(r) * block;
  // An input that overlaps its own output block without being it is moved there (after
  // entering, so nothing is written before the call is known to match).
  const bool overlap = own != in && own < in + block && in < own + block;
  const bool copy_own = block && !overlap && own != in;
  const bool one_round = n > 1 && block && block <= slot_bytes_;
  if (!one_round) {
    enter(d);
    if (block && overlap) std::memmove(own, in, block);  // the chunks are then read from there
    if (n == 1 && copy_own) copy_bytes(own, in, block, stream);
  }
  const char* mine = overlap && !one_round ? own : in;
  uint64_t moved = 0;
  for (size_t lo = 0; n > 1 && lo < block; lo += slot_bytes_) {
    const size_t len = std::min(slot_bytes_, block - lo);
    const uint64_t t = round_ + 1;
    acquire_slot(t, all_peers_);
    char* mine_slot = slot(r, t);
    std::memcpy(mine_slot, mine + lo, len);
    if (one_round) {
      enter(d);
      if (overlap) std::memmove(own, in, block);
    } else {
      publish_posted(t);
    }
    if (copy_own) copy_bytes(own + lo, mine_slot, len, stream);
    for (int p : all_peers_) {
      if (!one_round) wait_geq(posted(p), t, p);
      copy_bytes(out + size_t(p) * block + lo, slot(p, t), len, stream);
    }
    publish_consumed(t);
    round_ += 1;
    moved += uint64_t(n - 1) * len;  // every peer reads it
  }
  account(account_as, Algo::kFlat, moved, moved);
}

void Communicator::ring_all_gather(const char* in, char* out, size_t m, size_t esz, Kind account_as) {
  const int n = size_, r = rank_;
  const size_t block = m * esz;
  char* own = out + size_t(r) * block;
  if (block && own != in) std::memmove(own, in, block);
  if (n == 1 || m == 0) {
    account(account_as, Algo::kRing, 0, 0);
    return;
  }
  const size_t chunk = slot_bytes_ / esz;
  const size_t nchunks = ceil_div(m, chunk);
  const int pred = (r - 1 + n) % n;
  auto mod = [n](int x) { return ring_mod(x, n); };
  uint64_t sent = 0, received = 0;
  for (size_t c = 0; c < nchunks; ++c) {
    const size_t lo = c * chunk * esz;
    const size_t bytes = chunk_len(m, c, chunk) * esz;
    for (int j = 0; j < n; ++j) {
      const uint64_t t = round_ + 1 + uint64_t(j);
      char* dst = nullptr;
      if (j < n - 1) {
        acquire_slot(t, succ_only_);
        dst = slot(r, t);
      }
      if (j == 0) {
        std::memcpy(dst, own + lo, bytes);
      } else {
        wait_geq(posted(pred), t - 1, pred);
        const char* src = slot(pred, t - 1);
        std::memcpy(out + size_t(mod(r - j)) * block + lo, src, bytes);
        if (dst) std::memcpy(dst, src, bytes);
        publish_consumed(t - 1);
        received += bytes;
      }
      if (dst) {
        publish_posted(t);
        sent += bytes;
      }
    }
    round_ += uint64_t(n - 1);
  }
  account(account_as, Algo::kRing, sent, received);
}

}  // namespace shardcore
