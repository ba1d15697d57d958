#include "comm/reduce.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>
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

// Accumulates over sources in blocks that stay in L1, so every source is streamed once.
template <typename T, typename Acc, typename LoadF, typename StoreF, typename F>
void many(void* dst_v, const void* const* srcs, int m, size_t n, LoadF load, StoreF store, F f) {
  constexpr size_t kBlock = 512;  // 2 KiB of float32 accumulators
  Acc acc[kBlock];
  T* dst = static_cast<T*>(dst_v);
  for (size_t i0 = 0; i0 < n; i0 += kBlock) {
    const size_t len = std::min(kBlock, n - i0);
    const T* s0 = static_cast<const T*>(srcs[0]) + i0;
    for (size_t i = 0; i < len; ++i) acc[i] = load(s0[i]);
    for (int s = 1; s < m; ++s) {
      const T* p = static_cast<const T*>(srcs[s]) + i0;
      for (size_t i = 0; i < len; ++i) acc[i] = f(acc[i], load(p[i]));
    }
    for (size_t i = 0; i < len; ++i) dst[i0 + i] = store(acc[i]);
  }
}

template <typename T, typename Acc, typename LoadF, typename StoreF>
void many_op(void* dst, const void* const* srcs, int m, size_t n, RedOp op, LoadF ld, StoreF st) {
  switch (op) {
    case RedOp::kSum: return many<T, Acc>(dst, srcs, m, n, ld, st, [](Acc x, Acc y) { return Acc(x + y); });
    case RedOp::kProd: return many<T, Acc>(dst, srcs, m, n, ld, st, [](Acc x, Acc y) { return Acc(x * y); });
    case RedOp::kMax: return many<T, Acc>(dst, srcs, m, n, ld, st, op_max<Acc>);
    case RedOp::kMin: return many<T, Acc>(dst, srcs, m, n, ld, st, op_min<Acc>);
    default: throw std::invalid_argument("unsupported reduction op");
  }
}

template <typename T, typename U>
void many_int(void* dst, const void* const* srcs, int m, size_t n, RedOp op) {
  auto id = [](T v) { return v; };
  switch (op) {
    case RedOp::kSum: return many<T, T>(dst, srcs, m, n, id, id, [](T x, T y) { return T(U(x) + U(y)); });
    case RedOp::kProd: return many<T, T>(dst, srcs, m, n, id, id, [](T x, T y) { return T(U(x) * U(y)); });
    case RedOp::kMax: return many<T, T>(dst, srcs, m, n, id, id, [](T x, T y) { return x > y ? x : y; });
    case RedOp::kMin: return many<T, T>(dst, srcs, m, n, id, id, [](T x, T y) { return x < y ? x : y; });
    default: throw std::invalid_argument("unsupported reduction op");
  }
}

}  // namespace

void reduce_many_generic(void* dst, const void* const* srcs, int nsrc, size_t count, DType dt,
                         RedOp op) {
  if (count == 0 || nsrc == 0) return;
  auto idf = [](float v) { return v; };
  auto idd = [](double v) { return v; };
  switch (dt) {
    case DType::kFloat32: return many_op<float, float>(dst, srcs, nsrc, count, op, idf, idf);
    case DType::kFloat64: return many_op<double, double>(dst, srcs, nsrc, count, op, idd, idd);
    case DType::kBFloat16: return many_op<uint16_t, float>(dst, srcs, nsrc, count, op, bf16_to_f32, f32_to_bf16);
    case DType::kFloat16: return many_op<uint16_t, float>(dst, srcs, nsrc, count, op, f16_to_f32, f32_to_f16);
    case DType::kInt32: return many_int<int32_t, uint32_t>(dst, srcs, nsrc, count, op);
    case DType::kInt64: return many_int<int64_t, uint64_t>(dst, srcs, nsrc, count, op);
    default: throw std::invalid_argument(std::string("cannot reduce dtype ") + dtype_name(dt));
  }
}

void reduce_generic(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op) {
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

// --- dispatch -------------------------------------------------------------------------------

namespace {

// The widest unit the CPU runs, capped by SHARDCORE_KERNEL ("generic", "avx2", "avx512",
// "avx512bf16": the GEMM's names; the reductions have no bf16-instruction unit, see
// reduce_avx512.cpp). An unknown name or one the CPU cannot run leaves the automatic choice.
const ReduceIsa* choose_isa() {
  const char* env = std::getenv("SHARDCORE_KERNEL");
  const std::string forced = env ? env : "";
  if (forced == "generic") return nullptr;
#if defined(SHARDCORE_X86)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (avx512 && forced != "avx2" && reduce_isa_avx512()) return reduce_isa_avx512();
  if (avx2) return reduce_isa_avx2();
#endif
  return nullptr;
}

const ReduceIsa* isa() {
  static const ReduceIsa* chosen = choose_isa();  // once, at first use
  return chosen;
}

bool vectorised(DType dt) {
  return dt == DType::kFloat32 || dt == DType::kBFloat16 || dt == DType::kFloat16;
}

}  // namespace

const char* reduce_kernel_name() { return isa() ? isa()->name : "generic"; }

void reduce(void* dst, const void* a, const void* b, size_t count, DType dt, RedOp op) {
  size_t done = 0;
  if (isa() && vectorised(dt)) done = isa()->reduce(dst, a, b, count, dt, op);
  if (done == count) return;
  const size_t e = dtype_size(dt) * done;
  reduce_generic(static_cast<char*>(dst) + e, static_cast<const char*>(a) + e,
                 static_cast<const char*>(b) + e, count - done, dt, op);
}

void reduce_many(void* dst, const void* const* srcs, int nsrc, size_t count, DType dt, RedOp op) {
  size_t done = 0;
  if (isa() && vectorised(dt)) done = isa()->reduce_many(dst, srcs, nsrc, count, dt, op);
  if (done == count) return;
  const size_t e = dtype_size(dt) * done;
  const void* rest_small[16];
  std::vector<const void*> rest_big;
  const void** rest = rest_small;
  if (nsrc > 16) {
    rest_big.resize(size_t(nsrc));
    rest = rest_big.data();
  }
  for (int s = 0; s < nsrc; ++s) rest[s] = static_cast<const char*>(srcs[s]) + e;
  reduce_many_generic(static_cast<char*>(dst) + e, rest, nsrc, count - done, dt, op);
}

#if !defined(SHARDCORE_X86)
const ReduceIsa* reduce_isa_avx2() { return nullptr; }
const ReduceIsa* reduce_isa_avx512() { return nullptr; }
#endif

}  // namespace shardcore
