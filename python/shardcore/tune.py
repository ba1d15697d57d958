"""``shardcore tune``: measure this host's all-reduce crossovers and cache them per host.

For each world size it times the one-shot, two-shot and ring all-reduce over a range of sizes
(median over repetitions) and records the largest size up to which one-shot is fastest and the
largest at which two-shot still beats the ring. Communicators created afterwards on this host
read the cache (shardcore.tuning); rank 0's values are the ones every rank uses.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from pathlib import Path

import numpy as np

from .tuning import cache_path

ALGOS = ("one_shot", "two_shot", "ring")


def _time_algorithms(comm, sizes: list[int], budget: float) -> list[dict]:
    """Median seconds of each algorithm at each size (every rank runs the same iterations)."""
    rows: list[dict] = []
    slot = comm._core.slot_bytes
    for nbytes in sizes:
        x = np.ones(max(1, nbytes // 4), np.float32)
        row: dict[str, float] = {"bytes": nbytes}
        for algo in ALGOS:
            if algo == "one_shot" and nbytes > slot:
                continue
            for _ in range(3):
                comm.all_reduce(x, algorithm=algo)
            times = []
            flag = np.ones(1, np.int32)
            end = time.perf_counter() + budget
            while flag[0]:
                comm.barrier()
                t0 = time.perf_counter()
                comm.all_reduce(x, algorithm=algo)
                times.append(time.perf_counter() - t0)
                # rank 0 decides when to stop, so that every rank runs as many iterations
                flag[0] = int(time.perf_counter() < end and len(times) < 10_000)
                comm.broadcast(flag, 0)
            # The slowest rank's median is the collective's time.
            med = np.array([np.median(times)])
            comm.all_reduce(med, op="max")
            row[algo] = float(med[0])
        rows.append(row)
    return rows


def crossovers(rows: list[dict]) -> tuple[int, int]:
    """(one_shot_max, two_shot_max) from measured rows (sizes ascending).

    The pair of thresholds whose choice (one-shot up to the first, two-shot up to the second, the
    ring above) loses least against the fastest algorithm over every measured size, as the sum
    of log(time chosen / best time): one noisy size where another algorithm happened to win
    does not cut a range short (a single 2 KiB blip on a 16-core host once ended one-shot at 1 KiB
    where it stayed fastest up to 512 KiB). Ties go to the smaller thresholds.
    """
    inline = 88  # payloads up to this size ride in the entry line: one-shot whatever the rows say

    def loss(row: dict, algo: str) -> float:
        best = min(row[a] for a in ALGOS if a in row)
        return math.log(row[algo] / best) if best > 0 else 0.0

    def choice(nbytes: int, one_max: int, two_max: int) -> str:
        if nbytes <= one_max:
            return "one_shot"
        return "two_shot" if nbytes <= two_max else "ring"

    one_candidates = [inline] + [
        r["bytes"] for r in rows if "one_shot" in r and r["bytes"] > inline
    ]
    best_pair, best_cost = (inline, inline), math.inf
    for one_max in one_candidates:
        if any(r["bytes"] <= one_max and "one_shot" not in r for r in rows):
            continue  # one-shot cannot run at a size below this threshold (larger than a slot)
        two_candidates = [one_max] + [r["bytes"] for r in rows if r["bytes"] > one_max]
        for two_max in two_candidates:
            cost = 0.0
            for r in rows:
                algo = choice(r["bytes"], one_max, two_max)
                cost += loss(r, algo) if algo in r else math.inf
            if cost < best_cost - 1e-12:
                best_pair, best_cost = (one_max, two_max), cost
    return best_pair


def tune(world_sizes: list[int], max_bytes: int = 4 << 20, budget: float = 0.1) -> dict:
    """Measure the crossovers for each world size; returns the cache document."""
    from .launcher import launch

    sizes = []
    s = 64
    while s <= max_bytes:
        sizes.append(s)
        s *= 2
    per_size: dict[str, dict] = {}
    doc = {
        "host": socket.gethostname(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "world_sizes": per_size,
    }
    for n in world_sizes:
        # Thresholds of 1 byte / 1 byte make the communicator's own choice irrelevant here.
        rows = launch(_time_algorithms, n, args=(sizes, budget))[0]
        one, two = crossovers(rows)
        per_size[str(n)] = {"one_shot_max": one, "two_shot_max": two, "rows": rows}
    return doc


def _size(text: str):
    import argparse

    from .bench.metrics import parse_size

    try:
        nbytes = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if nbytes < 64:
        raise argparse.ArgumentTypeError(f"must be at least 64 bytes, got {text!r}")
    return nbytes


def register(subparsers) -> None:
    """Add the ``tune`` sub-command."""
    from .cliargs import int_list, output_file, positive_float

    p = subparsers.add_parser(
        "tune",
        help="measure this host's all-reduce crossovers and cache them",
        description="Time the one-shot, two-shot and ring all-reduce at sizes from 64 B to "
        "--max-bytes for each world size, and save the sizes where one gives way to the next; "
        "communicators created afterwards on this host use them.",
    )
    p.add_argument(
        "-n",
        "--ranks",
        default="2,4,8",
        type=int_list(2, "world sizes"),
        help="world sizes, comma-separated, each at least 2 (default 2,4,8)",
    )
    p.add_argument(
        "--max-bytes",
        type=_size,
        default=4 << 20,
        help="largest message timed, K/M/G = 1024-based (default 4M)",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        default=0.1,
        help="seconds per (size, algorithm) (default 0.1)",
    )
    p.add_argument(
        "--output",
        type=output_file,
        default=None,
        help=f"where to save the crossovers (default {cache_path()})",
    )
    p.set_defaults(func=_main)


def _main(args) -> int:
    path = Path(args.output) if args.output else cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"shardcore tune: error: cannot create {path.parent}: {exc.strerror}", file=sys.stderr
        )
        return 2
    doc: dict = {}
    for n in args.ranks:  # one world size at a time, saying so: the whole run takes minutes
        part = tune([n], args.max_bytes, args.budget)
        doc = {**part, "world_sizes": {**doc.get("world_sizes", {}), **part["world_sizes"]}}
        print(f"shardcore tune: world size {n} measured", file=sys.stderr, flush=True)
    path.write_text(json.dumps(doc, indent=1))
    for n, entry in doc["world_sizes"].items():
        print(
            f"world size {n}: one-shot up to {entry['one_shot_max']} B, "
            f"two-shot up to {entry['two_shot_max']} B, ring above"
        )
        print(f"  {'bytes':>10} " + " ".join(f"{a:>10}" for a in ALGOS) + "  (us)")
        for row in entry["rows"]:
            cells = " ".join(f"{row[a] * 1e6:10.2f}" if a in row else f"{'-':>10}" for a in ALGOS)
            print(f"  {row['bytes']:>10} {cells}")
    print(f"saved to {path}")
    return 0
