// Element-wise reduction kernels: dst[i] = a[i] (op) b[i]. dst may alias a or b.
// bfloat16 and float16 are widened to float32, combined, and rounded back to nearest even once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "comm/dtypes.h"

namespace shardcore {

void reduce(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op);

// dst[i] = srcs[0][i] (op) srcs[1][i] (op) ... in that order, accumulated in the element type,
// except bfloat16 and float16, which are accumulated in float32 and rounded once. dst may alias
// any source exactly (same address), not partially.
void reduce_many(void* dst, const void* const* srcs, int nsrc, size_t count, DType dt, RedOp op);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t(bits >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// The portable kernels; the dispatching reduce / reduce_many above use an ISA-specific unit
// (reduce_avx512.cpp, reduce_avx2.cpp) for float32, bfloat16 and float16 where the CPU has one,
// and these for everything else and for tails. SHARDCORE_KERNEL (the variable the GEMM kernels
// read too) caps the choice: "generic", "avx2", or "avx512"/"avx512bf16".
void reduce_generic(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op);
void reduce_many_generic(void* dst, const void* const* srcs, int nsrc, size_t count, DType dt,
                         RedOp op);
// Name of the reduction kernels in use ("avx512", "avx2" or "generic").
const char* reduce_kernel_name();

// An ISA unit's entry points: they handle float32/bfloat16/float16 and return the number of
// leading elements done (a multiple of the vector width); the caller finishes the rest.
struct ReduceIsa {
  const char* name;
  size_t (*reduce)(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op);
  size_t (*reduce_many)(void* dst, const void* const* srcs, int nsrc, size_t count, DType dt,
                        RedOp op);
};
const ReduceIsa* reduce_isa_avx2();    // nullptr where not built
const ReduceIsa* reduce_isa_avx512();  // nullptr where not built

}  // namespace shardcore
