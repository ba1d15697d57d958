// Element types and reduction ops understood by the collectives.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardcore {

// Codes shared with python/shardcore/_dtypes.py; kOther is any other fixed-size type, which the
// data-movement collectives carry as opaque bytes.
enum class DType : uint32_t {
  kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3, kInt32 = 4, kInt64 = 5,
  kInt8 = 6, kUInt8 = 7, kBool = 8, kOther = 9,
};

enum class RedOp : uint32_t { kSum = 0, kMax = 1, kMin = 2, kProd = 3, kNone = 4 };

const char* dtype_name(DType dt);
const char* op_name(RedOp op);
bool dtype_reducible(DType dt);
// Bytes per element of a reducible dtype (0 for kOther, whose size travels separately).
size_t dtype_size(DType dt);

}  // namespace shardcore
