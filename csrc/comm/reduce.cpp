#include "comm/reduce.h"

#include <cmath>
#include <stdexcept>

namespace shardcore {

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant * 2^-24 is exact in float32
      float f = float(mant) * 5.9604644775390625e-8f;
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (ax < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 puts the half's subnormal ulp (2^-24) at the
    // float's last mantissa bit, so the float adder does the round-to-nearest-even for us.
    float v;
    std::memcpy(&v, &ax, 4);
    v += 0.5f;
    uint32_t r;
    std::memcpy(&r, &v, 4);
    return uint16_t(sign | (r - 0x3f000000u));
  }
  uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000000u /* rebias (15-127)<<23 */ + 0xfffu + odd;
  return uint16_t(sign | (ax >> 13));
}

namespace {

// NaN-propagating like numpy.maximum / numpy.minimum.
template <typename T> inline T op_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> inline T op_min(T a, T b) { return (a < b || a != a) ? a : b; }

template <typename T, typename F>
void apply(void* dst, const void* a, const void* b, size_t n, F f) {
  T* d = static_cast<T*>(dst);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) d[i] = f(x[i], y[i]);
}

template <typename T>
void reduce_native(void* dst, const void* a, const void* b, size_t n, RedOp op) {
  switch (op) {
    case RedOp::kSum: apply<T>(dst, a, b, n, [](T x, T y) { return T(x + y); }); return;
    case RedOp::kProd: apply<T>(dst, a, b, n, [](T x, T y) { return T(x * y); }); return;
    case RedOp::kMax: apply<T>(dst, a, b, n, op_max<T>); return;
    case RedOp::kMin: apply<T>(dst, a, b, n, op_min<T>); return;
    default: throw std::invalid_argument("unsupported reduction op");
  }
}

// Integers wrap on overflow like numpy; unsigned arithmetic keeps that defined behaviour.
template <typename T, typename U>
void reduce_int(void* dst, const void* a, const void* b, size_t n, RedOp op) {
  switch (op) {
    case RedOp::kSum: apply<T>(dst, a, b, n, [](T x, T y) { return T(U(x) + U(y)); }); return;
    case RedOp::kProd: apply<T>(dst, a, b, n, [](T x, T y) { return T(U(x) * U(y)); }); return;
    case RedOp::kMax: apply<T>(dst, a, b, n, [](T x, T y) { return x > y ? x : y; }); return;
    case RedOp::kMin: apply<T>(dst, a, b, n, [](T x, T y) { return x < y ? x : y; }); return;
    default: throw std::invalid_argument("unsupported reduction op");
  }
}

template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void reduce_half(void* dst, const void* a, const void* b, size_t n, RedOp op) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  switch (op) {
    case RedOp::kSum:
      for (size_t i = 0; i < n; ++i) d[i] = Store(Load(x[i]) + Load(y[i]));
      return;
    case RedOp::kProd:
      for (size_t i = 0; i < n; ++i) d[i] = Store(Load(x[i]) * Load(y[i]));
      return;
    case RedOp::kMax:
      for (size_t i = 0; i < n; ++i) d[i] = Store(op_max(Load(x[i]), Load(y[i])));
      return;
    case RedOp::kMin:
      for (size_t i = 0; i < n; ++i) d[i] = Store(op_min(Load(x[i]), Load(y[i])));
      return;
    default: throw std::invalid_argument("unsupported reduction op");
  }
}

}  // namespace

void reduce(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op) {
  if (count == 0) return;
  switch (dt) {
    case DType::kFloat32: return reduce_native<float>(dst, a, b, count, op);
    case DType::kFloat64: return reduce_native<double>(dst, a, b, count, op);
    case DType::kInt32: return reduce_int<int32_t, uint32_t>(dst, a, b, count, op);
    case DType::kInt64: return reduce_int<int64_t, uint64_t>(dst, a, b, count, op);
    case DType::kBFloat16: return reduce_half<bf16_to_f32, f32_to_bf16>(dst, a, b, count, op);
    case DType::kFloat16: return reduce_half<f16_to_f32, f32_to_f16>(dst, a, b, count, op);
    default: throw std::invalid_argument(std::string("cannot reduce dtype ") + dtype_name(dt));
  }
}

}  // namespace shardcore
