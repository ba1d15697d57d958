// Ring reduce-scatter: n-1 fused steps; rank r starts by sending block r-1 so that the block it
// completes last is its own, block r.
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/reduce.h"

namespace shardcore {

void Communicator::reduce_scatter(const void* in, void* out, size_t m, DType dt, RedOp op) {
  if (!dtype_reducible(dt))
    reject(Kind::kReduceScatter, std::string("reduce_scatter: cannot reduce dtype ") + dtype_name(dt));
  if (op == RedOp::kNone) reject(Kind::kReduceScatter, "reduce_scatter: no reduction op given");
  size_t esz = dtype_size(dt);
  enter(make_desc(Kind::kReduceScatter, dt, op, Algo::kRing, 0,
             m * size_t(size_), esz));
  ring_reduce_scatter(static_cast<const char*>(in), static_cast<char*>(out), m, dt, op, esz);
}

void Communicator::ring_reduce_scatter(const char* in, char* out, size_t m, DType dt, RedOp op,
                                       size_t esz) {
  const int n = size_, r = rank_;
  if (n == 1 || m == 0) {
    if (m && out != in) std::memmove(out, in, m * esz);
    account(Kind::kReduceScatter, Algo::kRing, 0, 0);
    return;
  }
  const size_t chunk = slot_bytes_ / esz;
  const size_t nchunks = ceil_div(m, chunk);
  const int pred = (r - 1 + n) % n;
  auto mod = [n](int x) { return ring_mod(x, n); };
  uint64_t sent = 0, received = 0;
  for (size_t c = 0; c < nchunks; ++c) {
    const size_t lo = c * chunk;
    const size_t len = chunk_len(m, c, chunk);
    const size_t bytes = len * esz;
    for (int j = 0; j < n; ++j) {
      const uint64_t t = round_ + 1 + uint64_t(j);
      const int b = mod(r - 1 - j);
      const char* mine = in + (size_t(b) * m + lo) * esz;
      if (j == 0) {
        acquire_slot(t, succ_only_);
        std::memcpy(slot(r, t), mine, bytes);
      } else {
        wait_geq(posted(pred), t - 1, pred);
        char* dst = j < n - 1 ? (acquire_slot(t, succ_only_), slot(r, t)) : out + lo * esz;
        reduce(dst, slot(pred, t - 1), mine, len, dt, op);
        publish_consumed(t - 1);
        received += bytes;
      }
      if (j < n - 1) {
        publish_posted(t);
        sent += bytes;
      }
    }
    round_ += uint64_t(n - 1);
  }
  account(Kind::kReduceScatter, Algo::kRing, sent, received);
}

}  // namespace shardcore
