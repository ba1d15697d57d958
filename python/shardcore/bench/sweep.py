"""The measuring loop that runs inside every rank, whatever the backend, and the merge of the
ranks' raw timings into one row per message size."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import metrics
from .backends import Backend, buffer_shapes

# Buffer sets rotate (see rotation_bytes) so that a repeated call does not find its inputs in
# cache; at most this many sets, so that tiny sizes do not allocate thousands of arrays.
_MAX_SETS = 64
_CONNECT_WARMUP = 20  # untimed calls before the first size


def cache_sizes() -> dict[int, int]:
    """{level: bytes} of cpu0's data and unified caches from sysfs (empty when unreadable)."""
    sizes: dict[int, int] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return sizes
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, entry, "size")) as f:
                sizes[level] = max(sizes.get(level, 0), metrics.parse_size(f.read().strip()))
        except (OSError, ValueError):
            continue
    return sizes


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache sysfs reports for cpu0 (32 MiB when it reports none)."""
    return max(cache_sizes().values(), default=32 << 20)


def rotation_bytes(world_size: int) -> int:
    """Bytes of buffer sets each rank rotates through so that no call finds its input in cache:
    the ranks together cover twice the shared last-level cache, and each rank at least four
    times its private (second-to-last level) cache."""
    sizes = cache_sizes()
    if not sizes:
        return 64 << 20
    levels = sorted(sizes)
    private = sizes[levels[-2]] if len(levels) > 1 else 0
    return max(2 * sizes[levels[-1]] // world_size, 4 * private, 1 << 20)


def fill(x: np.ndarray, rank: int, salt: int) -> None:
    """Fill ``x`` with non-trivial values cheaply: a random block of 64 Ki elements, repeated
    (generating hundreds of megabytes of random numbers per size would dominate a sweep)."""
    block = rank_data(rank, salt, min(x.size, 1 << 16), x.dtype)
    flat = x.reshape(-1)
    for start in range(0, flat.size, block.size):
        n = min(block.size, flat.size - start)
        flat[start : start + n] = block[:n]


@dataclass
class SweepConfig:
    """Everything a rank needs to run one sweep (plain data: it crosses process boundaries)."""

    op: str = "all_reduce"
    sizes: list = field(default_factory=lambda: [8])
    dtype: str = "float32"
    inplace: bool = False
    algorithm: str | None = None
    warmup: int = 5
    iters: int | None = None  # None: enough iterations for min_time seconds, within bounds
    min_time: float = 0.05
    min_iters: int = 5
    max_iters: int = 2000
    hot: bool = False
    check: bool = False
    progress: str = ""  # "bar", "lines" (one line per size) or "": nothing
    label: str = ""
    cache_bytes: int = 0  # bytes of rotating buffer sets per rank; 0: rotation_bytes()

    def to_dict(self) -> dict:
        return asdict(self)


def rank_data(rank: int, salt: int, elements: int, dtype: np.dtype) -> np.ndarray:
    """Deterministic random input of ``rank``: any rank can recompute any other rank's input."""
    rng = np.random.default_rng([rank, salt + 1, elements])  # salt -1: the check's input
    if dtype.kind in "iu":
        return rng.integers(-100, 100, size=elements).astype(dtype)
    return rng.standard_normal(elements).astype(dtype)


def _tolerance(dtype: np.dtype, world_size: int) -> float:
    """Error allowed relative to the sum of magnitudes: a few roundings per rank."""
    if dtype.kind in "iu":
        return 0.0
    eps = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
    return 4 * world_size * eps[dtype.name]


def _expected(op: str, rank: int, n: int, send_elems: int, dtype: np.dtype):
    """What rank ``rank`` must hold after ``op`` when every rank r sent rank_data(r, -1, ...);
    returns (expected float64 values, magnitude scale for the tolerance)."""

    def inputs(r: int) -> np.ndarray:
        return rank_data(r, -1, send_elems, dtype).astype(np.float64)

    if op in ("all_reduce", "reduce_scatter"):
        total = np.zeros(send_elems)
        scale = np.zeros(send_elems)
        for r in range(n):
            x = inputs(r)
            total += x
            scale += np.abs(x)
        if op == "reduce_scatter":
            m = send_elems // n
            total, scale = total[rank * m : (rank + 1) * m], scale[rank * m : (rank + 1) * m]
        return total, scale
    if op == "all_gather":
        exp = np.concatenate([inputs(r) for r in range(n)])
    elif op == "all_to_all":
        m = send_elems // n
        exp = np.concatenate([inputs(r)[rank * m : (rank + 1) * m] for r in range(n)])
    elif op == "broadcast":
        exp = inputs(0)
    else:  # sendrecv
        exp = inputs((rank - 1) % n)
    return exp, np.abs(exp)


def check_result(backend: Backend, cfg: SweepConfig, count: int, dtype: np.dtype) -> float:
    """Run ``cfg.op`` once on fresh known data and compare with a float64 NumPy reference;
    returns the error relative to the sum of magnitudes and raises when it is too large."""
    n, rank = backend.size, backend.rank
    send_elems, recv_elems = buffer_shapes(cfg.op, count, n, cfg.inplace)
    send = backend.allocate(send_elems, dtype)
    send[...] = rank_data(rank, -1, send_elems, dtype)
    recv = None
    if recv_elems is not None:
        recv = backend.allocate(recv_elems, dtype)
        recv[...] = np.array(np.nan if dtype.kind == "f" else -1).astype(dtype)
    backend.caller(cfg.op, send, recv, cfg.algorithm)()
    got = (send if recv is None else recv).astype(np.float64)
    exp, scale = _expected(cfg.op, rank, n, send_elems, dtype)
    err = float(np.max(np.abs(got - exp) / np.maximum(scale, 1e-30))) if exp.size else 0.0
    if not err <= _tolerance(dtype, n):  # NaN (an element never written) fails too
        raise AssertionError(
            f"{backend.name} {cfg.op} {dtype.name} count={count} on rank {rank}: relative error "
            f"{err:.3g} exceeds {_tolerance(dtype, n):.3g}"
        )
    return err


class _Progress:
    """Progress on stderr: a bar (tqdm's when installed, else one rewritten line) on a terminal,
    or one line per finished size (``lines``) for logs and pipes."""

    def __init__(self, total: int, label: str, mode: str = "bar"):
        self.total, self.label, self.done, self.mode = total, label, 0, mode
        self.start = time.perf_counter()
        self.bar = None
        if mode == "bar":
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, unit="size", file=sys.stderr, leave=False)
            except ImportError:
                pass

    def update(self, nbytes: int) -> None:
        self.done += 1
        size = metrics.format_bytes(nbytes)
        if self.bar is not None:
            self.bar.set_postfix_str(size)
            self.bar.update(1)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start
            sys.stderr.write(
                f"{self.label}: {size} done ({self.done}/{self.total}, {elapsed:.1f} s)\n"
            )
        else:
            sys.stderr.write(f"\r{self.label} {self.done}/{self.total} {size:>10}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode != "lines":
            sys.stderr.write("\r" + " " * (len(self.label) + 30) + "\r")
            sys.stderr.flush()


def run_sweep(backend: Backend, cfg: SweepConfig) -> dict:
    """Measure every size of ``cfg`` on this rank; returns raw per-iteration timings and counters."""
    dtype = metrics.numpy_dtype(cfg.dtype)
    reason = backend.unsupported(cfg.op, dtype)
    if reason:
        raise ValueError(f"{backend.name} cannot run {cfg.op} on {cfg.dtype}: {reason}")
    n = backend.size
    cache = cfg.cache_bytes or rotation_bytes(n)
    mode = "bar" if cfg.progress is True else cfg.progress
    progress = _Progress(len(cfg.sizes), cfg.label, mode) if mode and backend.rank == 0 else None
    records = []
    # Libraries set up connections lazily (Open MPI, gloo): pay that before the first size.
    first = next((metrics.element_count(cfg.op, s, dtype.itemsize, n) for s in cfg.sizes), 0)
    if first and cfg.warmup:
        send_elems, recv_elems = buffer_shapes(cfg.op, first, n, cfg.inplace)
        send = backend.allocate(send_elems, dtype)
        send.fill(0)
        recv = None if recv_elems is None else backend.allocate(recv_elems, dtype)
        call = backend.caller(cfg.op, send, recv, cfg.algorithm)
        for _ in range(_CONNECT_WARMUP):
            call()
        del call, send, recv
    for nominal in cfg.sizes:
        count = metrics.element_count(cfg.op, nominal, dtype.itemsize, n)
        rec = {"nominal_bytes": nominal, "count": count, "nbytes": count * dtype.itemsize}
        if count == 0:
            rec["skipped"] = f"fewer than {n} elements of {cfg.dtype}"
            records.append(rec)
            if progress:
                progress.update(nominal)
            continue
        if cfg.check:
            rec["check_error"] = check_result(backend, cfg, count, dtype)
        send_elems, recv_elems = buffer_shapes(cfg.op, count, n, cfg.inplace)
        set_bytes = (send_elems + (recv_elems or 0)) * dtype.itemsize
        nsets = 1 if cfg.hot else max(1, min(_MAX_SETS, math.ceil(cache / set_bytes)))
        calls = []
        for s in range(nsets):
            send = backend.allocate(send_elems, dtype)
            fill(send, backend.rank, s)
            recv = None
            if recv_elems is not None:
                recv = backend.allocate(recv_elems, dtype)
                recv.fill(0)  # touch the pages now, not inside the timed loop
            calls.append(backend.caller(cfg.op, send, recv, cfg.algorithm))
        backend.barrier()
        t0 = time.perf_counter()
        for i in range(cfg.warmup):
            calls[i % nsets]()
        per_call = (time.perf_counter() - t0) / max(cfg.warmup, 1)
        if cfg.iters is not None:
            iters = cfg.iters
        else:
            want = math.ceil(cfg.min_time / per_call) if per_call > 0 else cfg.max_iters
            iters = backend.agree(max(cfg.min_iters, min(cfg.max_iters, want)))
        times = np.empty(iters)
        clock = time.perf_counter
        backend.barrier()
        backend.reset_traffic()
        for i in range(iters):
            call = calls[i % nsets]
            start = clock()
            call()
            times[i] = clock() - start
        traffic = backend.traffic(cfg.op)
        rec.update(iters=iters, nsets=nsets, times=times.tolist(), traffic=traffic)
        records.append(rec)
        del calls
        if progress:
            progress.update(nominal)
    if progress:
        progress.close()
    return {"rank": backend.rank, "backend": backend.name, "records": records}


def merge_ranks(per_rank: list[dict], cfg: SweepConfig, stat: str = "mean") -> list[dict]:
    """One row per size from every rank's raw results: times, algbw/busbw (nccl-tests), bytes
    sent per rank against the ring model."""
    if stat not in ("mean", "median"):
        raise ValueError(f"bad stat {stat!r}: mean or median")
    n = len(per_rank)
    rows = []
    for i, first in enumerate(per_rank[0]["records"]):
        row = {
            "backend": per_rank[0]["backend"],
            "op": cfg.op,
            "world_size": n,
            "dtype": cfg.dtype,
            "inplace": cfg.inplace or cfg.op == "broadcast",
            "nbytes": first["nbytes"],
            "count": first["count"],
            "nominal_bytes": first["nominal_bytes"],
        }
        if "skipped" in first:
            row["skipped"] = first["skipped"]
            rows.append(row)
            continue
        recs = [r["records"][i] for r in per_rank]
        times = np.array([r["times"] for r in recs])  # (ranks, iters)
        rank_means = times.mean(axis=1)
        slowest_per_iter = times.max(axis=0)
        row.update(
            iters=first["iters"],
            nsets=first["nsets"],
            time_avg_us=float(rank_means.mean() * 1e6),
            time_max_us=float(rank_means.max() * 1e6),
            time_median_us=float(np.median(slowest_per_iter) * 1e6),
        )
        seconds = (row["time_avg_us"] if stat == "mean" else row["time_median_us"]) / 1e6
        row["stat"] = stat
        row["algbw"] = metrics.algbw(row["nbytes"], seconds)
        row["busbw"] = metrics.busbw(cfg.op, n, row["nbytes"], seconds)
        if "check_error" in first:
            row["check_error"] = max(r["check_error"] for r in recs)
        row.update(_traffic_columns(cfg.op, n, row["nbytes"], [r["traffic"] for r in recs]))
        rows.append(row)
    return rows


def _traffic_columns(op: str, n: int, nbytes: int, traffic: list) -> dict:
    """Measured bytes sent per rank and call against the ring model."""
    model = metrics.model_sent_per_rank(op, n, nbytes)
    cols: dict = {"model_bytes": model}
    if any(t is None for t in traffic):
        cols.update(sent_per_rank=None, sent_max=None, bytes_ratio=None, bytes_exact=None)
        return cols
    calls = [t["calls"] for t in traffic]
    if len(set(calls)) != 1 or calls[0] == 0:
        raise AssertionError(f"traffic counters disagree on the number of {op} calls: {calls}")
    sent = [t["sent"] / calls[0] for t in traffic]
    per_rank = float(np.mean(sent))
    cols.update(
        sent_per_rank=per_rank,
        sent_max=float(max(sent)),
        bytes_ratio=per_rank / model if model else None,
        # Exact for the ring: every rank's counter summed is the model's integer total.
        bytes_exact=sum(t["sent"] for t in traffic)
        == metrics.model_sent_total(op, n, nbytes) * calls[0],
    )
    algorithms = {a for t in traffic for a in t.get("algorithms", {})}
    if algorithms:
        cols["algorithm"] = ",".join(sorted(algorithms))
    # The rule of the algorithm that ran (one algorithm per size; a mix is held to the ring's).
    algorithm = next(iter(algorithms)) if len(algorithms) == 1 else None
    rule, formula, total = metrics.algorithm_rule(op, algorithm, n, nbytes)
    cols.update(
        rule=rule,
        rule_formula=formula,
        rule_bytes=total / n,
        bytes_equal_rule=sum(t["sent"] for t in traffic) == total * calls[0],
    )
    return cols
