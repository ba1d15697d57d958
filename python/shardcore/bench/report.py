"""Tables, JSON and CSV for sweep rows (one dict per message size)."""

from __future__ import annotations

import csv
import io
import json
import sys

from .metrics import format_bytes

# (header, width, row -> text) of the human table's columns.
_COLUMNS = [
    ("size", 10, lambda r: format_bytes(r["nbytes"])),
    ("count", 11, lambda r: str(r["count"])),
    ("time(us)", 10, lambda r: _num(r.get("time_avg_us"))),
    ("max(us)", 10, lambda r: _num(r.get("time_max_us"))),
    ("median(us)", 10, lambda r: _num(r.get("time_median_us"))),
    ("algbw(GB/s)", 11, lambda r: _num(r.get("algbw"), 3)),
    ("busbw(GB/s)", 11, lambda r: _num(r.get("busbw"), 3)),
    ("sent/rank", 10, lambda r: format_bytes(r.get("sent_per_rank"))),
    ("model", 10, lambda r: format_bytes(r.get("model_bytes"))),
    (
        "sent/model",
        10,
        lambda r: "-" if r.get("bytes_ratio") is None else f"{r['bytes_ratio']:.4f}",
    ),
    ("algorithm", 9, lambda r: r.get("algorithm", "-")),
]


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if x >= 1e5:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def format_table(rows: list[dict], title: str = "") -> str:
    """An aligned text table of sweep rows, nccl-tests style, with a title line per world size."""
    out = io.StringIO()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(
            (r["backend"], r["op"], r["world_size"], r["dtype"], r["inplace"]), []
        ).append(r)
    for (backend, op, n, dtype, inplace), group in groups.items():
        stat = next((r.get("stat") for r in group if "stat" in r), "mean")
        out.write(
            f"# {title or backend} {op} {dtype}, {n} ranks, "
            f"{'in-place' if inplace else 'out-of-place'}, bandwidth from the {stat} time "
            f"(time: mean over ranks, max: slowest rank, median: median iteration)\n"
        )
        out.write("  ".join(h.rjust(w) for h, w, _ in _COLUMNS).rstrip() + "\n")
        for r in group:
            if "skipped" in r:
                out.write(f"{format_bytes(r['nominal_bytes']):>10}  skipped: {r['skipped']}\n")
                continue
            out.write("  ".join(f(r).rjust(w) for _, w, f in _COLUMNS).rstrip() + "\n")
        out.write(bytes_verdict(group) + "\n\n")
    return out.getvalue().rstrip("\n") + "\n"


def bytes_verdict(rows: list[dict]) -> str:
    """One line: do the counted bytes equal the ring model, and if not, by how much not."""
    measured = [r for r in rows if r.get("bytes_exact") is not None]
    if not measured:
        return "# bytes: this backend has no traffic counters"
    off = [r for r in measured if not r["bytes_exact"]]
    if not off:
        return f"# bytes: counted == ring model exactly at all {len(measured)} sizes"
    worst = max(off, key=lambda r: abs(r["bytes_ratio"] - 1))
    algos = sorted({r.get("algorithm", "?") for r in off})
    return (
        f"# bytes: counted != ring model at {len(off)} of {len(measured)} sizes "
        f"(algorithm {', '.join(algos)}); worst sent/model = {worst['bytes_ratio']:.4f} "
        f"at {format_bytes(worst['nbytes'])}"
    )


def write_json(obj, path: str) -> None:
    """JSON to ``path`` ('-' for stdout)."""
    text = json.dumps(obj, indent=1, default=float)
    if path == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(path, "w") as f:
            f.write(text + "\n")


CSV_FIELDS = [
    "backend",
    "op",
    "world_size",
    "dtype",
    "inplace",
    "algorithm",
    "nbytes",
    "count",
    "iters",
    "nsets",
    "time_avg_us",
    "time_max_us",
    "time_median_us",
    "stat",
    "algbw",
    "busbw",
    "sent_per_rank",
    "sent_max",
    "model_bytes",
    "bytes_ratio",
    "bytes_exact",
    "check_error",
    "skipped",
]


def write_csv(rows: list[dict], path: str) -> None:
    """CSV with one line per row ('-' for stdout)."""
    if path == "-":
        _write_csv_rows(rows, sys.stdout)
    else:
        with open(path, "w", newline="") as f:
            _write_csv_rows(rows, f)


def _write_csv_rows(rows: list[dict], f) -> None:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
