#include "module.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "shardcore C++ core: shared-memory collectives and packed GEMM kernels";
  shardcore::register_comm(m);
  shardcore::register_gemm(m);
}
