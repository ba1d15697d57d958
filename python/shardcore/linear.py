"""Megatron-style tensor-parallel linear layers on a ``Communicator``, and the sharding rule.

Weights follow ``shardcore.kernels``: a full weight ``w`` is ``[K, N]`` (``y = x @ w``); the
torch/HF ``[N, K]`` layout is named ``layout="nk"`` in the helpers below.

Sharding rule (every helper, any rank count): a dimension of length ``n`` over ``size`` ranks is
cut into contiguous blocks in rank order; the first ``n % size`` ranks get ``n // size + 1``
elements, the others ``n // size`` (so ranks beyond ``n`` get empty blocks).

- column parallel: rank r holds columns (output features) ``shard_range(N, size, r)`` of ``w`` and
  the same block of the bias; ``y_r = x @ w_r + b_r`` needs no communication, and
  ``gather_output=True`` all-gathers the blocks into the full ``[..., N]``.
- row parallel: rank r holds rows (input features) ``shard_range(K, size, r)`` of ``w`` and the
  same block of the input's last dimension; the partial products are summed across ranks
  (``all_reduce``, or ``reduce_scatter`` over the first axis of the output), and the full bias is
  added once, after the reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kernels import BFLOAT16, FLOAT32, PackedWeight, matmul

__all__ = [
    "bias_shard",
    "column_parallel_linear",
    "column_shard",
    "input_shard",
    "row_parallel_linear",
    "row_shard",
    "shard_range",
    "shard_sizes",
]

_LAYOUTS = ("kn", "nk")


def shard_sizes(n: int, size: int) -> list[int]:
    """Lengths of the ``size`` contiguous blocks of ``n``: the first ``n % size`` get one extra."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    base, extra = divmod(int(n), int(size))
    return [base + (1 if r < extra else 0) for r in range(int(size))]


def shard_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s block of a dimension of length ``n``."""
    sizes = shard_sizes(n, size)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank!r}")
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def _check_weight(w: Any, layout: str) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy.ndarray, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D, got shape {w.shape}")
    if layout not in _LAYOUTS:
        raise ValueError(
            f"layout must be 'kn' ([K, N], y = x @ w) or 'nk' ([N, K]), got {layout!r}"
        )
    return w


def column_shard(w: np.ndarray, rank: int, size: int, *, layout: str = "kn") -> np.ndarray:
    """Rank ``rank``'s block of output columns of a full weight (a contiguous copy).

    ``layout="kn"``: ``w`` is ``[K, N]`` and the shard is ``[K, N_r]``; ``layout="nk"``: ``w`` is
    the torch/HF ``[N, K]`` and the shard is ``[N_r, K]`` (pack it with ``PackedWeight.from_linear``).
    """
    w = _check_weight(w, layout)
    if layout == "kn":
        a, b = shard_range(w.shape[1], size, rank)
        return np.ascontiguousarray(w[:, a:b])
    a, b = shard_range(w.shape[0], size, rank)
    return np.ascontiguousarray(w[a:b, :])


def row_shard(w: np.ndarray, rank: int, size: int, *, layout: str = "kn") -> np.ndarray:
    """Rank ``rank``'s block of input rows of a full weight (a contiguous copy).

    ``layout="kn"``: ``w`` is ``[K, N]`` and the shard is ``[K_r, N]``; ``layout="nk"``: ``w`` is
    ``[N, K]`` and the shard is ``[N, K_r]``.
    """
    w = _check_weight(w, layout)
    if layout == "kn":
        a, b = shard_range(w.shape[0], size, rank)
        return np.ascontiguousarray(w[a:b, :])
    a, b = shard_range(w.shape[1], size, rank)
    return np.ascontiguousarray(w[:, a:b])


def bias_shard(b: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s block of a column-parallel bias ``[N]``."""
    if not isinstance(b, np.ndarray) or b.ndim != 1:
        raise ValueError("b must be a 1-D numpy.ndarray")
    a, e = shard_range(b.shape[0], size, rank)
    return np.ascontiguousarray(b[a:e])


def input_shard(x: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s block of the last dimension of a row-parallel input ``[..., K]``."""
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise ValueError("x must be a numpy.ndarray with at least one dimension")
    a, b = shard_range(x.shape[-1], size, rank)
    return np.ascontiguousarray(x[..., a:b])


def _rank_size(comm: Any) -> tuple[int, int]:
    return (0, 1) if comm is None else (int(comm.rank), int(comm.size))


def _as_float_dtype(name: str, dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or bfloat16, got {dtype!r}") from None
    if dt not in (FLOAT32, BFLOAT16):
        raise TypeError(f"{name} must be float32 or bfloat16, got {dt}")
    return dt


def column_parallel_linear(
    x: np.ndarray,
    w_shard: np.ndarray | PackedWeight,
    bias_shard: np.ndarray | None = None,
    gather_output: bool = False,
    comm: Any = None,
    *,
    out_features: int | None = None,
    out_dtype: Any = None,
    threads: int = 1,
) -> np.ndarray:
    """``x @ w_r + b_r`` for this rank's output columns; all-gathered to ``[..., N]`` if asked.

    ``x`` is the full input ``[..., K]`` (the same on every rank), ``w_shard`` the rank's
    ``[K, N_r]`` block (a ``PackedWeight`` to avoid packing per call). With ``gather_output`` the
    ranks' blocks are concatenated in rank order; uneven blocks are padded to the widest for the
    all-gather. ``out_features`` (the full N) saves the small all-gather that learns the block
    widths otherwise.
    """
    y = matmul(x, w_shard, bias_shard, out_dtype=out_dtype, threads=threads)
    if not gather_output:
        return y
    if comm is None:
        raise ValueError("gather_output=True needs comm")
    rank, size = _rank_size(comm)
    n_r = y.shape[-1]
    if out_features is None:
        widths = [int(v) for v in comm.all_gather(np.array([n_r], dtype=np.int64))]
    else:
        widths = shard_sizes(out_features, size)
        if widths[rank] != n_r:
            raise ValueError(
                f"rank {rank} holds {n_r} output columns, but out_features="
                f"{out_features} over {size} ranks gives it {widths[rank]}"
            )
    lead = y.shape[:-1]
    y2 = y.reshape(-1, n_r)
    m, wmax = y2.shape[0], max(widths)
    if n_r != wmax:
        padded = np.zeros((m, wmax), dtype=y.dtype)
        padded[:, :n_r] = y2
        y2 = padded
    gathered = comm.all_gather(np.ascontiguousarray(y2)).reshape(size, m, wmax)
    if all(wd == wmax for wd in widths):
        full = np.moveaxis(gathered, 0, 1).reshape(m, size * wmax)
    else:
        full = np.concatenate([gathered[r, :, :wd] for r, wd in enumerate(widths)], axis=1)
    return np.ascontiguousarray(full).reshape(*lead, sum(widths))


def row_parallel_linear(
    x_shard: np.ndarray,
    w_shard: np.ndarray | PackedWeight,
    bias: np.ndarray | None = None,
    comm: Any = None,
    *,
    reduce: str = "all_reduce",
    wire_dtype: Any = "float32",
    out_dtype: Any = None,
    threads: int = 1,
) -> np.ndarray:
    """``sum_r x_r @ w_r + b``: this rank's partial product, reduced across ranks.

    ``x_shard`` is the rank's ``[..., K_r]`` block of the input, ``w_shard`` its ``[K_r, N]``
    block of rows. Partials travel as ``wire_dtype`` (float32 by default, also for bfloat16
    inputs; ``"bfloat16"`` halves the bytes at one more rounding per rank). ``reduce``:
    ``"all_reduce"`` returns the full ``[..., N]`` on every rank; ``"reduce_scatter"`` returns rank
    r's block of the first axis (which must divide evenly by the world size). The full ``bias``
    ``[N]`` is added once, after the reduction. ``out_dtype`` defaults to ``x_shard.dtype``.
    ``comm=None`` is a single rank.
    """
    if reduce not in ("all_reduce", "reduce_scatter"):
        raise ValueError(f"reduce must be 'all_reduce' or 'reduce_scatter', got {reduce!r}")
    wire = _as_float_dtype("wire_dtype", wire_dtype)
    if not isinstance(x_shard, np.ndarray):
        raise TypeError(f"x_shard must be a numpy.ndarray, got {type(x_shard).__name__}")
    odt = x_shard.dtype if out_dtype is None else _as_float_dtype("out_dtype", out_dtype)
    _, size = _rank_size(comm)
    if reduce == "reduce_scatter" and (x_shard.ndim < 2 or x_shard.shape[0] % size):
        raise ValueError(
            f"reduce_scatter splits the first axis of the output over {size} ranks; "
            f"x_shard has shape {x_shard.shape}"
        )
    part = matmul(x_shard, w_shard, out_dtype=wire, threads=threads)
    n = part.shape[-1]
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.shape != (n,):
            raise ValueError(f"bias must be a numpy.ndarray of shape ({n},)")
        _as_float_dtype("bias dtype", bias.dtype)
    if comm is not None and size > 1:
        if reduce == "all_reduce":
            comm.all_reduce(part)
        else:
            part = comm.reduce_scatter(part)
    y = part.astype(np.float32, copy=False)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return np.ascontiguousarray(y.astype(odt, copy=False))
