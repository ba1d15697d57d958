#include "comm/symmetric.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace shardcore {

SymmetricSegment::SymmetricSegment(const std::string& name, int rank, int size, size_t bytes,
                                   bool create)
    : name_(name), rank_(rank), size_(size), bytes_(bytes) {
  const size_t page = 4096;
  stride_ = ((bytes ? bytes : 1) + page - 1) / page * page;
  total_ = stride_ * size_t(size);
  int fd = create ? shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600)
                  : shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0)
    throw std::runtime_error("symmetric buffer " + name + ": " + strerror(errno));
  if (create) {
    int e = ftruncate(fd, off_t(total_)) == 0 ? 0 : errno;
    if (!e) e = posix_fallocate(fd, 0, off_t(total_));
    if (e && e != EOPNOTSUPP && e != EINVAL) {
      ::close(fd);
      shm_unlink(name.c_str());
      throw std::runtime_error("not enough shared memory for a symmetric buffer of " +
                               std::to_string(total_) + " bytes in /dev/shm: " + strerror(e));
    }
  } else {
    struct stat st;
    if (fstat(fd, &st) != 0 || size_t(st.st_size) != total_) {
      ::close(fd);
      throw std::runtime_error("symmetric buffer " + name + " has another size on rank 0");
    }
  }
  void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    if (create) shm_unlink(name.c_str());
    throw std::runtime_error("cannot map symmetric buffer " + name + ": " + strerror(e));
  }
  base_ = static_cast<char*>(p);
}

SymmetricSegment::~SymmetricSegment() {
  if (base_) munmap(base_, total_);
}

void SymmetricSegment::unlink() { shm_unlink(name_.c_str()); }

}  // namespace shardcore
