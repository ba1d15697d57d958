// AVX2 + FMA + F16C reduction kernels for float32, bfloat16 and float16 (8 lanes, fp32
// arithmetic). Built with -mavx2 -mfma -mf16c and called only after CPU detection (reduce.cpp).
// Results are bitwise those of the generic kernels for every non-NaN result: the same fp32
// operations in the same order and the same round-to-nearest-even conversions (F16C's for
// float16, the integer rounding of reduce.h for bfloat16). NaNs propagate through max/min like
// numpy.maximum/minimum, but a NaN's payload and sign may differ between the two (F16C keeps
// float16 payloads; which of two NaN operands survives is the hardware's choice).
#include <immintrin.h>

#include "comm/reduce.h"
#include "comm/reduce_isa.h"

namespace shardcore {
namespace {

constexpr size_t kLanes = 8;

struct F32 {
  static __m256 load(const void* p, size_t i) { return _mm256_loadu_ps(static_cast<const float*>(p) + i); }
  static void store(void* p, size_t i, __m256 v) { _mm256_storeu_ps(static_cast<float*>(p) + i, v); }
};

struct BF16 {
  static __m256 load(const void* p, size_t i) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static void store(void* p, size_t i, __m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    // Pack 8 x 32-bit (values < 2^16) to 8 x 16-bit in order.
    __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i), _mm_packus_epi32(lo, hi));
  }
};

struct F16 {
  static __m256 load(const void* p, size_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
  }
  static void store(void* p, size_t i, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

struct Sum { static __m256 apply(__m256 a, __m256 b) { return _mm256_add_ps(a, b); } };
struct Prod { static __m256 apply(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); } };
// max_ps/min_ps return the second operand when either is NaN; blend a back where a is NaN.
struct Max {
  static __m256 apply(__m256 a, __m256 b) {
    return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
};
struct Min {
  static __m256 apply(__m256 a, __m256 b) {
    return _mm256_blendv_ps(_mm256_min_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
};

using Kernels = reduce_isa::Unit<kLanes, F32, BF16, F16, Sum, Prod, Max, Min>;

const ReduceIsa kAvx2{"avx2", Kernels::reduce2, Kernels::reduce_n};

}  // namespace

const ReduceIsa* reduce_isa_avx2() { return &kAvx2; }

}  // namespace shardcore
