// AVX-512 register micro-kernels (FMA, and the vdpbf16ps k-pair kernel) shared by the units built
// with AVX-512 flags: gemm_avx512.cpp and gemm_amx.cpp (whose single-row bf16 path streams W
// through the vdpbf16ps kernel). Include only from a translation unit built with
// -mavx512f/bw/vl/dq/bf16; everything has internal linkage (see gemm_driver.h).
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers build undefined vectors by self-initialisation (__Y = __Y), which
// -Wuninitialized reports once those intrinsics are inlined here: a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "gemm/gemm_driver.h"

namespace shardcore::gemm {
namespace {

// Masks for the two 16-lane halves of a partial 32-column panel.
inline __mmask16 half_mask(int n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

inline __m512 load_w(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_w(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Shared prologue/epilogue: accumulators start at bias (first) or zero; C is added at the end.
template <int ROWS>
struct Acc {
  __m512 v0[ROWS], v1[ROWS];
  __mmask16 m0, m1;

  // C is added after the k loop (add_c), not loaded before it: a C tile that has fallen out of
  // cache then arrives (prefetched here) while the FMAs run instead of stalling their start.
  Acc(const float* c, int64_t ldc, int ncols, const float* bias, bool first)
      : m0(half_mask(ncols)), m1(half_mask(ncols - 16)) {
    const __m512 b0 = first && bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 b1 = first && bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      v0[r] = b0, v1[r] = b1;
      if (!first) {
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 31), _MM_HINT_T0);
      }
    }
  }

  void add_c(const float* c, int64_t ldc) {
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      v0[r] = _mm512_add_ps(v0[r], _mm512_maskz_loadu_ps(m0, c + r * ldc));
      v1[r] = _mm512_add_ps(v1[r], _mm512_maskz_loadu_ps(m1, c + r * ldc + 16));
    }
  }

  void store(float* c, int64_t ldc, int ncols) const {
    if (ncols == 32) {
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        _mm512_storeu_ps(c + r * ldc, v0[r]);
        _mm512_storeu_ps(c + r * ldc + 16, v1[r]);
      }
    } else {
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        _mm512_mask_storeu_ps(c + r * ldc, m0, v0[r]);
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, v1[r]);
      }
    }
  }
};

// With few rows a micro-kernel has too few independent accumulator chains to cover the
// multiply-add latency (one row: two chains, one step per 4-6 cycles), which caps the small-M
// weight stream when W is in cache. Such kernels split k over kSplit accumulator sets, summed at
// the end (same result for every thread split; a different, equally bounded, summation order).
// kRanges: each set takes a contiguous quarter (half) of k, so that W arrives as kSplit
// concurrent streams; else the sets take the steps round-robin (one stream). On Zen 4 streams
// made the float32 GEMV with W in L3 (M=1, 1024 x 1024) 1.3x faster (55 -> 73 GB/s, NumPy 72)
// and the bf16 ones (widened, vdpbf16ps) 0.9-0.95x, all equal with W in DRAM (4096 x 4096):
// the float32 kernel takes ranges, the bf16 kernels round-robin.
template <int ROWS>
constexpr int kSplit = ROWS == 1 ? 4 : ROWS <= 3 ? 2 : 1;

// Runs step(v0, v1, k) for every k in [0, ksteps) on one of the kSplit accumulator sets (set 0
// is acc), interleaving the sets step by step.
template <int ROWS, bool kRanges, class Step>
__attribute__((always_inline)) inline void split_k(int64_t ksteps, Acc<ROWS>& acc, Step step) {
  constexpr int S = kSplit<ROWS>;
  if constexpr (S == 1) {
    for (int64_t k = 0; k < ksteps; ++k) step(acc.v0, acc.v1, k);
  } else {
    __m512 e0[S - 1][ROWS], e1[S - 1][ROWS];
#pragma GCC unroll 16
    for (int s = 0; s < S - 1; ++s)
      for (int r = 0; r < ROWS; ++r) e0[s][r] = e1[s][r] = _mm512_setzero_ps();
    const int64_t rounds = ksteps / S;
    for (int64_t i = 0; i < rounds; ++i) {
      step(acc.v0, acc.v1, kRanges ? i : i * S);
#pragma GCC unroll 16
      for (int s = 0; s < S - 1; ++s)
        step(e0[s], e1[s], kRanges ? (s + 1) * rounds + i : i * S + s + 1);
    }
    for (int64_t k = S * rounds; k < ksteps; ++k) step(acc.v0, acc.v1, k);
#pragma GCC unroll 16
    for (int s = 0; s < S - 1; ++s)
      for (int r = 0; r < ROWS; ++r) {
        acc.v0[r] = _mm512_add_ps(acc.v0[r], e0[s][r]);
        acc.v1[r] = _mm512_add_ps(acc.v1[r], e1[s][r]);
      }
  }
}

// Micro-kernel contract (FMA kernels):
//   xp: ksteps x ROWS packed X floats (row r of step k at xp[k * ROWS + r]);
//   wp: ksteps x 32 packed W values (a sliver of one panel, zero-padded past N and K), float or
//       bf16 (widened in registers);
//   c:  ROWS x ncols block of C (row stride ldc), 1 <= ncols <= 32; columns >= ncols are never
//       read or written (masked), so C needs no padding;
//   first: C = bias + X*W (C is not read; bias may be nullptr for zero), else C += X*W (the
//          block's sum is formed in registers, then added to C).
// Inputs need no alignment. Accumulation is float32 (FMA) in k order within the call.
template <class WType>
struct Avx512FmaKernel {
  static constexpr int MR = kTilesAvx512F32.mr, NR = 32, KSTEP = 1, KPAD = 1;
  static constexpr bool kRoundX = sizeof(WType) == 2;
  using XP = float;
  using WT = WType;
  static_assert(kTilesAvx512F32.nr == NR && kTilesAvx512BF16.nr == NR &&
                kTilesAvx512BF16.mr == MR);

  template <int ROWS>
  static void kernel(int64_t ksteps, const float* xp, const WT* wp, float* c, int64_t ldc,
                     int ncols, const float* bias, bool first) {
    Acc<ROWS> acc(c, ldc, ncols, bias, first);
    constexpr bool kRanges = sizeof(WT) == 4;
    split_k<ROWS, kRanges>(ksteps, acc, [&](__m512 (&v0)[ROWS], __m512 (&v1)[ROWS], int64_t k)
                                            __attribute__((always_inline)) {
      const WT* w = wp + k * NR;
      const float* x = xp + k * ROWS;
      const __m512 w0 = load_w(w), w1 = load_w(w + 16);
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        const __m512 xr = _mm512_set1_ps(x[r]);
        v0[r] = _mm512_fmadd_ps(xr, w0, v0[r]);
        v1[r] = _mm512_fmadd_ps(xr, w1, v1[r]);
      }
    });
    if (!first) acc.add_c(c, ldc);
    acc.store(c, ldc, ncols);
  }
};

// Micro-kernel contract (vdpbf16ps kernel): as above, except that one step is a k-pair:
//   xp: ksteps x ROWS uint32, each the bf16 pair (x[r][2s] low half, x[r][2s+1] high half);
//   wp: ksteps x 32 bf16 pairs, (w[2s][j], w[2s+1][j]) for column j, zero-padded;
// vdpbf16ps adds both exact bf16 products to the float32 accumulator (denormal inputs and
// results flushed to zero, round to nearest even), so the result matches the FMA kernels up to
// float32 rounding order.
template <int kPad = 2>
struct Avx512DpKernel {
  static constexpr int MR = kTilesAvx512DpBF16.mr, NR = 32, KSTEP = 2, KPAD = kPad;
  static constexpr bool kRoundX = true;
  using XP = uint32_t;
  using WT = uint16_t;
  static_assert(kTilesAvx512DpBF16.nr == NR && kTilesAvx512DpBF16.kc % 2 == 0);

  template <int ROWS>
  static void kernel(int64_t ksteps, const uint32_t* xp, const uint16_t* wp, float* c,
                     int64_t ldc, int ncols, const float* bias, bool first) {
    Acc<ROWS> acc(c, ldc, ncols, bias, first);
    split_k<ROWS, false>(ksteps, acc, [&](__m512 (&v0)[ROWS], __m512 (&v1)[ROWS], int64_t k)
                                          __attribute__((always_inline)) {
      const uint16_t* w = wp + k * 2 * NR;
      const uint32_t* x = xp + k * ROWS;
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + 32);
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        const __m512bh xr = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[r]));
        v0[r] = _mm512_dpbf16_ps(v0[r], xr, w0);
        v1[r] = _mm512_dpbf16_ps(v1[r], xr, w1);
      }
    });
    if (!first) acc.add_c(c, ldc);
    acc.store(c, ldc, ncols);
  }
};

}  // namespace
}  // namespace shardcore::gemm
