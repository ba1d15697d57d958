"""``generate``: run a checkpoint on tp*pp*dp worker processes (or in this one) and collect."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checkpoint import Checkpoint
from .engine import FailureInjection, RankOutput, run_requests
from .groups import AxisGroup
from .layout import RankLayout, host_plan, layouts_from_plan, split_even
from .linear import resolve_backend
from .model import StageModel
from .ops import Precision
from .sampling import GREEDY, Sampler, Sampling
from .traffic import Traffic, normalise, predict_run

# The token id after a sequence's stop in GenerateResult.tokens (no real token is negative).
PAD = -1


@dataclass
class GenerateResult:
    """Generated tokens, the logits of every step and the traffic of a run."""

    tokens: np.ndarray  # [batch, steps], steps <= max_new_tokens; PAD after a sequence's stop
    # [steps, batch, vocab]: step 0 is the prompt's last position (None: not asked for)
    logits: np.ndarray | None
    traffic: list[Traffic]  # per rank, as counted by its communicators during the run
    predicted_traffic: list[Traffic]  # per rank, predicted for this run
    plan: Any  # the shardcore.plan.Plan that was run
    layouts: Sequence[RankLayout]
    routing: list | None = None  # per rank, per forward: RoutingRecords (MoE models only)
    # [batch]: tokens generated per sequence (stop included)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    text: list[str] | None = None  # the decoded tokens (stop excluded), when text was given
    seed: int | None = None  # the sampling seed used (None: greedy)
    # measured on the ranks that chose the tokens: ttft_s (request start to first token),
    # tpot_s (seconds per later token), tokens_per_s (tokens generated / the run's seconds)
    timing: dict[str, float] = field(default_factory=dict)
    # per rank: {gemm_s, comm_s, other_s, total_s} of the run (clock.Clock)
    rank_seconds: list[dict[str, float]] = field(default_factory=list)


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


@dataclass(frozen=True)
class Request:
    """One batch of equal-length prompts as every rank receives it."""

    prompts: np.ndarray  # [B, S], the whole batch: each DP replica takes its block of rows
    rows: tuple[int, ...]  # each prompt's index in the caller's request (its sampling stream)
    max_new_tokens: int
    micro_batches: int
    sampling: Sampling = GREEDY
    stop_ids: tuple[int, ...] = ()
    failure: FailureInjection | None = None
    keep_logits: bool = True


def _split_comms(comm, layout: RankLayout):
    """This rank's TP and EP communicators (None for a group of one); every rank takes part in
    both splits."""
    tp_comm = comm.split(layout.tp_group[0] if layout.tp > 1 else None, layout.tp_index)
    ep_comm = comm.split(layout.ep_group[0] if layout.ep > 1 else None, layout.ep_index)
    return tp_comm, ep_comm


def _replicas_independent(layouts) -> bool:
    """Whether every EP group lies inside one DP replica (so replicas may stop apart)."""
    return all(layouts[r].dp_index == lay.dp_index for lay in layouts for r in lay.ep_group)


def _serve(comm, comms, model: StageModel, layouts, request: Request) -> RankOutput:
    """One request on this rank: its replica's rows through the model, with the run's traffic."""
    layout = model.layout
    prompts = request.prompts
    lo, hi = split_even(prompts.shape[0], layout.dp)[layout.dp_index]
    mine = prompts[lo:hi]
    model.allocate_cache(mine.shape[0], prompts.shape[1] + request.max_new_tokens)
    model.routing = []
    # The largest reduction: one prefill chunk of this replica's prompts, hidden-wide.
    micro = request.micro_batches
    longest_chunk = -(-prompts.shape[1] // max(1, min(micro, prompts.shape[1])))
    model.tp_group.reserve(mine.shape[0] * longest_chunk * model.cfg.hidden_size)
    for c in comms:
        c.reset_traffic()
    sampler = None
    if not request.sampling.greedy:
        sampler = Sampler(request.sampling, request.rows[lo:hi])
    out = run_requests(
        model,
        layout,
        mine,
        request.max_new_tokens,
        micro,
        comm=comm,
        failure=request.failure,
        sampler=sampler,
        stop_ids=request.stop_ids,
        stop_early=_replicas_independent(layouts),
        keep_logits=request.keep_logits,
    )
    out.traffic = _sum_traffic([c.traffic() for c in comms])
    return out


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
    """The body of a rank that loads its shard and runs one greedy request."""
    layout = layouts[comm.rank]
    precision = Precision(dtype)
    tp_comm, ep_comm = _split_comms(comm, layout)
    comms = [c for c in (comm, tp_comm, ep_comm) if c is not None]
    lo, hi = split_even(prompts.shape[0], layout.dp)[layout.dp_index]
    model = StageModel(
        Checkpoint(checkpoint_dir),
        layout,
        precision,
        AxisGroup(tp_comm, precision),
        AxisGroup(ep_comm, precision),
        batch=hi - lo,
        max_len=prompts.shape[1] + max_new_tokens,
        record_routing=record_routing,
        backend=backend,
    )
    request = Request(
        prompts, tuple(range(prompts.shape[0])), max_new_tokens, micro_batches, failure=failure
    )
    return _serve(comm, comms, model, layouts, request)


def _sum_traffic(parts: Sequence[Traffic]) -> Traffic:
    keys: tuple[str, ...] = ("calls", "sent", "recv")
    if any("inter_sent" in v for part in parts for v in part.values()):
        keys += ("inter_sent", "inter_recv")  # a run across hosts
    total: Traffic = {}
    for part in parts:
        for kind, counters in part.items():
            slot = total.setdefault(kind, dict.fromkeys(keys, 0))
            for key in keys:
                slot[key] += int(counters.get(key, 0))
    return total


def _prepare_model(checkpoint_dir, plan, tp, pp, dp, ep, dtype, backend):
    """Checked arguments of a model's placement: (dir, precision, backend, checkpoint, plan,
    layouts)."""
    checkpoint_dir = os.fspath(checkpoint_dir)
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
    return checkpoint_dir, precision, backend, ckpt, plan, layouts


def _check_max_new_tokens(max_new_tokens) -> None:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")


def _micro_batches(micro_batches, pp: int) -> int:
    micro = pp if micro_batches is None else micro_batches
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
        raise ValueError(f"micro_batches must be a positive integer, got {micro_batches!r}")
    return micro


def _prepare(
    checkpoint_dir, input_ids, plan, tp, pp, dp, ep, max_new_tokens, dtype, micro_batches, backend
):
    """Checked arguments of a run: (dir, prompts, precision, backend, checkpoint, plan,
    layouts, micro-batches)."""
    prompts = _as_batch(input_ids)
    _check_max_new_tokens(max_new_tokens)
    checkpoint_dir, precision, backend, ckpt, plan, layouts = _prepare_model(
        checkpoint_dir, plan, tp, pp, dp, ep, dtype, backend
    )
    lay0 = layouts[0]
    if prompts.shape[0] < lay0.dp:
        raise ValueError(
            f"dp={lay0.dp} replicas need at least {lay0.dp} prompts, got {prompts.shape[0]}"
        )
    micro = _micro_batches(micro_batches, lay0.pp)
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
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_ids=None,
    _failure: FailureInjection | None = None,
) -> GenerateResult:
    """Generate up to ``max_new_tokens`` tokens for each prompt of ``input_ids`` [B, S].

    The one-call form of ``Engine``: it loads the checkpoint, serves this one request and stops
    its workers. The placement comes from ``plan`` (a shardcore.plan.Plan for this checkpoint)
    or from a plan made here for tp/pp/dp/ep worker processes; one rank runs in this process.
    ``micro_batches``: prefill chunks for the pipeline (default pp). ``dtype``: float32 or
    bfloat16 weights, activations and messages. ``backend``: the local GEMMs on shardcore's
    kernels ("kernels"), NumPy ("numpy") or the kernels when the C++ core is built ("auto").
    Greedy unless ``temperature`` > 0 (then top_k, top_p and seed apply, see Sampling);
    ``stop_ids``: token ids that end a sequence (default: generation_config.json's eos ids;
    () for none). ``timeout`` bounds the start and the run. ``_failure``: test hook.
    """
    from .server import Engine

    checkpoint_dir, prompts, _, backend, _, plan, layouts, micro = _prepare(
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
    deadline = None if timeout is None else time.monotonic() + timeout
    with Engine(
        checkpoint_dir,
        plan=plan,
        dtype=dtype,
        backend=backend,
        micro_batches=micro,
        processes=len(layouts) > 1 or _failure is not None,
        timeout=timeout,
    ) as engine:
        remaining = None if deadline is None else max(1e-3, deadline - time.monotonic())
        return engine.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_ids=stop_ids,
            timeout=remaining,
            _failure=_failure,
        )


def _result(
    outputs,
    plan,
    ckpt,
    layouts,
    prompts,
    max_new_tokens,
    micro,
    dtype,
    record,
    hosts=None,
    stop_ids: Sequence[int] = (),
) -> GenerateResult:
    """The GenerateResult of every rank's output, beside the plan's prediction.

    A replica that stopped early (every sequence reached a stop id) is predicted for the steps
    it ran; its tokens [B, steps] are cut after each sequence's stop id (PAD after it) and the
    logits of steps it did not run are zeros.
    """
    reporting = sorted((o for o in outputs if o.reports), key=lambda o: o.dp_index)
    routing = [o.routing for o in outputs] if record else None
    steps_of = {o.dp_index: (o.steps or max_new_tokens) for o in outputs}

    def predict(steps: int) -> list[Traffic]:
        return predict_run(
            plan,
            ckpt.config,
            layouts,
            prompts.shape[0],
            prompts.shape[1],
            steps,
            micro,
            dtype,
            routing=routing,
            hosts=hosts,
        )

    by_steps = {s: predict(s) for s in sorted(set(steps_of.values()))}
    predicted = [by_steps[steps_of[lay.dp_index]][lay.rank] for lay in layouts]
    steps = max(steps_of.values())
    tokens = np.full((prompts.shape[0], steps), PAD, np.int64)
    keep_logits = all(o.logits is not None for o in reporting)
    logits = None
    if keep_logits:
        logits = np.zeros((steps, prompts.shape[0], ckpt.config.vocab_size), np.float32)
    row = 0
    for o in reporting:
        b, n = o.tokens.shape
        tokens[row : row + b, :n] = o.tokens
        if logits is not None:
            logits[:n, row : row + b] = o.logits
        row += b
    lengths = np.full(prompts.shape[0], steps, np.int64)
    lengths[:] = [steps_of[lay_dp] for lay_dp in _replica_of_rows(prompts.shape[0], layouts)]
    if stop_ids:
        hit = np.isin(tokens, np.asarray(list(stop_ids), np.int64))
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, lengths)
        lengths = np.minimum(lengths, first)
        tokens[np.arange(steps)[None, :] >= lengths[:, None]] = PAD
    return GenerateResult(
        tokens=tokens,
        logits=logits,
        traffic=[normalise(o.traffic) for o in outputs],
        predicted_traffic=predicted,
        plan=plan,
        layouts=layouts,
        routing=routing,
        lengths=lengths,
        timing=_timing(reporting, lengths),
        rank_seconds=[dict(o.split) for o in outputs],
    )


def _timing(reporting, lengths: np.ndarray) -> dict[str, float]:
    """TTFT, time per later token and tokens/s of a batch, from the reporting ranks' clocks."""
    done = max(o.done_s for o in reporting)
    later = [(o.done_s - o.first_token_s) / (o.steps - 1) for o in reporting if o.steps > 1]
    return {
        "ttft_s": max(o.first_token_s for o in reporting),
        "tpot_s": float(np.mean(later)) if later else 0.0,
        "tokens_per_s": float(lengths.sum() / done) if done > 0 else 0.0,
        "seconds": done,
    }


def _replica_of_rows(batch: int, layouts) -> list[int]:
    """The DP replica serving each row of a batch."""
    out = []
    for d, (lo, hi) in enumerate(split_even(batch, layouts[0].dp)):
        out += [d] * (hi - lo)
    return out
