// Single-copy all-gather and all-to-all: a rank reads each peer's block straight out of the
// peer's input, so every byte is copied once instead of into a slot and out again.
//   - cma: the input is the peer's private memory, read with Linux cross-memory attach
//     (process_vm_readv), where the connect-time probe found that every rank may read every
//     other (Communicator::probe_cma). The kernel pins and walks every 4 KiB page it copies:
//     on the 2-core EPYC VM that made it half as fast as a memcpy of cold 4 KiB-page buffers
//     (about 250 ns a page), and about as fast on 2 MiB pages (docs/performance.md).
//   - symmetric: the input lives in a symmetric buffer (Communicator.empty), mapped at a fixed
//     stride in every process, so the peer's block is read with an ordinary user-space copy.
// Large outputs are written with non-temporal stores where the copy is ours (copy_bytes).
#include <cstring>
#include <stdexcept>

#include "comm/communicator.h"
#include "comm/copy.h"

namespace shardcore {

bool Communicator::symmetric_gather_auto(int64_t sym_stride, size_t block, bool all_to_all) const {
  if (size_ == 1 || !sym_stride || !block) return false;
  if (!oversubscribed_) {
    // More than two ranks reading the same large cold regions (4 KiB pages: /dev/shm gets no
    // transparent huge pages) lose to the flat path's slots, which stay in cache: 8 ranks on a
    // 16-core Xeon, 4 MiB blocks 8.2 ms against 5.8 ms, 512 KiB blocks 80 us against 145 us.
    if (!all_to_all && size_ > 2 && block > kSymmetricGatherMaxBytesManyRanks) return false;
    return block >= kSymmetricGatherMinBytes;
  }
  if (all_to_all) return size_t(size_) * block > slot_bytes_;
  return block >= kSymmetricGatherMinBytesOversubscribed;
}

void Communicator::single_copy_gather(const Desc& d, const char* in, char* out, size_t block,
                                      bool all_to_all, Kind kind, int64_t sym_stride,
                                      int64_t sym_offset) {
  const bool symmetric = sym_stride != 0;
  if (!symmetric && !cma_)
    reject(kind, std::string(kind_name(kind)) +
                                ": algorithm 'cma' is not available here (SHARDCORE_CMA=0, or the "
                                "kernel does not let the ranks read each other's memory)");
  const int n = size_, r = rank_;
  const bool stream = should_stream(size_t(n) * block, kStreamMinGatherBytes);
  // Own block first (all-gather: x itself; all-to-all: block r of x), before entering: it needs
  // no peer, and it fills the time until the last peer arrives.
  char* own = out + size_t(r) * block;
  const char* own_src = all_to_all ? in + size_t(r) * block : in;
  if (block && own != own_src) {
    const bool overlap = own < own_src + block && own_src < own + block;
    if (overlap) std::memmove(own, own_src, block);
    else copy_bytes(own, own_src, block, stream);
  }
  // Entry payload: where the peers find this rank's input (CMA: its address; symmetric: its
  // offset in this rank's region of the buffer, whose tag the descriptor check compared).
  const uint64_t mine = symmetric ? uint64_t(sym_offset) : reinterpret_cast<uint64_t>(in);
  const uint64_t k = enter(d, &mine, sizeof(mine));
  uint64_t moved = 0;
  if (n > 1) {
    if (block) {
      // Peers in the order r+1, r+2, ...: at any moment the ranks read different peers' memory.
      for (int s = 1; s < n; ++s) {
        const int p = (r + s) % n;
        const size_t at = all_to_all ? size_t(r) * block : 0;
        uint64_t theirs;
        std::memcpy(&theirs, entry_payload(p, k), sizeof(theirs));
        if (symmetric) {
          const char* region = in - sym_offset + (int64_t(p) - r) * sym_stride;
          copy_bytes(out + size_t(p) * block, region + int64_t(theirs) + at, block, stream);
        } else {
          cma_read(p, out + size_t(p) * block, theirs + at, block);
        }
      }
    }
    // The caller may reuse its input once this returns: wait until every peer has read it.
    const uint64_t t = round_ + 1;
    publish_consumed(t);
    for (int p : all_peers_) wait_geq(consumed(p), t, p);
    round_ += 1;
    moved = uint64_t(n - 1) * block;
  }
  account(kind, symmetric ? Algo::kSymmetric : Algo::kCma, moved, moved);
}

}  // namespace shardcore
