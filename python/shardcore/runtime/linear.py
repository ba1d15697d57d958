"""A local (unsharded) linear layer: y = x @ W on this rank's shard of W."""

from __future__ import annotations

import numpy as np

from .ops import Precision


class Linear:
    """y = round(x @ W) for a weight shard W [in, out] held in the model dtype's values."""

    def __init__(self, weight: np.ndarray, precision: Precision):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.precision = precision

    @property
    def shape(self):
        return self.weight.shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.precision.round(np.matmul(x, self.weight))
