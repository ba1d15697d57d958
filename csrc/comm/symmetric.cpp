#include "comm/symmetric.h"

#include <errno.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "comm/communicator.h"

namespace shardcore {

SymmetricSegment::SymmetricSegment(Communicator& comm, size_t bytes)
    : rank_(comm.rank()), size_(comm.size()), owner_(comm.id()), bytes_(bytes) {
  const size_t page = 4096;
  if (bytes > (SIZE_MAX / 2) / size_t(size_))  // the same on every rank: all throw
    comm.reject(Kind::kInternal, "symmetric buffer: " + std::to_string(bytes) +
                                " bytes per rank do not fit in memory");
  stride_ = ((bytes ? bytes : 1) + page - 1) / page * page;
  total_ = stride_ * size_t(size_);
  const std::string what = "a symmetric buffer of " + std::to_string(bytes) + " bytes per rank";
  UniqueFd fd = comm.share_memory(total_, what);
  void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  std::string err;
  if (p == MAP_FAILED)
    err = "rank " + std::to_string(rank_) + " could not map " + what + ": " + strerror(errno);
  fd.reset();
  comm.fault_point("buffer-mapped");
  try {
    comm.agree(err);
  } catch (...) {
    if (p != MAP_FAILED) munmap(p, total_);
    throw;
  }
  base_ = static_cast<char*>(p);
  tag_ = comm.next_symmetric_tag();
}

SymmetricSegment::~SymmetricSegment() {
  if (base_) munmap(base_, total_);
}

}  // namespace shardcore
