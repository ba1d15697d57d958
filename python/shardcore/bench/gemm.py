"""``shardcore bench gemm``: the packed GEMM beside NumPy (OpenBLAS) and torch, one thread each.

``run_gemm_bench(args)`` runs it; ``add_gemm_parser(subparsers)`` adds its options to ``bench``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Callable

# OpenBLAS reads this when NumPy is first imported; threadpoolctl covers the already-imported case.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from ..cliargs import UsageError, output_file, positive_float, positive_int

_DESCRIPTION = """\
For every shape (M, K, N) it times, in the same process and run:
  shardcore float32 and bfloat16 (PackedWeight, packed once, outside the timing),
  numpy float32 x @ w (OpenBLAS limited to one thread),
  torch float32 and bfloat16 x @ w.T (torch.set_num_threads(1); w in the [N, K] layout),
and reports GFLOP/s (2*M*K*N per call), GB/s of weights streamed (K*N*itemsize per call), the
fraction of this core's measured multiply-add peak, and the ratios: shardcore f32 / NumPy,
shardcore bf16 / its own f32, shardcore bf16 / torch bf16. The table is markdown on stdout;
a line per shape on stderr tells how far it got."""

DEFAULT_SHAPES = [
    (1, 4096, 4096),
    (8, 4096, 4096),
    (128, 4096, 4096),
    (512, 4096, 11008),
    (2048, 2048, 2048),
]


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise argparse.ArgumentTypeError(f"shape {item!r} is not MxKxN")
        m, k, n = (int(p) for p in parts)
        if min(m, k, n) < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r} has a zero dimension")
        shapes.append((m, k, n))
    return shapes


def add_gemm_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``gemm`` sub-command to the ``bench`` command's sub-parsers."""
    p = subparsers.add_parser(
        "gemm",
        help="packed GEMM vs NumPy/OpenBLAS and torch, one thread",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shapes",
        type=_parse_shapes,
        default=DEFAULT_SHAPES,
        help="comma-separated MxKxN (default: "
        + ",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES)
        + ")",
    )
    p.add_argument(
        "--kernel",
        default=None,
        help="kernel family, one of those this CPU runs (shardcore.kernels.available_kernels(); "
        "a wrong name lists them) (default: the one chosen at import)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="threads for shardcore (default 1)"
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=10,
        help="timed repetitions, interleaved across implementations, best reported (default 10)",
    )
    p.add_argument(
        "--min-time",
        type=positive_float,
        default=0.1,
        help="seconds per repetition, reached by repeating the call (default 0.1)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch peers")
    p.add_argument(
        "--json", metavar="PATH", type=output_file, help="also write the rows as JSON to PATH"
    )
    p.set_defaults(func=run_gemm_bench)
    return p


def _limit_blas_threads() -> str:
    try:
        from threadpoolctl import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            threadpool_info,
            threadpool_limits,
        )
    except ImportError:
        n = os.environ.get("OPENBLAS_NUM_THREADS")
        return f"OPENBLAS_NUM_THREADS={n} (threadpoolctl not installed)"
    threadpool_limits(1, user_api="blas")
    libs = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer')}, "
        f"{i.get('architecture')}) threads={i.get('num_threads')}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return "; ".join(libs) or "no BLAS found by threadpoolctl"


def _measure(fns: dict[str, Callable[[], Any]], repeat: int, min_time: float) -> dict[str, float]:
    """Best seconds per call of each function, repetitions interleaved across the functions.

    Each repetition runs every function in turn for about `min_time` seconds, so that load from
    other processes on a shared machine falls on all of them alike; the best repetition is the
    one least disturbed.
    """
    calls = {}
    for name, fn in fns.items():
        fn()  # warm up (page faults, lazy init)
        t0 = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_gemm_bench(args: argparse.Namespace) -> int:
    """Runs the benchmark and prints one markdown table (and JSON rows if asked)."""
    import ml_dtypes

    from shardcore import _core, kernels

    if args.kernel is not None and args.kernel not in kernels.available_kernels():
        raise UsageError(
            f"--kernel {args.kernel!r} is not available on this CPU: "
            f"{', '.join(kernels.available_kernels())}"
        )
    blas = _limit_blas_threads()
    kernel = args.kernel or kernels.kernel_name()
    torch: Any = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            torch = None
    peak = {dt: float(_core.gemm_peak_gflops(kernel, dt)) for dt in ("float32", "bfloat16")}
    print(f"# shardcore bench gemm: {_cpu_model()}, {os.cpu_count()} logical CPUs")
    print(
        f"# shardcore kernel {kernel} (f32 impl {kernels.kernel_info('float32', kernel)['name']}, "
        f"bf16 impl {kernels.kernel_info('bfloat16', kernel)['name']}), threads={args.threads}; "
        f"selected at import: {kernels.kernel_name()} ({kernels.kernel_reason()})"
    )
    print(f"# numpy {np.__version__}: {blas}")
    print(f"# torch {torch.__version__ + ', 1 thread' if torch else 'not measured'}")
    print(
        f"# measured single-core peak: {peak['float32']:.1f} GFLOP/s float32 FMA, "
        f"{peak['bfloat16']:.1f} GFLOP/s for the bf16 kernel's instruction"
    )
    print(
        f"# best of {args.repeat} interleaved repetitions of >= {args.min_time}s; GB/s = weight bytes "
        f"streamed per second; machine may be shared, compare ratios within this run"
    )
    print()
    header = "| M | K | N | impl | ms | GFLOP/s | GB/s (W) | % peak | ratio |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    rng = np.random.default_rng(0)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    for i, (m, k, n) in enumerate(args.shapes, 1):
        print(f"gemm: shape {i}/{len(args.shapes)}: {m}x{k}x{n}", file=sys.stderr, flush=True)
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2.0 * m * k * n
        out = np.empty((m, n), np.float32)
        xb = x.astype(bf16)
        pw32 = kernels.PackedWeight(w, "float32", kernel=kernel)
        pw16 = kernels.PackedWeight(w, "bfloat16", kernel=kernel)
        fns: dict[str, Callable[[], Any]] = {
            "shardcore f32": functools.partial(
                kernels.matmul, x, pw32, out=out, threads=args.threads
            ),
            "shardcore bf16": functools.partial(
                kernels.matmul, xb, pw16, out=out, threads=args.threads
            ),
            "numpy f32": functools.partial(np.matmul, x, w, out=out),
        }
        itemsize = {"shardcore f32": 4, "shardcore bf16": 2, "numpy f32": 4}
        if torch is not None:
            tx = torch.from_numpy(x)
            tw = torch.from_numpy(np.ascontiguousarray(w.T))  # [N, K], as nn.Linear stores it
            txb, twb = tx.to(torch.bfloat16), tw.to(torch.bfloat16)
            fns["torch f32"] = functools.partial(torch.matmul, tx, tw.T)
            fns["torch bf16"] = functools.partial(torch.matmul, txb, twb.T)
            itemsize.update({"torch f32": 4, "torch bf16": 2})
            with torch.inference_mode():
                secs = _measure(fns, args.repeat, args.min_time)
        else:
            secs = _measure(fns, args.repeat, args.min_time)
        del fns, pw32, pw16
        res = {
            name: (s, itemsize[name], peak["bfloat16" if itemsize[name] == 2 else "float32"])
            for name, s in secs.items()
        }
        gf = {name: flops / s * 1e-9 for name, (s, _, _) in res.items()}
        ratios = {
            "shardcore f32": ("vs numpy", gf["shardcore f32"] / gf["numpy f32"]),
            "shardcore bf16": ("vs own f32", gf["shardcore bf16"] / gf["shardcore f32"]),
        }
        if "torch bf16" in gf:
            ratios["torch bf16"] = ("ours / torch", gf["shardcore bf16"] / gf["torch bf16"])
        for name, (s, nbytes, pk) in res.items():
            gbs = k * n * nbytes / s * 1e-9
            frac = gf[name] / pk if pk else float("nan")
            label, ratio = ratios.get(name, ("", float("nan")))
            rtxt = f"{ratio:.2f}x {label}" if label else ""
            print(
                f"| {m} | {k} | {n} | {name} | {s * 1e3:.2f} | {gf[name]:.1f} | {gbs:.1f} | "
                f"{100 * frac:.0f}% | {rtxt} |",
                flush=True,
            )
            rows.append(
                {
                    "M": m,
                    "K": k,
                    "N": n,
                    "impl": name,
                    "seconds": s,
                    "gflops": gf[name],
                    "weight_gbs": gbs,
                    "peak_fraction": frac,
                    "ratio": ratio if label else None,
                    "ratio_label": label,
                }
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "kernel": kernel,
                    "cpu": _cpu_model(),
                    "peak_gflops": peak,
                    "blas": blas,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m shardcore.bench.gemm [options]``."""
    from shardcore.cli import main as shardcore_main

    return shardcore_main(["bench", "gemm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
