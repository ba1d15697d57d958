#include "comm/copy.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace shardcore {
namespace {

// SHARDCORE_NT_MIN_BYTES, or 0 where it is unset or not a number.
size_t stream_min_override() {
  static const size_t v = [] {
    const char* s = std::getenv("SHARDCORE_NT_MIN_BYTES");
    if (!s || !*s) return size_t(0);
    char* end = nullptr;
    const unsigned long long x = std::strtoull(s, &end, 10);
    if (end == s || *end) return size_t(0);
    return x == 0 ? SIZE_MAX : size_t(x);
  }();
  return v;
}

}  // namespace

bool should_stream(size_t bytes, size_t min_bytes) {
  const size_t forced = stream_min_override();
  return bytes >= (forced ? forced : min_bytes);
}

void copy_bytes(void* dst, const void* src, size_t n, bool streaming) {
#if defined(__x86_64__)
  if (streaming && n >= 256) {
    auto* d = static_cast<char*>(dst);
    auto* s = static_cast<const char*>(src);
    // Head: bring dst to a 16-byte boundary with an ordinary copy.
    const size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
    std::memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    const size_t body = n & ~size_t(63);
    for (size_t i = 0; i < body; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
    }
    _mm_sfence();  // streaming stores are weakly ordered: fence before any flag is published
    std::memcpy(d + body, s + body, n - body);
    return;
  }
#else
  (void)streaming;
#endif
  if (n) std::memcpy(dst, src, n);
}

}  // namespace shardcore
