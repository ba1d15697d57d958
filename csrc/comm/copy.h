// Bulk copies for the collectives. A copy whose destination will not be read again before it
// leaves the cache (large messages: more than the last-level cache can keep) is written with
// non-temporal stores, which skip the read-for-ownership of every destination line: such a copy
// moves 2 bytes of memory per byte instead of 3.
#pragma once
#include <cstddef>

namespace shardcore {

// memcpy(dst, src, n), with non-temporal stores when `streaming` and the CPU has them (x86-64:
// SSE2 streaming stores, fenced before returning so the data is visible to a later
// release-store of a flag). Regions must not overlap.
void copy_bytes(void* dst, const void* src, size_t n, bool streaming);

// Outputs of at least this many bytes are streamed. A reduction's output: a quarter of a typical
// 32 MiB last-level cache, shared by the ranks. A gathered output (all-gather, all-to-all): its
// bytes come from other cores' memory and land in lines this core has not touched, whose
// read-for-ownership streaming skips, as the kernel's own large copies (process_vm_readv, which
// Open MPI uses) do; from about an L2's worth (2 ranks on the 2-core EPYC, symmetric inputs,
// 1-4 MiB outputs: 0.34-0.56 of Open MPI's time streamed, 0.51-0.88 not, alternating runs).
constexpr size_t kStreamMinBytes = size_t(8) << 20;
constexpr size_t kStreamMinGatherBytes = size_t(1) << 20;

// Whether an output of `bytes` should stream: at least `min_bytes`, or at least the env override
// SHARDCORE_NT_MIN_BYTES where set (0 = never stream), which replaces every default.
bool should_stream(size_t bytes, size_t min_bytes = kStreamMinBytes);

}  // namespace shardcore
