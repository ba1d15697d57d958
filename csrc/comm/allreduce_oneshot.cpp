// One-shot all-reduce, for small messages: every rank publishes its whole input and reduces all
// n inputs itself, in rank order, straight from shared memory; one synchronisation in all.
// Inputs of up to kInlineBytes ride in the entry line next to the sequence word and descriptor,
// so a peer's data arrives with the one cache-line transfer that tells it the peer is there.
// Larger ones go through the rank's slot, written before the entry is published.
#include <cstring>
#include <vector>

#include "comm/communicator.h"
#include "comm/reduce.h"

namespace shardcore {

void Communicator::one_shot_all_reduce(const char* in, char* out, size_t count, DType dt,
                                       RedOp op, size_t esz, const Desc& d) {
  const int n = size_, r = rank_;
  const size_t bytes = count * esz;
  // Every rank computes the same sum in the same order (rank 0 first), so results are bitwise
  // identical; bf16/fp16 are accumulated in float32 and rounded once.
  const void* srcs_small[16];
  std::vector<const void*> srcs_big;
  const void** srcs = srcs_small;
  if (n > 16) {
    srcs_big.resize(size_t(n));
    srcs = srcs_big.data();
  }
  if (bytes <= kInlineBytes) {
    const uint64_t k = enter(d, in, bytes);
    for (int p = 0; p < n; ++p) srcs[p] = p == r ? static_cast<const void*>(in) : entry_payload(p, k);
    reduce_many(out, srcs, n, count, dt, op);
  } else {
    const uint64_t t = round_ + 1;
    acquire_slot(t, all_peers_);
    std::memcpy(slot(r, t), in, bytes);
    enter(d);  // the entry doubles as "my slot holds my input"
    for (int p = 0; p < n; ++p) srcs[p] = p == r ? static_cast<const void*>(in) : slot(p, t);
    reduce_many(out, srcs, n, count, dt, op);
    publish_consumed(t);
    round_ += 1;
  }
  const uint64_t moved = uint64_t(n - 1) * bytes;
  account(Kind::kAllReduce, Algo::kOneShot, moved, moved);
}

}  // namespace shardcore
