"""``shardcore bench collectives``: nccl-tests for shared memory.

    shardcore bench collectives --op all_reduce -n 4 --sizes 8:16M

prints, per message size, the time (mean over ranks, slowest rank, median iteration), algbw and
busbw as nccl-tests defines them, and the bytes each rank sent by the core's own counters against
the ring model.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from ..cliargs import (
    UsageError,
    choice_list,
    description,
    int_list,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
    progress_mode,
)
from . import metrics
from .report import format_table, write_csv, write_json
from .runners import run_backend
from .sweep import SweepConfig, merge_ranks


def _sizes(text: str) -> str:
    """--sizes as typed, once it is known to parse (the steps need --factor, read later)."""
    try:
        metrics.size_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _factor(text: str) -> float:
    value = positive_float(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(f"must be greater than 1, got {text}")
    return value


def _algorithm(text: str) -> str:
    known = sorted({a for algos in metrics.ALGORITHMS.values() for a in algos})
    if text not in known:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(known)}")
    return text


def add_sweep_arguments(
    p: argparse.ArgumentParser, sizes: str = "8:32M", mode: str = "out"
) -> None:
    """The options every sweeping sub-command shares."""
    p.add_argument(
        "--op",
        default="all_reduce",
        type=choice_list(metrics.OPS),
        help=f"collective(s), comma-separated: {', '.join(metrics.OPS)} (default all_reduce)",
    )
    p.add_argument(
        "-n",
        "--ranks",
        default="2",
        type=int_list(2, "world sizes"),
        help="world size(s), comma-separated, each at least 2, e.g. 2,4,8 (default 2)",
    )
    p.add_argument(
        "--sizes",
        default=sizes,
        type=_sizes,
        help=f"MIN:MAX (powers of two, or times --factor, and MAX itself), A,B,C or one size; "
        f"K/M/G = 1024-based (default {sizes})",
    )
    p.add_argument(
        "--factor", type=_factor, default=None, help="step between sizes of MIN:MAX (default 2)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=metrics.DTYPES, help="element type (default float32)"
    )
    p.add_argument(
        "--algorithm",
        default=None,
        type=_algorithm,
        help="force the core's algorithm: "
        + "; ".join(f"{op}: {', '.join(a)}" for op, a in metrics.ALGORITHMS.items())
        + " (default: the core's choice by size; an all_to_all without the named algorithm "
        "and the other ops run their own; peers always run their own)",
    )
    p.add_argument(
        "--mode",
        choices=("out", "in", "both"),
        default=mode,
        help=f"all-reduce out-of-place, in place, or both (default {mode}); "
        "broadcast is always in place",
    )
    p.add_argument(
        "--warmup", type=non_negative_int, default=5, help="untimed calls per size (default 5)"
    )
    p.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help="timed calls per size (default: enough for --min-time, 5..2000)",
    )
    p.add_argument(
        "--min-time",
        type=positive_float,
        default=0.05,
        help="seconds of timed calls per size when --iters is not given (default 0.05)",
    )
    p.add_argument(
        "--hot",
        action="store_true",
        help="reuse one buffer set (default: rotate sets larger than twice the "
        "last-level cache, so no call finds its input in cache)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check each size's result once against a float64 NumPy reference",
    )
    p.add_argument(
        "--stat",
        choices=("mean", "median"),
        default="mean",
        help="time that algbw/busbw are computed from (default mean, as nccl-tests)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "off"),
        default="auto",
        help="progress on stderr: a bar, one line per size, or nothing (auto: a bar on a "
        "terminal, lines otherwise)",
    )


def configs_from_args(args) -> list[SweepConfig]:
    """One SweepConfig per (op, in-place mode) the options ask for."""
    ops = list(args.op)
    sizes = metrics.size_range(args.sizes, args.factor)
    if args.algorithm is not None:
        for op in ops:
            own = metrics.ALGORITHMS.get(op, ())
            if op in ("all_reduce", "all_gather") and args.algorithm not in own:
                raise UsageError(
                    f"--algorithm {args.algorithm} is not one of {op}'s: {', '.join(own)}"
                )
    progress = progress_mode(args.progress)
    configs = []
    for op in ops:
        modes = {"out": [False], "in": [True], "both": [False, True]}[args.mode]
        if op != "all_reduce":
            modes = [False]
        for inplace in modes:
            configs.append(
                SweepConfig(
                    op=op,
                    sizes=sizes,
                    dtype=args.dtype,
                    inplace=inplace,
                    algorithm=args.algorithm,
                    warmup=args.warmup,
                    iters=args.iters,
                    min_time=args.min_time,
                    hot=args.hot,
                    check=args.check,
                    progress=progress,
                )
            )
    return configs


def measure(
    backend: str,
    configs: list[SweepConfig],
    world_sizes: list[int],
    stat: str = "mean",
    symmetric: bool = False,
) -> list[dict]:
    """Rows of every config at every world size on ``backend``."""
    rows = []
    for n in world_sizes:
        for cfg in configs:
            cfg.label = f"{backend} {cfg.op} n={n}"
            rows += merge_ranks(run_backend(backend, cfg, n, symmetric=symmetric), cfg, stat)
    return rows


def command_line() -> str:
    """The command as typed, when run through the ``shardcore`` script."""
    import os

    if os.path.basename(sys.argv[0]) == "shardcore" or sys.argv[0].endswith(
        os.path.join("shardcore", "cli.py")
    ):
        return "shardcore " + " ".join(sys.argv[1:])
    return " ".join(["python"] + sys.argv)


def machine_info() -> dict:
    """What the numbers were measured on."""
    import os

    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def register(sub) -> None:
    """Add ``collectives`` to the ``bench`` sub-parsers."""
    p = sub.add_parser(
        "collectives",
        help="nccl-tests-style sweep of one or more collectives",
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p)
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="buffers from comm.empty (shared-memory, single-copy collectives)",
    )
    p.add_argument(
        "--json", metavar="PATH", type=output_file, help="write rows as JSON ('-' for stdout)"
    )
    p.add_argument(
        "--csv", metavar="PATH", type=output_file, help="write rows as CSV ('-' for stdout)"
    )
    p.set_defaults(func=main)


def main(args) -> int:
    """Run the sweep the options describe and print or write it."""
    if args.json == "-" and args.csv == "-":
        raise UsageError("--json - and --csv - cannot both write to stdout")
    configs = configs_from_args(args)
    world_sizes = args.ranks
    rows = measure("shardcore", configs, world_sizes, args.stat, symmetric=args.symmetric)
    if args.json:
        write_json({"command": command_line(), "machine": machine_info(), "rows": rows}, args.json)
    if args.csv:
        write_csv(rows, args.csv)
    if args.json != "-" and args.csv != "-":
        sys.stdout.write(format_table(rows))
    return 0
