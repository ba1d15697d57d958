// Ring all-gather: n-1 steps; each rank copies what its predecessor posted into the output and,
// except on the last step, forwards it as its own next message.
#include <cstring>

#include "comm/blocks.h"
#include "comm/communicator.h"

namespace shardcore {

void Communicator::all_gather(const void* in, void* out, size_t m, DType dt, size_t esz, Kind account_as) {
  enter(make_desc(Kind::kAllGather, dt, RedOp::kNone, Algo::kRing,
             0, m, esz));
  ring_all_gather(static_cast<const char*>(in), static_cast<char*>(out), m, esz, account_as);
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
  auto mod = [n](int x) { return ((x % n) + n) % n; };
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
