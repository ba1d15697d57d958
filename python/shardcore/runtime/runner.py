"""``generate``: run a checkpoint on tp*pp*dp worker processes (or in this one) and collect."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import Checkpoint
from .engine import FailureInjection, RankOutput, run_requests
from .groups import AxisGroup, single
from .layout import RankLayout, host_plan, layouts_from_plan, split_even
from .linear import resolve_backend
from .model import StageModel
from .ops import Precision
from .traffic import Traffic, normalise, predict_run


@dataclass
class GenerateResult:
    """Greedy tokens, the logits of every step and the traffic of a run."""

    tokens: np.ndarray  # [batch, max_new_tokens]
    logits: np.ndarray  # [max_new_tokens, batch, vocab]: step 0 is the prompt's last position
    traffic: list[Traffic]  # per rank, as counted by its communicators during the run
    predicted_traffic: list[Traffic]  # per rank, predicted for this run
    plan: Any  # the shardcore.plan.Plan that was run
    layouts: Sequence[RankLayout]
    routing: list | None = None  # per rank, per forward: RoutingRecords (MoE models only)


def _as_batch(input_ids) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(
            f"input_ids must be a non-empty [batch, prompt] array of equal-length "
            f"prompts (or one prompt), got shape {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must be integers, got {ids.dtype}")
    return ids.astype(np.int64)


def _rank_main(
    comm,
    checkpoint_dir: str,
    prompts: np.ndarray,
    layouts,
    dtype: str,
    max_new_tokens: int,
    micro_batches: int,
    record_routing: bool,
    failure: FailureInjection | None,
    backend: str,
) -> RankOutput:
    """The body of every worker rank."""
    layout = layouts[comm.rank]
    precision = Precision(dtype)
    # Every rank takes part in both splits; a group of one gets no communicator (None).
    tp_comm = comm.split(layout.tp_group[0] if layout.tp > 1 else None, layout.tp_index)
    ep_comm = comm.split(layout.ep_group[0] if layout.ep > 1 else None, layout.ep_index)
    comms = [c for c in (comm, tp_comm, ep_comm) if c is not None]
    lo, hi = split_even(prompts.shape[0], layout.dp)[layout.dp_index]
    mine = prompts[lo:hi]
    model = StageModel(
        Checkpoint(checkpoint_dir),
        layout,
        precision,
        AxisGroup(tp_comm, precision),
        AxisGroup(ep_comm, precision),
        batch=mine.shape[0],
        max_len=prompts.shape[1] + max_new_tokens,
        record_routing=record_routing,
        backend=backend,
    )
    # The largest reduction: one prefill chunk of this replica's prompts, hidden-wide.
    longest_chunk = -(-prompts.shape[1] // max(1, min(micro_batches, prompts.shape[1])))
    model.tp_group.reserve(mine.shape[0] * longest_chunk * model.cfg.hidden_size)
    for c in comms:
        c.reset_traffic()
    out = run_requests(
        model, layout, mine, max_new_tokens, micro_batches, comm=comm, failure=failure
    )
    out.traffic = _sum_traffic([c.traffic() for c in comms])
    return out


def _sum_traffic(parts: Sequence[Traffic]) -> Traffic:
    keys = ("calls", "sent", "recv")
    if any("inter_sent" in v for part in parts for v in part.values()):
        keys += ("inter_sent", "inter_recv")  # a run across hosts
    total: Traffic = {}
    for part in parts:
        for kind, counters in part.items():
            slot = total.setdefault(kind, dict.fromkeys(keys, 0))
            for key in keys:
                slot[key] += int(counters.get(key, 0))
    return total


def _prepare(
    checkpoint_dir, input_ids, plan, tp, pp, dp, ep, max_new_tokens, dtype, micro_batches, backend
):
    """Checked arguments of a run: (dir, prompts, precision, backend, checkpoint, plan,
    layouts, micro-batches)."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    prompts = _as_batch(input_ids)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    precision = Precision(dtype)
    backend = resolve_backend(backend)
    ckpt = Checkpoint(checkpoint_dir)
    if plan is None:
        plan = host_plan(checkpoint_dir, tp, pp, dp, ep, dtype)
    else:
        given = {"tp": tp, "pp": pp, "dp": dp, "ep": ep}
        planned = {k: getattr(plan.config, k) for k in given}
        clash = {k: v for k, v in given.items() if v != 1 and v != planned[k]}
        if clash:
            raise ValueError(
                f"degrees {clash} disagree with the plan's {planned}; pass a plan "
                "or degrees, not both"
            )
    layouts = layouts_from_plan(ckpt.config, plan)
    lay0 = layouts[0]
    if prompts.shape[0] < lay0.dp:
        raise ValueError(
            f"dp={lay0.dp} replicas need at least {lay0.dp} prompts, got {prompts.shape[0]}"
        )
    micro = lay0.pp if micro_batches is None else micro_batches
    if not isinstance(micro, int) or micro < 1:
        raise ValueError(f"micro_batches must be a positive integer, got {micro_batches!r}")
    return checkpoint_dir, prompts, precision, backend, ckpt, plan, layouts, micro


def generate(
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
    timeout: float | None = None,
    backend: str = "auto",
    _failure: FailureInjection | None = None,
) -> GenerateResult:
    """Greedy generation of ``max_new_tokens`` tokens for each prompt of ``input_ids``.

    The placement comes from ``plan`` (a shardcore.plan.Plan for this checkpoint) or from a plan
    made here for tp/pp/dp/ep worker processes. One rank runs in this process; more run on
    worker processes started by shardcore.launch. ``micro_batches``: prefill chunks for the
    pipeline (default pp). ``dtype``: float32 or bfloat16 weights, activations and messages.
    ``backend``: the local GEMMs on shardcore's kernels ("kernels"), NumPy ("numpy") or the
    kernels when the C++ core is built ("auto"). ``_failure``: test hook (FailureInjection).
    """
    checkpoint_dir, prompts, precision, backend, ckpt, plan, layouts, micro = _prepare(
        checkpoint_dir, input_ids, plan, tp, pp, dp, ep, max_new_tokens, dtype, micro_batches,
        backend,
    )
    lay0 = layouts[0]
    record = ckpt.config.is_moe
    world = len(layouts)
    if world == 1 and _failure is None:
        model = StageModel(
            ckpt,
            lay0,
            precision,
            single(precision),
            single(precision),
            batch=prompts.shape[0],
            max_len=prompts.shape[1] + max_new_tokens,
            record_routing=record,
            backend=backend,
        )
        outputs = [run_requests(model, lay0, prompts, max_new_tokens, micro)]
    else:
        from ..launcher import launch

        outputs = launch(
            _rank_main,
            world,
            args=(
                checkpoint_dir,
                prompts,
                layouts,
                dtype,
                max_new_tokens,
                micro,
                record,
                _failure,
                backend,
            ),
            timeout=timeout,
        )
    return _result(outputs, plan, ckpt, layouts, prompts, max_new_tokens, micro, dtype, record)


def _result(
    outputs, plan, ckpt, layouts, prompts, max_new_tokens, micro, dtype, record, hosts=None
) -> GenerateResult:
    """The GenerateResult of every rank's output, beside the plan's prediction."""
    reporting = sorted((o for o in outputs if o.reports), key=lambda o: o.dp_index)
    routing = [o.routing for o in outputs] if record else None
    predicted = predict_run(
        plan,
        ckpt.config,
        layouts,
        prompts.shape[0],
        prompts.shape[1],
        max_new_tokens,
        micro,
        dtype,
        routing=routing,
        hosts=hosts,
    )
    return GenerateResult(
        tokens=np.concatenate([o.tokens for o in reporting]),
        logits=np.concatenate([o.logits for o in reporting], axis=1),
        traffic=[normalise(o.traffic) for o in outputs],
        predicted_traffic=predicted,
        plan=plan,
        layouts=layouts,
        routing=routing,
    )
