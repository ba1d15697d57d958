// Symmetric buffers: one shared-memory segment holding the same-sized region of every rank, so
// rank r's array and its peers' copies sit at a fixed stride from each other in every process.
// Collectives on such arrays read and write the peers' regions directly (no copy in or out).
// The creating and attaching ranks are sequenced by the owning communicator (Python side):
// rank 0 creates, a barrier, the others attach, a barrier, rank 0 unlinks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardcore {

class SymmetricSegment {
 public:
  // Maps `size` regions of `region_bytes` (rounded up to whole pages).
  SymmetricSegment(const std::string& name, int rank, int size, size_t bytes, bool create);
  ~SymmetricSegment();
  SymmetricSegment(const SymmetricSegment&) = delete;
  SymmetricSegment& operator=(const SymmetricSegment&) = delete;

  void unlink();
  char* region(int r) const { return base_ + size_t(r) * stride_; }
  char* mine() const { return region(rank_); }
  size_t bytes() const { return bytes_; }
  size_t stride() const { return stride_; }
  int rank() const { return rank_; }

  uint32_t tag = 0;  // which allocation of its communicator (equal on every rank; set by Python)

 private:
  std::string name_;
  int rank_, size_;
  size_t bytes_, stride_, total_;
  char* base_ = nullptr;
};

}  // namespace shardcore
