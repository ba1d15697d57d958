// The portable op kernels (no ISA flags): the reference for the vector units' conversions.
#include <cstring>

#include "ops/ops_loops.h"

namespace shardcore::ops {
namespace {

struct Generic {
  static void to_bf16(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = loops::bf16_bits<Generic>(x[i]);
  }
  static void from_bf16(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(x[i]) << 16;
      std::memcpy(&y[i], &u, 4);
    }
  }
  static void round(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(loops::bf16_bits<Generic>(x[i])) << 16;
      std::memcpy(&y[i], &u, 4);
    }
  }
};

const Kernels kGeneric = loops::make_kernels<Generic>("generic");

}  // namespace

const Kernels& generic_kernels() { return kGeneric; }

}  // namespace shardcore::ops
