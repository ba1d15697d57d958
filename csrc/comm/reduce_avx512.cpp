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

template <typename T, typename Op>
size_t two(void* dst, const void* a, const void* b, size_t n) {
  size_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m512 x0 = Op::apply(T::load(a, i), T::load(b, i));
    const __m512 x1 = Op::apply(T::load(a, i + kLanes), T::load(b, i + kLanes));
    T::store(dst, i, x0);
    T::store(dst, i + kLanes, x1);
  }
  for (; i + kLanes <= n; i += kLanes) T::store(dst, i, Op::apply(T::load(a, i), T::load(b, i)));
  return i;
}

template <typename T, typename Op>
size_t many(void* dst, const void* const* srcs, int m, size_t n) {
  size_t i = 0;
  // Four vectors at a time keep four independent chains in flight per source.
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    __m512 a0 = T::load(srcs[0], i), a1 = T::load(srcs[0], i + kLanes);
    __m512 a2 = T::load(srcs[0], i + 2 * kLanes), a3 = T::load(srcs[0], i + 3 * kLanes);
    for (int s = 1; s < m; ++s) {
      a0 = Op::apply(a0, T::load(srcs[s], i));
      a1 = Op::apply(a1, T::load(srcs[s], i + kLanes));
      a2 = Op::apply(a2, T::load(srcs[s], i + 2 * kLanes));
      a3 = Op::apply(a3, T::load(srcs[s], i + 3 * kLanes));
    }
    T::store(dst, i, a0);
    T::store(dst, i + kLanes, a1);
    T::store(dst, i + 2 * kLanes, a2);
    T::store(dst, i + 3 * kLanes, a3);
  }
  for (; i + kLanes <= n; i += kLanes) {
    __m512 a = T::load(srcs[0], i);
    for (int s = 1; s < m; ++s) a = Op::apply(a, T::load(srcs[s], i));
    T::store(dst, i, a);
  }
  return i;
}

template <template <typename, typename> class F, typename... Args>
size_t by_type_op(DType dt, RedOp op, Args... args) {
  auto with_op = [&](auto type_tag) -> size_t {
    using T = decltype(type_tag);
    switch (op) {
      case RedOp::kSum: return F<T, Sum>::run(args...);
      case RedOp::kProd: return F<T, Prod>::run(args...);
      case RedOp::kMax: return F<T, Max>::run(args...);
      case RedOp::kMin: return F<T, Min>::run(args...);
      default: return 0;
    }
  };
  switch (dt) {
    case DType::kFloat32: return with_op(F32{});
    case DType::kBFloat16: return with_op(BF16{});
    case DType::kFloat16: return with_op(F16{});
    default: return 0;
  }
}

template <typename T, typename Op>
struct TwoRun {
  static size_t run(void* d, const void* a, const void* b, size_t n) { return two<T, Op>(d, a, b, n); }
};
template <typename T, typename Op>
struct ManyRun {
  static size_t run(void* d, const void* const* s, int m, size_t n) { return many<T, Op>(d, s, m, n); }
};

size_t reduce2(void* dst, const void* a, const void* b, size_t n, DType dt, RedOp op) {
  return by_type_op<TwoRun>(dt, op, dst, a, b, n);
}
size_t reduce_n(void* dst, const void* const* srcs, int m, size_t n, DType dt, RedOp op) {
  return by_type_op<ManyRun>(dt, op, dst, srcs, m, n);
}

const ReduceIsa kAvx512{"avx512", reduce2, reduce_n};

}  // namespace

const ReduceIsa* reduce_isa_avx512() { return &kAvx512; }

}  // namespace shardcore
