// Ring all-reduce: a reduce-scatter then an all-gather around the ring, n-1 steps each.
//
// Each step is fused: a rank reads its predecessor's message of round t-1, combines it with its
// own input, and writes the result as its own message of round t, so partial sums never make an
// extra trip through private memory. Block b's sum is formed once, in ring order, on rank b-1 and
// then only copied, so every rank ends with bitwise identical results.
#include <climits>
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/copy.h"
#include "comm/reduce.h"

namespace shardcore {

Algo Communicator::all_reduce(const void* in, void* out, size_t count, DType dt, RedOp op, Algo algo,
                              const SymmetricSegment* sym_buffer) {
  if (!dtype_reducible(dt))
    reject(Kind::kAllReduce, std::string("all_reduce: cannot reduce dtype ") + dtype_name(dt));
  if (op == RedOp::kNone) reject(Kind::kAllReduce, "all_reduce: no reduction op given");
  const size_t esz = dtype_size(dt);
  const size_t bytes = count * esz;
  SymmetricPlace place = symmetric_place(sym_buffer, in, bytes);
  // The ranks compare the offset in the descriptor (int32 elements, since the symmetric algorithm
  // needs it equal on every rank): an array at any other offset is an ordinary one.
  if (place.stride && (place.offset % int64_t(esz) || place.offset / int64_t(esz) > INT32_MAX))
    place = SymmetricPlace{};
  const bool sym_in_place = place.stride != 0 && in == out;
  if (algo == Algo::kAuto) algo = choose_all_reduce(bytes, sym_in_place);
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  const bool sym = algo == Algo::kSymmetric;
  const Desc d = make_desc(Kind::kAllReduce, dt, op, algo, sym ? place.offset / int64_t(esz) : 0,
                           count, esz, sym ? place.tag : 0);
  switch (algo) {
    case Algo::kSymmetric:
      if (!sym_in_place)
        reject(Kind::kAllReduce, "all_reduce: the symmetric algorithm runs in place on an array "
                                    "from this communicator's empty/zeros");
      enter(d);
      symmetric_all_reduce(dst, count, dt, op, esz, place.stride);
      break;
    case Algo::kRing:
      enter(d);
      ring_all_reduce(src, dst, count, dt, op, esz);
      break;
    case Algo::kOneShot:
      if (bytes > kInlineBytes && bytes > slot_bytes_)
        reject(Kind::kAllReduce, "all_reduce: one_shot needs the message (" + std::to_string(bytes) +
                                    " bytes) to fit in one slot (" + std::to_string(slot_bytes_) + " bytes)");
      one_shot_all_reduce(src, dst, count, dt, op, esz, d);
      break;
    case Algo::kTwoShot:
      enter(d);
      two_shot_all_reduce(src, dst, count, dt, op, esz);
      break;
    default:
      reject(Kind::kAllReduce, std::string("all_reduce: algorithm '") + algo_name(algo) +
                                  "' does not apply to all_reduce");
  }
  return algo;
}

// The size-based choice; every rank makes the same one since the thresholds come from rank 0.
Algo Communicator::choose_all_reduce(size_t bytes, bool symmetric) const {
  if (size_ == 1) return Algo::kRing;
  if (bytes <= kInlineBytes || (bytes <= one_shot_max_ && bytes <= slot_bytes_)) return Algo::kOneShot;
  if (symmetric) return Algo::kSymmetric;
  if (bytes <= two_shot_max_) return Algo::kTwoShot;
  return Algo::kRing;
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
  auto mod = [n](int x) { return ring_mod(x, n); };
  uint64_t sent = 0, received = 0;
  // `out` is not read again in this call: past the caches' reach, and when enough ranks copy at
  // once to fill the memory bus, write it with streaming stores (16-core Xeon, 256 MiB: 8 ranks
  // 159 -> 110 ms; 2 ranks on 2 cores 64 -> 85 ms, so not there).
  const bool stream_out = (n >= 4 || oversubscribed_) && should_stream(count * esz);
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
        copy_bytes(out + off, dst, bytes, stream_out);
      } else {
        copy_bytes(out + off, src, bytes, stream_out);
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
