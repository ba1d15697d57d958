// The op kernels for AVX2: bfloat16 rounding in 32-bit integer lanes, 16 values a step.
#include <immintrin.h>

#include "ops/ops_loops.h"

namespace shardcore::ops {
namespace {

struct Avx2 {
  // The rounded float32 bits of 8 values, low 16 bits cleared: u + 0x7fff + lsb, and a NaN
  // replaced by the quiet NaN of its sign.
  static __m256i rounded(__m256i u) {
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));
    const __m256i qnan = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(INT32_MIN)),
                                         _mm256_set1_epi32(0x7fc00000));
    return _mm256_and_si256(_mm256_blendv_epi8(r, qnan, nan),
                            _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  }
  static __m256i load(const float* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }

  static void to_bf16(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m256i a = _mm256_srli_epi32(rounded(load(x + i)), 16);
      const __m256i b = _mm256_srli_epi32(rounded(load(x + i + 8)), 16);
      // packus works within 128-bit halves: a0-3 b0-3 a4-7 b4-7, put back in order.
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), p);
    }
    for (; i < n; ++i) y[i] = loops::bf16_bits<Avx2>(x[i]);
  }
  static void from_bf16(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
      const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), u);
    }
    for (; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(x[i]) << 16;
      std::memcpy(&y[i], &u, 4);
    }
  }
  static void round(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), rounded(load(x + i)));
    for (; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(loops::bf16_bits<Avx2>(x[i])) << 16;
      std::memcpy(&y[i], &u, 4);
    }
  }
};

const Kernels kAvx2 = loops::make_kernels<Avx2>("avx2");

}  // namespace

const Kernels& avx2_kernels() { return kAvx2; }

}  // namespace shardcore::ops
