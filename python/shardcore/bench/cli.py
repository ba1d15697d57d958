"""``shardcore bench``: collectives, model, compare, tp-vs-pp, stream, hosts and gemm."""

from __future__ import annotations

import importlib

# Sub-command modules, each exposing ``register(subparsers)``.
_SUBCOMMANDS = ("collectives", "compare", "model", "tp_vs_pp", "stream", "hosts")

_DESCRIPTION = (
    "Measure collectives the way nccl-tests measures NCCL (time, algbw, busbw) and the bytes "
    "each rank sent against the traffic model; run the same sweep through torch gloo, Open MPI "
    "and DeepSpeed; fit the alpha-beta model; compare TP, PP and EP per token; the memory copy "
    "ceiling; the GEMM kernels against NumPy and torch; the two-level all-reduce across "
    "namespaced hosts."
)


def register(subparsers) -> None:
    """Add ``bench`` and its sub-commands to the top-level ``shardcore`` parser."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: collectives, peers, alpha-beta model, GEMM",
        description=_DESCRIPTION,
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name in _SUBCOMMANDS:
        importlib.import_module(f"shardcore.bench.{name}").register(sub)
    from .gemm import add_gemm_parser

    add_gemm_parser(sub)
