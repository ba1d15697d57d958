// The row loops of the op kernels, shared by the ISA units (ops_generic.cpp, ops_avx2.cpp,
// ops_avx512.cpp). A unit defines, in its own anonymous namespace and compiled with its own ISA
// flags, a conversion type Conv with
//   static void to_bf16(const float* x, uint16_t* y, int64_t n);
//   static void from_bf16(const uint16_t* x, float* y, int64_t n);
//   static void round(const float* x, float* y, int64_t n);  // y may be x
// and instantiates make_kernels<Conv>(name): each unit's instantiations are its own (Conv
// differs), so no code compiled for one ISA is linked into another's table. The loops are plain
// C++ that the unit's compiler vectorises for its ISA; only the conversions are intrinsics.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/ops.h"

namespace shardcore::ops::loops {

// The portable conversion of one value, the definition the vector conversions must equal.
template <typename Tag>
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7fc0u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Sum of x[j]^2 in float32 over 16 partial sums (lane j % 16), added pairwise at the end: a
// fixed order (per ISA: the units may contract x*x + acc into an FMA) that vectorises.
template <typename Conv>
float sum_squares(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[j + l] * x[j + l];
  for (int l = 0; j < n; ++j, ++l) acc[l] += x[j] * x[j];
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// Sum of x[j] over 16 partial sums, as sum_squares.
template <typename Conv>
float sum_of(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[j + l];
  for (int l = 0; j < n; ++j, ++l) acc[l] += x[j];
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// Where a row's float32 results go: straight into out (f32, f32_bf16), or into tmp to be
// converted (bf16).
template <typename Conv>
float* row_target(void* out, int64_t r, int64_t stride, Store s, std::vector<float>& tmp) {
  if (s == Store::bf16) return tmp.data();
  return static_cast<float*>(out) + r * stride;
}

template <typename Conv>
void finish_row(float* y, void* out, int64_t r, int64_t stride, int64_t n, Store s) {
  if (s == Store::f32_bf16) Conv::round(y, y, n);
  if (s == Store::bf16) Conv::to_bf16(y, static_cast<uint16_t*>(out) + r * stride, n);
}

template <typename Conv>
void scale_row(const float* x, float inv, const float* w, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = (x[j] * inv) * w[j];
}

template <typename Conv>
void rms_norm(const float* x, int64_t rows, int64_t n, int64_t x_stride, const float* w,
              float eps, void* out, int64_t out_stride, Store s) {
  std::vector<float> tmp(s == Store::bf16 ? static_cast<size_t>(n) : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    const float var = sum_squares<Conv>(xr, n) / static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(var + eps);
    float* y = row_target<Conv>(out, r, out_stride, s, tmp);
    scale_row<Conv>(xr, inv, w, y, n);
    finish_row<Conv>(y, out, r, out_stride, n, s);
  }
}

// e^x in float32 (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r,
// scaled by 2^n in two halves so that n = 128 stays finite), within about 2 ulp; +inf above
// 88.72, +0 below -87.33 (e^x would be subnormal there), NaN kept. Branch-free, so the unit's
// compiler vectorises the loops that call it (std::exp would be one libm call per element).
template <typename Conv>
inline float exp_f32(float x) {
  float xc = x < -87.33654f ? -87.33654f : x;
  xc = xc > 88.72283f ? 88.72283f : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t half = ni >> 1;
  const uint32_t b1 = static_cast<uint32_t>(half + 127) << 23;
  const uint32_t b2 = static_cast<uint32_t>(ni - half + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  float y = p * s1 * s2;
  y = x > 88.72283f ? INFINITY : y;
  y = x < -87.33654f ? 0.0f : y;
  return x != x ? x : y;
}

template <typename Conv>
void swiglu(const float* gu, int64_t rows, int64_t n, int64_t gu_stride, void* out,
            int64_t out_stride, Store s) {
  std::vector<float> tmp(s == Store::bf16 ? static_cast<size_t>(n) : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gu + r * gu_stride;
    const float* u = g + n;
    float* y = row_target<Conv>(out, r, out_stride, s, tmp);
    for (int64_t j = 0; j < n; ++j) y[j] = g[j] / (1.0f + exp_f32<Conv>(-g[j])) * u[j];
    finish_row<Conv>(y, out, r, out_stride, n, s);
  }
}

template <typename Conv>
void norm_rope(float* x, int64_t rows, int64_t row_stride, int64_t d, int64_t q_heads,
               int64_t k_heads, const float* q_norm, const float* k_norm, float eps,
               const float* cos, const float* sin, bool round_bf16) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cos + r * d;
    const float* sn = sin + r * d;
    for (int64_t h = 0; h < q_heads + k_heads; ++h) {
      float* v = x + r * row_stride + h * d;
      const float* w = h < q_heads ? q_norm : k_norm;
      if (w != nullptr) {
        const float var = sum_squares<Conv>(v, d) / static_cast<float>(d);
        scale_row<Conv>(v, 1.0f / std::sqrt(var + eps), w, v, d);
        if (round_bf16) Conv::round(v, v, d);
      }
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * sn[i];
        v[i + half] = b * c[i + half] + a * sn[i + half];
      }
      if (round_bf16) Conv::round(v, v, d);
    }
  }
}

// sum of a[j] * b[j] over 16 partial sums, as sum_squares.
template <typename Conv>
float dot(const float* a, const float* b, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[j + l] * b[j + l];
  for (int l = 0; j < n; ++j, ++l) acc[l] += a[j] * b[j];
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

template <typename Conv>
void attention(const float* q, int64_t n_seq, int64_t t, int64_t q_stride, int64_t q_heads,
               int64_t kv_heads, int64_t d, const float* k_cache, const float* v_cache,
               int64_t cache_len, const int64_t* slots, const int64_t* starts, float* out,
               int64_t out_stride, bool round_bf16) {
  const int64_t group = q_heads / kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  std::vector<float> p(static_cast<size_t>(cache_len));
  for (int64_t n = 0; n < n_seq; ++n) {
    for (int64_t i = 0; i < t; ++i) {
      const int64_t row = n * t + i, len = starts[n] + i + 1;
      for (int64_t h = 0; h < q_heads; ++h) {
        const float* qh = q + row * q_stride + h * d;
        const int64_t base = (slots[n] * kv_heads + h / group) * cache_len * d;
        const float* k = k_cache + base;
        const float* v = v_cache + base;
        float m = -INFINITY;
        for (int64_t l = 0; l < len; ++l) {
          p[l] = dot<Conv>(qh, k + l * d, d) * scale;
          m = p[l] > m ? p[l] : m;
        }
        for (int64_t l = 0; l < len; ++l) p[l] = exp_f32<Conv>(p[l] - m);
        const float inv = 1.0f / sum_of<Conv>(p.data(), len);
        float* o = out + row * out_stride + h * d;
        for (int64_t j = 0; j < d; ++j) o[j] = 0.0f;
        for (int64_t l = 0; l < len; ++l) {
          const float pl = p[l] * inv;
          const float* vl = v + l * d;
          for (int64_t j = 0; j < d; ++j) o[j] += pl * vl[j];
        }
        if (round_bf16) Conv::round(o, o, d);
      }
    }
  }
}

template <typename Conv>
Kernels make_kernels(const char* name) {
  return Kernels{name,           Conv::to_bf16,  Conv::from_bf16, Conv::round,
                 rms_norm<Conv>, swiglu<Conv>,   norm_rope<Conv>, attention<Conv>};
}

}  // namespace shardcore::ops::loops
