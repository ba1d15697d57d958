// AVX2 + FMA kernels (built with -mavx2 -mfma; called only when the CPU reports both).
#include <immintrin.h>

#include "gemm/gemm_driver.h"

namespace shardcore::gemm {
namespace {

// Lanes [0, n) set, for masked loads and stores of a partial 8-float vector.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline __m256 load_w(const float* p) { return _mm256_loadu_ps(p); }
// bf16 -> f32 is a 16-bit left shift of the widened integer.
inline __m256 load_w(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Micro-kernel contract:
//   xp: ksteps x ROWS packed X floats (row r of step k at xp[k * ROWS + r]);
//   wp: ksteps x 16 packed W values (a sliver of one panel, zero-padded past N and K), float or
//       bf16 (widened in registers);
//   c:  ROWS x ncols block of C (row stride ldc), 1 <= ncols <= 16; columns >= ncols are never
//       read or written (masked), so C needs no padding;
//   first: C = bias + X*W (C is not read; bias may be nullptr for zero), else C += X*W (the
//          block's sum is formed in registers, then added to C).
// Inputs need no alignment. Accumulation is float32 (FMA) in k order within the call.
template <class WType>
struct Avx2Kernel {
  static constexpr int MR = kTilesAvx2F32.mr, NR = 16, KSTEP = 1, KPAD = 1;
  static constexpr bool kRoundX = sizeof(WType) == 2;
  using XP = float;
  using WT = WType;
  static_assert(kTilesAvx2F32.nr == NR && kTilesAvx2BF16.nr == NR && kTilesAvx2BF16.mr == MR);

  template <int ROWS>
  static void kernel(int64_t ksteps, const float* xp, const WT* wp, float* c, int64_t ldc,
                     int ncols, const float* bias, bool first) {
    const __m256i m0 = lane_mask(ncols), m1 = lane_mask(ncols - 8);
    // C is added after the k loop, not loaded before it: a C tile that has fallen out of cache
    // then arrives (prefetched here) while the FMAs run instead of stalling their start.
    __m256 acc0[ROWS], acc1[ROWS];
    const __m256 b0 = first && bias ? _mm256_maskload_ps(bias, m0) : _mm256_setzero_ps();
    const __m256 b1 = first && bias ? _mm256_maskload_ps(bias + 8, m1) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = b0, acc1[r] = b1;
      if (!first) {
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
      }
    }
    auto step = [&](__m256 (&v0)[ROWS], __m256 (&v1)[ROWS]) __attribute__((always_inline)) {
      const __m256 w0 = load_w(wp), w1 = load_w(wp + 8);
      wp += NR;
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        const __m256 x = _mm256_broadcast_ss(xp + r);
        v0[r] = _mm256_fmadd_ps(x, w0, v0[r]);
        v1[r] = _mm256_fmadd_ps(x, w1, v1[r]);
      }
      xp += ROWS;
    };
    // Few rows have too few independent chains for the FMA latency (one row: two chains, a step
    // per 4-5 cycles, short of the weight stream for bf16 on Zen 3): split k round-robin over
    // kSplit accumulator sets, summed at the end (as the AVX-512 kernels do).
    constexpr int S = ROWS == 1 ? 4 : ROWS <= 3 ? 2 : 1;
    if constexpr (S == 1) {
      for (int64_t k = 0; k < ksteps; ++k) step(acc0, acc1);
    } else {
      __m256 e0[S - 1][ROWS], e1[S - 1][ROWS];
#pragma GCC unroll 16
      for (int s = 0; s < S - 1; ++s)
        for (int r = 0; r < ROWS; ++r) e0[s][r] = e1[s][r] = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + S <= ksteps; k += S) {
        step(acc0, acc1);
#pragma GCC unroll 16
        for (int s = 0; s < S - 1; ++s) step(e0[s], e1[s]);
      }
      for (; k < ksteps; ++k) step(acc0, acc1);
#pragma GCC unroll 16
      for (int s = 0; s < S - 1; ++s)
        for (int r = 0; r < ROWS; ++r) {
          acc0[r] = _mm256_add_ps(acc0[r], e0[s][r]);
          acc1[r] = _mm256_add_ps(acc1[r], e1[s][r]);
        }
    }
    if (!first) {
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        acc0[r] = _mm256_add_ps(acc0[r], _mm256_maskload_ps(c + r * ldc, m0));
        acc1[r] = _mm256_add_ps(acc1[r], _mm256_maskload_ps(c + r * ldc + 8, m1));
      }
    }
    if (ncols == NR) {
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        _mm256_storeu_ps(c + r * ldc, acc0[r]);
        _mm256_storeu_ps(c + r * ldc + 8, acc1[r]);
      }
    } else {
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) {
        _mm256_maskstore_ps(c + r * ldc, m0, acc0[r]);
        _mm256_maskstore_ps(c + r * ldc + 8, m1, acc1[r]);
      }
    }
  }
};

constexpr Impl kF32 =
    driver::ImplOf<Avx2Kernel<float>, kTilesAvx2F32>::make("avx2", DType::f32);
constexpr Impl kBF16 =
    driver::ImplOf<Avx2Kernel<uint16_t>, kTilesAvx2BF16>::make("avx2", DType::bf16);

// 12 independent FMA chains (latency 4 x 2 pipes needs >= 8) on 8 lanes.
double multiply_add_loop(DType, int64_t iters) {
  constexpr int kChains = 12;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1.0f + 0.01f * static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  volatile float sink = _mm256_cvtss_f32(sum);
  (void)sink;
  return 2.0 * 8 * kChains * static_cast<double>(iters);
}

constexpr Family kFamily{"avx2", &kF32, &kBF16, &multiply_add_loop};

}  // namespace

const Family& avx2_family() { return kFamily; }

}  // namespace shardcore::gemm
