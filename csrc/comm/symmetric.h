// Symmetric buffers: shared memory holding the same-sized region of every rank, so rank r's
// array and its peers' copies sit at a fixed stride from each other in every process.
// Collectives on such arrays read and write the peers' regions directly (no copy in or out),
// on the communicator that made the buffer only: the stride means "rank r+1" of that one.
#pragma once
#include <cstddef>
#include <cstdint>

namespace shardcore {

class Communicator;

class SymmetricSegment {
 public:
  // Collective over `comm` (every rank with the same `bytes`): maps `comm.size()` regions of
  // `bytes` (rounded up to whole pages) of memory that rank 0 creates without a name. Either
  // every rank returns with the buffer mapped, or every rank throws the same error (nothing
  // stays allocated) and `comm` stays usable.
  SymmetricSegment(Communicator& comm, size_t bytes);
  ~SymmetricSegment();
  SymmetricSegment(const SymmetricSegment&) = delete;
  SymmetricSegment& operator=(const SymmetricSegment&) = delete;

  char* region(int r) const { return base_ + size_t(r) * stride_; }
  char* mine() const { return region(rank_); }
  size_t bytes() const { return bytes_; }
  size_t stride() const { return stride_; }
  int rank() const { return rank_; }
  // Communicator::id() of the communicator that made it.
  uint64_t owner() const { return owner_; }
  // Which allocation of that communicator (equal on every rank).
  uint32_t tag() const { return tag_; }

 private:
  int rank_, size_;
  uint64_t owner_;
  uint32_t tag_ = 0;
  size_t bytes_, stride_, total_;
  char* base_ = nullptr;
};

}  // namespace shardcore
