"""``dist.all_reduce`` on the shardcore backend against gloo, in the same run.

    python -m shardcore.torch.bench --world-size 2 --sizes 8,2M,32M
    python -m shardcore.torch.bench --world-size 2 --transformers [--model DIR]

Rows per message size: the median time of one ``dist.all_reduce`` on a "shardcore" group, on a
"gloo" group over the same ranks, and of the raw ``Communicator.all_reduce`` on a NumPy array
of the same size (the torch backend's overhead is the difference). Each iteration's time is the slowest rank's;
the backends take turns in rounds so that a change in machine load hits them alike.
``compare_all_reduce`` is the function ``shardcore bench compare`` can call.

``--transformers``: a transformers tensor-parallel forward (``tp_plan="auto"``) of a prompt
(prefill) and of one token after it (a decode step, on the prefill's cache), with "shardcore"
and then "gloo" as the default backend, in alternating runs (fresh rank processes each run) so
that a change in load hits both; a tiny random Qwen3 unless ``--model`` names a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import traceback
from typing import Any

KINDS = ("shardcore", "gloo", "raw")
# --breakdown: the shardcore call with torch's frontend skipped (the group's method called
# directly), and the C++ communicator called on the tensor's address (no Python layer at all).
BREAKDOWN = ("group_method", "core_pointer")
_ROUNDS = 3  # each kind runs iters/_ROUNDS timed calls per round


def parse_size(text: str) -> int:
    """``8``, ``64K``, ``2M``, ``1G`` -> bytes."""
    text = text.strip().upper().rstrip("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(number) * scale
    except ValueError:
        raise ValueError(f"bad size {text!r}: use bytes, or a number with K, M or G") from None
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def _iterations(nbytes: int, iters: int | None) -> int:
    if iters is not None:
        return max(_ROUNDS, iters)
    # about 0.3 s of shardcore time per size at ~5 GB/s, at least 30 calls, at most 3000
    return max(30, min(3000, int(3e8 / max(nbytes, 1))))


def _rank(
    rank: int,
    world: int,
    store_path: str,
    sizes: list[int],
    iters: int | None,
    dtype_name: str,
    breakdown: bool,
    queue,
) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        import torch.distributed as dist

        import shardcore.torch

        dist.init_process_group(
            "shardcore", init_method=f"file://{store_path}", rank=rank, world_size=world
        )
        gloo = dist.new_group(backend="gloo")
        group = dist.group.WORLD
        comm = group.communicator
        kinds = KINDS + (BREAKDOWN if breakdown else ())
        from torch._C._distributed_c10d import AllreduceOptions

        from .process_group import _CORE_DTYPES, _CORE_SUM

        dtype = getattr(torch, dtype_name)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        out = {}
        for nbytes in sizes:
            count = max(1, nbytes // itemsize)
            t = torch.ones(count, dtype=dtype)
            # a fresh array of the same size and dtype: the Communicator's fastest case
            a = shardcore.torch._dtypes.numpy_view(t).copy()
            calls = {
                "shardcore": lambda t=t: dist.all_reduce(t),
                "gloo": lambda t=t: dist.all_reduce(t, group=gloo),
                "raw": lambda a=a: comm.all_reduce(a),
            }
            if breakdown:
                opts = AllreduceOptions()
                opts.asyncOp = False
                ptr, code = t.data_ptr(), _CORE_DTYPES[dtype]
                calls["group_method"] = lambda t=t, o=opts: group.allreduce([t], o)
                calls["core_pointer"] = lambda p=ptr, n=count, c=code: comm._core.all_reduce(
                    p, p, n, c, _CORE_SUM, 0
                )
            n = _iterations(count * itemsize, iters)
            per_round = max(1, n // _ROUNDS)
            samples: dict[str, list[float]] = {k: [] for k in kinds}
            for kind in kinds:  # warm-up: connections, page faults, caches
                for _ in range(3):
                    calls[kind]()
            for _ in range(_ROUNDS):
                for kind in kinds:
                    call = calls[kind]
                    dist.barrier(group=gloo)
                    times = samples[kind]
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t0)
            # the slowest rank's time per iteration
            stacked = torch.tensor([samples[k] for k in kinds], dtype=torch.float64)
            dist.all_reduce(stacked, op=dist.ReduceOp.MAX, group=gloo)
            out[count * itemsize] = {
                k: statistics.median(stacked[i].tolist()) for i, k in enumerate(kinds)
            }
        dist.destroy_process_group()
        queue.put((rank, "ok", out))
    except BaseException:  # noqa: BLE001  re-raised by the parent with the rank
        queue.put((rank, "error", traceback.format_exc()))


def compare_all_reduce(
    sizes: list[int],
    iters: int | None = None,
    world_size: int = 2,
    dtype: str = "float32",
    breakdown: bool = False,
) -> dict[int, dict[str, float]]:
    """Median seconds per ``dist.all_reduce`` (SUM, in place) per message size in bytes.

    Returns ``{bytes: {"shardcore": s, "gloo": s, "raw": s}}``; ``raw`` is the shardcore
    Communicator called directly on a NumPy array of the same size. ``iters`` defaults by size.
    ``breakdown`` adds ``group_method`` and ``core_pointer`` (see ``BREAKDOWN``).
    """
    if world_size < 2:
        raise ValueError(f"world_size must be >= 2, got {world_size}")
    if not sizes:
        raise ValueError("sizes is empty")
    from ..bench.runners import collect_spawned

    with tempfile.TemporaryDirectory(prefix="shardcore-torch-bench-") as tmp:
        store = os.path.join(tmp, "store")
        results = collect_spawned(
            _rank,
            lambda r: (r, world_size, store, list(sizes), iters, dtype, breakdown),
            world_size,
            "torch benchmark",
        )
    return results[0]


def backend_layer_overhead(dtype: str = "float32", iters: int = 200_000) -> dict[str, float]:
    """Seconds per call spent in ``ShardcoreProcessGroup.allreduce`` itself, one process.

    The group runs on a C++ communicator that does nothing, so what is left is the backend's
    Python (argument checks, the tensor's address, the work handle); ``torch_frontend`` is the
    rest of ``dist.all_reduce`` (torch's own checks), measured with the same null communicator.
    """
    import timeit

    import torch
    import torch.distributed as dist
    from torch._C._distributed_c10d import AllreduceOptions

    from .process_group import ShardcoreProcessGroup

    class NullCore:  # the C++ communicator's all_reduce(in, out, count, dtype, op, algorithm)
        def all_reduce(self, src, dst, count, dtype, op, algorithm):
            return "none"

    class NullCommunicator:
        _core = NullCore()

    pg = ShardcoreProcessGroup(NullCommunicator(), 0, 1)
    t = torch.ones(2, dtype=getattr(torch, dtype))
    tensors, opts = [t], AllreduceOptions()
    opts.asyncOp = False
    core, p = NullCore(), t.data_ptr()

    def best(fn):
        return min(timeit.repeat(fn, number=iters // 5, repeat=5)) / (iters // 5)

    layer = best(lambda: pg.allreduce(tensors, opts))
    null_call = best(lambda: core.all_reduce(p, p, 2, 0, 0, 0))
    # dist.all_reduce needs a registered group: time torch's frontend over the same method
    frontend = None
    if not dist.is_initialized():
        from datetime import timedelta

        store = dist.HashStore()
        name = "shardcore-null-bench"
        dist.Backend.register_backend(
            name, lambda *a: ShardcoreProcessGroup(NullCommunicator(), 0, 1), devices=["cpu"]
        )
        dist.init_process_group(
            name, store=store, rank=0, world_size=1, timeout=timedelta(seconds=30)
        )
        try:
            frontend = best(lambda: dist.all_reduce(t)) - layer
        finally:
            dist.destroy_process_group()
    return {"backend_layer": layer - null_call, "torch_frontend": frontend}


def _tp_rank(
    rank: int,
    world: int,
    store_path: str,
    backend: str,
    model_dir: str,
    prompt_len: int,
    iters: int,
    blocks_only: bool,
    queue,
) -> None:
    try:
        import inspect

        import torch

        torch.set_num_threads(1)
        import torch.distributed as dist
        import transformers

        import shardcore.torch  # noqa: F401  registers the backend

        # what torchrun sets: transformers sizes its tensor-parallel mesh by them
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
        )
        dist.init_process_group(
            backend, init_method=f"file://{store_path}", rank=rank, world_size=world
        )
        plan: Any = "auto"
        if blocks_only:  # the decoder blocks' plan alone: embedding and lm_head stay whole
            config = transformers.AutoConfig.from_pretrained(model_dir)
            plan = {f"model.{k}": v for k, v in config.base_model_tp_plan.items()}
        tp: dict[str, Any]
        if hasattr(transformers, "DistributedConfig"):
            tp = {"distributed_config": transformers.DistributedConfig(tp_plan=plan)}
        else:  # transformers before DistributedConfig
            tp = {"tp_plan": plan}
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **tp)
        model.eval()
        # the cache's keyword is `cache` in current transformers (`past_key_values` before 5.24)
        keyword = (
            "cache"
            if "cache" in inspect.signature(model.forward).parameters
            else ("past_key_values")
        )
        vocab = model.config.vocab_size
        prompt = (torch.arange(prompt_len).reshape(1, -1) * 7919) % vocab
        token = torch.tensor([[1]])

        def prefill():
            cache = transformers.DynamicCache()
            model(prompt, use_cache=True, **{keyword: cache})
            return cache

        times: dict[str, list[float]] = {"prefill": [], "decode": []}
        with torch.no_grad():
            for i in range(iters + 2):  # two warm-up calls of each
                dist.barrier()
                t0 = time.perf_counter()
                cache = prefill()
                t1 = time.perf_counter()
                dist.barrier()
                t2 = time.perf_counter()
                model(token, use_cache=True, **{keyword: cache})
                t3 = time.perf_counter()
                if i >= 2:
                    times["prefill"].append(t1 - t0)
                    times["decode"].append(t3 - t2)
        stacked = torch.tensor([times["prefill"], times["decode"]], dtype=torch.float64)
        dist.all_reduce(stacked, op=dist.ReduceOp.MAX)  # the slowest rank per call
        dist.destroy_process_group()
        queue.put((rank, "ok", {"prefill": stacked[0].tolist(), "decode": stacked[1].tolist()}))
    except BaseException:  # noqa: BLE001  re-raised by the parent with the rank
        queue.put((rank, "error", traceback.format_exc()))


# The random Qwen3 timed when no checkpoint is given: small enough to make in a second, with
# heads, KV heads and MLP width that 2, 4 and 8 ranks divide.
RANDOM_MODEL: dict[str, Any] = {
    "hidden_size": 512,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "vocab_size": 4096,
}


def compare_transformers_tp(
    world_size: int = 2,
    model_dir: str | None = None,
    prompt_len: int = 32,
    iters: int = 20,
    rounds: int = 3,
    blocks_only: bool = False,
) -> dict[str, dict[str, float]]:
    """Median seconds of a transformers TP prefill and decode step per backend.

    ``blocks_only``: shard the decoder blocks alone (the config's ``base_model_tp_plan``), so
    that the embedding and ``lm_head`` stay whole and no logits are gathered (DTensor's
    all-gather does not reach a Python process group on torch 2.11).

    Returns ``{"shardcore": {"prefill": s, "decode": s}, "gloo": {...}}``: the median over
    every timed call of every round of the slowest rank's time. ``model_dir`` defaults to a
    random Qwen3 of ``RANDOM_MODEL``'s sizes. The backends alternate, round by round.
    """
    if world_size < 2:
        raise ValueError(f"world_size must be >= 2, got {world_size}")
    from ..bench.runners import collect_spawned

    samples: dict[str, dict[str, list[float]]] = {
        b: {"prefill": [], "decode": []} for b in ("shardcore", "gloo")
    }
    with tempfile.TemporaryDirectory(prefix="shardcore-torch-bench-tp-") as tmp:
        if model_dir is None:
            from ..runtime.tiny import make_tiny_checkpoint

            model_dir = make_tiny_checkpoint(os.path.join(tmp, "qwen3"), "qwen3", **RANDOM_MODEL)
        for rnd in range(rounds):
            for backend in samples:
                store = os.path.join(tmp, f"store-{rnd}-{backend}")
                results = collect_spawned(
                    _tp_rank,
                    lambda r, s=store, b=backend: (
                        r,
                        world_size,
                        s,
                        b,
                        model_dir,
                        prompt_len,
                        iters,
                        blocks_only,
                    ),
                    world_size,
                    f"transformers TP benchmark ({backend})",
                )
                for phase in ("prefill", "decode"):
                    samples[backend][phase].extend(results[0][phase])
    return {
        b: {phase: statistics.median(v) for phase, v in phases.items()}
        for b, phases in samples.items()
    }


def _format_tp(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'phase':>8} {'shardcore ms':>13} {'gloo ms':>9} {'gloo/shardcore':>15}"]
    for phase in ("prefill", "decode"):
        sc, gl = results["shardcore"][phase], results["gloo"][phase]
        lines.append(f"{phase:>8} {sc * 1e3:>13.3f} {gl * 1e3:>9.3f} {gl / sc:>14.2f}x")
    return "\n".join(lines)


def _format(results: dict[int, dict[str, float]]) -> str:
    lines = [
        (
            f"{'bytes':>10} {'shardcore us':>13} {'gloo us':>11} {'raw us':>10} "
            f"{'gloo/shardcore':>15} {'torch overhead us':>18}"
        )
    ]
    noisy = False
    for nbytes, r in sorted(results.items()):
        overhead = (r["shardcore"] - r["raw"]) * 1e6
        # the two medians come from different calls: on a loaded host the raw call can measure
        # slower, and a negative difference would be noise reported as a number
        shown = f"{overhead:>18.2f}" if overhead >= 0 else f"{'below noise':>18}"
        noisy = noisy or overhead < 0
        lines.append(
            f"{nbytes:>10} {r['shardcore'] * 1e6:>13.2f} {r['gloo'] * 1e6:>11.2f} "
            f"{r['raw'] * 1e6:>10.2f} {r['gloo'] / r['shardcore']:>14.1f}x {shown}"
        )
    lines.append(
        "torch overhead = shardcore through torch minus the raw core call"
        + ("; 'below noise': the raw call measured slower in this run" if noisy else "")
    )
    if any("group_method" in r for r in results.values()):
        lines.append(f"{'bytes':>10} {'group method us':>16} {'core on pointer us':>19}")
        for nbytes, r in sorted(results.items()):
            lines.append(
                f"{nbytes:>10} {r['group_method'] * 1e6:>16.2f} {r['core_pointer'] * 1e6:>19.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the comparison table."""
    parser = argparse.ArgumentParser(
        prog="python -m shardcore.torch.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--world-size", "-n", type=int, default=2)
    parser.add_argument("--sizes", default="8,2M,32M", help="comma-separated bytes (K/M/G)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per size")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the group's method alone and the core on the pointer",
    )
    parser.add_argument(
        "--transformers",
        action="store_true",
        help="time a transformers TP prefill and decode step instead of dist.all_reduce",
    )
    parser.add_argument("--model", default=None, help="checkpoint directory (--transformers)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prefill tokens")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per backend")
    parser.add_argument(
        "--blocks-only",
        action="store_true",
        help="shard the decoder blocks only (embedding and lm_head whole: no logits gather)",
    )
    args = parser.parse_args(argv)
    if args.transformers:
        tp = compare_transformers_tp(
            args.world_size,
            args.model,
            args.prompt_len,
            args.iters or 20,
            args.rounds,
            args.blocks_only,
        )
        print(
            f"transformers tp_plan={'decoder blocks' if args.blocks_only else repr('auto')} "
            f"forward, {args.world_size} ranks, prompt of "
            f"{args.prompt_len} tokens then one decode step; median of the slowest rank over "
            f"{args.rounds} alternating runs per backend; {os.cpu_count()} CPUs"
        )
        print(_format_tp(tp))
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    results = compare_all_reduce(sizes, args.iters, args.world_size, args.dtype, args.breakdown)
    print(
        f"dist.all_reduce (SUM, {args.dtype}, in place), {args.world_size} ranks, "
        f"median of the slowest rank per call; {os.cpu_count()} CPUs"
    )
    print(_format(results))
    split = backend_layer_overhead(args.dtype)
    print(
        f"per call, one process, null communicator: shardcore backend layer "
        f"{split['backend_layer'] * 1e6:.2f} us, torch frontend "
        f"{(split['torch_frontend'] or 0) * 1e6:.2f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
