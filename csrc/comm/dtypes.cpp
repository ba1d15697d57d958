#include "comm/dtypes.h"

namespace shardcore {

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kBool: return "bool";
    case DType::kOther: return "other";
  }
  return "?";
}

const char* op_name(RedOp op) {
  switch (op) {
    case RedOp::kSum: return "sum";
    case RedOp::kMax: return "max";
    case RedOp::kMin: return "min";
    case RedOp::kProd: return "prod";
    case RedOp::kNone: return "none";
  }
  return "?";
}

bool dtype_reducible(DType dt) { return uint32_t(dt) <= uint32_t(DType::kInt64); }

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::kFloat64: case DType::kInt64: return 8;
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    case DType::kInt8: case DType::kUInt8: case DType::kBool: return 1;
    default: return 0;
  }
}

}  // namespace shardcore
