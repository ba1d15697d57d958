// Kernel selection (once, by CPU detection and SHARDCORE_KERNEL) and the threaded GEMM entry.
// Baseline code: no intrinsics, no ISA flags; it only calls through the Family tables.
#pragma once

#include <string>
#include <vector>

#include "gemm/gemm.h"

namespace shardcore::gemm {

// Families this CPU can run, best first (always ends with "generic").
const std::vector<const Family*>& available_families();

// The family chosen at import: SHARDCORE_KERNEL if set (generic, avx2, avx512, avx512bf16, amx,
// amx-reference or auto), else the best available. Throws std::invalid_argument naming the
// problem if the variable names an unknown family or one this CPU cannot run.
// auto: the best supported family (amx where the CPU has AMX-BF16 and Linux grants this process
// tile data), except that avx512bf16 yields to avx512 where its bf16 GEMM, timed at selection
// on a small in-cache product, is not at least 1.1x the widening FMA GEMM (see dispatch.cpp).
const Family& selected_family();

// Why the selected family was chosen (SHARDCORE_KERNEL, or what the probe measured).
std::string selection_reason();

// The named family, or throws std::invalid_argument (unknown, or not supported by this CPU).
// amx-reference (the AMX loops with modelled tile instructions) is found by name on every CPU
// and never listed by available_families().
const Family& family_by_name(const std::string& name);

const Impl& impl_for(const Family& f, DType w_dtype);

// Best of a few timed runs of the family's multiply-add loop, in GFLOP/s (single thread).
double peak_gflops(const Family& f, DType dtype);

// C[M,N] = X*W + bias on `threads` threads; `out` is float32 or bfloat16 (rounded to nearest even)
// with row stride N. Threads split the panels of W (or the rows of X when there are fewer panels
// than threads). Any K >= 0; K == 0 gives C = bias (or zero).
void gemm(const Impl& impl, const void* packed_w, int64_t K, int64_t N, const void* x,
          DType x_dtype, int64_t M, const float* bias, void* out, DType out_dtype, int threads);

// Runs a bf16 Impl on small integer products that float32 holds exactly (one row, a small M, and
// two row blocks with edges in M, K and N, with bias) and compares them with the exact result;
// returns what differed, or "" when all match. Microseconds; the amx family must pass it at
// detection to be offered.
std::string check_exact_products(const Impl& impl);

}  // namespace shardcore::gemm
