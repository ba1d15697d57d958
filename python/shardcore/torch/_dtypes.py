"""How a CPU tensor's storage is seen as a NumPy array, without copying, per torch dtype, and
which dtypes each kind of operation takes (the set gloo serves for CPU tensors)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

# Dtypes the core reduces itself (sum/max/min/prod); bf16/fp16 are widened to fp32 inside it.
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
# The integer and bool dtypes: the ones bitwise ops (BAND/BOR/BXOR) apply to.
INTEGRAL = frozenset({torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool})
FLOATING = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})
# Every dtype an operation accepts; reductions the core lacks (bitwise ops, any op on
# uint8/int8/bool) are computed by the torch layer on data the core moves.
MOVABLE = REDUCIBLE | INTEGRAL

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


def torch_view(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` sharing the memory of the NumPy array ``a`` (``numpy_view``'s inverse)."""
    if dtype is torch.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
