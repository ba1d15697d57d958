// The loops and the dtype/op dispatch shared by the ISA reduction units (reduce_avx2.cpp,
// reduce_avx512.cpp). A unit defines, in its own anonymous namespace and compiled with its own
// ISA flags, the element types F32/BF16/F16 (static load(p, i) -> vector, store(p, i, vector))
// and the ops Sum/Prod/Max/Min (static apply(a, b) -> vector), and instantiates Unit with them:
// each unit's instantiation is its own (the types differ), so no code crosses ISA flags.
#pragma once
#include <cstddef>

#include "comm/reduce.h"

namespace shardcore {
namespace reduce_isa {

// dst = a (op) b, whole vectors only; returns the elements done.
template <size_t kLanes, typename T, typename Op>
size_t two(void* dst, const void* a, const void* b, size_t n) {
  size_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const auto x0 = Op::apply(T::load(a, i), T::load(b, i));
    const auto x1 = Op::apply(T::load(a, i + kLanes), T::load(b, i + kLanes));
    T::store(dst, i, x0);
    T::store(dst, i + kLanes, x1);
  }
  for (; i + kLanes <= n; i += kLanes) T::store(dst, i, Op::apply(T::load(a, i), T::load(b, i)));
  return i;
}

// dst = srcs[0] (op) srcs[1] (op) ... in that order, whole vectors only; returns the elements done.
template <size_t kLanes, typename T, typename Op>
size_t many(void* dst, const void* const* srcs, int m, size_t n) {
  size_t i = 0;
  // Four vectors at a time keep four independent chains in flight per source.
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    auto a0 = T::load(srcs[0], i), a1 = T::load(srcs[0], i + kLanes);
    auto a2 = T::load(srcs[0], i + 2 * kLanes), a3 = T::load(srcs[0], i + 3 * kLanes);
    for (int s = 1; s < m; ++s) {
      a0 = Op::apply(a0, T::load(srcs[s], i));
      a1 = Op::apply(a1, T::load(srcs[s], i + kLanes));
      a2 = Op::apply(a2, T::load(srcs[s], i + 2 * kLanes));
      a3 = Op::apply(a3, T::load(srcs[s], i + 3 * kLanes));
    }
    T::store(dst, i, a0);
    T::store(dst, i + kLanes, a1);
    T::store(dst, i + 2 * kLanes, a2);
    T::store(dst, i + 3 * kLanes, a3);
  }
  for (; i + kLanes <= n; i += kLanes) {
    auto a = T::load(srcs[0], i);
    for (int s = 1; s < m; ++s) a = Op::apply(a, T::load(srcs[s], i));
    T::store(dst, i, a);
  }
  return i;
}

template <size_t kLanes, typename F32, typename BF16, typename F16, typename Sum, typename Prod,
          typename Max, typename Min>
struct Unit {
  template <typename T, typename Op>
  struct TwoRun {
    static size_t run(void* d, const void* a, const void* b, size_t n) {
      return two<kLanes, T, Op>(d, a, b, n);
    }
  };
  template <typename T, typename Op>
  struct ManyRun {
    static size_t run(void* d, const void* const* s, int m, size_t n) {
      return many<kLanes, T, Op>(d, s, m, n);
    }
  };

  template <template <typename, typename> class F, typename... Args>
  static size_t by_type_op(DType dt, RedOp op, Args... args) {
    auto with_op = [&](auto type_tag) -> size_t {
      using T = decltype(type_tag);
      switch (op) {
        case RedOp::kSum: return F<T, Sum>::run(args...);
        case RedOp::kProd: return F<T, Prod>::run(args...);
        case RedOp::kMax: return F<T, Max>::run(args...);
        case RedOp::kMin: return F<T, Min>::run(args...);
        default: return 0;
      }
    };
    switch (dt) {
      case DType::kFloat32: return with_op(F32{});
      case DType::kBFloat16: return with_op(BF16{});
      case DType::kFloat16: return with_op(F16{});
      default: return 0;
    }
  }

  static size_t reduce2(void* dst, const void* a, const void* b, size_t n, DType dt, RedOp op) {
    return by_type_op<TwoRun>(dt, op, dst, a, b, n);
  }
  static size_t reduce_n(void* dst, const void* const* srcs, int m, size_t n, DType dt, RedOp op) {
    return by_type_op<ManyRun>(dt, op, dst, srcs, m, n);
  }
};

}  // namespace reduce_isa
}  // namespace shardcore
