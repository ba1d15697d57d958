"""A local linear layer, y = x @ W on this rank's shard of W: shardcore's packed GEMM kernels,
or NumPy where the C++ core is not built (``backend="numpy"`` forces it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .clock import Clock
from .ops import Precision

BACKENDS = ("auto", "kernels", "numpy")


def resolve_backend(backend: str) -> str:
    """'kernels' or 'numpy' for a requested backend ('auto': kernels when the core imports)."""
    if backend not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    try:
        from .. import kernels  # noqa: F401  (needs the built C++ core)
    except ImportError:
        return "numpy"
    return "kernels"


class Linear:
    """y = round(x @ W) for a weight shard W [in, out] holding values of the model dtype.

    With the kernels, W is packed once in the model dtype; a bfloat16 weight multiplies the
    (already bfloat16-valued) activations exactly and accumulates in float32, as NumPy's float32
    product of the same values does, so both backends compute the same function up to the order
    of the float32 sums.
    """

    def __init__(
        self, weight: np.ndarray, precision: Precision, backend: str = "numpy", clock=None
    ):
        self.precision = precision
        self.backend = backend
        self.clock = clock if clock is not None else Clock()
        weight = np.asarray(weight, dtype=np.float32)
        self.shape = weight.shape
        self.weight: Any
        if backend == "kernels":
            from ..kernels import PackedWeight

            self.weight = PackedWeight(weight, dtype=precision.dtype)
        else:
            self.weight = np.ascontiguousarray(weight)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.clock.measure("gemm"):
            return self._apply(x)

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "numpy" or x.shape[0] == 0:
            y = (
                np.matmul(x, self.weight)
                if self.backend == "numpy"
                else np.zeros((0, self.shape[1]), np.float32)
            )
            return self.precision.round(y)
        from ..kernels import matmul

        y = matmul(np.ascontiguousarray(x, dtype=np.float32), self.weight, out_dtype=np.float32)
        return self.precision.round(y)
