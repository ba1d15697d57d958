"""``shardcore generate``: generation from a checkpoint, sharded by TP/PP/DP/EP, from text or
token ids, greedy or sampled."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..cliargs import input_file, positive_float, positive_int
from ..errors import ShardcoreError


def register(subparsers) -> None:
    """Add the ``generate`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "generate",
        help="generation from a Hugging Face checkpoint on sharded workers",
        description="Run a Qwen3 / Qwen3-MoE / Llama-style checkpoint directory (config.json + "
        "*.safetensors) on tp*pp*dp worker processes and print the generated text (or token "
        "ids) and each rank's traffic beside the plan's prediction.",
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        type=_checkpoint_dir,
        help="checkpoint directory (config.json and *.safetensors)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a prompt as text, encoded with the checkpoint's tokenizer.json (needs the "
        "tokenizers package); repeat for several, of any lengths",
    )
    p.add_argument(
        "--prompt-ids",
        action="append",
        metavar="IDS",
        help="comma-separated token ids of one prompt; repeat for a batch (prompts "
        "of equal length)",
    )
    for short, name, what in (
        ("tp", "tensor", "tensor-parallel degree: ranks sharing each layer"),
        ("pp", "pipeline", "pipeline-parallel degree: stages of consecutive layers"),
        ("dp", "data", "data-parallel degree: replicas, each with its share of the prompts"),
        ("ep", "expert", "expert-parallel degree: ranks the experts are spread over"),
    ):
        p.add_argument(
            f"-{short}",
            f"--{name}-parallel-size",
            dest=short,
            type=positive_int,
            default=1,
            help=f"{what} (default 1)",
        )
    p.add_argument(
        "--plan",
        default=None,
        type=input_file,
        help="a plan saved by `shardcore plan --save` (instead of -tp/-pp/-dp/-ep)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=8,
        help="tokens to generate per prompt (default 8)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights and activations (default float32)",
    )
    p.add_argument(
        "--micro-batches",
        type=positive_int,
        default=None,
        help="prefill micro-batches for the pipeline (default: pp)",
    )
    p.add_argument(
        "--temperature",
        type=_non_negative_float,
        default=0.0,
        help="sampling temperature (default 0: greedy)",
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="sample from the k most probable tokens (0: all)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="sample from the smallest set of tokens whose probability reaches p (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="sampling seed: the same tokens on every layout (default: a fresh one, printed)",
    )
    p.add_argument(
        "--stop-ids",
        default=None,
        metavar="IDS",
        help="comma-separated ids that end a sequence (default: generation_config.json's eos "
        "ids; 'none' for none)",
    )
    p.add_argument(
        "--check", action="store_true", help="also run in one process and compare tokens and logits"
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        help="seconds before stopping every rank (default: no limit)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    hosts = p.add_argument_group(
        "across hosts",
        "run one `shardcore generate` per host with the same arguments and its own --node-rank; "
        "ranks are numbered host by host (TP inside a host when tp*dp ranks fit on it, PP across); "
        "greedy, from --prompt-ids",
    )
    hosts.add_argument(
        "--nnodes", type=positive_int, default=1, help="number of hosts of the run (default 1)"
    )
    hosts.add_argument(
        "--node-rank", type=int, default=0, help="this host's index in [0, --nnodes)"
    )
    hosts.add_argument(
        "--master-addr", default=None, help="address of node 0, which serves the rendezvous store"
    )
    hosts.add_argument(
        "--master-port", type=positive_int, default=29500, help="port of that store (default 29500)"
    )
    p.set_defaults(func=run)


def _run_across_hosts(args: Any) -> int:
    """One host's share of a generation over --nnodes hosts (python -m shardcore.runtime.distributed)."""
    from ..hier.launch import run_nodes

    if args.master_addr is None:
        raise ValueError("--nnodes > 1 needs --master-addr (node 0's address)")
    if not 0 <= args.node_rank < args.nnodes:
        raise ValueError(f"--node-rank must be in [0, {args.nnodes}), got {args.node_rank}")
    if args.prompt or not args.prompt_ids:
        raise ValueError("across hosts the prompts are given as --prompt-ids")
    sampling = (args.temperature, args.top_k, args.top_p, args.seed, args.stop_ids)
    if sampling != (0.0, 0, 1.0, None, None) or args.plan is not None or args.check:
        raise ValueError(
            "across hosts a run is greedy from -tp/-pp/-dp/-ep: --temperature, --top-k, "
            "--top-p, --seed, --stop-ids, --plan and --check are for one host"
        )
    world = args.tp * args.pp * args.dp
    if world % args.nnodes:
        raise ValueError(
            f"tp*pp*dp = {world} ranks do not split evenly over --nnodes {args.nnodes}"
        )
    target = ["-m", "shardcore.runtime.distributed", args.checkpoint]
    for ids in args.prompt_ids:
        target += ["--prompt-ids", ids]
    for degree in ("tp", "pp", "dp", "ep"):
        target += [f"-{degree}", str(getattr(args, degree))]
    target += ["--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype]
    if args.json:
        target.append("--json")
    return run_nodes(
        world // args.nnodes,
        target,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        timeout=args.timeout,
    )


def _checkpoint_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such checkpoint directory: {text!r}")
    if not os.path.isfile(os.path.join(text, "config.json")):
        raise argparse.ArgumentTypeError(f"{text!r} has no config.json")
    return text


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _stop_ids(text):
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--stop-ids {text!r} is not a comma-separated list of integers") from None


def _prompts(values):
    import numpy as np

    rows = []
    for text in values:
        try:
            rows.append([int(t) for t in text.split(",") if t.strip()])
        except ValueError:
            raise ValueError(
                f"--prompt-ids {text!r} is not a comma-separated list of integers"
            ) from None
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ValueError("every --prompt-ids needs the same, non-zero number of ids")
    return np.asarray(rows, dtype=np.int64)


def run(args: Any) -> int:
    """Entry point of ``shardcore generate``."""
    import numpy as np

    from . import Engine

    if args.nnodes > 1 or args.master_addr is not None:
        try:
            return _run_across_hosts(args)
        except ValueError as exc:
            print(f"shardcore generate: error: {exc}", file=sys.stderr)
            return 2
    try:
        if bool(args.prompt) == bool(args.prompt_ids):
            raise ValueError("give the prompts as --prompt (text) or as --prompt-ids, not both")
        prompts: Any = list(args.prompt) if args.prompt else _prompts(args.prompt_ids)
        plan = None
        if args.plan is not None:
            from ..plan import Plan

            plan = Plan.load(args.plan)
        options = dict(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop_ids=_stop_ids(args.stop_ids),
            timeout=args.timeout,
        )
        with Engine(
            args.checkpoint,
            plan=plan,
            tp=args.tp,
            pp=args.pp,
            dp=args.dp,
            ep=args.ep,
            dtype=args.dtype,
            micro_batches=args.micro_batches,
            timeout=args.timeout,
        ) as engine:
            if isinstance(prompts, np.ndarray) and prompts.shape[0] < engine.layouts[0].dp:
                raise ValueError(
                    f"dp={engine.layouts[0].dp} replicas need at least "
                    f"{engine.layouts[0].dp} prompts, got {prompts.shape[0]}"
                )
            result = engine.generate(prompts, **options)
        options["seed"] = result.seed
        check = None
        if args.check:
            with Engine(
                args.checkpoint, dtype=args.dtype, micro_batches=args.micro_batches
            ) as single_engine:
                single = single_engine.generate(prompts, **options)
            assert result.logits is not None and single.logits is not None
            same_shape = single.tokens.shape == result.tokens.shape
            diff = (
                np.max(np.abs(result.logits.astype(np.float64) - single.logits))
                if same_shape
                else np.inf
            )
            check = {
                "tokens_identical": bool(np.array_equal(result.tokens, single.tokens)),
                "max_rel_logit_diff": float(diff / np.max(np.abs(single.logits))),
            }
    except (ShardcoreError, ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as exc:
        print(f"shardcore generate: error: {exc}", file=sys.stderr)
        return 2
    traffic_ok = result.traffic == result.predicted_traffic
    lengths = [int(n) for n in result.lengths]
    tokens = [[int(t) for t in row[:n]] for row, n in zip(result.tokens, lengths)]
    if args.json:
        report = {
            "plan": result.plan.summary(),
            "tokens": tokens,
            "traffic": result.traffic,
            "predicted_traffic": result.predicted_traffic,
            "traffic_matches_plan": traffic_ok,
            "check": check,
            "seed": result.seed,
            "timing": result.timing,
            "rank_seconds": result.rank_seconds,
        }
        if result.text is not None:
            report["text"] = result.text
        print(json.dumps(report, indent=1))
    else:
        print(result.plan.summary())
        if result.seed is not None:
            print(f"sampling seed {result.seed}")
        for i, row in enumerate(tokens):
            if result.text is not None:
                print(f"prompt {i}: {args.prompt[i]!r} -> {result.text[i]!r}")
            else:
                print(
                    f"prompt {i}: {','.join(str(t) for t in prompts[i])} -> "
                    f"{','.join(str(t) for t in row)}"
                )
        print(
            f"{'rank':>4} {'all_reduce':>12} {'all_gather':>12} {'all_to_allv':>12} "
            f"{'send':>10} {'recv':>10}  (bytes sent by each kind; recv: received)"
        )
        for rank, t in enumerate(result.traffic):
            print(
                f"{rank:>4} {t['all_reduce']['sent']:>12} {t['all_gather']['sent']:>12} "
                f"{t['all_to_allv']['sent']:>12} {t['send']['sent']:>10} "
                f"{t['recv']['recv']:>10}"
            )
        print(
            f"traffic equals the plan's prediction on every rank: {'yes' if traffic_ok else 'NO'}"
        )
        if check is not None:
            print(
                f"single-process check: tokens identical: "
                f"{'yes' if check['tokens_identical'] else 'NO'}; "
                f"max |logit diff| / max |logit| = {check['max_rel_logit_diff']:.2e}"
            )
    ok = traffic_ok and (check is None or check["tokens_identical"])
    return 0 if ok else 1
