"""``shardcore bench tp-vs-pp``: what TP, PP and EP send per token, measured against the
traffic model.

    shardcore bench tp-vs-pp --hidden 4096 --blocks 8 --tokens 16 --tp 2,4 --pp 2,4 --ep 2,4

A synthetic stack of k blocks with hidden size h, communication only (no arithmetic, so the time
is the communication's alone), run for a number of steps of T tokens:
- tp=n: every block all-reduces the (T, h) hidden state twice (after attention and after the
  MLP). Model: 2 * 2(n-1)/n * h * b bytes per block, per token and rank: 8k(n-1)h/n for bf16.
- pp=m: the k blocks split into m stages; each stage sends its (T, h) output to the next.
  Model: (m-1) * h * b bytes per token over the whole pipeline ((m-1)h*2 for bf16).
- ep=l: every rank holds T tokens and E/l experts; each block routes each token's top_k copies
  to their experts' ranks with an all-to-all and brings them back with another. Model:
  top_k*h*b/l bytes per token of the global batch, per rank and all-to-all; exactly,
  only copies bound for another rank move: top_k*h*b*(l-1)/l^2 when the router spreads each
  rank's T*top_k copies evenly (it does when l divides T*top_k).
Bytes are the core's own counters; time is what the collective calls took on each rank.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..cliargs import UsageError, description, int_list, non_negative_int, output_file, positive_int
from . import metrics
from .collectives import command_line, machine_info
from .report import comment, write_json


def _timed(clock_total: list, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    clock_total[0] += time.perf_counter() - start
    return out


def tp_rank(comm, cfg: dict) -> dict:
    """One rank of the tensor-parallel stack: two all-reduces of (T, h) per block."""
    dtype = metrics.numpy_dtype(cfg["dtype"])
    rng = np.random.default_rng(comm.rank)
    hidden = [rng.standard_normal((cfg["tokens"], cfg["hidden"])).astype(dtype) for _ in range(2)]
    algorithm = None if cfg["algorithm"] == "auto" else cfg["algorithm"]
    spent = [0.0]

    def step():
        for _ in range(cfg["blocks"]):
            for x in hidden:  # attention output, then MLP output
                _timed(spent, comm.all_reduce, x, algorithm=algorithm)

    return _measure(comm, step, spent, cfg, "all_reduce")


def pp_rank(comm, cfg: dict) -> dict:
    """One stage of the pipeline: receive the hidden state, (run its blocks), send it on."""
    dtype = metrics.numpy_dtype(cfg["dtype"])
    x = (
        np.random.default_rng(comm.rank)
        .standard_normal((cfg["tokens"], cfg["hidden"]))
        .astype(dtype)
    )
    spent = [0.0]
    last = comm.size - 1

    def step():
        if comm.rank > 0:
            _timed(spent, comm.recv, x, comm.rank - 1)
        if comm.rank < last:
            _timed(spent, comm.send, x, comm.rank + 1)

    return _measure(comm, step, spent, cfg, "send")


def ep_route(rank: int, world: int, tokens: int, top_k: int) -> np.ndarray:
    """Destination rank of each of this rank's tokens' top_k copies: copy j of local token t
    goes to rank (rank + t*top_k + j) mod l, so the copies spread evenly over the ranks (exactly
    when l divides T*top_k) as a balanced router's would."""
    slot = np.arange(tokens)[:, None] * top_k + np.arange(top_k)[None, :]
    return ((rank + slot) % world).reshape(-1)


def remote_copies(rank: int, world: int, tokens: int, top_k: int) -> int:
    """How many of this rank's token copies the router sends to another rank."""
    return int(np.count_nonzero(ep_route(rank, world, tokens, top_k) != rank))


def ep_rank(comm, cfg: dict) -> dict:
    """One expert-parallel rank: dispatch and combine all-to-alls of top_k token copies per block."""
    dtype = metrics.numpy_dtype(cfg["dtype"])
    T, h, k = cfg["tokens"], cfg["hidden"], cfg["top_k"]
    dest = ep_route(comm.rank, comm.size, T, k)
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=comm.size).tolist()
    x = np.random.default_rng(comm.rank).standard_normal((T, h)).astype(dtype)
    copies = np.repeat(x, k, axis=0)[order]  # grouped by destination rank
    spent = [0.0]

    def step():
        for _ in range(cfg["blocks"]):
            received, recv_counts = _timed(spent, comm.all_to_allv, copies, counts)
            _timed(spent, comm.all_to_allv, received, recv_counts)  # combine: send them back

    return _measure(comm, step, spent, cfg, "all_to_allv")


def _measure(comm, step, spent: list, cfg: dict, kind: str) -> dict:
    for _ in range(cfg["warmup"]):
        step()
    comm.barrier()
    comm.reset_traffic()
    spent[0] = 0.0
    start = time.perf_counter()
    for _ in range(cfg["steps"]):
        step()
    wall = time.perf_counter() - start
    entry = comm.traffic().get(kind, {"calls": 0, "sent": 0, "recv": 0})
    return {
        "rank": comm.rank,
        "sent": entry["sent"],
        "calls": entry["calls"],
        "algorithms": sorted(entry.get("algorithms", {})),
        "comm_s": spent[0],
        "wall_s": wall,
    }


def run_mode(mode: str, degree: int, cfg: dict) -> dict:
    """Launch ``degree`` ranks of ``mode`` (tp, pp, ep) and compare their bytes with the model."""
    import shardcore

    fn = {"tp": tp_rank, "pp": pp_rank, "ep": ep_rank}[mode]
    if mode == "ep" and cfg["experts"] % degree:
        raise ValueError(f"--experts {cfg['experts']} does not split over ep={degree} ranks")
    if mode == "pp" and cfg["blocks"] < degree:
        raise ValueError(f"--blocks {cfg['blocks']} is fewer than pp={degree} stages")
    per_rank = shardcore.launch(fn, degree, args=(cfg,))
    return summarize(mode, degree, cfg, per_rank)


def model_bytes_per_token(mode: str, degree: int, cfg: dict) -> dict:
    """The traffic model's figure per token (and, where it differs, the exact count) in bytes."""
    n, h, k = degree, cfg["hidden"], cfg["blocks"]
    b = metrics.numpy_dtype(cfg["dtype"]).itemsize
    if mode == "tp":  # per rank: 2 all-reduces per block, 2(n-1)/n*h*b each
        seed = 2 * k * 2 * (n - 1) * h * b / n
        return {
            "seed": seed,
            "exact": seed,
            "formula": "8k(n-1)h/n" if b == 2 else f"2k*2(n-1)h*{b}/n",
            "per": "rank",
        }
    if mode == "pp":  # whole pipeline: one (T, h) send per stage boundary
        seed = (n - 1) * h * b
        return {"seed": seed, "exact": seed, "formula": f"(m-1)h*{b}", "per": "pipeline"}
    top_k, T = cfg["top_k"], cfg["tokens"]  # per rank and all-to-all, per global token
    remote = sum(remote_copies(r, n, T, top_k) for r in range(n)) / n  # (l-1)/l*T*top_k if even
    return {
        "seed": top_k * h * b / n,
        "exact": remote * h * b / (n * T),
        "formula": f"top_k*h*{b}/l",
        "per": "rank, all-to-all",
    }


def summarize(mode: str, degree: int, cfg: dict, per_rank: list[dict]) -> dict:
    """Measured bytes per token (per rank, or per pipeline for PP) and communication time."""
    steps, T = cfg["steps"], cfg["tokens"]
    if mode == "ep":
        tokens = steps * T * degree  # every rank brings its own T tokens
        # per all-to-all: each block makes two (dispatch and combine)
        measured = float(np.mean([r["sent"] for r in per_rank])) / tokens / (2 * cfg["blocks"])
    elif mode == "pp":
        tokens = steps * T
        measured = float(sum(r["sent"] for r in per_rank)) / tokens
    else:
        tokens = steps * T
        measured = float(np.mean([r["sent"] for r in per_rank])) / tokens
    model = model_bytes_per_token(mode, degree, cfg)
    comm_s = [r["comm_s"] for r in per_rank]
    return {
        "mode": mode,
        "degree": degree,
        "per": model["per"],
        "formula": model["formula"],
        "algorithms": sorted({a for r in per_rank for a in r.get("algorithms", [])}),
        "measured_bytes_per_token": measured,
        "seed_bytes_per_token": model["seed"],
        "exact_bytes_per_token": model["exact"],
        "ratio_to_seed": measured / model["seed"] if model["seed"] else None,
        "ratio_to_exact": measured / model["exact"] if model["exact"] else None,
        "comm_us_per_token_mean": float(np.mean(comm_s)) / tokens * 1e6,
        "comm_us_per_token_max": float(np.max(comm_s)) / tokens * 1e6,
        "comm_ms_per_step_max": float(np.max(comm_s)) / steps * 1e3,
        "wall_ms_per_step": float(np.max([r["wall_s"] for r in per_rank])) / steps * 1e3,
    }


def format_results(results: list[dict], cfg: dict) -> str:
    """The comparison as a table (within 120 columns)."""
    lines = [
        comment(
            f"synthetic stack: k={cfg['blocks']} blocks, h={cfg['hidden']}, {cfg['dtype']}, "
            f"{cfg['tokens']} tokens/step, {cfg['steps']} steps; EP top_k={cfg['top_k']}, "
            f"E={cfg['experts']}; TP all-reduce {cfg['algorithm']}; communication only"
        ),
        comment(
            "bytes/token: counted by the core; model: the traffic model's figure; us/token, "
            "ms/step: communication time of the slowest rank"
        ),
        (
            f"{'mode':>4} {'deg':>3} {'bytes/token':>11} {'per':>16} {'model':>9} "
            f"{'formula':>14} {'meas/model':>10} {'meas/exact':>10} {'us/token':>9} "
            f"{'ms/step':>8}  algorithm"
        ),
    ]
    for r in results:
        lines.append(
            f"{r['mode']:>4} {r['degree']:>3} {r['measured_bytes_per_token']:>11.1f} "
            f"{r['per']:>16} {r['seed_bytes_per_token']:>9.1f} {r['formula']:>14} "
            f"{r['ratio_to_seed']:>10.4f} {r['ratio_to_exact']:>10.4f} "
            f"{r['comm_us_per_token_max']:>9.3f} {r['comm_ms_per_step_max']:>8.3f}  "
            f"{','.join(r['algorithms']) or '-'}"
        )
    return "\n".join(lines) + "\n"


def _degrees(text: str) -> list[int]:
    return int_list(2, "degrees")(text) if text.strip() else []


def register(sub) -> None:
    """Add ``tp-vs-pp`` to the ``bench`` sub-parsers."""
    p = sub.add_parser(
        "tp-vs-pp",
        help="bytes per token under TP, PP and EP vs the traffic model",
        description=description(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hidden", type=positive_int, default=4096, help="hidden size h (default 4096)")
    p.add_argument("--blocks", type=positive_int, default=8, help="blocks k (default 8)")
    p.add_argument(
        "--tokens", type=positive_int, default=16, help="tokens per step and rank (default 16)"
    )
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps (default 2)")
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=metrics.DTYPES,
        help="element type of the hidden state (default bfloat16)",
    )
    for mode in ("tp", "pp", "ep"):
        p.add_argument(
            f"--{mode}",
            default="2",
            type=_degrees,
            help=f"{mode.upper()} degrees, comma-separated, each at least 2; '' for none "
            "(default 2)",
        )
    p.add_argument("--top-k", type=positive_int, default=2, help="experts per token (default 2)")
    p.add_argument("--experts", type=positive_int, default=8, help="experts E (default 8)")
    p.add_argument(
        "--algorithm",
        default="ring",
        help="TP's all-reduce algorithm: ring (the model's, default), auto (the "
        "core's choice by size) or another the core knows",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        type=output_file,
        help="write results as JSON ('-' for stdout)",
    )
    p.set_defaults(func=main)


def main(args) -> int:
    """Run every requested TP, PP and EP degree and print bytes per token against the model."""
    if args.top_k > args.experts:
        raise UsageError(f"--top-k {args.top_k} exceeds --experts {args.experts}")
    for degree in args.ep:
        if args.experts % degree:
            raise UsageError(f"--experts {args.experts} does not split over --ep {degree} ranks")
    for degree in args.pp:
        if args.blocks < degree:
            raise UsageError(f"--blocks {args.blocks} is fewer than --pp {degree} stages")
    cfg = {
        k: getattr(args, k)
        for k in (
            "hidden",
            "blocks",
            "tokens",
            "steps",
            "warmup",
            "dtype",
            "top_k",
            "experts",
            "algorithm",
        )
    }
    results = []
    for mode in ("tp", "pp", "ep"):
        for degree in getattr(args, mode):
            results.append(run_mode(mode, degree, cfg))
            if args.json != "-":
                print(f"# {mode}={degree} measured", file=sys.stderr, flush=True)
    if args.json:
        write_json(
            {
                "command": command_line(),
                "machine": machine_info(),
                "config": cfg,
                "results": results,
            },
            args.json,
        )
    if args.json != "-":
        sys.stdout.write(format_results(results, cfg))
    return 0
