// Python bindings of the op kernels. Arrays cross as integer addresses (bfloat16 arrays are
// ml_dtypes arrays, which pybind11 cannot type); python/shardcore/fused.py checks every shape,
// dtype, contiguity and size before calling in, so these functions trust their arguments. The
// GIL is released in every kernel call.
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "module.h"
#include "ops/ops.h"

namespace py = pybind11;

namespace shardcore {
namespace {

template <typename T>
T* at(uintptr_t p) { return reinterpret_cast<T*>(p); }

ops::Store parse_store(const std::string& s) {
  if (s == "float32") return ops::Store::f32;
  if (s == "bfloat16") return ops::Store::bf16;
  if (s == "float32_bf16") return ops::Store::f32_bf16;
  throw std::invalid_argument("unsupported op output '" + s +
                              "' (float32, bfloat16 or float32_bf16)");
}

}  // namespace

void register_ops(py::module_& m) {
  m.def("ops_kernels", [] {
    std::vector<std::string> names;
    for (const auto* k : ops::available()) names.emplace_back(k->name);
    return names;
  }, "Op kernel tables this CPU can run, best first.");
  m.def("ops_selected", [] { return std::string(ops::selected().name); },
        "The op kernels chosen at import (SHARDCORE_OPS_KERNEL or CPU detection).");
  m.def("ops_f32_to_bf16", [](const std::string& isa, uintptr_t x, uintptr_t y, int64_t n) {
    const auto& k = ops::by_name(isa);
    py::gil_scoped_release release;
    k.f32_to_bf16(at<const float>(x), at<uint16_t>(y), n);
  }, "y[:n] = bfloat16(x[:n]) (round to nearest even, ml_dtypes' NaN).");
  m.def("ops_bf16_to_f32", [](const std::string& isa, uintptr_t x, uintptr_t y, int64_t n) {
    const auto& k = ops::by_name(isa);
    py::gil_scoped_release release;
    k.bf16_to_f32(at<const uint16_t>(x), at<float>(y), n);
  }, "y[:n] = float32(x[:n]) of bfloat16 bits.");
  m.def("ops_round_bf16", [](const std::string& isa, uintptr_t x, uintptr_t y, int64_t n) {
    const auto& k = ops::by_name(isa);
    py::gil_scoped_release release;
    k.round_bf16(at<const float>(x), at<float>(y), n);
  }, "y[:n] = float32(bfloat16(x[:n])); y may be x.");
  m.def("ops_rms_norm", [](const std::string& isa, uintptr_t x, int64_t rows, int64_t n,
                           int64_t x_stride, uintptr_t w, float eps, uintptr_t out,
                           int64_t out_stride, const std::string& store) {
    const auto& k = ops::by_name(isa);
    const ops::Store s = parse_store(store);
    py::gil_scoped_release release;
    k.rms_norm(at<const float>(x), rows, n, x_stride, at<const float>(w), eps, at<void>(out),
               out_stride, s);
  }, "RMSNorm of rows (see csrc/ops/ops.h).");
  m.def("ops_swiglu", [](const std::string& isa, uintptr_t gu, int64_t rows, int64_t n,
                         int64_t gu_stride, uintptr_t out, int64_t out_stride,
                         const std::string& store) {
    const auto& k = ops::by_name(isa);
    const ops::Store s = parse_store(store);
    py::gil_scoped_release release;
    k.swiglu(at<const float>(gu), rows, n, gu_stride, at<void>(out), out_stride, s);
  }, "silu(gate) * up of rows [gate | up] (see csrc/ops/ops.h).");
  m.def("ops_norm_rope", [](const std::string& isa, uintptr_t x, int64_t rows,
                            int64_t row_stride, int64_t d, int64_t q_heads, int64_t k_heads,
                            uintptr_t q_norm, uintptr_t k_norm, float eps, uintptr_t cos,
                            uintptr_t sin, bool round_bf16) {
    const auto& k = ops::by_name(isa);
    py::gil_scoped_release release;
    k.norm_rope(at<float>(x), rows, row_stride, d, q_heads, k_heads, at<const float>(q_norm),
                at<const float>(k_norm), eps, at<const float>(cos), at<const float>(sin),
                round_bf16);
  }, "In place: optional per-head RMSNorm, then RoPE (see csrc/ops/ops.h).");
  m.def("ops_attention", [](const std::string& isa, uintptr_t q, int64_t n_seq, int64_t t,
                            int64_t q_stride, int64_t q_heads, int64_t kv_heads, int64_t d,
                            uintptr_t k_cache, uintptr_t v_cache, int64_t cache_len,
                            uintptr_t slots, uintptr_t starts, uintptr_t out, int64_t out_stride,
                            bool round_bf16) {
    const auto& k = ops::by_name(isa);
    py::gil_scoped_release release;
    k.attention(at<const float>(q), n_seq, t, q_stride, q_heads, kv_heads, d,
                at<const float>(k_cache), at<const float>(v_cache), cache_len,
                at<const int64_t>(slots), at<const int64_t>(starts), at<float>(out), out_stride,
                round_bf16);
  }, "Causal GQA attention of new tokens over a KV cache (see csrc/ops/ops.h).");
}

}  // namespace shardcore
