// The op kernels for AVX-512: bfloat16 rounding in 32-bit integer lanes (avx512), or with
// vcvtneps2bf16 (avx512bf16). Tails use masked loads and stores, so no scalar loop.
#include <immintrin.h>

// GCC 12's AVX-512 headers start some intrinsics from a deliberately undefined vector
// (_mm512_undefined_epi32), which -Wmaybe-uninitialized reports once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "ops/ops_loops.h"

namespace shardcore::ops {
namespace {

__mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff)
                    : static_cast<__mmask16>((1u << left) - 1u);
}

// The rounded bfloat16 bits of 16 values in the low halves of 32-bit lanes (upper halves zero):
// (u + 0x7fff + lsb) >> 16, and a NaN replaced by the quiet NaN of its sign.
__m512i rounded_bits(__m512i u) {
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
  const __m512i qnan = _mm512_or_si512(_mm512_and_si512(u, _mm512_set1_epi32(INT32_MIN)),
                                       _mm512_set1_epi32(0x7fc00000));
  return _mm512_srli_epi32(_mm512_mask_mov_epi32(r, nan, qnan), 16);
}

struct IntegerRounding {
  static __m256i bf16(__m512i u) { return _mm512_cvtepi32_epi16(rounded_bits(u)); }
};

// vcvtneps2bf16 rounds to nearest even but treats subnormal inputs as zero and keeps a NaN's
// payload; ml_dtypes does neither, so a vector with a subnormal or NaN lane (rare: the check is
// two compares) takes the integer rounding for those lanes.
struct Bf16Instruction {
  static __m256i bf16(__m512i u) {
    __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_castsi512_ps(u)));
    const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    const __mmask16 sub = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(mag, _mm512_set1_epi32(1)),
                                                  _mm512_set1_epi32(0x007fffff));
    const __mmask16 special = static_cast<__mmask16>(nan | sub);
    if (special) h = _mm256_mask_mov_epi16(h, special, IntegerRounding::bf16(u));
    return h;
  }
};

template <typename Rounding>
struct Avx512 {
  static void to_bf16(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      _mm256_mask_storeu_epi16(y + i, m, Rounding::bf16(_mm512_maskz_loadu_epi32(m, x + i)));
    }
  }
  static void from_bf16(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      const __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + i)), 16);
      _mm512_mask_storeu_epi32(y + i, m, u);
    }
  }
  static void round(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      const __m256i h = Rounding::bf16(_mm512_maskz_loadu_epi32(m, x + i));
      _mm512_mask_storeu_epi32(y + i, m, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
};

const Kernels kAvx512 = loops::make_kernels<Avx512<IntegerRounding>>("avx512");
const Kernels kAvx512Bf16 = loops::make_kernels<Avx512<Bf16Instruction>>("avx512bf16");

}  // namespace

const Kernels& avx512_kernels() { return kAvx512; }
const Kernels& avx512bf16_kernels() { return kAvx512Bf16; }

}  // namespace shardcore::ops
