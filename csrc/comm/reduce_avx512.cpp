// AVX-512 (F + BW) reduction kernels for float32, bfloat16 and float16: 16 lanes, fp32
// arithmetic. Built with the AVX-512 flags and called only after CPU detection (reduce.cpp).
// Bitwise the same results as the AVX2 and generic kernels for every non-NaN result: the same
// fp32 operations in the same order, the same round-to-nearest-even conversions (the integer
// rounding of reduce.h for bfloat16 — not VCVTNEPS2BF16, which flushes denormal inputs to zero —
// and the hardware's for float16). NaNs propagate through max/min as in the AVX2 kernels.
// GCC 12's AVX-512 headers build some conversions from _mm256_undefined_si256(), which its
// -Wmaybe-uninitialized reports inside the header; the value is fully overwritten.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "comm/reduce.h"
#include "comm/reduce_isa.h"

namespace shardcore {
namespace {

constexpr size_t kLanes = 16;

struct F32 {
  static __m512 load(const void* p, size_t i) { return _mm512_loadu_ps(static_cast<const float*>(p) + i); }
  static void store(void* p, size_t i, __m512 v) { _mm512_storeu_ps(static_cast<float*>(p) + i, v); }
};

struct BF16 {
  static __m512 load(const void* p, size_t i) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store(void* p, size_t i, __m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i r = _mm512_mask_blend_epi32(nan, rounded, quiet);
    // 16 x 32-bit values below 2^16 -> 16 x 16-bit, in order.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), _mm512_cvtepi32_epi16(r));
  }
};

struct F16 {
  static __m512 load(const void* p, size_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
  }
  static void store(void* p, size_t i, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

struct Sum { static __m512 apply(__m512 a, __m512 b) { return _mm512_add_ps(a, b); } };
struct Prod { static __m512 apply(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); } };
// max_ps/min_ps return the second operand when either is NaN; keep a where a is NaN.
struct Max {
  static __m512 apply(__m512 a, __m512 b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_max_ps(a, b), a);
  }
};
struct Min {
  static __m512 apply(__m512 a, __m512 b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_min_ps(a, b), a);
  }
};

using Kernels = reduce_isa::Unit<kLanes, F32, BF16, F16, Sum, Prod, Max, Min>;

const ReduceIsa kAvx512{"avx512", Kernels::reduce2, Kernels::reduce_n};

}  // namespace

const ReduceIsa* reduce_isa_avx512() { return &kAvx512; }

}  // namespace shardcore
