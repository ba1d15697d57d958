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

// Whether a copy of `bytes` should stream: larger than kStreamMinBytes, or the env override
// SHARDCORE_NT_MIN_BYTES (0 = never stream).
bool should_stream(size_t bytes);

}  // namespace shardcore
