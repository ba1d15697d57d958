"""``shardcore bench``: collectives, model, compare, tp-vs-pp (and gemm, where built)."""

from __future__ import annotations

import importlib

# Sub-command modules, each exposing ``register(subparsers)``.
_SUBCOMMANDS = ("collectives", "model", "compare", "tp_vs_pp", "stream")


def register(subparsers) -> None:
    """Add ``bench`` and its sub-commands to the top-level ``shardcore`` parser."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: collectives, alpha-beta model, peers, TP vs PP",
        description=__doc__,
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for name in _SUBCOMMANDS:
        importlib.import_module(f"shardcore.bench.{name}").register(sub)
    try:  # the GEMM benchmark lives in its own module, present once the kernels are built
        from .gemm import add_gemm_parser
    except ModuleNotFoundError as exc:
        if exc.name != "shardcore.bench.gemm":
            raise
    else:
        add_gemm_parser(sub)
