// Two-shot all-reduce: a reduce-scatter in which rank r reduces block r of every rank's input
// straight from the peers' slots, then an all-gather in which every rank copies the other
// reduced blocks straight from their owners' slots. Two synchronisations per chunk instead of the
// ring's 2(n-1), the same 2(n-1)/n bytes per rank, and one rounding for bf16/fp16.
#include <cstring>
#include <vector>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/copy.h"
#include "comm/reduce.h"

namespace shardcore {

void Communicator::two_shot_all_reduce(const char* in, char* out, size_t count, DType dt, RedOp op,
                                       size_t esz) {
  const int n = size_, r = rank_;
  if (n == 1 || count == 0) {
    if (out != in && count) std::memcpy(out, in, count * esz);
    account(Kind::kAllReduce, Algo::kTwoShot, 0, 0);
    return;
  }
  const size_t chunk = slot_bytes_ / esz;  // a whole chunk of the input fits in one slot
  // Large outputs with many ranks copying at once are streamed, as in the ring.
  const bool stream_out = (n >= 4 || oversubscribed_) && should_stream(count * esz);
  std::vector<const void*> srcs(static_cast<size_t>(n));
  uint64_t sent = 0, received = 0;
  for (size_t lo = 0; lo < count; lo += chunk) {
    const size_t len = std::min(chunk, count - lo);
    const BlockSplit blocks(len, n);
    const size_t mine_off = blocks.offset(r) * esz, mine_len = blocks.length(r);
    const uint64_t t1 = round_ + 1, t2 = round_ + 2;
    // Phase 1: publish this chunk of the input, less block r, which only this rank reduces
    // (it reads it from the input itself).
    acquire_slot(t1, all_peers_);
    const char* chunk_in = in + lo * esz;
    const size_t mine_end = mine_off + mine_len * esz;
    std::memcpy(slot(r, t1), chunk_in, mine_off);
    std::memcpy(slot(r, t1) + mine_end, chunk_in + mine_end, len * esz - mine_end);
    publish_posted(t1);
    for (int p : all_peers_) wait_geq(posted(p), t1, p);
    // Reduce block r over all ranks, in rank order, into this rank's second slot and output.
    for (int p = 0; p < n; ++p)
      srcs[size_t(p)] = p == r ? static_cast<const void*>(in + lo * esz + mine_off) : slot(p, t1) + mine_off;
    acquire_slot(t2, all_peers_);
    char* reduced = slot(r, t2);
    reduce_many(reduced, srcs.data(), n, mine_len, dt, op);
    publish_consumed(t1);
    publish_posted(t2);
    copy_bytes(out + lo * esz + mine_off, reduced, mine_len * esz, stream_out);
    // Phase 2: gather the other reduced blocks.
    for (int p : all_peers_) {
      wait_geq(posted(p), t2, p);
      copy_bytes(out + lo * esz + blocks.offset(p) * esz, slot(p, t2), blocks.length(p) * esz,
                 stream_out);
      received += blocks.length(p) * esz;
    }
    publish_consumed(t2);
    round_ += 2;
    received += uint64_t(n - 1) * mine_len * esz;                   // my block of every peer
    sent += (len - mine_len) * esz + uint64_t(n - 1) * mine_len * esz;  // peers' blocks, my sum
  }
  account(Kind::kAllReduce, Algo::kTwoShot, sent, received);
}

}  // namespace shardcore
