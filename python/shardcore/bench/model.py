"""``shardcore bench model``: the alpha-beta model and the ring traffic model against measurement.

    shardcore bench model --op all_reduce -n 2,4 --sizes 8:64M --plots docs/img
    shardcore bench model --from sweep.json --plots out/

fits time = alpha*steps + bytes/beta per collective and world size, reports alpha, beta, the
fit's R^2 and the sizes where measurement departs from the model, checks that the bytes the core
counted equal the ring model, and draws busbw, bytes and time-vs-model plots (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cliargs import (
    UsageError,
    description,
    input_file,
    output_file,
    output_folder,
    positive_float,
)
from .collectives import add_sweep_arguments, command_line, configs_from_args, machine_info, measure
from .modelfit import fit_rows, format_fits
from .report import bytes_verdict, format_table, write_json


def register(sub) -> None:
    """Add ``model`` to the ``bench`` sub-parsers."""
    p = sub.add_parser(
        "model",
        help="fit the alpha-beta model, check bytes against the ring model, draw plots",
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p, sizes="8:64M")
    p.add_argument(
        "--from",
        dest="source",
        metavar="JSON",
        type=input_file,
        help="fit rows from a `bench collectives/compare --json` file instead of measuring",
    )
    p.add_argument(
        "--threshold",
        type=positive_float,
        default=0.25,
        help="a size departs when |measured/model - 1| exceeds this (default 0.25)",
    )
    p.add_argument(
        "--plots",
        metavar="DIR",
        type=output_folder,
        help="write PNG plots here (needs matplotlib)",
    )
    p.add_argument("--prefix", default="", help="file name prefix of the plots")
    p.add_argument(
        "--json",
        metavar="PATH",
        type=output_file,
        help="write rows and fits as JSON ('-' for stdout)",
    )
    p.set_defaults(func=main)


def main(args) -> int:
    """Measure (or load) a sweep, fit it, verify bytes, plot."""
    if args.plots:
        from .plots import have_matplotlib

        if not have_matplotlib():
            raise UsageError("--plots needs matplotlib: pip install matplotlib")
    if args.source:
        rows = _load_rows(args.source)
        machine = None
    else:
        rows = measure("shardcore", configs_from_args(args), args.ranks, args.stat)
        machine = machine_info()
    time_key = "time_avg_us" if args.stat == "mean" else "time_median_us"
    fits = fit_rows(rows, args.threshold, time_key)
    paths = []
    if args.plots:
        from .plots import plot_all

        paths = plot_all(rows, fits, args.plots, args.prefix, time_key)
    if args.json:
        write_json(
            {
                "command": command_line(),
                "machine": machine,
                "rows": rows,
                "fits": [f.to_dict() for f in fits],
                "plots": paths,
            },
            args.json,
        )
    if args.json != "-":
        if not args.source:
            sys.stdout.write(format_table(rows))
        else:
            groups: dict[tuple, list] = {}
            for r in rows:
                groups.setdefault((r["backend"], r["op"], r["world_size"]), []).append(r)
            for (backend, op, n), g in groups.items():
                sys.stdout.write(f"{backend} {op} n={n}: {bytes_verdict(g)[2:]}\n")
        sys.stdout.write(format_fits(fits, args.threshold))
        for p in paths:
            sys.stdout.write(f"wrote {p}\n")
    return 0


def _load_rows(path: str) -> list[dict]:
    """The rows of a ``--json`` file of ``bench collectives``, ``compare`` or ``model``."""
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
    except json.JSONDecodeError as exc:
        raise UsageError(f"--from {path}: not a JSON file ({exc})") from None
    except (KeyError, TypeError):
        raise UsageError(
            f"--from {path}: no 'rows' (write it with bench collectives --json)"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "op" in r for r in rows):
        raise UsageError(f"--from {path}: its 'rows' are not sweep rows")
    return rows
