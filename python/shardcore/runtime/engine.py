"""Prefill and greedy decode of a batch of requests on one rank: the pipeline's schedule.

Prefill splits the prompts along the sequence into micro-batches (chunks of positions): a stage
works on chunk c + 1 while the next stage works on chunk c (GPipe fill), and the KV cache makes
chunk c + 1 attend to the earlier ones. Decode passes one new token per request through the
stages; the last stage picks the greedy token and sends it back to the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .layout import RankLayout, split_even
from .model import RoutingRecord, StageModel
from .ops import Precision

# Message tags: activations move forward, chosen tokens move back from the last stage.
TAG_ACTIVATIONS = 1
TAG_TOKENS = 2


@dataclass
class RankOutput:
    """What one rank returns: the outputs its replica produced if it is the reporting rank."""

    rank: int
    dp_index: int
    reports: bool  # TP index 0 of the last stage: the rank whose outputs are the replica's
    tokens: Optional[np.ndarray] = None  # [batch, max_new_tokens]
    prefill_logits: Optional[np.ndarray] = None  # [batch, prompt, vocab]
    decode_logits: Optional[np.ndarray] = None  # [max_new_tokens - 1, batch, vocab]
    traffic: dict = field(default_factory=dict)
    routing: List[List[RoutingRecord]] = field(default_factory=list)  # per forward


@dataclass
class FailureInjection:
    """Test hook: make ``rank`` fail at the start of decode step ``step`` (0: prefill)."""

    rank: int
    step: int
    kind: str = "raise"  # "raise": an exception; "kill": SIGKILL to itself

    def __post_init__(self) -> None:
        if self.kind not in ("raise", "kill"):
            raise ValueError(f"FailureInjection.kind must be 'raise' or 'kill', got {self.kind!r}")

    def maybe_fail(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step:
            return
        if self.kind == "kill":
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure on rank {rank} at step {step}")


def prefill_chunks(prompt_len: int, micro_batches: int):
    """The sequence ranges of the prefill micro-batches."""
    return split_even(prompt_len, max(1, min(micro_batches, prompt_len)))


def run_requests(model: StageModel, layout: RankLayout, prompts: np.ndarray, max_new_tokens: int,
                 micro_batches: int, comm=None, failure: Optional[FailureInjection] = None
                 ) -> RankOutput:
    """Prefill ``prompts`` [B, S] then decode greedily; returns this rank's RankOutput."""
    precision: Precision = model.precision
    b, s = prompts.shape
    out = RankOutput(rank=layout.rank, dp_index=layout.dp_index,
                     reports=layout.is_last_stage and layout.tp_index == 0)
    hidden = model.cfg.hidden_size

    def forward(ids: Optional[np.ndarray], start: int, length: int) -> Optional[np.ndarray]:
        """One micro-batch through this stage; logits [B, length, V] on the last stage."""
        if layout.is_first_stage:
            h = model.embed_tokens(ids)
        else:
            buf = np.empty((b, length, hidden), precision.dtype)
            comm.recv(buf, layout.prev_stage_rank, tag=TAG_ACTIVATIONS)
            h = buf.astype(np.float32)
        routing_before = len(model.routing)
        h = model.forward_layers(h, start)
        if model.record_routing:
            out.routing.append(model.routing[routing_before:])
        if not layout.is_last_stage:
            comm.send(np.ascontiguousarray(h, dtype=precision.dtype), layout.next_stage_rank,
                      tag=TAG_ACTIVATIONS)
            return None
        return model.head(h)

    def exchange_tokens(tokens: Optional[np.ndarray]) -> np.ndarray:
        """The greedy tokens from the last stage to the first (identity without PP)."""
        if layout.pp == 1:
            return tokens
        if layout.is_last_stage:
            comm.send(np.ascontiguousarray(tokens, dtype=np.int64), layout.first_stage_rank,
                      tag=TAG_TOKENS)
            return tokens
        if layout.is_first_stage:
            buf = np.empty(b, np.int64)
            comm.recv(buf, layout.last_stage_rank, tag=TAG_TOKENS)
            return buf
        return None

    if failure is not None:
        failure.maybe_fail(layout.rank, 0)
    chunks = prefill_chunks(s, micro_batches)
    logits = [forward(prompts[:, c0:c1] if layout.is_first_stage else None, c0, c1 - c0)
              for c0, c1 in chunks]
    generated = np.zeros((b, max_new_tokens), np.int64)
    decode_logits = []
    token = None
    if layout.is_last_stage:
        prefill_logits = np.concatenate(logits, axis=1)
        token = np.argmax(prefill_logits[:, -1], axis=-1)
        generated[:, 0] = token
        if out.reports:
            out.prefill_logits = prefill_logits
    for step in range(1, max_new_tokens):
        token = exchange_tokens(token)
        if failure is not None:
            failure.maybe_fail(layout.rank, step)
        step_logits = forward(token[:, None] if layout.is_first_stage else None,
                              s + step - 1, 1)
        if layout.is_last_stage:
            token = np.argmax(step_logits[:, 0], axis=-1)
            generated[:, step] = token
            decode_logits.append(step_logits[:, 0])
    if out.reports:
        out.tokens = generated
        vocab = model.cfg.vocab_size
        out.decode_logits = (np.stack(decode_logits) if decode_logits
                             else np.zeros((0, b, vocab), np.float32))
    return out
