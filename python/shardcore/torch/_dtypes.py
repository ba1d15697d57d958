"""How a CPU tensor's storage is seen as a NumPy array, without copying, per torch dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

# Dtypes the core can reduce (sum/max/min/prod); bf16/fp16 are widened to fp32 inside the core.
REDUCIBLE = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int32,
        torch.int64,
    }
)
# Dtypes that only move (gather, scatter, all-to-all, broadcast, send/recv): no arithmetic.
MOVABLE = REDUCIBLE | {torch.uint8, torch.int8, torch.bool}

_BF16 = np.dtype(ml_dtypes.bfloat16)


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing ``t``'s memory (``t`` must be a contiguous CPU tensor)."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype is torch.bfloat16:
        # NumPy has no bfloat16: view the bits as int16, then as ml_dtypes.bfloat16.
        return t.view(torch.int16).numpy().view(_BF16)
    return t.numpy()


def dtype_names(dtypes) -> str:
    """``float32, int64, ...`` for an error message."""
    return ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
