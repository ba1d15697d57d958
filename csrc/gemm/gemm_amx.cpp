// AMX-BF16 kernels: bf16 weights on tile registers (tdpbf16ps), float32 on the AVX-512 FMA
// kernel. Built with the AVX-512 flags plus -mamx-tile -mamx-bf16; the dispatcher offers the amx
// family only where the CPU reports AMX-TILE, AMX-BF16, AVX-512F/BW/VL/DQ and AVX512_BF16, the OS
// enables the tile state, and Linux granted this process tile data (arch_prctl, dispatch.cpp).
#include "gemm/avx512_microkernels.h"

// GCC's tileloadd and ldtilecfg asm statements do not tell the compiler which memory they read
// (ldtilecfg names 8 of its 64 bytes, tileloadd none), so a compiler barrier before each keeps
// the stores that fill that memory (packed X, the stage, the config) ahead of them.
#define SC_BARRIER() __asm__ volatile("" ::: "memory")
#define SC_TILE_CONFIG(cfg) \
  do {                      \
    SC_BARRIER();           \
    _tile_loadconfig(cfg);  \
  } while (0)
#define SC_TILE_ZERO(t) _tile_zero(t)
#define SC_TILE_LOAD(t, p, stride) \
  do {                             \
    SC_BARRIER();                  \
    _tile_loadd(t, p, stride);     \
  } while (0)
#define SC_TILE_STORE(t, p, stride) _tile_stored(t, p, stride)
#define SC_TILE_DP(c, a, b) _tile_dpbf16ps(c, a, b)
#define SC_TILE_RELEASE() _tile_release()
namespace shardcore::gemm {
namespace {
// vcvtneps2bf16, 16 at a time: the scalar rounding costs as much as a fifth of the tile multiplies
// at large M. Nearest even like f32_to_bf16; subnormal inputs become zero, which tdpbf16ps would
// make of them anyway, so the products are the same.
inline void round_to_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}
}  // namespace
}  // namespace shardcore::gemm
#define SC_ROUND_TO_BF16(src, n, dst) round_to_bf16(src, n, dst)
#include "gemm/amx_loops.h"

namespace shardcore::gemm {
namespace {

using RowKernel = Avx512DpKernel<32>;  // one row: vdpbf16ps on the AMX panels (K padded to 32)
static_assert(RowKernel::NR == amx::NR && kTilesAmxRowBF16.nr == amx::NR);

// Rows of the whole product (a.M), not of this thread's share, pick the path, so that results
// do not depend on how threads split the rows.
void run_bf16(const RunArgs& a, int64_t rb, int64_t re, int64_t pb, int64_t pe, void* scratch) {
  if (a.M < kAmxMinRows) {
    driver::run<RowKernel>(a, rb, re, pb, pe, scratch, kTilesAmxRowBF16);
  } else {
    amx::run(a, rb, re, pb, pe, scratch, amx::tiles());
  }
}

size_t scratch_bf16(int64_t rows, int64_t K) {
  const size_t row = driver::scratch_bytes<RowKernel>(rows, K, kTilesAmxRowBF16);
  const size_t tiles = amx::scratch_bytes(rows, K, amx::tiles());
  return row > tiles ? row : tiles;
}

constexpr Impl kBF16{"amx",
                     DType::bf16,
                     kTilesAmxBF16,
                     &driver::packed_bytes<RowKernel>,
                     &driver::pack_w<RowKernel>,
                     &scratch_bf16,
                     &run_bf16};

// bf16: four independent tdpbf16ps chains (the micro-kernel's 2 x 2 C tiles) on tiles loaded
// once; float32: the AVX-512 FMA loop.
double multiply_add_loop(DType dtype, int64_t iters) {
  if (dtype != DType::bf16) return avx512_family().multiply_add_loop(dtype, iters);
  alignas(64) uint16_t a[16 * 32], b[16 * 32];
  alignas(64) float c[16 * 16];
  for (int i = 0; i < 16 * 32; ++i) a[i] = 0x3f80, b[i] = 0x2f80;  // 1.0 and 2**-32: no overflow
  const amx::TileConfig cfg = amx::config_for(16);
  SC_TILE_CONFIG(&cfg);
  SC_TILE_ZERO(0);
  SC_TILE_ZERO(1);
  SC_TILE_ZERO(2);
  SC_TILE_ZERO(3);
  SC_TILE_LOAD(4, a, 64);
  SC_TILE_LOAD(5, a, 64);
  SC_TILE_LOAD(6, b, 64);
  SC_TILE_LOAD(7, b, 64);
  for (int64_t it = 0; it < iters; ++it) {
    SC_TILE_DP(0, 4, 6);
    SC_TILE_DP(1, 4, 7);
    SC_TILE_DP(2, 5, 6);
    SC_TILE_DP(3, 5, 7);
  }
  SC_TILE_STORE(0, c, 64);
  SC_TILE_RELEASE();
  volatile float sink = c[0];
  (void)sink;
  // One tdpbf16ps: 16 x 16 outputs x 32 multiply-adds = 16384 flops.
  return 4.0 * 16384.0 * static_cast<double>(iters);
}

}  // namespace

// Built on first use: the float32 Impl is the AVX-512 unit's.
const Family& amx_family() {
  static const Family family{"amx", avx512_family().f32, &kBF16, &multiply_add_loop};
  return family;
}

}  // namespace shardcore::gemm
