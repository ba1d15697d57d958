// AVX-512F kernels, and the AVX512_BF16 (vdpbf16ps) bf16 kernel. Built with -mavx512f/bw/vl/dq/bf16;
// the dispatcher calls the avx512 family only when the CPU reports AVX-512F/BW/VL/DQ, and the
// avx512bf16 family only when it also reports AVX512_BF16.
#include "gemm/avx512_microkernels.h"

namespace shardcore::gemm {
namespace {

constexpr Impl kF32 =
    driver::ImplOf<Avx512FmaKernel<float>, kTilesAvx512F32>::make("avx512", DType::f32);
constexpr Impl kBF16 =
    driver::ImplOf<Avx512FmaKernel<uint16_t>, kTilesAvx512BF16>::make("avx512", DType::bf16);
constexpr Impl kDpBF16 =
    driver::ImplOf<Avx512DpKernel<>, kTilesAvx512DpBF16>::make("avx512bf16", DType::bf16);

// 24 independent chains of the kernel's instruction (as many as the micro-kernel keeps).
template <bool kDot>
double loop_of(int64_t iters) {
  constexpr int kChains = 24;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1.0f + 0.01f * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  const __m512bh ha = (__m512bh)_mm512_set1_epi32(0x3f803f80), hb = (__m512bh)_mm512_set1_epi32(0x33d633d6);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) {
      if constexpr (kDot) {
        acc[i] = _mm512_dpbf16_ps(acc[i], ha, hb);
      } else {
        acc[i] = _mm512_fmadd_ps(acc[i], a, b);
      }
    }
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);
  (void)sink;
  // An FMA is 2 flops per lane; a bf16 dot-product step is 2 multiply-adds per lane.
  return (kDot ? 4.0 : 2.0) * 16 * kChains * static_cast<double>(iters);
}

double loop_fma(DType, int64_t iters) { return loop_of<false>(iters); }
double loop_dot(DType d, int64_t iters) {
  return d == DType::bf16 ? loop_of<true>(iters) : loop_of<false>(iters);
}

constexpr Family kFamily{"avx512", &kF32, &kBF16, &loop_fma};
constexpr Family kBf16Family{"avx512bf16", &kF32, &kDpBF16, &loop_dot};

}  // namespace

const Family& avx512_family() { return kFamily; }
const Family& avx512bf16_family() { return kBf16Family; }

}  // namespace shardcore::gemm
