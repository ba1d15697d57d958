"""Packed GEMM kernels: ``matmul(x, w)`` in float32 and bfloat16 with float32 accumulation.

Layout convention
-----------------
``matmul(x, w)`` computes ``x @ w`` with ``x`` of shape ``[..., K]`` and ``w`` of shape ``[K, N]``
(in_features x out_features). Checkpoints in the torch / Hugging Face layout store a linear
layer's weight as ``[N, K]`` (``y = x @ w.T``): pack those with ``PackedWeight.from_linear(w)``
(equivalently ``PackedWeight(w, transpose=True)``), which reads the transposed matrix directly.

A weight is packed once (``PackedWeight``) into NR-column panels in the layout its kernel reads;
passing a plain array to ``matmul`` packs it on every call.

Kernels
-------
The kernel family is chosen once, at first use, by CPU detection: ``amx`` (bfloat16 on AMX tiles,
``tdpbf16ps``, from 2 rows of x, one row on ``vdpbf16ps``; float32 on the AVX-512 FMA), taken
where the CPU has AMX-BF16 and Linux grants the process tile data (``arch_prctl``); else
``avx512bf16`` (AVX-512 with ``vdpbf16ps`` for bfloat16), ``avx512`` (bfloat16 widened to float32
in registers for the FMA), ``avx2`` (AVX2 + FMA) or ``generic`` (portable C++). ``avx512bf16`` is
taken only where its bfloat16 GEMM, timed against the widening one on a small in-cache product
when the choice is made (about 2 ms), is at least 1.1x as fast: about 1.7x on Zen 4, about 0.65x
on Sapphire Rapids (whose ``vdpbf16ps`` runs at a quarter of the FMA's instruction rate);
``kernel_reason()`` says what was measured, and why AMX was not used where the CPU has it.
``SHARDCORE_KERNEL=<name>`` forces one (``generic`` forces the fallback); ``kernel_name()`` says
which one is in use and ``available_kernels()`` lists what this CPU can run. ``kernel=`` on
``PackedWeight``/``matmul`` picks another family for one weight (tests use it to cover every path).
``amx-reference`` runs the amx family's loops and packing with the tile instructions modelled in
portable C++ (slow; for tests on any CPU); it is accepted by name and never listed or chosen.

Numerics
--------
float32 weights: float32 inputs, float32 accumulation (FMA).

bfloat16 weights: activations are rounded to bfloat16 (nearest even) if they are float32, so both
operands are bfloat16 and every product is exact in float32; products are summed in float32. For
one output element, with ``u = 2**-24`` and ``gamma(n) = n*u / (1 - n*u)``, and ``C`` the exact
product of the (rounded) operands plus bias, the computed float32 result satisfies

    |C_hat - C| <= gamma(K + 1) * (sum_k |x_k| |w_kn| + |b_n|)

for every kernel and summation order (the bound of a (K+1)-term float32 sum; the float32 path
obeys it too, product roundings included). The ``vdpbf16ps`` and AMX kernels also flush subnormal
inputs and results to zero, which changes a term by less than ``2**-126 * max(1, |x_k|, |w_kn|)``. A bfloat16 output is that value rounded
to nearest even, one more relative error of ``2**-8``. Rounding float32 activations to bfloat16
adds, relative to the float32 activations, at most ``2**-8 * sum_k |x_k| |w_kn|``.

Results do not depend on ``threads`` (each element is summed in the same order however the
work is split), but they may differ in the last bits between batch sizes M: the blocking of K
and the accumulator layout depend on M (small M streams all of K in one block, 1-3 rows split
the sum over several accumulators). The AMX loops start each element at its bias and add the
32-deep tile steps in k order whatever the blocking, so there (as in ``amx-reference``, where
this is tested bitwise) only M = 1, on ``vdpbf16ps``, sums differently.

Threads
-------
One thread per call by default (ranks are the parallelism); ``threads=n`` splits the panels of W
(or the rows of x) over ``n`` threads of this process. The GIL is released in every kernel call.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from . import _core

__all__ = [
    "PackedWeight",
    "available_kernels",
    "bf16_error_bound",
    "kernel_info",
    "kernel_name",
    "kernel_reason",
    "matmul",
]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT32 = np.dtype(np.float32)
_DTYPE_NAMES = {FLOAT32: "float32", BFLOAT16: "bfloat16"}
_ALIGN = 64  # packed panels start on a cache line


def available_kernels() -> list[str]:
    """Kernel families this CPU can run, best first (the last is always ``generic``)."""
    return list(_core.gemm_kernels())


def kernel_name() -> str:
    """The kernel family chosen at import (``SHARDCORE_KERNEL`` or CPU detection)."""
    try:
        return str(_core.gemm_selected())
    except ValueError as exc:  # a bad SHARDCORE_KERNEL is reported where kernels are used
        raise ValueError(str(exc)) from None


def kernel_reason() -> str:
    """Why ``kernel_name()`` was chosen (``SHARDCORE_KERNEL``, or what the import-time probe saw)."""
    try:
        return str(_core.gemm_selection_reason())
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def kernel_info(dtype: Any = "float32", kernel: str | None = None) -> dict:
    """Implementation name and tile sizes (mr, nr, kc, mc, nc) used for weights of ``dtype``."""
    return dict(_core.gemm_impl(_kernel_arg(kernel), _DTYPE_NAMES[_weight_dtype(dtype)]))


def bf16_error_bound(
    abs_product: np.ndarray,
    k: int,
    out_bfloat16: bool = False,
    abs_result: np.ndarray | None = None,
) -> np.ndarray:
    """The stated error bound, given ``|x| @ |w| + |b|`` (``abs_product``) and the depth ``k``."""
    u = 2.0**-24
    n = k + 1
    bound = n * u / (1 - n * u) * np.asarray(abs_product, dtype=np.float64)
    if out_bfloat16:
        if abs_result is None:
            raise ValueError("a bfloat16 output bound needs abs_result (|exact result|)")
        bound = bound * (1 + 2.0**-8) + 2.0**-8 * np.asarray(abs_result, dtype=np.float64)
    return bound


def _kernel_arg(kernel: str | None) -> str:
    if kernel is None:
        return kernel_name()
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
    if kernel not in available_kernels():
        try:
            _core.gemm_impl(kernel, "float32")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return kernel


def _weight_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or bfloat16, got {dtype!r}") from None
    if dt not in _DTYPE_NAMES:
        raise TypeError(f"dtype must be float32 or bfloat16, got {dt}")
    return dt


def _aligned_bytes(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + nbytes]


class PackedWeight:
    """A weight ``w[K, N]`` packed once for ``matmul`` (float32 or bfloat16, fixed kernel).

    ``PackedWeight(w)`` packs ``w`` of shape ``[K, N]`` (``y = x @ w``); with ``transpose=True``
    (or ``PackedWeight.from_linear(w)``) ``w`` has the torch/HF shape ``[N, K]`` (``y = x @ w.T``).
    ``dtype`` (float32 or bfloat16) is the packed type; it defaults to ``w.dtype`` and converts
    (bfloat16 rounding to nearest even) when it differs. ``w`` may have any strides.
    """

    __slots__ = ("_buf", "dtype", "impl", "in_features", "kernel", "out_features")

    def __init__(
        self,
        w: np.ndarray,
        dtype: Any = None,
        *,
        transpose: bool = False,
        kernel: str | None = None,
    ) -> None:
        if not isinstance(w, np.ndarray):
            raise TypeError(f"w must be a numpy.ndarray, got {type(w).__name__}")
        if w.ndim != 2:
            raise ValueError(f"w must be 2-D, got shape {w.shape}")
        if dtype is None:
            if w.dtype not in _DTYPE_NAMES:
                raise TypeError(
                    f"w has dtype {w.dtype}; pass dtype='float32' or dtype='bfloat16' to convert it"
                )
            dt = w.dtype
        else:
            dt = _weight_dtype(dtype)
            if w.dtype != dt:
                if w.dtype.kind not in "fiu" and w.dtype != BFLOAT16:
                    raise TypeError(f"cannot convert a weight of dtype {w.dtype} to {dt}")
                w = w.astype(dt)
        self.kernel = _kernel_arg(kernel)
        self.dtype = dt
        name = _DTYPE_NAMES[dt]
        self.impl = str(_core.gemm_impl(self.kernel, name)["name"])
        src = w.T if transpose else w  # logical [K, N] view
        if any(s % src.itemsize for s in src.strides):
            src = np.ascontiguousarray(src)
        k, n = src.shape
        self.in_features, self.out_features = int(k), int(n)
        self._buf = _aligned_bytes(int(_core.gemm_packed_bytes(self.kernel, name, k, n)))
        if k and n:
            sk, sn = (s // src.itemsize for s in src.strides)
            _core.gemm_pack(self.kernel, name, src.ctypes.data, k, n, sk, sn, self._buf.ctypes.data)
        self._buf.flags.writeable = False

    @classmethod
    def from_linear(
        cls, w_out_in: np.ndarray, dtype: Any = None, *, kernel: str | None = None
    ) -> PackedWeight:
        """Packs a torch/HF linear weight of shape ``[out_features, in_features]`` (y = x @ w.T)."""
        return cls(w_out_in, dtype, transpose=True, kernel=kernel)

    @property
    def shape(self) -> tuple[int, int]:
        """The logical ``(K, N)`` = ``(in_features, out_features)``."""
        return (self.in_features, self.out_features)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed panels (padding included)."""
        return int(self._buf.nbytes)

    def __repr__(self) -> str:
        return (
            f"PackedWeight(shape={self.shape}, dtype={self.dtype}, kernel={self.kernel!r}, "
            f"impl={self.impl!r})"
        )


def _check_array(name: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in _DTYPE_NAMES:
        raise TypeError(f"{name} must be float32 or bfloat16, got {a.dtype}")
    return a


def matmul(
    x: np.ndarray,
    w: np.ndarray | PackedWeight,
    bias: np.ndarray | None = None,
    out: np.ndarray | None = None,
    *,
    out_dtype: Any = None,
    threads: int = 1,
    kernel: str | None = None,
) -> np.ndarray:
    """``x @ w (+ bias)`` with float32 accumulation; ``x`` is ``[..., K]``, ``w`` is ``[K, N]``.

    ``x``: C-contiguous float32 or bfloat16. ``w``: a ``PackedWeight`` or a ``[K, N]`` float32 or
    bfloat16 array (packed for this call). ``bias``: ``[N]``, float32 or bfloat16. ``out``:
    C-contiguous, writeable, ``x.shape[:-1] + (N,)``, float32 or bfloat16; else a new array of
    ``out_dtype`` (default: ``x.dtype``). ``threads``: threads for this call (default 1).
    """
    x = _check_array("x", x)
    if isinstance(w, PackedWeight):
        if kernel is not None and kernel != w.kernel:
            raise ValueError(f"w was packed for kernel {w.kernel!r}, not {kernel!r}")
        packed = w
    elif isinstance(w, np.ndarray):
        _check_array("w", w)
        if w.ndim != 2:
            raise ValueError(f"w must be 2-D [K, N], got shape {w.shape}")
        if x.ndim >= 1 and w.shape[0] != x.shape[-1]:
            raise ValueError(
                f"shape mismatch: x {x.shape} @ w {w.shape} (K {x.shape[-1]} != {w.shape[0]})"
            )
        packed = PackedWeight(w, kernel=kernel)
    else:
        raise TypeError(f"w must be a PackedWeight or numpy.ndarray, got {type(w).__name__}")
    K, N = packed.shape
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension")
    if x.shape[-1] != K:
        raise ValueError(f"shape mismatch: x {x.shape} has K={x.shape[-1]}, weight has K={K}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use numpy.ascontiguousarray)")
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    M = math.prod(x.shape[:-1])
    out_shape = x.shape[:-1] + (N,)

    bias_arr = None
    if bias is not None:
        bias_arr = _check_array("bias", bias)
        if bias_arr.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {bias_arr.shape}")
        bias_arr = np.ascontiguousarray(bias_arr, dtype=np.float32)

    if out is None:
        odt = x.dtype if out_dtype is None else _weight_dtype(out_dtype)
        out = np.empty(out_shape, dtype=odt)
    else:
        _check_array("out", out)
        if out_dtype is not None and _weight_dtype(out_dtype) != out.dtype:
            raise ValueError(f"out has dtype {out.dtype} but out_dtype={out_dtype!r}")
        if out.shape != out_shape:
            raise ValueError(f"out must have shape {out_shape}, got {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        if np.may_share_memory(out, x) or (bias is not None and np.may_share_memory(out, bias)):
            raise ValueError("out must not overlap x or bias")
    _core.gemm_run(
        packed.kernel,
        _DTYPE_NAMES[packed.dtype],
        packed._buf.ctypes.data,
        K,
        N,
        x.ctypes.data,
        _DTYPE_NAMES[x.dtype],
        M,
        0 if bias_arr is None else bias_arr.ctypes.data,
        out.ctypes.data,
        _DTYPE_NAMES[out.dtype],
        int(threads),
    )
    return out
