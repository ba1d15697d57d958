// Each family of the core registers its own Python bindings; module.cpp only calls them.
#pragma once
#include <pybind11/pybind11.h>

namespace shardcore {
void register_comm(pybind11::module_& m);
void register_gemm(pybind11::module_& m);
void register_ops(pybind11::module_& m);
}  // namespace shardcore
