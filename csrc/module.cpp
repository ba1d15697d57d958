#include "module.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "shardcore C++ core: shared-memory collectives and packed GEMM kernels and the decoder's op kernels";
  shardcore::register_comm(m);
  shardcore::register_gemm(m);
  shardcore::register_ops(m);
}
