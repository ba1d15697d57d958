"""Codes shared with csrc/comm/dtypes.h: element types, reduction ops and algorithm names."""

from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# The order matches shardcore::DType; codes 0-5 are the reducible types.
_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    BFLOAT16: 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.int8): 6,
    np.dtype(np.uint8): 7,
    np.dtype(np.bool_): 8,
}
OTHER = 9
REDUCIBLE = ("float32", "float64", "float16", "bfloat16", "int32", "int64")
OPS = {"sum": 0, "max": 1, "min": 2, "prod": 3}
ALGORITHMS = {
    "ring": 1,
    "pairwise": 2,
    "flat": 3,
    "one_shot": 4,
    "two_shot": 5,
    "symmetric": 6,
    "cma": 7,
}


def dtype_code(dtype: np.dtype, what: str, reducible: bool = False) -> int:
    """The core's code for ``dtype``, or a TypeError naming what is not supported."""
    code = _CODES.get(dtype)
    if reducible:
        if code is None or code > 5:
            raise TypeError(
                f"{what}: cannot reduce dtype {dtype}; supported: {', '.join(REDUCIBLE)}"
            )
        return code
    if code is not None:
        return code
    if dtype.hasobject or dtype.itemsize == 0:
        raise TypeError(f"{what}: dtype {dtype} cannot move through shared memory")
    return OTHER


def op_code(op: str, what: str) -> int:
    """The core's code for a reduction op name."""
    try:
        return OPS[op]
    except (KeyError, TypeError):
        raise ValueError(f"{what}: unknown op {op!r}; supported: {', '.join(OPS)}") from None
