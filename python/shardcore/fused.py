"""The decoder's per-token numerics in the C++ core: bfloat16 conversion, RMSNorm, SwiGLU, RoPE,
attention over a KV cache.

Each function checks its arguments here (dtype, shape, contiguity, writeability) and calls one
kernel of ``csrc/ops`` with the GIL released; the contracts are written in ``csrc/ops/ops.h``.

Kernels: one table per ISA, chosen once by CPU detection: ``avx512bf16`` (``vcvtneps2bf16``),
``avx512`` and ``avx2`` (bfloat16 rounding in integer lanes) or ``generic`` (portable C++).
``SHARDCORE_OPS_KERNEL=<name>`` forces one; ``isa=`` on a call picks one for that call (tests
cover every path with it).

Numerics: float32 in, float32 arithmetic. bfloat16 results are rounded to nearest even with
subnormals kept and a NaN written as the quiet NaN of its sign: bitwise ml_dtypes' cast, on every
ISA. ``round_bf16=True`` keeps a float32 result but rounds its values to bfloat16 (the runtime's
bfloat16 activations); ``dtype=bfloat16`` returns bfloat16 storage.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from . import _core

__all__ = [
    "attention",
    "from_bfloat16",
    "kernels",
    "norm_rope_",
    "rms_norm",
    "round_bfloat16",
    "selected",
    "swiglu",
    "to_bfloat16",
]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT32 = np.dtype(np.float32)


def kernels() -> list[str]:
    """Op kernel tables this CPU can run, best first (the last is always ``generic``)."""
    return list(_core.ops_kernels())


def selected() -> str:
    """The op kernel table in use (``SHARDCORE_OPS_KERNEL`` or CPU detection)."""
    return str(_core.ops_selected())


def _isa(isa: str | None) -> str:
    return "auto" if isa is None else isa


def _f32(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != FLOAT32:
        raise TypeError(f"{what} must be float32, got {a.dtype}")
    return np.ascontiguousarray(a)


def _out(out: np.ndarray | None, shape: tuple, dtype: np.dtype, what: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape:
        raise ValueError(f"{what}: out must be a {dtype} array of shape {shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{what}: out must be C-contiguous and writeable")
    return out


def _addr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


def to_bfloat16(x: Any, out: np.ndarray | None = None, isa: str | None = None) -> np.ndarray:
    """``x`` (float32) as bfloat16: ``x.astype(ml_dtypes.bfloat16)``, bit for bit."""
    a = _f32(x, "to_bfloat16: x")
    o = _out(out, a.shape, BFLOAT16, "to_bfloat16")
    _core.ops_f32_to_bf16(_isa(isa), _addr(a), _addr(o), a.size)
    return o


def from_bfloat16(x: Any, out: np.ndarray | None = None, isa: str | None = None) -> np.ndarray:
    """``x`` (bfloat16) as float32 (exact)."""
    a = np.asarray(x)
    if a.dtype != BFLOAT16:
        raise TypeError(f"from_bfloat16: x must be bfloat16, got {a.dtype}")
    a = np.ascontiguousarray(a)
    o = _out(out, a.shape, FLOAT32, "from_bfloat16")
    _core.ops_bf16_to_f32(_isa(isa), _addr(a), _addr(o), a.size)
    return o


def round_bfloat16(x: Any, out: np.ndarray | None = None, isa: str | None = None) -> np.ndarray:
    """``x`` (float32) rounded to bfloat16 values, as float32 (``out`` may be ``x``)."""
    a = _f32(x, "round_bfloat16: x")
    o = _out(out, a.shape, FLOAT32, "round_bfloat16")
    _core.ops_round_bf16(_isa(isa), _addr(a), _addr(o), a.size)
    return o


def _store(dtype: Any, round_bf16: bool, what: str) -> tuple[np.dtype, str]:
    dt = np.dtype(dtype)
    if dt == BFLOAT16:
        return dt, "bfloat16"
    if dt == FLOAT32:
        return dt, "float32_bf16" if round_bf16 else "float32"
    raise TypeError(f"{what}: dtype must be float32 or bfloat16, got {dt}")


def rms_norm(
    x: Any,
    weight: Any,
    eps: float,
    dtype: Any = FLOAT32,
    round_bf16: bool = False,
    isa: str | None = None,
) -> np.ndarray:
    """RMSNorm over the last axis, ``x / sqrt(mean(x^2) + eps) * weight``, sums in float32."""
    a = _f32(x, "rms_norm: x")
    w = _f32(weight, "rms_norm: weight")
    if a.ndim == 0 or w.shape != (a.shape[-1],):
        raise ValueError(f"rms_norm: weight must have shape ({a.shape[-1:]}), got {w.shape}")
    dt, store = _store(dtype, round_bf16, "rms_norm")
    o = np.empty(a.shape, dt)
    n = a.shape[-1]
    rows = a.size // n if n else 0
    _core.ops_rms_norm(_isa(isa), _addr(a), rows, n, n, _addr(w), float(eps), _addr(o), n, store)
    return o


def swiglu(
    gate_up: Any, dtype: Any = FLOAT32, round_bf16: bool = False, isa: str | None = None
) -> np.ndarray:
    """``silu(gate) * up`` of ``gate_up`` [..., 2n] holding [gate | up]; returns [..., n]."""
    a = _f32(gate_up, "swiglu: gate_up")
    if a.ndim == 0 or a.shape[-1] % 2:
        raise ValueError(f"swiglu: the last axis must be even (gate | up), got shape {a.shape}")
    dt, store = _store(dtype, round_bf16, "swiglu")
    n = a.shape[-1] // 2
    o = np.empty((*a.shape[:-1], n), dt)
    rows = a.size // a.shape[-1] if a.shape[-1] else 0
    _core.ops_swiglu(_isa(isa), _addr(a), rows, n, 2 * n, _addr(o), n, store)
    return o


def norm_rope_(
    x: np.ndarray,
    cos: Any,
    sin: Any,
    q_heads: int,
    k_heads: int,
    head_dim: int,
    q_norm: Any = None,
    k_norm: Any = None,
    eps: float = 0.0,
    round_bf16: bool = False,
    isa: str | None = None,
) -> np.ndarray:
    """In place on ``x`` [rows, >= (q_heads + k_heads) * head_dim] (float32, C-contiguous): the
    first q_heads + k_heads heads of each row RMS-normed by ``q_norm`` / ``k_norm`` where given,
    then rotated by the row's ``cos``, ``sin`` [rows, head_dim] (rotate_half). Returns ``x``."""
    if not isinstance(x, np.ndarray) or x.dtype != FLOAT32 or x.ndim != 2:
        raise TypeError("norm_rope_: x must be a 2-D float32 array")
    if not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("norm_rope_: x must be C-contiguous and writeable")
    if head_dim <= 0 or head_dim % 2 or q_heads < 0 or k_heads < 0:
        raise ValueError(
            f"norm_rope_: head_dim must be even and > 0 and head counts >= 0, got "
            f"head_dim={head_dim} q_heads={q_heads} k_heads={k_heads}"
        )
    rows = x.shape[0]
    if (q_heads + k_heads) * head_dim > x.shape[1]:
        raise ValueError(
            f"norm_rope_: {q_heads + k_heads} heads of {head_dim} exceed a row of {x.shape[1]}"
        )
    c = _f32(cos, "norm_rope_: cos")
    s = _f32(sin, "norm_rope_: sin")
    if c.shape != (rows, head_dim) or s.shape != (rows, head_dim):
        raise ValueError(
            f"norm_rope_: cos and sin must have shape {(rows, head_dim)}, got {c.shape}, {s.shape}"
        )
    held = []  # the weights as float32 arrays, alive until the call returns
    for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
        wa = None if w is None else _f32(w, f"norm_rope_: {name}")
        if wa is not None and wa.shape != (head_dim,):
            raise ValueError(f"norm_rope_: {name} must have shape ({head_dim},), got {wa.shape}")
        held.append(wa)
    q_addr, k_addr = (0 if wa is None else _addr(wa) for wa in held)
    _core.ops_norm_rope(
        _isa(isa),
        _addr(x),
        rows,
        x.shape[1],
        head_dim,
        q_heads,
        k_heads,
        q_addr,
        k_addr,
        float(eps),
        _addr(c),
        _addr(s),
        bool(round_bf16),
    )
    return x


def attention(
    q: np.ndarray,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    slots: Any,
    starts: Any,
    t: int,
    round_bf16: bool = False,
    isa: str | None = None,
) -> np.ndarray:
    """Causal grouped-query attention of ``len(slots) * t`` query rows over a KV cache.

    q [rows, >= q_heads * head_dim] (float32, C-contiguous; row n*t + i is token i of sequence
    n, its heads side by side) at positions starts[n] + i; k_cache and v_cache [slots, kv_heads,
    length, head_dim] with the new tokens already written. Returns [rows, q_heads * head_dim].
    """
    if not isinstance(q, np.ndarray) or q.dtype != FLOAT32 or q.ndim != 2:
        raise TypeError("attention: q must be a 2-D float32 array")
    if not q.flags.c_contiguous:
        raise ValueError("attention: q must be C-contiguous")
    if kv_heads <= 0 or q_heads % kv_heads or head_dim <= 0 or t < 0:
        raise ValueError(
            f"attention: q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads}), "
            f"head_dim ({head_dim}) > 0 and t ({t}) >= 0"
        )
    sl = np.ascontiguousarray(slots, dtype=np.int64)
    st = np.ascontiguousarray(starts, dtype=np.int64)
    n = sl.shape[0] if sl.ndim == 1 else -1
    if n < 0 or st.shape != (n,) or q.shape[0] != n * t or q.shape[1] < q_heads * head_dim:
        raise ValueError(
            f"attention: slots and starts must be 1-D of one length and q [len(slots) * t, >= "
            f"{q_heads * head_dim}], got {sl.shape}, {st.shape}, {q.shape} (t={t})"
        )
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(c, np.ndarray) or c.dtype != FLOAT32 or not c.flags.c_contiguous:
            raise TypeError(f"attention: {name} must be a C-contiguous float32 array")
        if c.ndim != 4 or c.shape[1] != kv_heads or c.shape[3] != head_dim:
            raise ValueError(
                f"attention: {name} must be [slots, {kv_heads}, length, {head_dim}], got {c.shape}"
            )
    if v_cache.shape != k_cache.shape:
        raise ValueError("attention: k_cache and v_cache must have one shape")
    if n and (sl.min() < 0 or sl.max() >= k_cache.shape[0]):
        raise ValueError(f"attention: slots must be in [0, {k_cache.shape[0]})")
    if n and (st.min() < 0 or st.max() + t > k_cache.shape[2]):
        raise ValueError(f"attention: positions must be in [0, {k_cache.shape[2]})")
    out = np.empty((n * t, q_heads * head_dim), FLOAT32)
    _core.ops_attention(
        _isa(isa),
        _addr(q),
        n,
        t,
        q.shape[1],
        q_heads,
        kv_heads,
        head_dim,
        _addr(k_cache),
        _addr(v_cache),
        k_cache.shape[2],
        _addr(sl),
        _addr(st),
        _addr(out),
        q_heads * head_dim,
        bool(round_bf16),
    )
    return out
