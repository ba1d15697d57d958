"""nccl-tests' bandwidth definitions, the ring traffic model, and message-size parsing.

Vocabulary (nccl-tests'): ``nbytes`` is the size column of a sweep. For all-gather it is the size
of the gathered (output) buffer, for reduce-scatter the size of the full (input) buffer, for
all-to-all the size of one rank's send buffer; for the rest it is the buffer size. ``algbw`` is
nbytes / time and ``busbw`` is algbw times a factor that makes the figure comparable with the
link's peak bandwidth whatever the world size. GB is 1e9 bytes.
"""

from __future__ import annotations

import math
import re

import numpy as np

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "sendrecv")

# The traffic counter kind each benchmarked op shows up under in Communicator.traffic().
TRAFFIC_KIND = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "all_to_all": "all_to_all",
    "broadcast": "broadcast",
    "sendrecv": "send",
}

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64")

# The core's algorithms for each op that has a choice (shardcore.comm checks the same lists).
ALGORITHMS = {
    "all_reduce": ("ring", "one_shot", "two_shot", "symmetric"),
    "all_gather": ("flat", "ring", "cma", "symmetric"),
    "all_to_all": ("pairwise", "flat", "cma", "symmetric"),
}

# Ops whose count must split evenly over the ranks: nccl-tests rounds the count down likewise.
_SPLIT_OPS = ("all_gather", "reduce_scatter", "all_to_all")

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "GIB": 1 << 30,
}


def check_op(op: str) -> str:
    """Return ``op`` if it is a benchmarked collective, else raise ValueError naming the choices."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    return op


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a dtype name (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return np.dtype(name)


def parse_size(text: str) -> int:
    """Parse a byte count such as ``8``, ``64K``, ``256M``, ``1G`` or ``2MiB`` (K = 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"bad size {text!r}: expected a number with an optional K, M or G suffix")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def size_range(spec: str, factor: float | None = None) -> list[int]:
    """Message sizes for ``spec``: ``MIN:MAX`` (doubling, or times ``factor``, and MAX itself),
    ``A,B,C`` or one size."""
    if "," in spec:
        sizes = [parse_size(s) for s in spec.split(",") if s.strip()]
    elif ":" in spec:
        lo_text, hi_text = spec.split(":", 1)
        lo, hi = parse_size(lo_text), parse_size(hi_text)
        if lo <= 0 or hi < lo:
            raise ValueError(f"bad size range {spec!r}: need 0 < MIN <= MAX")
        step = 2.0 if factor is None else float(factor)
        if step <= 1.0:
            raise ValueError(f"--factor must be greater than 1, got {factor}")
        sizes, s = [], float(lo)
        while round(s) <= hi:
            if not sizes or round(s) != sizes[-1]:
                sizes.append(round(s))
            s *= step
        if sizes[-1] != hi:  # MAX is measured even where the steps from MIN jump past it
            sizes.append(hi)
    else:
        sizes = [parse_size(spec)]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"bad sizes {spec!r}: every size must be positive")
    return sizes


def parse_ranks(spec: str | int) -> list[int]:
    """World sizes from ``"4"`` or ``"2,4,8"``; each must be at least 2."""
    ranks = [int(s) for s in str(spec).split(",") if s.strip()]
    if not ranks or any(n < 2 for n in ranks):
        raise ValueError(f"bad --ranks {spec!r}: give one or more world sizes, each at least 2")
    return ranks


def element_count(op: str, nbytes: int, itemsize: int, world_size: int) -> int:
    """Elements of the size column for ``nbytes``; rounded down to a multiple of the world size
    for the ops that split their buffer evenly (0 when the message is too small to split)."""
    count = nbytes // itemsize
    if op in _SPLIT_OPS:
        count -= count % world_size
    return count


def bus_factor(op: str, world_size: int) -> float:
    """busbw / algbw, as nccl-tests defines it."""
    n = world_size
    check_op(op)
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0  # broadcast, sendrecv


def algbw(nbytes: int, seconds: float) -> float:
    """Algorithm bandwidth in GB/s (1e9 bytes)."""
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf


def busbw(op: str, world_size: int, nbytes: int, seconds: float) -> float:
    """Bus bandwidth in GB/s: algbw times :func:`bus_factor`."""
    return algbw(nbytes, seconds) * bus_factor(op, world_size)


def model_sent_total(op: str, world_size: int, nbytes: int) -> int:
    """Bytes all ranks together send in one call under the ring traffic model (exact integers).

    Ring all-reduce: every one of the n chunks crosses n-1 links in the reduce-scatter phase and
    again in the all-gather phase, 2(n-1)S in all. All-gather and reduce-scatter: each of the n
    blocks crosses n-1 links, (n-1)S. All-to-all: each rank keeps one of its n blocks, (n-1)S.
    Broadcast: the root's buffer is written once for the others to read, S. Sendrecv: every rank
    sends S to its neighbour, nS.
    """
    n = world_size
    check_op(op)
    if op == "all_reduce":
        return 2 * (n - 1) * nbytes
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) * nbytes
    if op == "broadcast":
        return nbytes
    return n * nbytes  # sendrecv


# The ring model per op, as the tables write it (S: the size column, n: ranks).
RING_RULE = {
    "all_reduce": "2(n-1)/n*S",
    "all_gather": "(n-1)/n*S",
    "reduce_scatter": "(n-1)/n*S",
    "all_to_all": "(n-1)/n*S",
    "broadcast": "S from the root",
    "sendrecv": "S",
}


def algorithm_rule(op: str, algorithm: str | None, world_size: int, nbytes: int) -> tuple:
    """(name, formula, bytes all ranks together send in one call) of the rule the core's
    ``algorithm`` follows. Every algorithm sends what the ring model says except the one-shot
    all-reduce, where each rank's whole input is read by the n-1 others: (n-1)*S per rank. (The
    two-shot and symmetric all-reduces send S + (n-2)*|own block| per rank, which sums over the
    ranks to the ring's total.)"""
    n = world_size
    if op == "all_reduce" and algorithm == "one_shot":
        return "one-shot rule", "(n-1)*S", n * (n - 1) * nbytes
    return "ring model", RING_RULE[op], model_sent_total(op, n, nbytes)


def model_sent_per_rank(op: str, world_size: int, nbytes: int) -> float:
    """Mean bytes one rank sends per call under the ring model: 2(n-1)/n*S for all-reduce
    (4(n-1)h/n for h bf16 elements), (n-1)/n*S for all-gather, reduce-scatter and all-to-all."""
    return model_sent_total(op, world_size, nbytes) / world_size


def ring_steps(op: str, world_size: int) -> int:
    """Latency terms (sequential synchronisation steps) of the ring algorithm, the alpha-beta
    model's multiplier of alpha: 2(n-1) for all-reduce, n-1 for the one-phase rings, 1 otherwise."""
    n = world_size
    check_op(op)
    if op == "all_reduce":
        return 2 * (n - 1)
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return n - 1
    return 1


def format_bytes(n: float | None) -> str:
    """Human size with binary units: ``8 B``, ``64 KiB``, ``1.5 MiB``."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            value = n / scale
            if value == int(value) or value >= 1000:
                return f"{value:.0f} {unit}"
            return f"{value:.3g} {unit}"
    return f"{n:.0f} B" if n == int(n) else f"{n:.1f} B"
