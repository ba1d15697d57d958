"""Deterministic per-rank inputs and float64 references for the collective tests."""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
INTS = [np.dtype(np.int32), np.dtype(np.int64)]
REDUCIBLE = FLOATS + INTS
OPS = ["sum", "max", "min", "prod"]
# Unit roundoff of each float type: the bound of one rounding, relative.
UNIT_ROUNDOFF = {
    np.dtype(np.float32): 2.0**-24,
    np.dtype(np.float64): 2.0**-53,
    np.dtype(np.float16): 2.0**-11,
    BF16: 2.0**-8,
}


def make_input(seed, rank: int, shape, dtype: np.dtype, op: str = "sum") -> np.ndarray:
    """Fresh random data for one rank of one case; the same call gives the same data."""
    rng = np.random.default_rng([zlib.crc32(repr(seed).encode()), rank])
    if dtype.kind in "iu":
        hi = 4 if op == "prod" else 1000
        return rng.integers(-hi if dtype.kind == "i" else 0, hi, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if dtype.kind == "S":
        return (
            rng.integers(65, 91, size=tuple(shape) + (dtype.itemsize,))
            .astype(np.uint8)
            .view(dtype)
            .reshape(shape)
        )
    if op == "prod":
        return rng.uniform(0.5, 1.5, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def reduce_reference(inputs: list[np.ndarray], op: str, dtype: np.dtype) -> np.ndarray:
    """The exact reduction, in float64 for floats and with wrap-around for integers."""
    if dtype.kind in "iu":
        stack = np.stack([x.astype(np.int64) for x in inputs])
        fn = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[op]
        return fn(stack, axis=0).astype(dtype)
    stack = np.stack([x.astype(np.float64) for x in inputs])
    fn = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[op]
    return fn(stack, axis=0)


def assert_reduced(result: np.ndarray, inputs: list[np.ndarray], op: str, dtype: np.dtype) -> None:
    """``result`` equals the reduction of ``inputs`` within the bound of per-step rounding.

    A ring rounds each of its n-1 partial results to the element type, so a sum is within
    n * u * sum|x_i| of the exact value and a product within 2 * n * u * |prod| (u the unit
    roundoff); max, min and integers are exact.
    """
    assert result.dtype == dtype
    ref = reduce_reference(inputs, op, dtype)
    if dtype.kind in "iu" or op in ("max", "min"):
        np.testing.assert_array_equal(
            result.astype(np.float64) if dtype.kind == "f" or dtype == BF16 else result, ref
        )
        return
    n = len(inputs)
    u = UNIT_ROUNDOFF[dtype]
    if op == "sum":
        bound = n * u * np.sum([np.abs(x.astype(np.float64)) for x in inputs], axis=0)
    else:
        bound = 2 * n * u * np.abs(ref)
    err = np.abs(result.astype(np.float64) - ref)
    assert np.all(err <= bound + 1e-300), (
        f"max error {err.max()} exceeds bound (op={op}, {dtype}, n={n})"
    )
