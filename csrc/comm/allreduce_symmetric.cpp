// All-reduce in place on a symmetric buffer (Communicator.empty): the two-shot algorithm with
// the peers' arrays read where they live. Rank r reduces block r of every rank's array into its
// own block r, then copies every other reduced block from its owner.
//
// Pipelined: every block is cut into the same number of chunks, and a rank publishes each chunk
// of its block as soon as it is reduced (one round per chunk on its `posted` counter), so the
// peers copy it while it is still in the shared last-level cache instead of re-reading it from
// memory once the whole block is done. Per rank that is S bytes read from memory and S written
// for a message of S bytes (the copies read the cache), against 2S read and S written unpipelined
// and ~5.5S moved by a copy-in/copy-out algorithm.
//
// Chunk c of block p is reduced from chunk c of every rank's block p alone, so once p has posted
// chunk c nobody reads that part of any array any more, and the copies may overwrite it. Every
// element is reduced as before (rank order, one reduce_many), so results do not depend on the
// chunking.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "comm/blocks.h"
#include "comm/communicator.h"
#include "comm/copy.h"
#include "comm/reduce.h"

namespace shardcore {
namespace {

// Bytes per pipelined chunk. A chunk must still be in the shared last-level cache when the peers
// copy it, after its owner posts it, so it must be small against that cache; each post is one
// synchronisation (a cache-line transfer, a futex wake when someone sleeps), so it must be large
// against that. 512 KiB measured best on a 2-core Zen 4 (32 MiB L3, 1 MiB L2 per core): 2 ranks
// at 256 MiB reach 10.2 GB/s busbw against 8.7 (128 KiB), 9.9 (256 KiB), 9.4 (1 MiB) and 8.3
// (2 MiB). SHARDCORE_SYM_CHUNK_BYTES overrides it (the tests make many chunks of small arrays).
constexpr size_t kChunkBytes = size_t(512) << 10;

}  // namespace

size_t symmetric_chunk_bytes() {
  const char* s = std::getenv("SHARDCORE_SYM_CHUNK_BYTES");
  if (!s || !*s) return kChunkBytes;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(s, &end, 10);
  return end == s || *end || x == 0 ? kChunkBytes : size_t(x);
}

void Communicator::symmetric_all_reduce(char* x, size_t count, DType dt, RedOp op, size_t esz,
                                        int64_t stride) {
  const int n = size_, r = rank_;
  if (n == 1 || count == 0) {
    account(Kind::kAllReduce, Algo::kSymmetric, 0, 0);
    return;
  }
  auto peer = [&](int p) { return x + (int64_t(p) - r) * stride; };
  const BlockSplit blocks(count, n);
  // Every rank counts the same chunks (rank 0's chunk size, the longest block), so rounds agree;
  // a shorter block's last chunk may be empty, and is posted all the same.
  const size_t chunk = std::max<size_t>(1, sym_chunk_bytes_ / esz);
  const size_t nchunks = ceil_div(blocks.longest(), chunk);
  const uint64_t t0 = round_;
  // Streaming (non-temporal) stores for the copies only when ranks share cores: a rank then
  // copies a chunk a scheduler slice or more after its owner reduced it, when the destination
  // lines (which the owner read) have left the cache, and skipping their read-for-ownership pays
  // (8 ranks on 2 cores, 256 MiB: 2.9 GB/s busbw against 2.4). With a core per rank the copy
  // follows the reduce closely, the destination is still cached, and streaming it out to memory
  // costs (2 ranks, 256 MiB: 9.6 against 10.7 GB/s).
  const bool stream = oversubscribed_ && should_stream(count * esz);

  // Chunks of block p copied so far, per peer; copies the chunks p has posted, without waiting.
  std::vector<size_t> copied(size_t(n), 0);
  auto copy_posted = [&](int p) {
    size_t& c = copied[size_t(p)];
    // Not every collective posts every round on every rank (a broadcast's root alone posts), so
    // p's counter may still be below t0.
    const uint64_t v = posted(p).value.load(std::memory_order_acquire);
    const uint64_t ready = v > t0 ? std::min<uint64_t>(v - t0, nchunks) : 0;
    const size_t start = c;
    for (; c < ready; ++c) {
      const size_t len = chunk_len(blocks.length(p), c, chunk);
      const size_t off = (blocks.offset(p) + c * chunk) * esz;
      copy_bytes(x + off, peer(p) + off, len * esz, stream);
    }
    return c != start;
  };

  // Entry guaranteed every rank's input is in place. Chunk c of block r is read by this rank
  // alone until it is posted, so it can be overwritten with its sum.
  const size_t mine = blocks.length(r);
  std::vector<const void*> srcs(static_cast<size_t>(n));
  for (size_t c = 0; c < nchunks; ++c) {
    const size_t len = chunk_len(mine, c, chunk);
    const size_t off = (blocks.offset(r) + c * chunk) * esz;
    for (int p = 0; p < n; ++p) srcs[size_t(p)] = peer(p) + off;
    reduce_many(x + off, srcs.data(), n, len, dt, op);
    publish_posted(t0 + c + 1);
    for (int p : all_peers_) copy_posted(p);
  }
  // Copy the rest, waiting (on the first peer still behind) only when no peer has a chunk ready.
  for (;;) {
    bool progress = false;
    int behind = -1;
    for (int p : all_peers_) {
      progress = copy_posted(p) || progress;
      if (behind < 0 && copied[size_t(p)] < nchunks) behind = p;
    }
    if (behind < 0) break;
    if (!progress) wait_geq(posted(behind), t0 + copied[size_t(behind)] + 1, behind);
  }
  const uint64_t t = t0 + nchunks;
  publish_consumed(t);
  // The caller may overwrite x once this returns: wait until no peer still copies my block.
  for (int p : all_peers_) wait_geq(consumed(p), t, p);
  round_ = t;
  uint64_t received = 0;
  for (int p : all_peers_) received += blocks.length(p) * esz;
  received += uint64_t(n - 1) * mine * esz;
  account(Kind::kAllReduce, Algo::kSymmetric, (count - mine) * esz + uint64_t(n - 1) * mine * esz,
          received);
}

}  // namespace shardcore
