// Shared memory that never has a name, and how the ranks of a communicator get hold of it.
//
// A named segment (shm_open) lives in /dev/shm until someone unlinks it, so every process that
// could unlink it may be killed between its creation and the last rank's attach, and leave it
// there for good; no cleanup helps when nobody survives. Here the memory has no name at any time:
// rank 0 creates an unlinked file in /dev/shm's tmpfs (O_TMPFILE, so that /dev/shm's size limit
// still applies; memfd_create where that is unavailable), which the kernel frees with the last
// descriptor or mapping. The other ranks receive the descriptor from rank 0 over a Unix socket
// (SCM_RIGHTS) at an abstract address derived from the communicator's name: an abstract address
// is not a file, and disappears when its socket is closed, which includes its process dying.
// The connected sockets stay open, so later allocations (symmetric buffers) reuse them.
//
// Abstract addresses belong to a network namespace: the ranks must share one (they share a
// host's /dev/shm anyway). Any process of the same user may connect; rank 0 checks the peer's
// uid (SO_PEERCRED), which is what the 0600 mode of a named segment used to guarantee.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardcore {

// A file descriptor, closed when the object goes away.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1);
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// `bytes` of zero-filled shared memory without a name, its pages reserved now (a full /dev/shm
// fails here, not with SIGBUS in a collective). An invalid UniqueFd and *err set on failure.
UniqueFd create_unnamed_memory(size_t bytes, std::string* err);

// The listening socket at the abstract address of communicator `name`; invalid with *err set
// when the address is taken (another communicator connects under that name) or on any error.
UniqueFd listen_at(const std::string& name, std::string* err);
// A socket connected to the abstract address of `name`; invalid with *retry = true when nobody
// listens there (yet), or with *err set on any other error.
UniqueFd connect_to(const std::string& name, bool* retry, std::string* err);
// Accepts one connection (or returns invalid where none is pending or the peer belongs to
// another user).
UniqueFd accept_from(int listener);

// Sends `len` bytes and, where fd >= 0, a descriptor with them. False with *err set on failure.
bool send_message(int sock, const void* msg, size_t len, int fd, std::string* err);
// Receives exactly `len` bytes and the descriptor sent with them (*fd = -1 where none), waiting
// until `deadline_ns` (now_ns() clock) at most, or not at all when `wait` is false. Returns
// 1 on success, 0 when the peer closed the connection or nothing came in time, -1 on an error
// (*err set).
int recv_message(int sock, void* msg, size_t len, UniqueFd* fd, uint64_t deadline_ns, bool wait,
                 std::string* err);

}  // namespace shardcore
