// Cross-process synchronisation words in shared memory: a monotonically increasing 64-bit
// counter with a waiter count, on its own pair of cache lines, woken through the futex of its
// low 32 bits (any increment below 2^32 changes them, so a sleeper never misses an update).
#pragma once
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>

namespace shardcore {

// 128 bytes, not 64: adjacent-line prefetchers pull cache lines in pairs, so two counters
// written by different ranks must be 128 bytes apart to avoid false sharing.
constexpr size_t kLineBytes = 128;

// The synchronisation word itself; `Counter` pads it to a line pair of its own, an entry line
// (communicator.cpp) packs a descriptor and a small payload after it.
struct SyncWord {
  std::atomic<uint64_t> value;
  std::atomic<uint32_t> waiters;
  uint32_t reserved;
};

struct alignas(kLineBytes) Counter : SyncWord {};
static_assert(sizeof(Counter) == kLineBytes, "Counter must fill exactly one line pair");

inline uint32_t* futex_word(std::atomic<uint64_t>* v) {
  // Little-endian: the low half of the 64-bit counter is at its address.
  return reinterpret_cast<uint32_t*>(v);
}

inline void futex_wait(std::atomic<uint64_t>* v, uint32_t expected, long timeout_ns) {
  timespec ts{timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  // Not FUTEX_PRIVATE: the word is shared between processes.
  syscall(SYS_futex, futex_word(v), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

inline void futex_wake_all(std::atomic<uint64_t>* v) {
  syscall(SYS_futex, futex_word(v), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// Publishes a new value; wakes sleepers only when there are any (a syscall costs ~1 us).
inline void counter_publish(SyncWord& c, uint64_t value) {
  c.value.store(value, std::memory_order_seq_cst);
  if (c.waiters.load(std::memory_order_seq_cst) != 0) futex_wake_all(&c.value);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

}  // namespace shardcore
