// Ring all-reduce: a reduce-scatter then an all-gather around the ring, n-1 steps each.
//
// Each step is fused: a rank reads its predecessor's message of round t-1, combines it with its
// own input, and writes the result as its own message of round t, so partial sums never make an
// extra trip through private memory. Block b's sum is formed once, in ring order, on rank b-1 and
// then only copied, so every rank ends with bitwise identical results.
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/reduce.h"

namespace shardcore {

Algo Communicator::all_reduce(const void* in, void* out, size_t count, DType dt, RedOp op, Algo algo) {
  if (!dtype_reducible(dt))
    throw std::invalid_argument(std::string("all_reduce: cannot reduce dtype ") + dtype_name(dt));
  if (op == RedOp::kNone) throw std::invalid_argument("all_reduce: no reduction op given");
  if (algo == Algo::kAuto) algo = Algo::kRing;
  if (algo != Algo::kRing)
    throw std::invalid_argument(std::string("all_reduce: algorithm '") + algo_name(algo) +
                                "' is not available");
  size_t esz = dtype_size(dt);
  enter(Desc{uint32_t(Kind::kAllReduce), uint32_t(dt), uint32_t(op), uint32_t(algo), 0, count, esz});
  ring_all_reduce(static_cast<const char*>(in), static_cast<char*>(out), count, dt, op, esz);
  return algo;
}

void Communicator::ring_all_reduce(const char* in, char* out, size_t count, DType dt, RedOp op,
                                   size_t esz) {
  const int n = size_, r = rank_;
  if (n == 1 || count == 0) {
    if (out != in && count) std::memcpy(out, in, count * esz);
    account(Kind::kAllReduce, Algo::kRing, 0, 0);
    return;
  }
  const BlockSplit blocks(count, n);
  const size_t chunk = slot_bytes_ / esz;
  const size_t nchunks = ceil_div(blocks.longest(), chunk);
  const int pred = (r - 1 + n) % n;
  const int steps = 2 * n - 2;  // rounds posted per chunk; a final step only receives
  auto mod = [n](int x) { return ((x % n) + n) % n; };
  uint64_t sent = 0, received = 0;
  for (size_t c = 0; c < nchunks; ++c) {
    for (int j = 0; j <= steps; ++j) {
      const uint64_t t = round_ + 1 + uint64_t(j);
      char* dst = nullptr;
      const char* src = nullptr;
      if (j < steps) {
        acquire_slot(t, succ_only_);
        dst = slot(r, t);
      }
      if (j > 0) {
        wait_geq(posted(pred), t - 1, pred);
        src = slot(pred, t - 1);
      }
      // The block this step works on: reduce-scatter for j < n, all-gather after.
      int b = j == 0 ? r : j < n - 1 ? mod(r - j) : j == n - 1 ? mod(r + 1) : mod(r - (j - n));
      const size_t len = chunk_len(blocks.length(b), c, chunk);
      const size_t off = (blocks.offset(b) + c * chunk) * esz;
      const size_t bytes = len * esz;
      if (j == 0) {
        std::memcpy(dst, in + off, bytes);
      } else if (j < n - 1) {
        reduce(dst, src, in + off, len, dt, op);
      } else if (j == n - 1) {
        reduce(dst, src, in + off, len, dt, op);  // the block's final sum
        std::memcpy(out + off, dst, bytes);
      } else {
        std::memcpy(out + off, src, bytes);
        if (dst) std::memcpy(dst, src, bytes);
      }
      if (j > 0) {
        publish_consumed(t - 1);
        received += bytes;
      }
      if (j < steps) {
        publish_posted(t);
        sent += bytes;
      }
    }
    round_ += uint64_t(steps);
  }
  account(Kind::kAllReduce, Algo::kRing, sent, received);
}

}  // namespace shardcore
