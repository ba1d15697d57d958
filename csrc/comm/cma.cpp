// Single-copy all-gather and all-to-all through Linux cross-memory attach: a rank reads each
// peer's block straight out of the peer's own (private) input with process_vm_readv, so every
// byte is copied once instead of into a slot and out again. Used for large blocks where the
// connect-time probe found that every rank may read every other (Communicator::probe_cma).
#include <cstring>
#include <stdexcept>

#include "comm/communicator.h"

namespace shardcore {

void Communicator::cma_gather(const Desc& d, const char* in, char* out, size_t block,
                              bool all_to_all, Kind kind) {
  if (!cma_)
    throw std::invalid_argument(std::string(kind_name(kind)) +
                                ": algorithm 'cma' is not available here (SHARDCORE_CMA=0, or the "
                                "kernel does not let the ranks read each other's memory)");
  const int n = size_, r = rank_;
  const uint64_t mine = reinterpret_cast<uint64_t>(in);
  const uint64_t k = enter(d, &mine, sizeof(mine));
  // Own block first (all-gather: x itself; all-to-all: block r of x).
  char* own = out + size_t(r) * block;
  const char* own_src = all_to_all ? in + size_t(r) * block : in;
  if (block && own != own_src) std::memmove(own, own_src, block);
  uint64_t moved = 0;
  if (n > 1) {
    if (block) {
      for (int p : all_peers_) {
        uint64_t remote;
        std::memcpy(&remote, entry_payload(p, k), sizeof(remote));
        if (all_to_all) remote += uint64_t(r) * block;
        cma_read(p, out + size_t(p) * block, remote, block);
      }
    }
    // The caller may reuse its input once this returns: wait until every peer has read it.
    const uint64_t t = round_ + 1;
    publish_consumed(t);
    for (int p : all_peers_) wait_geq(consumed(p), t, p);
    round_ += 1;
    moved = uint64_t(n - 1) * block;
  }
  account(kind, Algo::kCma, moved, moved);
}

}  // namespace shardcore
