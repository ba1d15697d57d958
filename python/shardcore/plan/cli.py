"""``shardcore plan``: validate a TP/PP/DP/EP configuration, or search for the best one."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..cliargs import UsageError, int_list, output_file, positive_int
from ..errors import PlanError
from .format import plan_text, render, search_rows, text_table
from .plan import make_plan
from .schedule import pipeline_schedule
from .search import DEFAULT_CONTEXT, auto_plan
from .specs import DEVICE_PRESETS, DTYPE_BYTES, MODEL_PRESETS, ClusterSpec, ModelSpec
from .traffic import token_traffic


def register(subparsers) -> None:
    """Add the ``plan`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "plan",
        help="plan TP/PP/DP/EP for a model on a cluster (memory, traffic, search)",
        description="Validate a parallel configuration (when any of -tp/-pp/-dp/-ep is given) "
        "or rank every feasible one. MODEL is a preset "
        f"({', '.join(sorted(MODEL_PRESETS))}) or a Hugging Face config.json.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="a preset name or the path of a Hugging Face config.json"
    )
    p.add_argument(
        "--devices",
        type=positive_int,
        default=8,
        help="devices (cards) in the cluster; an RNGD card counts 8 PEs (default 8)",
    )
    p.add_argument(
        "--devices-per-node",
        type=positive_int,
        default=None,
        help="devices per node, a divisor of --devices (default: all in one node)",
    )
    p.add_argument(
        "--device",
        default="h100-80gb",
        choices=sorted(DEVICE_PRESETS),
        help="device preset: memory, compute and links (default h100-80gb)",
    )
    for short, name, what in (
        ("tp", "tensor", "tensor-parallel degree"),
        ("pp", "pipeline", "pipeline-parallel degree (stages)"),
        ("dp", "data", "data-parallel degree (replicas)"),
        ("ep", "expert", "expert-parallel degree"),
    ):
        p.add_argument(
            f"-{short}",
            f"--{name}-parallel-size",
            dest=short,
            type=positive_int,
            default=None,
            help=f"{what}; any of -tp/-pp/-dp/-ep fixes the plan (default: searched)",
        )
    p.add_argument(
        "--layer-partition",
        default=None,
        type=int_list(1, "layer counts"),
        help="layers per stage, comma separated (default: remainder to the middle)",
    )
    p.add_argument(
        "--objective",
        choices=("latency", "throughput"),
        default="latency",
        help="what the search ranks by (default latency)",
    )
    p.add_argument(
        "--search",
        action="store_true",
        help="search even when degrees are given, keeping the given ones fixed",
    )
    p.add_argument(
        "--context",
        type=positive_int,
        default=DEFAULT_CONTEXT,
        help=f"tokens per sequence for KV capacity (default {DEFAULT_CONTEXT})",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPE_BYTES),
        help="weight and activation dtype (default: the model's)",
    )
    p.add_argument(
        "--kv-dtype",
        default=None,
        choices=sorted(DTYPE_BYTES),
        help="KV cache dtype (default: the model's)",
    )
    p.add_argument("--top", type=positive_int, default=15, help="search rows to show (default 15)")
    p.add_argument(
        "--schedule",
        choices=("gpipe", "1f1b"),
        default=None,
        help="also print this pipeline schedule for the plan's stages",
    )
    p.add_argument(
        "--micro-batches",
        type=positive_int,
        default=None,
        help="micro-batches for --schedule (default: 2 x pp)",
    )
    p.add_argument(
        "--save", default=None, type=output_file, help="write the plan as JSON to this path"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def _model(arg: str, dtype: str | None) -> ModelSpec:
    if arg in MODEL_PRESETS:
        model = MODEL_PRESETS[arg]
    elif os.path.exists(arg):
        try:
            model = ModelSpec.from_hf_config(arg)
        except json.JSONDecodeError as exc:
            raise UsageError(f"MODEL {arg!r} is not a JSON file: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"MODEL {arg!r} is not a usable config.json: {exc}") from None
        except OSError as exc:
            raise UsageError(f"MODEL {arg!r} cannot be read: {exc.strerror}") from None
    else:
        raise PlanError(
            f"MODEL {arg!r} is neither a preset ({', '.join(sorted(MODEL_PRESETS))}) "
            f"nor a config.json path"
        )
    return model.with_dtype(dtype) if dtype else model


def run(args: argparse.Namespace) -> int:
    """Carry out ``shardcore plan``; returns the exit status (2 on an infeasible plan)."""
    try:
        return _run(args)
    except (PlanError, ValueError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        elif isinstance(exc, PlanError):
            print(f"shardcore plan: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            print(f"shardcore plan: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.devices_per_node is not None and args.devices % args.devices_per_node:
        raise UsageError(
            f"--devices {args.devices} is not a multiple of --devices-per-node "
            f"{args.devices_per_node}"
        )
    model = _model(args.model, args.dtype)
    cluster = ClusterSpec.make(args.device, args.devices, args.devices_per_node)
    partition = args.layer_partition
    search = None
    degrees = {"tp": args.tp, "pp": args.pp, "dp": args.dp, "ep": args.ep}
    if not args.search and (partition is not None or any(v is not None for v in degrees.values())):
        plan = make_plan(model, cluster, layer_partition=partition, **degrees)
    else:
        search = auto_plan(
            model, cluster, args.objective, context=args.context, kv_dtype=args.kv_dtype, **degrees
        )
        plan = search.plan
    if args.save:
        plan.save(args.save)
    schedule = None
    if args.schedule:
        schedule = pipeline_schedule(
            args.schedule, plan.config.pp, args.micro_batches or 2 * plan.config.pp
        )
    if args.json:
        out = {
            "plan": plan.to_dict(),
            "hash": plan.hash,
            "fits": all(plan.memory(r.rank, kv_dtype=args.kv_dtype).fits for r in plan.ranks),
            "memory": [
                _memory_dict(plan.memory(r.rank, kv_dtype=args.kv_dtype)) for r in plan.ranks
            ],
            "traffic_per_token": token_traffic(plan),
            "collectives_rank0": plan.step_collectives(0),
        }
        if search is not None:
            out["search"] = {
                "objective": search.objective,
                "why": search.why(),
                "candidates": [dict(c.row(), why=c.why, fits=c.fits) for c in search.candidates],
            }
        if schedule is not None:
            out["schedule"] = {
                "name": schedule.name,
                "grid": [list(r) for r in schedule.grid],
                "bubble_fraction": schedule.bubble_fraction,
            }
        print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    rich = sys.stdout.isatty()
    if search is not None:
        rows, whys = _short_rows(search_rows(search, args.top))
        title = (
            f"{model.name} on {cluster.nodes}x{cluster.devices_per_node} "
            f"{cluster.device.name}: {len(search.candidates)} configurations, "
            f"ranked by {search.objective} (context {search.context})"
        )
        text = render(rows, title) if rich else text_table(rows, title)
        if text:
            print(text)
        print(_wrap(_SEARCH_LEGEND))
        for line in whys:
            print(line)
        print("\n".join(_wrap(p) for p in search.why().splitlines()))
        print()
    print(_plan_text(plan))
    traffic = token_traffic(plan)
    print(
        "traffic per token (traffic model, bytes): "
        + ", ".join(f"{k} {traffic[k]:.0f}" for k in ("tp", "pp", "ep", "dp"))
    )
    if schedule is not None:
        print(schedule.text())
    return 0


# Column names of the search table, short enough for 120 columns, and their legend.
_SHORT_HEADERS = {
    "weights GB/rank": "weights GB",
    "KV B/tok/rank": "KV B/tok",
    "KV copies": "KV x",
    "seqs/replica": "seqs",
    "TP spans nodes": "TP x-node",
}
_SEARCH_LEGEND = (
    "(per rank: weights GB, free GB, KV B/tok = KV cache bytes per token; KV x = copies of each "
    "KV head; seqs = sequences per replica, B = micro-batch; TP x-node = a TP group spans nodes)"
)


def _plan_text(plan) -> str:
    """``plan_text`` within 120 columns: notes wrapped, and the per-rank table split in two
    (the rank column repeated) where it is wider."""
    lines = plan_text(plan).splitlines()
    table = text_table(plan.rank_rows(), "per rank:").splitlines()
    start = lines.index(table[0])
    if lines[start : start + len(table)] == table:
        lines[start : start + len(table)] = _fit_table(plan.rank_rows(), "per rank:").splitlines()
    return "\n".join(
        _wrap(line) if line.startswith(("note:", "DOES NOT FIT")) else line for line in lines
    )


def _fit_table(rows: list[dict], title: str, width: int = 120) -> str:
    """``text_table`` of ``rows``, as several tables one under the other (each repeating the
    first column) when one would be wider than ``width``."""
    text = text_table(rows, title)
    if not rows or max(len(line) for line in text.splitlines()) <= width:
        return text
    keys = list(rows[0])
    size = {k: max(len(k), *(len(str(r[k])) for r in rows)) + 2 for k in keys}
    chunks: list[list[str]] = [[]]
    used = size[keys[0]]
    for k in keys[1:]:
        if chunks[-1] and used + size[k] > width:
            chunks.append([])
            used = size[keys[0]]
        chunks[-1].append(k)
        used += size[k]
    parts = [
        text_table([{c: r[c] for c in [keys[0], *chunk]} for r in rows], title if i == 0 else None)
        for i, chunk in enumerate(chunks)
    ]
    return "\n\n".join(parts)


def _wrap(text: str) -> str:
    """Prose wrapped at 120 columns (table lines are shorter and come back as they are)."""
    import textwrap

    return textwrap.fill(text, width=120, subsequent_indent="  ") if len(text) > 120 else text


def _short_rows(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The search rows with short headers and without the free-text column, and that column as
    one wrapped line per configuration ("why it ranks where it does")."""
    import textwrap

    short, whys = [], []
    for row in rows:
        why = row.get("why", "")
        short.append({_SHORT_HEADERS.get(k, k): v for k, v in row.items() if k != "why"})
        if why:
            whys.append(
                textwrap.fill(
                    why,
                    width=118,
                    initial_indent=f"{row.get('#', '-'):>3} ",
                    subsequent_indent="    ",
                )
            )
    return short, whys


def _memory_dict(m) -> dict:
    return {
        "rank": m.rank,
        "device_bytes": m.device_bytes,
        "weights": m.weights,
        "left_after_weights": m.left_after_weights,
        "left_after_weights_nominal": m.left_after_weights_nominal,
        "kv_per_token": m.kv_per_token,
        "activations": m.activations,
        "comm_buffers": m.comm_buffers,
        "free": m.free,
        "kv_capacity_tokens": m.kv_capacity_tokens,
    }
