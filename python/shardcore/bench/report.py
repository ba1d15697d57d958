"""Tables, JSON and CSV for sweep rows (one dict per message size)."""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap

from .metrics import RING_RULE, format_bytes

# (header, width, row -> text) of the human table's columns; 117 characters in all.
_COLUMNS = [
    ("size", 9, lambda r: format_bytes(r["nbytes"])),
    ("count", 10, lambda r: str(r["count"])),
    ("time", 9, lambda r: _num(r.get("time_avg_us"))),
    ("max", 9, lambda r: _num(r.get("time_max_us"))),
    ("median", 9, lambda r: _num(r.get("time_median_us"))),
    ("algbw", 7, lambda r: _num(r.get("algbw"), 3)),
    ("busbw", 7, lambda r: _num(r.get("busbw"), 3)),
    ("sent/rank", 9, lambda r: format_bytes(r.get("sent_per_rank"))),
    ("model", 9, lambda r: format_bytes(r.get("model_bytes"))),
    (
        "sent/model",
        10,
        lambda r: "-" if r.get("bytes_ratio") is None else f"{r['bytes_ratio']:.4f}",
    ),
    ("algorithm", 9, lambda r: r.get("algorithm", "-")),
]


def comment(text: str, width: int = 120) -> str:
    """``text`` as '# ' comment lines of at most ``width`` characters."""
    return textwrap.fill(text, width, initial_indent="# ", subsequent_indent="#   ")


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if x >= 1e5:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def format_table(rows: list[dict], title: str = "") -> str:
    """An aligned text table of sweep rows, nccl-tests style, with a title per world size."""
    out = io.StringIO()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(
            (r["backend"], r["op"], r["world_size"], r["dtype"], r["inplace"]), []
        ).append(r)
    for (backend, op, n, dtype, inplace), group in groups.items():
        stat = next((r.get("stat") for r in group if "stat" in r), "mean")
        out.write(
            comment(
                f"{title or backend} {op} {dtype}, {n} ranks, "
                f"{'in-place' if inplace else 'out-of-place'}; us: mean of ranks, slowest rank, "
                f"median iteration"
            )
            + "\n"
            + comment(
                f"GB/s from the {stat} time; bytes per rank and call: counted, and the ring "
                f"model {RING_RULE.get(op, '')}"
            )
            + "\n"
        )
        out.write("  ".join(h.rjust(w) for h, w, _ in _COLUMNS).rstrip() + "\n")
        for r in group:
            if "skipped" in r:
                out.write(f"{format_bytes(r['nominal_bytes']):>9}  skipped: {r['skipped']}\n")
                continue
            out.write("  ".join(f(r).rjust(w) for _, w, f in _COLUMNS).rstrip() + "\n")
        out.write(comment(bytes_verdict(group)[2:]) + "\n\n")
    return out.getvalue().rstrip("\n") + "\n"


def bytes_verdict(rows: list[dict]) -> str:
    """One line: do the counted bytes equal the rule of the algorithm that ran (the ring model,
    or the one-shot all-reduce's own), and if not, where and by how much not."""
    measured = [r for r in rows if r.get("bytes_exact") is not None]
    if not measured:
        return "# bytes: this backend has no traffic counters"
    if any("bytes_equal_rule" not in r for r in measured):  # rows saved before rules were kept
        return _ring_verdict(measured)
    by_rule: dict[tuple, list[dict]] = {}
    for r in measured:
        by_rule.setdefault((r["rule"], r["rule_formula"]), []).append(r)
    parts = []
    for (rule, formula), group in by_rule.items():
        algos = ", ".join(sorted({r["algorithm"] for r in group if r.get("algorithm")}))
        equal = sum(1 for r in group if r["bytes_equal_rule"])
        what = f"{algos or 'the algorithm'} at"
        sizes = f"{len(group)} size{'s' if len(group) != 1 else ''}"
        if equal == len(group):
            parts.append(f"{what} {sizes} == the {rule} {formula}")
        else:
            differ = f"{len(group) - equal} of {sizes}"
            parts.append(f"{what} {differ} != the {rule} {formula}")
    off = [r for r in measured if not r["bytes_equal_rule"]]
    line = "# bytes counted: " + "; ".join(parts)
    if not off:
        return line + (
            " (exact)" if len(measured) == 1 else f" (exact at all {len(measured)} sizes)"
        )
    worst = max(off, key=lambda r: abs(r["sent_per_rank"] / r["rule_bytes"] - 1))
    return line + (
        f" (worst {worst['sent_per_rank'] / worst['rule_bytes']:.4f}x its rule at "
        f"{format_bytes(worst['nbytes'])})"
    )


def _ring_verdict(measured: list[dict]) -> str:
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
    "rule",
    "rule_bytes",
    "bytes_equal_rule",
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
