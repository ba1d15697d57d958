"""shardcore's performance targets (time ratios to the best peer per size and world size) checked
against `bench compare` JSON: prints a markdown table.

python bench/targets.py compare_all_reduce.json compare_gather_a2a.json [--ranks 2,8]
"""

from __future__ import annotations

import argparse
import json

from shardcore.bench.metrics import format_bytes

KIB, MIB = 1 << 10, 1 << 20


def _index(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows += [r for r in json.load(f)["rows"] if "skipped" not in r]
    return {(r["backend"], r["op"], r["world_size"], r["nominal_bytes"]): r for r in rows}


def _ratio(idx, ours, op, n, size, peers=None, key="time_median_us"):
    """ours' time over the fastest peer's (or the named peers') at one size; None if missing."""
    a = idx.get((ours, op, n, size))
    cands = [
        (r[key], b)
        for (b, o, w, s), r in idx.items()
        if o == op
        and w == n
        and s == size
        and "shardcore" not in b
        and (peers is None or b in peers)
    ]
    if a is None or not cands:
        return None
    t, best = min(cands)
    return a[key] / t, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("paths", nargs="+")
    p.add_argument("--ranks", default="2,8")
    a = p.parse_args()
    idx = _index(a.paths)
    checks = [  # (target text, backend, op, sizes, peers, limit on the time ratio)
        ("8 B all-reduce latency ≤ 0.7× Open MPI's", "shardcore", "all_reduce", [8], ["mpi"], 0.7),
        ("4 ranks on 2 cores: 8 B ≤ 1.0× Open MPI's", "shardcore", "all_reduce", [8], ["mpi"], 1.0),
        (
            "busbw ≥ 1.3× best peer, 512 KiB–2 MiB",
            "shardcore",
            "all_reduce",
            [512 * KIB, MIB, 2 * MIB],
            None,
            1 / 1.3,
        ),
        (
            "busbw ≥ 1.3× best peer, ≥ 32 MiB",
            "shardcore",
            "all_reduce",
            [32 * MIB, 256 * MIB],
            None,
            1 / 1.3,
        ),
        (
            "busbw ≥ 2× best peer, ≥ 32 MiB, symmetric",
            "shardcore-sym",
            "all_reduce",
            [32 * MIB, 256 * MIB],
            None,
            0.5,
        ),
        (
            "all-gather ≥ 1.5× best peer, ≥ 1 MiB",
            "shardcore",
            "all_gather",
            [MIB, 4 * MIB, 32 * MIB],
            None,
            1 / 1.5,
        ),
        (
            "all-to-all ≥ 1.5× best peer, ≥ 1 MiB",
            "shardcore",
            "all_to_all",
            [MIB, 4 * MIB, 32 * MIB],
            None,
            1 / 1.5,
        ),
        (
            "all-gather ≥ 1.5× best peer, ≥ 1 MiB, symmetric input",
            "shardcore-sym",
            "all_gather",
            [MIB, 4 * MIB, 32 * MIB],
            None,
            1 / 1.5,
        ),
        (
            "all-to-all ≥ 1.5× best peer, ≥ 1 MiB, symmetric input",
            "shardcore-sym",
            "all_to_all",
            [MIB, 4 * MIB, 32 * MIB],
            None,
            1 / 1.5,
        ),
    ]
    print("| target | ranks | time ratio shardcore / peer, per size | met |")
    print("|---|---|---|---|")
    for n in [int(x) for x in a.ranks.split(",")]:
        for text, ours, op, sizes, peers, limit in checks:
            if text.startswith("4 ranks") != (n == 4):  # that target is about 4 ranks only
                continue
            got = [(s, _ratio(idx, ours, op, n, s, peers)) for s in sizes]
            got = [(s, r) for s, r in got if r is not None]
            if not got:
                continue
            cells = ", ".join(f"{format_bytes(s)}: {r:.2f} ({b})" for s, (r, b) in got)
            met = sum(r <= limit for _, (r, _) in got)
            verdict = "yes" if met == len(got) else ("no" if met == 0 else f"{met} of {len(got)}")
            print(f"| {text} (≤ {limit:.2f}) | {n} | {cells} | {verdict} |")


if __name__ == "__main__":
    main()
