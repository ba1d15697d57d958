"""The decoder's elementwise and attention arithmetic (float32 math).

Activations are float32 arrays. In bfloat16 mode every op's output is rounded to bfloat16
(``Precision.round``) so that activations, the KV cache and every message between ranks hold
bfloat16 values, as a bfloat16 model on an accelerator would; the arithmetic itself (GEMM
accumulation, softmax, norms) stays float32.

The hot per-token ops (``Precision.round``, ``norm``, ``swiglu``, ``qk_norm_rope_``, and the
model's attention over its KV cache) run in the C++ core (``shardcore.fused``) where it is
built; ``SHARDCORE_RUNTIME_OPS=numpy`` (read once per process) keeps them in NumPy, the
reference they are tested against. The bfloat16 rounding is bitwise the same either way; the float32 sums of a norm or a softmax may differ in the last bits.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclass(frozen=True)
class Precision:
    """The model dtype: of weights, activations, KV cache and messages."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.name!r}")

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.name]

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def round(self, x: np.ndarray) -> np.ndarray:
        """``x`` (float32) rounded to the model dtype, returned as float32."""
        if self.name == "float32":
            return x
        core = fused_ops()
        if core is not None and x.dtype == np.float32:
            return core.round_bfloat16(x)
        return x.astype(self.dtype).astype(np.float32)

    @property
    def rounds(self) -> bool:
        """Whether results are rounded to bfloat16 values."""
        return self.name == "bfloat16"

    def weight(self, w: np.ndarray) -> np.ndarray:
        """A checkpoint tensor in the model dtype's values, as float32."""
        return self.round(np.asarray(w).astype(np.float32))


@functools.cache
def fused_ops() -> ModuleType | None:
    """``shardcore.fused`` where the core is built and ``SHARDCORE_RUNTIME_OPS`` is not numpy."""
    want = os.environ.get("SHARDCORE_RUNTIME_OPS", "core")
    if want not in ("core", "numpy"):
        raise ValueError(f"SHARDCORE_RUNTIME_OPS must be core or numpy, got {want!r}")
    if want == "numpy":
        return None
    try:
        from .. import fused
    except ImportError:
        return None
    return fused


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    return (x * (1.0 / np.sqrt(var + np.float32(eps)))).astype(np.float32) * weight


def norm(x: np.ndarray, weight: np.ndarray, eps: float, precision: Precision) -> np.ndarray:
    """``rms_norm`` rounded to the model dtype (in the core where built)."""
    core = fused_ops()
    if core is not None:
        return core.rms_norm(x, weight, eps, round_bf16=precision.rounds)
    return precision.round(rms_norm(x, weight, eps))


def swiglu(gate_up: np.ndarray, precision: Precision) -> np.ndarray:
    """silu(gate) * up of [..., 2n] rows [gate | up], rounded to the model dtype."""
    core = fused_ops()
    if core is not None:
        return core.swiglu(gate_up, round_bf16=precision.rounds)
    n = gate_up.shape[-1] // 2
    return precision.round(silu(gate_up[..., :n]) * gate_up[..., n:])


def qk_norm_rope_(
    qkv: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    q_heads: int,
    k_heads: int,
    head_dim: int,
    q_norm: np.ndarray | None,
    k_norm: np.ndarray | None,
    eps: float,
    precision: Precision,
) -> None:
    """In place on ``qkv`` [R, heads * head_dim] (C-contiguous, heads [q | k | v]): the q and k
    heads RMS-normed where the weights are given, then rotated by each row's tables cos, sin
    [R, head_dim], each step rounded to the model dtype."""
    core = fused_ops()
    if core is not None:
        core.norm_rope_(
            qkv, cos, sin, q_heads, k_heads, head_dim, q_norm, k_norm, eps, precision.rounds
        )
        return
    rnd = precision.round
    rows = qkv.shape[0]
    heads = qkv[:, : (q_heads + k_heads) * head_dim].reshape(rows, q_heads + k_heads, head_dim)
    q, k = heads[:, :q_heads], heads[:, q_heads:]
    if q_norm is not None and k_norm is not None:
        q = rnd(rms_norm(q, q_norm, eps))
        k = rnd(rms_norm(k, k_norm, eps))
    c, s = cos[:, None], sin[:, None]
    heads[:, :q_heads] = rnd(apply_rope(q, c, s))
    heads[:, q_heads:] = rnd(apply_rope(k, c, s))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    return x / (np.float32(1.0) + np.exp(-x))


def rope_tables(positions: np.ndarray, head_dim: int, theta: float):
    """cos and sin tables [len(positions), head_dim] in the rotate_half layout.

    The inverse frequencies are computed in float32 as Hugging Face computes them, so that the
    tables agree with the reference to the last bit or two.
    """
    inv_freq = (
        1.0
        / (
            np.float32(theta)
            ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
        )
    ).astype(np.float32)
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [..., T, head_dim] by the tables [T, head_dim] (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Grouped-query attention of T new queries at positions start.. over start+T cached keys.

    q: [B, KV, G, T, D] (G query heads per KV head), k and v: [B, KV, start+T, D].
    Returns [B, KV, G, T, D].
    """
    t, d = q.shape[-2], q.shape[-1]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)[:, :, None]) * np.float32(d**-0.5)
    allowed = np.arange(k.shape[2])[None, :] <= (start + np.arange(t))[:, None]
    scores = np.where(allowed, scores, np.float32(-np.inf))
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.matmul(probs, v[:, :, None]).astype(np.float32)


def causal_attention_rows(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """``causal_attention`` with each row at its own position: row r's T queries are at
    positions starts[r].., over k and v [N, KV, L, D] of which it sees starts[r] + T."""
    t, d = q.shape[-2], q.shape[-1]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)[:, :, None]) * np.float32(d**-0.5)
    last = np.asarray(starts)[:, None] + np.arange(t)[None, :]  # [N, T]
    allowed = np.arange(k.shape[2])[None, None, :] <= last[:, :, None]  # [N, T, L]
    scores = np.where(allowed[:, None, None], scores, np.float32(-np.inf))
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.matmul(probs, v[:, :, None]).astype(np.float32)


def softmax_top_k(logits: np.ndarray, k: int, renormalise: bool):
    """Router: softmax over experts, the k largest (descending), optionally renormalised.

    Returns (indices [N, k] int64, weights [N, k] float32).
    """
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(p, idx, axis=-1)
    if renormalise:
        w = w / w.sum(axis=-1, keepdims=True)
    return idx.astype(np.int64), w.astype(np.float32)
