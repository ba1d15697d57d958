"""Prefill and decode of a batch of requests on one rank: the pipeline's schedule.

Prefill splits the prompts along the sequence into micro-batches (chunks of positions): a stage
works on chunk c + 1 while the next stage works on chunk c (GPipe fill), and the KV cache makes
chunk c + 1 attend to the earlier ones. Decode passes one new token per request through the
stages; the last stage picks the token (greedy or sampled, ``sampling.Sampler``) and sends it
back to the first stage. With stop ids, a replica of one stage ends its decode as soon as every
sequence has produced one; a pipeline decodes to max_new_tokens (its middle stages never see the
tokens), and the outputs are cut at the stop either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import RankLayout, split_even
from .model import RoutingRecord, StageModel
from .ops import Precision
from .sampling import Sampler, finished_rows

# Message tags: activations move forward, chosen tokens move back from the last stage.
TAG_ACTIVATIONS = 1
TAG_TOKENS = 2


@dataclass
class RankOutput:
    """What one rank returns: the outputs its replica produced if it is the reporting rank."""

    rank: int
    dp_index: int
    reports: bool  # TP index 0 of the last stage: the rank whose outputs are the replica's
    tokens: np.ndarray | None = None  # [batch, steps]
    logits: np.ndarray | None = None  # [steps, batch, vocab]: what chose each token
    steps: int = 0  # decode steps this replica ran (max_new_tokens unless it stopped early)
    # seconds from this rank's start of the request: its first token chosen, its last one
    first_token_s: float = 0.0
    done_s: float = 0.0
    split: dict[str, float] = field(default_factory=dict)  # Clock.split of the run
    traffic: dict = field(default_factory=dict)
    routing: list[list[RoutingRecord]] = field(default_factory=list)  # per forward


@dataclass
class FailureInjection:
    """Test hook: make ``rank`` fail at the start of decode step ``step`` (0: prefill)."""

    rank: int
    step: int
    kind: str = "raise"  # "raise": an exception; "kill": SIGKILL to itself; "hang": block forever

    def __post_init__(self) -> None:
        if self.kind not in ("raise", "kill", "hang"):
            raise ValueError(
                f"FailureInjection.kind must be 'raise', 'kill' or 'hang', got {self.kind!r}"
            )

    def maybe_fail(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step:
            return
        if self.kind == "kill":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            import threading

            threading.Event().wait()  # never set: only a timeout or a kill ends this rank
        raise RuntimeError(f"injected failure on rank {rank} at step {step}")


def prefill_chunks(prompt_len: int, micro_batches: int):
    """The sequence ranges of the prefill micro-batches."""
    return split_even(prompt_len, max(1, min(micro_batches, prompt_len)))


def run_requests(
    model: StageModel,
    layout: RankLayout,
    prompts: np.ndarray,
    max_new_tokens: int,
    micro_batches: int,
    comm=None,
    failure: FailureInjection | None = None,
    sampler: Sampler | None = None,
    stop_ids: tuple[int, ...] = (),
    stop_early: bool = False,
    keep_logits: bool = True,
) -> RankOutput:
    """Prefill ``prompts`` [B, S] then decode (greedily without a ``sampler``) up to
    ``max_new_tokens`` tokens; returns this rank's RankOutput. ``stop_early``: end the decode
    when every sequence has produced one of ``stop_ids`` (only where every rank that takes part
    in this replica's decode sees the tokens: one stage, no EP group across replicas).
    ``keep_logits``: return every step's logits (on the reporting rank)."""
    precision: Precision = model.precision
    b, s = prompts.shape
    out = RankOutput(
        rank=layout.rank,
        dp_index=layout.dp_index,
        reports=layout.is_last_stage and layout.tp_index == 0,
    )
    hidden = model.cfg.hidden_size

    def forward(ids: Any, start: int, length: int, last: bool) -> np.ndarray | None:
        """One micro-batch through this stage; on the last stage the logits [B, V] of its last
        position when ``last`` (the prompt's end, or a decode step)."""
        if layout.is_first_stage:
            h = model.embed_tokens(ids)
        else:
            buf = np.empty((b, length, hidden), precision.dtype)
            with model.clock.measure("comm"):
                comm.recv(buf, layout.prev_stage_rank, tag=TAG_ACTIVATIONS)
            h = buf.astype(np.float32)
        routing_before = len(model.routing)
        h = model.forward_layers(h, start)
        if model.record_routing:
            out.routing.append(model.routing[routing_before:])
        if not layout.is_last_stage:
            with model.clock.measure("comm"):
                comm.send(
                    np.ascontiguousarray(h, dtype=precision.dtype),
                    layout.next_stage_rank,
                    tag=TAG_ACTIVATIONS,
                )
            return None
        return model.head(h[:, -1]) if last else None

    def exchange_tokens(tokens: np.ndarray | None) -> np.ndarray | None:
        """The greedy tokens from the last stage to the first (identity without PP)."""
        if layout.pp == 1:
            return tokens
        if layout.is_last_stage:
            with model.clock.measure("comm"):
                comm.send(
                    np.ascontiguousarray(tokens, dtype=np.int64),
                    layout.first_stage_rank,
                    tag=TAG_TOKENS,
                )
            return tokens
        if layout.is_first_stage:
            buf = np.empty(b, np.int64)
            with model.clock.measure("comm"):
                comm.recv(buf, layout.last_stage_rank, tag=TAG_TOKENS)
            return buf
        return None

    started = time.perf_counter()
    model.clock.reset()
    if failure is not None:
        failure.maybe_fail(layout.rank, 0)
    chunks = prefill_chunks(s, micro_batches)
    for c, (c0, c1) in enumerate(chunks):
        step_logits = forward(
            prompts[:, c0:c1] if layout.is_first_stage else None,
            c0,
            c1 - c0,
            last=c == len(chunks) - 1,
        )
    generated = np.zeros((b, max_new_tokens), np.int64)
    all_logits = []
    token = None
    steps = max_new_tokens
    stop_early = stop_early and bool(stop_ids) and layout.pp == 1
    for step in range(max_new_tokens):
        if step > 0:
            token = exchange_tokens(token)
            if failure is not None:
                failure.maybe_fail(layout.rank, step)
            ids = token[:, None] if layout.is_first_stage and token is not None else None
            step_logits = forward(ids, s + step - 1, 1, last=True)
        if layout.is_last_stage:
            if step_logits is None:
                raise RuntimeError("the last stage computed no logits")
            token = np.argmax(step_logits, axis=-1) if sampler is None else sampler(step_logits)
            generated[:, step] = token
            if keep_logits:
                all_logits.append(step_logits)
            if step == 0:
                out.first_token_s = time.perf_counter() - started
            if stop_early and finished_rows(generated, step, stop_ids).all():
                steps = step + 1
                break
    out.steps = steps
    out.done_s = time.perf_counter() - started
    out.split = model.clock.split(out.done_s)
    if out.reports:
        out.tokens = generated[:, :steps]
        out.logits = np.stack(all_logits) if keep_logits else None
    return out
