// The decoder's per-token elementwise numerics (bfloat16 conversion, RMSNorm, SwiGLU, RoPE) as
// one table of kernels per ISA (ops_generic.cpp, ops_avx2.cpp, ops_avx512.cpp), chosen once at
// import by CPU detection (dispatch.cpp), like the GEMM families.
//
// Every kernel works on float32 inputs, computes in float32 and writes one of three element
// kinds (Store). bfloat16 rounding is round-to-nearest-even with subnormals kept and every NaN
// written as the quiet NaN 0x7fc0 with its sign: bitwise what ml_dtypes' float32 -> bfloat16
// cast gives, on every ISA. Rows are independent: a row's result does not depend on how many
// rows a call has or on the other rows (the runtime relies on this to give a sequence the same
// values alone and batched). Pointers are trusted (python/shardcore/fused.py checks shapes,
// dtypes and sizes); inputs and outputs of one call either coincide exactly or do not overlap.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardcore::ops {

enum class Store : int {
  f32 = 0,       // float32
  bf16 = 1,      // bfloat16 bits (uint16)
  f32_bf16 = 2,  // float32 holding the bfloat16-rounded value (the runtime's bf16 activations)
};

struct Kernels {
  const char* name;

  // y[i] = bfloat16(x[i]) for i < n (bits as uint16).
  void (*f32_to_bf16)(const float* x, uint16_t* y, int64_t n);
  // y[i] = float32(x[i]) for i < n (exact: the bits shifted up, NaN payloads kept).
  void (*bf16_to_f32)(const uint16_t* x, float* y, int64_t n);
  // y[i] = float32(bfloat16(x[i])) for i < n; y may be x.
  void (*round_bf16)(const float* x, float* y, int64_t n);

  // For each of `rows` rows of n elements (row r at x + r*x_stride, out at out + r*out_stride
  // elements of the Store kind): out = (x * (1 / sqrt(mean(x^2) + eps))) * w, the sum of squares
  // accumulated in float32 (16 partial sums, added in a fixed order). out may be x when store is
  // f32 or f32_bf16 and the strides are equal.
  void (*rms_norm)(const float* x, int64_t rows, int64_t n, int64_t x_stride, const float* w,
                   float eps, void* out, int64_t out_stride, Store store);

  // For each row: out[j] = silu(g[j]) * u[j], j < n, with g = gu + r*gu_stride and u = g + n
  // (gate and up side by side, as the fused gate_up GEMM writes them); silu(x) = x / (1 + e^-x),
  // e^-x within about 2 ulp (ops_loops.h: exp_f32).
  void (*swiglu)(const float* gu, int64_t rows, int64_t n, int64_t gu_stride, void* out,
                 int64_t out_stride, Store store);

  // In place on each row r of x (at x + r*row_stride): heads 0..q_heads+k_heads-1 of d elements
  // each (d even). A head is first RMS-normed with q_norm (the first q_heads) or k_norm (the
  // rest) where that weight is not null (rounded to bfloat16 if round_bf16), then rotated by
  // row r's tables cos, sin [rows, d] in the rotate_half convention:
  //   y[i] = x[i]*cos[i] - x[i+d/2]*sin[i],  y[i+d/2] = x[i+d/2]*cos[i+d/2] + x[i]*sin[i+d/2]
  // and rounded to bfloat16 values if round_bf16.
  void (*norm_rope)(float* x, int64_t rows, int64_t row_stride, int64_t d, int64_t q_heads,
                    int64_t k_heads, const float* q_norm, const float* k_norm, float eps,
                    const float* cos, const float* sin, bool round_bf16);

  // Causal grouped-query attention over a KV cache, softmax in float32. Rows n < n_seq hold t
  // new tokens each: token i of row n is query row n*t + i of q (q_heads heads of d at
  // q + row*q_stride + h*d), at position starts[n] + i, and sees cache positions 0..that
  // position of sequence slots[n]: k_cache and v_cache [*, kv_heads, cache_len, d], contiguous
  // (the new tokens' keys and values already written). Query head h reads kv head
  // h / (q_heads / kv_heads). out (row stride out_stride) gets each row's heads side by side:
  //   out[h*d..] = sum_l p_l v_l,  p = softmax(q . k_l * d^-0.5) over l <= position,
  // rounded to bfloat16 values if round_bf16. Each query's result depends only on its own q,
  // its sequence's cache and its position.
  void (*attention)(const float* q, int64_t n_seq, int64_t t, int64_t q_stride, int64_t q_heads,
                    int64_t kv_heads, int64_t d, const float* k_cache, const float* v_cache,
                    int64_t cache_len, const int64_t* slots, const int64_t* starts, float* out,
                    int64_t out_stride, bool round_bf16);
};

const Kernels& generic_kernels();
#if defined(SHARDCORE_X86)
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();      // AVX-512F/BW integer rounding
const Kernels& avx512bf16_kernels();  // vcvtneps2bf16, special lanes fixed up
#endif

// Kernel tables this CPU can run, best first (always ends with "generic").
const std::vector<const Kernels*>& available();
// SHARDCORE_OPS_KERNEL (avx512bf16, avx512, avx2, generic or auto) if set, else the best one;
// throws std::invalid_argument for an unknown name or one this CPU cannot run.
const Kernels& selected();
// The named table ("auto" or "": selected()), or std::invalid_argument.
const Kernels& by_name(const std::string& name);

}  // namespace shardcore::ops
