// How a buffer is cut into per-rank blocks and the blocks into slot-sized chunks.
#pragma once
#include <algorithm>
#include <cstddef>

namespace shardcore {

// `count` elements in n contiguous blocks; the first count % n blocks are one element longer.
// This is the remainder rule of the traffic model: ring all-reduce rank r sends
// (count - len(r+1)) + (count - len(r+2)) elements (indices mod n).
struct BlockSplit {
  size_t base, rem;
  BlockSplit(size_t count, int n) : base(count / size_t(n)), rem(count % size_t(n)) {}
  size_t offset(int b) const { return size_t(b) * base + std::min(size_t(b), rem); }
  size_t length(int b) const { return base + (size_t(b) < rem ? 1 : 0); }
  size_t longest() const { return base + (rem ? 1 : 0); }
};

// Elements [lo, lo + len) of a block of `block_len` elements in chunk `c` of `chunk` elements.
inline size_t chunk_len(size_t block_len, size_t c, size_t chunk) {
  size_t lo = c * chunk;
  return lo >= block_len ? 0 : std::min(chunk, block_len - lo);
}

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// x modulo n in [0, n) for any int x (ring positions before rank 0 wrap around).
inline int ring_mod(int x, int n) { return ((x % n) + n) % n; }

}  // namespace shardcore
