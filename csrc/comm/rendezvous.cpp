#include "comm/rendezvous.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "comm/shm_sync.h"

namespace shardcore {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

std::string errno_text(const char* what, int e) { return std::string(what) + ": " + strerror(e); }

// The abstract address of a communicator: "\0shardcore:<name>", or, for a name too long for
// sun_path (108 bytes, nested splits grow names), two 64-bit FNV-1a hashes of it.
socklen_t abstract_address(const std::string& name, sockaddr_un* a) {
  std::memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  std::string path = "shardcore:" + name;
  if (path.size() + 1 > sizeof(a->sun_path)) {
    uint64_t h1 = 1469598103934665603ull, h2 = 1099511628211ull * 31;
    for (unsigned char ch : name) {
      h1 = (h1 ^ ch) * 1099511628211ull;
      h2 = (h2 ^ ch) * 1099511628211ull + 0x9e3779b97f4a7c15ull;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "shardcore:#%016llx%016llx", (unsigned long long)h1,
                  (unsigned long long)h2);
    path = buf;
  }
  std::memcpy(a->sun_path + 1, path.data(), path.size());  // sun_path[0] = 0: abstract
  return socklen_t(offsetof(sockaddr_un, sun_path) + 1 + path.size());
}

bool same_user(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  return getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == geteuid();
}

}  // namespace

UniqueFd create_unnamed_memory(size_t bytes, std::string* err) {
  // O_TMPFILE in /dev/shm: the file is never linked into the directory, and its pages count
  // against /dev/shm's size like a named segment's did.
  UniqueFd fd(open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  const char* where = "/dev/shm";
  if (!fd) {
    const int e = errno;
    if (e != EOPNOTSUPP && e != EISDIR && e != ENOENT && e != EINVAL) {
      *err = errno_text("cannot create shared memory in /dev/shm", e);
      return UniqueFd();
    }
    // No tmpfs at /dev/shm: the kernel's internal one, which has no size limit of its own, so
    // ours is tmpfs's default (half the RAM) instead of an out-of-memory kill while reserving.
    struct sysinfo si;
    if (sysinfo(&si) == 0 && bytes > uint64_t(si.totalram) * si.mem_unit / 2) {
      *err = "not enough memory for " + std::to_string(bytes) + " bytes of shared memory (more "
             "than half the RAM, and /dev/shm is not a tmpfs)";
      return UniqueFd();
    }
    fd.reset(memfd_create("shardcore", MFD_CLOEXEC));
    where = "memfd";
    if (!fd) {
      *err = errno_text("cannot create shared memory (memfd_create)", errno);
      return UniqueFd();
    }
  }
  if (ftruncate(fd.get(), off_t(bytes)) != 0) {
    *err = "cannot size " + std::to_string(bytes) + " bytes of shared memory in " + where + ": " +
           strerror(errno);
    return UniqueFd();
  }
  const int e = bytes ? posix_fallocate(fd.get(), 0, off_t(bytes)) : 0;
  if (e != 0 && e != EOPNOTSUPP && e != EINVAL) {
    *err = "not enough shared memory for " + std::to_string(bytes) + " bytes in " + where + ": " +
           strerror(e);
    return UniqueFd();
  }
  return fd;
}

UniqueFd listen_at(const std::string& name, std::string* err) {
  sockaddr_un a;
  const socklen_t len = abstract_address(name, &a);
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s) {
    *err = errno_text("socket", errno);
    return UniqueFd();
  }
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&a), len) != 0) {
    const int e = errno;
    *err = e == EADDRINUSE ? "the name " + name + " is in use: another communicator is connecting "
                             "under it"
                           : errno_text(("cannot listen for the ranks of " + name).c_str(), e);
    return UniqueFd();
  }
  if (listen(s.get(), SOMAXCONN) != 0) {
    *err = errno_text("listen", errno);
    return UniqueFd();
  }
  return s;
}

UniqueFd connect_to(const std::string& name, bool* retry, std::string* err) {
  *retry = false;
  sockaddr_un a;
  const socklen_t len = abstract_address(name, &a);
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) {
    *err = errno_text("socket", errno);
    return UniqueFd();
  }
  if (connect(s.get(), reinterpret_cast<sockaddr*>(&a), len) != 0) {
    const int e = errno;
    // Nobody listens yet (ECONNREFUSED), or the backlog is full (EAGAIN).
    if (e == ECONNREFUSED || e == ENOENT || e == EAGAIN || e == EINTR) *retry = true;
    else *err = errno_text(("cannot connect to rank 0 of " + name).c_str(), e);
    return UniqueFd();
  }
  if (!same_user(s.get())) {
    *err = "the process listening for " + name + " belongs to another user";
    return UniqueFd();
  }
  return s;
}

UniqueFd accept_from(int listener) {
  UniqueFd c(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (c && !same_user(c.get())) c.reset();
  return c;
}

bool send_message(int sock, const void* msg, size_t len, int fd, std::string* err) {
  iovec iov{const_cast<void*>(msg), len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    std::memset(control, 0, sizeof(control));
    m.msg_control = control;
    m.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  // The messages are a few hundred bytes: they fit the socket's buffer whole, so a send either
  // queues all of it at once or fails.
  for (;;) {
    const ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
    if (n == ssize_t(len)) return true;
    if (n < 0 && errno == EINTR) continue;
    *err = n < 0 ? errno_text("sendmsg", errno) : std::string("sendmsg: short write");
    return false;
  }
}

int recv_message(int sock, void* msg, size_t len, UniqueFd* fd, uint64_t deadline_ns, bool wait,
                 std::string* err) {
  fd->reset();
  size_t got = 0;
  char* p = static_cast<char*>(msg);
  while (got < len) {
    if (wait) {
      const uint64_t now = now_ns();
      if (now >= deadline_ns) return 0;
      pollfd pf{sock, POLLIN, 0};
      const int ms = int(std::min<uint64_t>((deadline_ns - now) / 1000000 + 1, 100));
      const int r = poll(&pf, 1, ms);
      if (r < 0 && errno != EINTR) {
        *err = errno_text("poll", errno);
        return -1;
      }
      if (r <= 0) continue;
    }
    iovec iov{p + got, len - got};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    m.msg_control = control;
    m.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      const bool again = errno == EAGAIN || errno == EWOULDBLOCK;
      // Without waiting, nothing there is "nothing came"; the rest of a message that has begun
      // to arrive is on its way (one sendmsg wrote it whole).
      if (errno == EINTR || (again && (wait || got > 0))) continue;
      if (again) return 0;
      if (errno == ECONNRESET) return 0;
      *err = errno_text("recvmsg", errno);
      return -1;
    }
    if (n == 0) return 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < nfd; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (i == 0 && !*fd) fd->reset(f);
        else ::close(f);
      }
    }
    got += size_t(n);
  }
  return 1;
}

}  // namespace shardcore
