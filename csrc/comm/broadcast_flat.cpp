// Flat broadcast: the root writes each chunk once into its slot and every other rank copies it
// out directly (shared memory makes a tree or chain pointless: all readers see the root's slot).
// Traffic: the root sends S bytes, every other rank receives S.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "comm/blocks.h"
#include "comm/communicator.h"

namespace shardcore {

void Communicator::broadcast(void* buf, size_t count, DType dt, size_t esz, int root) {
  if (root < 0 || root >= size_)
    reject(Kind::kBroadcast, "broadcast: root " + std::to_string(root) + " is outside [0, " +
                                std::to_string(size_) + ")");
  enter(make_desc(Kind::kBroadcast, dt, RedOp::kNone, Algo::kFlat,
             root, count, esz));
  flat_broadcast(static_cast<char*>(buf), count * esz, root);
}

void Communicator::flat_broadcast(char* buf, size_t bytes, int root) {
  uint64_t sent = 0, received = 0;
  if (size_ > 1 && bytes) {
    const size_t nchunks = ceil_div(bytes, slot_bytes_);
    for (size_t c = 0; c < nchunks; ++c) {
      const uint64_t t = round_ + 1 + c;
      const size_t lo = c * slot_bytes_;
      const size_t len = std::min(slot_bytes_, bytes - lo);
      if (rank_ == root) {
        acquire_slot(t, all_peers_);
        std::memcpy(slot(rank_, t), buf + lo, len);
        publish_posted(t);
        sent += len;
      } else {
        wait_geq(posted(root), t, root);
        std::memcpy(buf + lo, slot(root, t), len);
        publish_consumed(t);
        received += len;
      }
    }
    round_ += nchunks;
  }
  account(Kind::kBroadcast, Algo::kFlat, sent, received);
}

}  // namespace shardcore
