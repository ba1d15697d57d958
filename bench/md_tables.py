"""Markdown tables for docs/performance.md from the JSON that the bench commands write.

python bench/md_tables.py compare compare_all_reduce.json [--sizes 8,512K,2M,32M,256M]
                                 [--second run2.json]   (run 2's ratios as more columns)
python bench/md_tables.py model model.json
python bench/md_tables.py tp-vs-pp tp_vs_pp.json
python bench/md_tables.py stream stream.json
"""

from __future__ import annotations

import argparse
import json
import math

from shardcore.bench.metrics import format_bytes, parse_size


def _us(x: float) -> str:
    return f"{x:.1f}" if x >= 100 else f"{x:.2f}"


def _best_ratios(data: dict) -> dict:
    """{(op, ranks, dtype, in place, backend, size): time over the fastest peer's}."""
    rows = [r for r in data["rows"] if "skipped" not in r]
    key = "time_median_us" if rows and rows[0].get("stat") == "median" else "time_avg_us"
    idx = {
        (r["op"], r["world_size"], r["dtype"], r["inplace"], r["backend"], r["nominal_bytes"]): r
        for r in rows
    }
    out = {}
    for (op, n, dt, ip, b, s), r in idx.items():
        if not b.startswith("shardcore"):
            continue
        peers = [
            q[key]
            for (op2, n2, dt2, ip2, b2, s2), q in idx.items()
            if (op2, n2, dt2, ip2, s2) == (op, n, dt, ip, s) and "shardcore" not in b2
        ]
        if peers:
            out[(op, n, dt, ip, b, s)] = r[key] / min(peers)
    return out


def compare(data: dict, sizes: list[int] | None, second: dict | None = None) -> str:
    rows = data["rows"]
    again = _best_ratios(second) if second else {}
    key_time = "time_median_us" if rows and rows[0].get("stat") == "median" else "time_avg_us"
    out = []
    groups: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in rows:
        if "skipped" in r:
            continue
        groups.setdefault((r["op"], r["world_size"], r["dtype"], r["inplace"]), {}).setdefault(
            r["backend"], {}
        )[r["nominal_bytes"]] = r
    for (op, n, dtype, inplace), by in groups.items():
        backends = list(by)
        ours = [b for b in backends if b.startswith("shardcore")]
        peers = [b for b in backends if not b.startswith("shardcore")]
        all_sizes = sorted({s for b in by.values() for s in b})
        if sizes:
            all_sizes = [s for s in all_sizes if s in sizes]
        out.append(
            f"**{op}, {dtype}, {n} ranks, {'in place' if inplace else 'out of place'}** "
            "(median time of the slowest rank in µs, busbw in GB/s; *x / best peer* is "
            "x's time over the fastest peer's: below 1, shardcore is faster)\n"
        )
        head = ["size"] + [f"{b} µs" for b in backends] + [f"{o} busbw" for o in ours]
        head += ["best peer busbw", *[f"{o} / best peer" for o in ours]]
        if second:
            head += [f"run 2: {o} / best peer" for o in ours]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for s in all_sizes:
            cells = [format_bytes(s)]
            for b in backends:
                r = by[b].get(s)
                t = "-" if r is None else _us(r[key_time])
                if r is not None and b.startswith("shardcore") and r.get("algorithm"):
                    t += f" ({r['algorithm']})"
                cells.append(t)
            cells += ["-" if by[o].get(s) is None else f"{by[o][s]['busbw']:.2f}" for o in ours]
            # torch-shardcore is shardcore under torch.distributed, not a peer to beat
            present = [
                (by[p][s][key_time], p)
                for p in peers
                if by[p].get(s) is not None and "shardcore" not in p
            ]
            if present:
                best_t, best = min(present)
                cells.append(f"{by[best][s]['busbw']:.2f} ({best})")
                cells += [
                    "-" if by[o].get(s) is None else f"{by[o][s][key_time] / best_t:.2f}"
                    for o in ours
                ]
            else:
                cells += ["-"] * (1 + len(ours))
            if second:
                for o in ours:
                    r2 = again.get((op, n, dtype, inplace, o, s))
                    cells.append("-" if r2 is None else f"{r2:.2f}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def model(data: dict) -> str:
    out = [
        "| op | ranks | alpha (µs/step) | beta (GB/s) | R² (log) | sizes off the model by > 25% |",
        "|---|---|---|---|---|---|",
    ]
    for f in data["fits"]:
        off = (
            ", ".join(f"{format_bytes(d['nbytes'])} ({d['ratio']:.2f}×)" for d in f["departures"])
            or "none"
        )
        beta = "∞" if not math.isfinite(f["beta_Bps"]) else f"{f['beta_GBps']:.2f}"
        out.append(
            f"| {f['op']} | {f['world_size']} | {f['alpha_us']:.2f} | {beta} | "
            f"{f['r2_log']:.3f} | {off} |"
        )
    verdicts: dict[tuple, list] = {}
    for r in data["rows"]:
        if "skipped" not in r:
            verdicts.setdefault((r["op"], r["world_size"]), []).append(r)
    out += [
        "",
        "| op | ranks | sizes | counted bytes = ring model | algorithms |",
        "|---|---|---|---|---|",
    ]
    for (op, n), rs in verdicts.items():
        exact = sum(1 for r in rs if r.get("bytes_exact"))
        worst = max(rs, key=lambda r: abs((r.get("bytes_ratio") or 1) - 1))
        verdict = (
            "all exact"
            if exact == len(rs)
            else f"{exact} exact; worst sent/model {worst['bytes_ratio']:.3f} at {format_bytes(worst['nbytes'])}"
        )
        algos = sorted({a for r in rs for a in (r.get("algorithm") or "").split(",") if a})
        out.append(f"| {op} | {n} | {len(rs)} | {verdict} | {', '.join(algos)} |")
    return "\n".join(out) + "\n"


def tp_vs_pp(data: dict) -> str:
    out = [
        (
            "| mode | degree | measured bytes/token | per | model | formula | "
            "measured/model | measured/exact | comm µs/token (slowest rank) | algorithm |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        out.append(
            f"| {r['mode']} | {r['degree']} | {r['measured_bytes_per_token']:.0f} | "
            f"{r['per']} | {r['seed_bytes_per_token']:.0f} | {r['formula']} | "
            f"{r['ratio_to_seed']:.3f} | {r['ratio_to_exact']:.3f} | "
            f"{r['comm_us_per_token_max']:.2f} | {', '.join(r.get('algorithms', []))} |"
        )
    return "\n".join(out) + "\n"


def stream(data: dict) -> str:
    out = ["| processes | copy GB/s (read + write), all together | per process |", "|---|---|---|"]
    for r in data["results"]:
        out.append(
            f"| {r['processes']} | {r['aggregate_GBps']:.1f} | "
            f"{r['aggregate_GBps'] / r['processes']:.1f} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=("compare", "model", "tp-vs-pp", "stream"))
    p.add_argument("path")
    p.add_argument("--sizes", help="only these sizes (compare)")
    p.add_argument("--second", help="a second run of the same command (compare): its ratios too")
    a = p.parse_args()
    with open(a.path) as f:
        data = json.load(f)
    if data.get("command"):
        print(f"`{data['command']}`\n")
    if a.kind == "compare":
        sizes = [parse_size(s) for s in a.sizes.split(",")] if a.sizes else None
        second = None
        if a.second:
            with open(a.second) as f:
                second = json.load(f)
        print(compare(data, sizes, second))
    else:
        print({"model": model, "tp-vs-pp": tp_vs_pp, "stream": stream}[a.kind](data))


if __name__ == "__main__":
    main()
