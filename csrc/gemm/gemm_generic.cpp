// Portable fallback: plain C++ (no intrinsics), builds on any target including aarch64. The
// compiler may vectorise the fixed-size loops with whatever the baseline ISA offers.
#include "gemm/gemm_driver.h"

namespace shardcore::gemm {
namespace {

template <class W>
inline float widen(W v) {
  if constexpr (sizeof(W) == 2) {
    return bf16_to_f32(v);
  } else {
    return v;
  }
}

// Micro-kernel contract (all kernels in csrc/gemm follow it):
//   xp: ksteps x ROWS packed X values (row r of step k at xp[k * ROWS + r]);
//   wp: ksteps x NR packed W values (a sliver of one panel, zero-padded past N and K);
//   c:  ROWS x ncols block of C (row stride ldc), 1 <= ncols <= NR; columns >= ncols are never
//       read or written, so C needs no padding;
//   first: C = bias + X*W (C is not read; bias may be nullptr for zero), else C += X*W.
// Inputs need no alignment. Accumulation is float32 in k order within the call.
template <class WType, int kMR, int kNR>
struct GenericKernel {
  static constexpr int MR = kMR, NR = kNR, KSTEP = 1, KPAD = 1;
  static constexpr bool kRoundX = sizeof(WType) == 2;
  using XP = float;
  using WT = WType;

  template <int ROWS>
  static void kernel(int64_t ksteps, const float* xp, const WT* wp, float* c, int64_t ldc,
                     int ncols, const float* bias, bool first) {
    float acc[ROWS][NR];
    for (int r = 0; r < ROWS; ++r)
      for (int j = 0; j < NR; ++j)
        acc[r][j] = first ? (bias && j < ncols ? bias[j] : 0.0f) : (j < ncols ? c[r * ldc + j] : 0.0f);
    for (int64_t k = 0; k < ksteps; ++k) {
      float w[NR];
      for (int j = 0; j < NR; ++j) w[j] = widen(wp[k * NR + j]);
      for (int r = 0; r < ROWS; ++r) {
        const float x = xp[k * ROWS + r];
        for (int j = 0; j < NR; ++j) acc[r][j] += x * w[j];
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int j = 0; j < ncols; ++j) c[r * ldc + j] = acc[r][j];
  }
};

using F32Kernel = GenericKernel<float, kTilesGenericF32.mr, kTilesGenericF32.nr>;
using BF16Kernel = GenericKernel<uint16_t, kTilesGenericBF16.mr, kTilesGenericBF16.nr>;

constexpr Impl kF32 = driver::ImplOf<F32Kernel, kTilesGenericF32>::make("generic", DType::f32);
constexpr Impl kBF16 =
    driver::ImplOf<BF16Kernel, kTilesGenericBF16>::make("generic", DType::bf16);

// Eight independent multiply-add chains; what the compiler makes of them is the fallback's peak.
double multiply_add_loop(DType, int64_t iters) {
  constexpr int kChains = 8;
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = 1.0f + 0.1f * static_cast<float>(i);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  volatile float sink = 0;
  for (float v : acc) sink = sink + v;
  return 2.0 * kChains * static_cast<double>(iters);
}

constexpr Family kFamily{"generic", &kF32, &kBF16, &multiply_add_loop};

}  // namespace

const Family& generic_family() { return kFamily; }

}  // namespace shardcore::gemm
