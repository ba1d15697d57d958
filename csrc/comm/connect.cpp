// Connecting the ranks of a communicator, and collective allocations (rendezvous.h says why the
// memory has no name). Rank 0 listens at the communicator's abstract address only while it
// waits for the others; each other rank connects, says who it is, and receives the segment's
// descriptor. The connections stay open: share_memory sends later allocations over them.
#include <errno.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "comm/communicator.h"
#include "comm/symmetric.h"

namespace shardcore {

namespace {

constexpr uint64_t kHelloMagic = 0x4f4c4c4548445348ull;  // "HSDHELLO"
constexpr uint32_t kProtocol = 1;
// A connected rank sends its hello at once; rank 0 drops one that says nothing for this long
// (it is not a rank, or it stopped), and the rank, if it is one, connects again.
constexpr uint64_t kHelloWaitNs = 1'000'000'000;

struct Hello {
  uint64_t magic;
  uint32_t protocol;
  int32_t rank, size, pid;
};

struct Reply {
  int32_t status;  // 0: the segment's descriptor comes with this reply
  char message[252];
};

Reply error_reply(const std::string& msg) {
  Reply r{};
  r.status = 1;
  std::strncpy(r.message, msg.c_str(), sizeof(r.message) - 1);
  return r;
}

// One allocation's message from rank 0 (its descriptor rides along).
struct Share {
  uint64_t seq;
  uint64_t bytes;
};

// One rank's outcome in agree(): 256 bytes, a slot's minimum size.
struct Outcome {
  uint8_t failed;
  char message[255];
};
static_assert(sizeof(Outcome) == 256, "an outcome fits the smallest slot");

}  // namespace

void Communicator::serve_joiners(int memory, uint64_t deadline) {
  std::string err;
  UniqueFd listener = listen_at(name_, &err);
  if (!listener) throw std::runtime_error("segment " + name_ + ": " + err);
  fault_point("listening");
  peer_socks_.clear();
  peer_socks_.resize(size_t(size_));
  int missing = size_ - 1;
  while (missing > 0) {
    const uint64_t now = now_ns();
    if (now >= deadline) {
      std::string who;
      for (int q = 1; q < size_; ++q)
        if (!peer_socks_[size_t(q)]) who += (who.empty() ? "" : ", ") + std::to_string(q);
      char secs[32];
      std::snprintf(secs, sizeof(secs), "%g", double(timeout_ns_) / 1e9);
      throw Timeout("rank 0 waited " + std::string(secs) + " s for rank(s) " + who +
                    " to connect to " + name_);
    }
    if (interrupt_check_) interrupt_check_();
    pollfd pf{listener.get(), POLLIN, 0};
    const int ms = int(std::min<uint64_t>((deadline - now) / 1000000 + 1, 100));
    if (poll(&pf, 1, ms) <= 0) continue;
    UniqueFd c = accept_from(listener.get());
    if (!c) continue;
    Hello h{};
    UniqueFd none;
    if (recv_message(c.get(), &h, sizeof(h), &none, std::min(deadline, now_ns() + kHelloWaitNs),
                     true, &err) != 1 ||
        h.magic != kHelloMagic)
      continue;
    Reply rep{};
    if (h.protocol != kProtocol || h.size != size_)
      rep = error_reply("segment " + name_ + " was created for world size " +
                        std::to_string(size_) + ", this rank expects " + std::to_string(h.size));
    else if (h.rank < 1 || h.rank >= size_)
      rep = error_reply("rank " + std::to_string(h.rank) + " is outside [1, " +
                        std::to_string(size_) + ")");
    else if (peer_socks_[size_t(h.rank)])
      rep = error_reply("rank " + std::to_string(h.rank) + " of " + name_ + " has joined already");
    if (rep.status) {
      send_message(c.get(), &rep, sizeof(rep), -1, &err);
      continue;
    }
    if (!send_message(c.get(), &rep, sizeof(rep), memory, &err)) continue;  // it retries
    peer_socks_[size_t(h.rank)] = std::move(c);
    --missing;
    fault_point("served");
  }
}

UniqueFd Communicator::join(uint64_t deadline) {
  long backoff_ns = 20'000;
  unsigned waits = 0;
  for (;;) {
    bool retry = false;
    std::string err;
    UniqueFd s = connect_to(name_, &retry, &err);
    if (s) {
      const Hello h{kHelloMagic, kProtocol, rank_, size_, int32_t(getpid())};
      if (send_message(s.get(), &h, sizeof(h), -1, &err)) {
        Reply rep{};
        UniqueFd memory;
        const int got = recv_message(s.get(), &rep, sizeof(rep), &memory, deadline, true, &err);
        if (got < 0) throw std::runtime_error("connecting to " + name_ + ": " + err);
        if (got == 1) {
          rep.message[sizeof(rep.message) - 1] = 0;
          if (rep.status != 0) throw std::invalid_argument(rep.message);
          if (!memory) throw std::runtime_error("rank 0 of " + name_ + " sent no segment");
          peer_socks_.clear();
          peer_socks_.push_back(std::move(s));
          fault_point("joined");
          return memory;
        }
      }
      // Rank 0 dropped the connection (it died, or took us for a stranger): connect again.
    } else if (!retry) {
      throw std::runtime_error(err);
    }
    if (now_ns() > deadline)
      throw Timeout("rank " + std::to_string(rank_) + " timed out waiting for rank 0 to create " +
                    name_);
    if (interrupt_check_ && backoff_ns >= 2'000'000 && ++waits % 50 == 0) interrupt_check_();
    timespec ts{0, backoff_ns};
    nanosleep(&ts, nullptr);
    backoff_ns = std::min(backoff_ns * 2, 2'000'000L);
  }
}

void Communicator::agree(const std::string& local_error) {
  Outcome mine{};
  mine.failed = !local_error.empty();
  std::strncpy(mine.message, local_error.c_str(), sizeof(mine.message) - 1);
  std::vector<Outcome> all(static_cast<size_t>(size_));
  all_gather(&mine, all.data(), sizeof(Outcome), DType::kUInt8, 1, Kind::kInternal, Algo::kFlat);
  for (const Outcome& o : all)
    if (o.failed) throw std::runtime_error(std::string(o.message, strnlen(o.message, sizeof(o.message))));
}

UniqueFd Communicator::share_memory(size_t bytes, const std::string& what) {
  check_usable();
  const uint64_t seq = ++shares_;
  std::string err;
  UniqueFd memory;
  if (rank_ == 0) {
    memory = create_unnamed_memory(bytes, &err);
    if (memory) {
      fault_point("buffer-created");
      const Share m{seq, bytes};
      for (int q = 1; q < size_ && err.empty(); ++q)
        if (!send_message(peer_socks_[size_t(q)].get(), &m, sizeof(m), memory.get(), &err))
          err = "cannot send it to rank " + std::to_string(q) + ": " + err;
      fault_point("buffer-sent");
    }
    if (!err.empty()) err = "rank 0 could not allocate " + what + ": " + err;
  }
  agree(err);  // everyone learns whether rank 0 made it
  if (rank_ != 0) {
    // Rank 0 sent the descriptor before it entered the agreement, so it is in the socket by now.
    // Messages of earlier allocations that failed on some rank may come first: skip them.
    for (;;) {
      Share m{};
      const int got = recv_message(peer_socks_[0].get(), &m, sizeof(m), &memory, 0, false, &err);
      if (got != 1) {
        if (got == 0) err = "rank 0's descriptor did not arrive";
        memory.reset();
        break;
      }
      if (m.seq == seq && m.bytes == bytes && memory) break;
      memory.reset();
      if (m.seq >= seq) {
        err = "rank 0 sent another allocation's descriptor";
        break;
      }
    }
    struct stat st;
    if (memory && (fstat(memory.get(), &st) != 0 || uint64_t(st.st_size) != bytes)) {
      err = "rank 0 sent memory of another size";
      memory.reset();
    }
    fault_point("buffer-received");
    if (!err.empty()) err = "rank " + std::to_string(rank_) + " could not receive " + what + ": " + err;
  }
  agree(err);
  return memory;
}

SymmetricPlace Communicator::symmetric_place(const SymmetricSegment* sym, const void* p,
                                             size_t bytes) const {
  SymmetricPlace place;
  if (!sym || sym->owner() != id_ || !base_) return place;
  const char* c = static_cast<const char*>(p);
  const char* lo = sym->mine();
  if (c < lo || bytes > sym->bytes() || size_t(c - lo) > sym->bytes() - bytes) return place;
  place.stride = int64_t(sym->stride());
  place.tag = sym->tag();
  place.offset = c - lo;
  return place;
}

}  // namespace shardcore
