// Python bindings of the GEMM kernels. Arrays cross as integer addresses (bfloat16 arrays are
// ml_dtypes arrays, which pybind11 cannot type); python/shardcore/kernels.py checks every shape,
// dtype, contiguity and size before calling in, so these functions trust their arguments.
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "gemm/dispatch.h"
#include "module.h"

namespace py = pybind11;

namespace shardcore {
namespace {

using gemm::DType;

DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::f32;
  if (s == "bfloat16") return DType::bf16;
  throw std::invalid_argument("unsupported GEMM dtype '" + s + "' (float32 or bfloat16)");
}

const void* ptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }

}  // namespace

void register_gemm(py::module_& m) {
  m.def("gemm_kernels", [] {
    std::vector<std::string> names;
    for (const auto* f : gemm::available_families()) names.emplace_back(f->name);
    return names;
  }, "Kernel families this CPU can run, best first.");
  m.def("gemm_selected", [] { return std::string(gemm::selected_family().name); },
        "The kernel family chosen at import (SHARDCORE_KERNEL or CPU detection).");
  m.def("gemm_selection_reason", [] { return gemm::selection_reason(); },
        "Why the selected kernel family was chosen.");
  m.def("gemm_impl", [](const std::string& kernel, const std::string& dtype) {
    const auto& impl = gemm::impl_for(gemm::family_by_name(kernel), parse_dtype(dtype));
    py::dict d;
    d["name"] = impl.name;
    d["mr"] = impl.tiles.mr;
    d["nr"] = impl.tiles.nr;
    d["kc"] = impl.tiles.kc;
    d["mc"] = impl.tiles.mc;
    d["nc"] = impl.tiles.nc;
    return d;
  }, "Implementation name and tile sizes of a kernel family for a weight dtype.");
  m.def("gemm_packed_bytes", [](const std::string& kernel, const std::string& dtype, int64_t K,
                                int64_t N) {
    return gemm::impl_for(gemm::family_by_name(kernel), parse_dtype(dtype)).packed_bytes(K, N);
  });
  m.def("gemm_pack", [](const std::string& kernel, const std::string& dtype, uintptr_t src,
                        int64_t K, int64_t N, int64_t stride_k, int64_t stride_n, uintptr_t dst) {
    const auto& impl = gemm::impl_for(gemm::family_by_name(kernel), parse_dtype(dtype));
    py::gil_scoped_release release;
    impl.pack(ptr(src), K, N, stride_k, stride_n, reinterpret_cast<void*>(dst));
  }, "Packs W (element (k, n) at src + (k*stride_k + n*stride_n) elements) into dst.");
  m.def("gemm_run", [](const std::string& kernel, const std::string& w_dtype, uintptr_t packed,
                       int64_t K, int64_t N, uintptr_t x, const std::string& x_dtype, int64_t M,
                       uintptr_t bias, uintptr_t out, const std::string& out_dtype, int threads) {
    const auto& impl = gemm::impl_for(gemm::family_by_name(kernel), parse_dtype(w_dtype));
    const DType xd = parse_dtype(x_dtype), od = parse_dtype(out_dtype);
    py::gil_scoped_release release;
    gemm::gemm(impl, ptr(packed), K, N, ptr(x), xd, M, static_cast<const float*>(ptr(bias)),
               reinterpret_cast<void*>(out), od, threads);
  }, "out[M,N] = x[M,K] @ W + bias with a packed W; GIL released.");
  m.def("gemm_check_exact", [](const std::string& kernel) {
    const auto& impl = gemm::impl_for(gemm::family_by_name(kernel), DType::bf16);
    py::gil_scoped_release release;
    return gemm::check_exact_products(impl);
  }, "The bf16 kernel's products checked on exact small integers: what differed, or ''.");
  m.def("gemm_peak_gflops", [](const std::string& kernel, const std::string& dtype) {
    const auto& f = gemm::family_by_name(kernel);
    const DType d = parse_dtype(dtype);
    py::gil_scoped_release release;
    return gemm::peak_gflops(f, d);
  }, "Measured single-thread multiply-add peak (GFLOP/s) of a kernel family's instruction.");
}

}  // namespace shardcore
