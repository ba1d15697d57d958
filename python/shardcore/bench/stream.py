"""``shardcore bench stream``: the machine's memory copy bandwidth with p processes at once.

    shardcore bench stream -p 1,2,8

Each process copies its own buffer (larger than the caches) with NumPy, all of them at once;
bandwidth counts bytes read plus bytes written (STREAM's convention for copy), GB = 1e9. It is
the ceiling that a shared-memory collective's memory traffic is measured against.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

import numpy as np

from ..cliargs import description, int_list, output_file, positive_int
from . import metrics
from .report import write_json


def _copier(nbytes: int, reps: int, barrier, queue) -> None:
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)
    np.copyto(dst, src)  # fault the pages in before the clock starts
    barrier.wait()
    start = time.perf_counter()
    for _ in range(reps):
        np.copyto(dst, src)
    queue.put(time.perf_counter() - start)


def copy_bandwidth(processes: int, nbytes: int = 256 << 20, reps: int = 5) -> dict:
    """Aggregate copy bandwidth (GB/s, read + write) of ``processes`` simultaneous copiers."""
    if processes < 1 or nbytes < 8 or reps < 1:
        raise ValueError("need processes >= 1, nbytes >= 8 and reps >= 1")
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_copier, args=(nbytes, reps, barrier, queue)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    times = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    moved = 2 * (nbytes // 8) * 8 * reps
    return {
        "processes": processes,
        "bytes_per_process": nbytes,
        "reps": reps,
        "aggregate_GBps": sum(moved / t for t in times) / 1e9,
        "slowest_process_GBps": moved / max(times) / 1e9,
    }


def register(sub) -> None:
    """Add ``stream`` to the ``bench`` sub-parsers."""
    p = sub.add_parser(
        "stream",
        help="memory copy bandwidth with p processes (the ceiling)",
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-p",
        "--processes",
        default="1,2",
        type=int_list(1, "process counts"),
        help="process counts, comma-separated (default 1,2)",
    )
    p.add_argument(
        "--size",
        default="256M",
        type=_size,
        help="buffer per process, K/M/G = 1024-based (default 256M)",
    )
    p.add_argument("--reps", type=positive_int, default=5, help="copies per process (default 5)")
    p.add_argument(
        "--json",
        metavar="PATH",
        type=output_file,
        help="write results as JSON ('-' for stdout)",
    )
    p.set_defaults(func=main)


def _size(text: str) -> int:
    try:
        nbytes = metrics.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if nbytes < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 bytes, got {text!r}")
    return nbytes


def main(args) -> int:
    """Measure and print the copy bandwidth for each process count."""
    results = []
    for count in args.processes:
        results.append(copy_bandwidth(count, args.size, args.reps))
        if args.json != "-":
            print(f"# {count} process(es) measured", file=sys.stderr, flush=True)
    if args.json:
        write_json({"results": results}, args.json)
    if args.json != "-":
        sys.stdout.write(
            "# copy bandwidth, bytes read + written, GB = 1e9\n"
            f"{'procs':>5} {'aggregate GB/s':>14} {'per process':>11}\n"
        )
        for r in results:
            sys.stdout.write(
                f"{r['processes']:>5} {r['aggregate_GBps']:>14.2f} "
                f"{r['aggregate_GBps'] / r['processes']:>11.2f}\n"
            )
    return 0
