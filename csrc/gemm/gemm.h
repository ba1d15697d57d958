// Packed GEMM: C[M,N] (+)= X[M,K] * W[K,N] (+ bias[N]) with float32 accumulation.
// This header is ISA-neutral: it is included by the baseline dispatcher and by every ISA unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "gemm/tiles.h"

namespace shardcore::gemm {

enum class DType : int { f32 = 0, bf16 = 1 };

// One ISA's implementation for one weight dtype. W is packed once (pack) into packed_bytes(K, N)
// bytes; run computes rows [row_begin, row_end) x panels [panel_begin, panel_end) of C in float32.
struct RunArgs {
  const void* x;      // [M, K] row-major, dtype x_dtype
  DType x_dtype;
  int64_t M, K, N;
  const void* w;      // packed by the same Impl
  const float* bias;  // [N] or nullptr
  float* c;           // [M, N] row-major float32, row stride ldc
  int64_t ldc;
};

struct Impl {
  const char* name;  // e.g. "avx512bf16"
  DType w_dtype;
  Tiles tiles;
  size_t (*packed_bytes)(int64_t K, int64_t N);
  // Element (k, n) of the source is at src[k * stride_k + n * stride_n] (strides in elements),
  // of type w_dtype; packing zero-pads the last panel and, for k-pair layouts, an odd K.
  void (*pack)(const void* src, int64_t K, int64_t N, int64_t stride_k, int64_t stride_n,
               void* dst);
  // Bytes of 64-byte-aligned scratch (packed X) that run needs for `rows` rows of depth K; the
  // baseline allocates it, so the ISA units allocate nothing.
  size_t (*scratch_bytes)(int64_t rows, int64_t K);
  void (*run)(const RunArgs& a, int64_t row_begin, int64_t row_end, int64_t panel_begin,
              int64_t panel_end, void* scratch);
};

// A kernel family is the set of Impls one CPU feature level provides, plus its FMA peak probe.
struct Family {
  const char* name;
  const Impl* f32;
  const Impl* bf16;
  // Runs `iters` rounds of the family's multiply-add instruction on independent chains (bf16: the
  // bf16 dot-product instruction where the family has one) and returns the flops executed; the
  // baseline times it (see peak_gflops in dispatch.h).
  double (*multiply_add_loop)(DType dtype, int64_t iters);
};

// Families, each defined in its own translation unit. The ISA ones exist only on x86-64 builds.
const Family& generic_family();
// The AMX kernel's loops with the tile instructions modelled in portable C++ (tests; any CPU).
const Family& amx_reference_family();
#if defined(SHARDCORE_X86)
const Family& avx2_family();
const Family& avx512_family();
const Family& avx512bf16_family();
#if defined(SHARDCORE_AMX)
const Family& amx_family();
#endif
#endif

// Helpers shared by the baseline and the ISA units have internal linkage (static), so that a copy
// compiled with ISA flags can never be the one the linker keeps for the baseline.

// Round-to-nearest-even float32 -> bfloat16 bits; NaN stays NaN (quiet).
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace shardcore::gemm
