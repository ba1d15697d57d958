"""``generate`` on ranks that were started for it, possibly on several hosts.

``generate()`` forks its workers on one host. A job across hosts starts its ranks with
``shardcore run --nnodes`` (or torchrun), one launcher per host, and every rank runs

    python -m shardcore.runtime.distributed CHECKPOINT --prompt-ids 1,2,3 -tp 4 -pp 2

or calls ``generate_on(shardcore.init(), ...)``. Ranks are placed as the plan numbers them (a
TP group is tp consecutive ranks, a stage tp*dp consecutive ranks), and global ranks are
numbered host by host, so with tp*dp ranks per host TP stays inside a host and PP crosses.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time

import numpy as np

from .runner import GenerateResult, _prepare, _rank_main, _result


def _gather_objects(comm, obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (pickled through all_gather)."""
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = comm.all_gather(np.array([data.size], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    everything = comm.all_gather(padded).reshape(comm.size, -1)
    return [pickle.loads(everything[r, : int(sizes[r])].tobytes()) for r in range(comm.size)]


def host_indices(comm) -> list[int]:
    """The host index of every rank of ``comm`` (all 0 on one host)."""
    topology = getattr(comm, "topology", None)
    if topology is None:
        return [0] * comm.size
    return [topology.host_of(r) for r in range(comm.size)]


def generate_on(
    comm,
    checkpoint_dir,
    input_ids,
    plan=None,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    max_new_tokens: int = 8,
    dtype: str = "float32",
    micro_batches: int | None = None,
    backend: str = "auto",
) -> GenerateResult:
    """Run this rank's share of a generation on ``comm`` (every rank calls it with the same
    arguments); every rank returns the whole result, with the prediction of each rank's bytes
    split into inside-host and between-host (``inter_sent``/``inter_recv``) where it spans hosts.
    """
    checkpoint_dir, prompts, _, backend, ckpt, plan, layouts, micro = _prepare(
        checkpoint_dir,
        input_ids,
        plan,
        tp,
        pp,
        dp,
        ep,
        max_new_tokens,
        dtype,
        micro_batches,
        backend,
    )
    if len(layouts) != comm.size:
        raise ValueError(
            f"the plan places {len(layouts)} ranks (tp*pp*dp) but the communicator has {comm.size}"
        )
    record = ckpt.config.is_moe
    mine = _rank_main(
        comm, checkpoint_dir, prompts, layouts, dtype, max_new_tokens, micro, record, None, backend
    )
    outputs = _gather_objects(comm, mine)
    hosts = host_indices(comm)
    return _result(
        outputs,
        plan,
        ckpt,
        layouts,
        prompts,
        max_new_tokens,
        micro,
        dtype,
        record,
        hosts=hosts if len(set(hosts)) > 1 else None,
    )


def main(argv: list[str] | None = None) -> int:
    """One rank of a generation started by ``shardcore run`` (any number of hosts)."""
    p = argparse.ArgumentParser(
        prog="python -m shardcore.runtime.distributed",
        description="One rank of a generation whose ranks were started by shardcore run "
        "(--nnodes for several hosts) or torchrun; rank 0 prints the tokens and every rank's "
        "traffic, inside and between hosts, beside the prediction.",
    )
    p.add_argument("checkpoint", help="checkpoint directory (config.json and *.safetensors)")
    p.add_argument(
        "--prompt-ids",
        action="append",
        required=True,
        help="comma-separated token ids of one prompt; repeat for a batch",
    )
    for short in ("tp", "pp", "dp", "ep"):
        p.add_argument(f"-{short}", type=int, default=1, help=f"{short} degree (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="tokens per prompt (default 8)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timed",
        action="store_true",
        help="also run with one new token first (after a warm-up) and report the decode time "
        "per token: the difference of the two runs over the extra tokens, slowest rank",
    )
    args = p.parse_args(argv)
    try:
        prompts = [[int(t) for t in s.split(",")] for s in args.prompt_ids]
    except ValueError:
        p.error("--prompt-ids: comma-separated integers expected")
    import shardcore

    comm = shardcore.init()

    def run(new_tokens: int) -> tuple[GenerateResult, float]:
        comm.barrier()
        start = time.perf_counter()
        result = generate_on(
            comm,
            args.checkpoint,
            np.array(prompts, np.int64),
            tp=args.tp,
            pp=args.pp,
            dp=args.dp,
            ep=args.ep,
            max_new_tokens=new_tokens,
            dtype=args.dtype,
        )
        mine = np.array([time.perf_counter() - start])
        return result, float(comm.all_gather(mine).max())

    decode_ms = None
    if args.timed and args.max_new_tokens > 1:
        run(1)  # warm-up: connections, page faults, caches
        _, one = run(1)
        result, full = run(args.max_new_tokens)
        decode_ms = (full - one) / (args.max_new_tokens - 1) * 1e3
    else:
        result, _ = run(args.max_new_tokens)
    if comm.rank == 0:
        report = {
            "tokens": result.tokens.tolist(),
            "hosts": host_indices(comm),
            "traffic": result.traffic,
            "predicted": result.predicted_traffic,
            "decode_ms_per_token": decode_ms,
        }
        if args.json:
            print(json.dumps(report))
        else:
            print("tokens:", report["tokens"])
            if decode_ms is not None:
                print(f"decode: {decode_ms:.2f} ms per token (slowest rank)")
            for r, (got, want) in enumerate(zip(result.traffic, result.predicted_traffic)):
                sent = sum(v["sent"] for v in got.values())
                inter = sum(v.get("inter_sent", 0) for v in got.values())
                p_sent = sum(v["sent"] for v in want.values())
                p_inter = sum(v.get("inter_sent", 0) for v in want.values())
                print(
                    f"rank {r} (host {report['hosts'][r]}): sent {sent} B ({inter} B between "
                    f"hosts); predicted {p_sent} B ({p_inter} B between hosts)"
                )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
