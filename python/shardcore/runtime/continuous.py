"""Continuous batching: requests join and leave the running batch between decode steps.

``Engine.submit(prompt)`` queues one sequence and returns a Future. A scheduler thread runs
steps: each step prefills the sequences admitted since the last one (one at a time, each into
a free slot of a DP replica's KV cache) and advances every running sequence by one token in one
batched forward whose rows sit at their own positions (``StageModel.forward_slots``). A
sequence leaves at a stop id or at its max_new_tokens, freeing its slot for a waiting one. So
a short request submitted while a long one decodes finishes first, and DP replicas take
different requests.

A step is one call to every rank (the same ``Step`` to all); the last stage's TP index 0 of
each replica answers with the chosen tokens (greedy, argmax on the rank) or the logits of the
sequences that sample, which this process samples with each sequence's own stream, seeded
(seed, 0) as row 0 of ``generate`` (so a submitted prompt samples as ``generate([prompt])``
does). A pipeline splits a step's decode batch into as many micro-batches as it has stages,
so that its stages work on different micro-batches at once (and the prefills of new sequences
follow each other through the stages the same way). Layouts whose EP groups span DP replicas
are refused: their replicas would have to step in lockstep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .engine import TAG_ACTIVATIONS
from .layout import split_even
from .sampling import Sampling, pick


@dataclass(frozen=True)
class ReplicaWork:
    """What one DP replica does in a step."""

    prefills: tuple[tuple[int, np.ndarray], ...]  # (slot, prompt ids)
    decodes: tuple[tuple[int, int, int], ...]  # (slot, last token, its position)
    logits_for: frozenset[int]  # slots whose logits come back (they sample) instead of a token


@dataclass(frozen=True)
class Step:
    """One step of every replica (a replica absent from ``work`` does nothing)."""

    slots: int
    max_len: int
    work: dict[int, ReplicaWork]


def run_step(comm, model, step: Step) -> dict[int, Any] | None:
    """A rank's part of a step; on a replica's reporting rank {slot: token or logits row}."""
    layout = model.layout
    work = step.work.get(layout.dp_index)
    if work is None:
        return None
    model.allocate_slots(step.slots, step.max_len)
    hidden = model.cfg.hidden_size
    out: dict[int, Any] = {}

    def forward(ids: np.ndarray, slots: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
        n, t = ids.shape
        if layout.is_first_stage:
            h = model.embed_tokens(ids)
        else:
            buf = np.empty((n, t, hidden), model.precision.dtype)
            comm.recv(buf, layout.prev_stage_rank, tag=TAG_ACTIVATIONS)
            h = buf.astype(np.float32)
        h = model.forward_slots(h, slots, starts)
        model.routing.clear()
        if not layout.is_last_stage:
            comm.send(
                np.ascontiguousarray(h, dtype=model.precision.dtype),
                layout.next_stage_rank,
                tag=TAG_ACTIVATIONS,
            )
            return None
        return model.head(h[:, -1])

    def report(slots, logits) -> None:
        if logits is None:
            return
        for slot, row in zip(slots, logits):
            out[int(slot)] = row.copy() if slot in work.logits_for else int(np.argmax(row))

    for slot, ids in work.prefills:
        one = np.array([slot])
        report(one, forward(ids[None, :], one, np.zeros(1, np.int64)))
    if work.decodes:
        # A pipeline decodes in as many micro-batches as it has stages (or sequences), so that
        # stage s + 1 works on micro-batch m while stage s works on m + 1.
        d = np.asarray(work.decodes, np.int64)
        for lo, hi in split_even(len(d), min(layout.pp, len(d))):
            g = d[lo:hi]
            report(g[:, 0], forward(g[:, 1:2], g[:, 0], g[:, 2]))
    reports = layout.is_last_stage and layout.tp_index == 0
    return out if reports else None


@dataclass
class _Sequence:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    stops: tuple[int, ...]
    future: Future
    on_token: Callable[[int], None] | None
    submitted: float
    stream: np.random.Generator | None = None
    replica: int = -1
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    first_token_at: float = 0.0
    text: bool = False  # given as text: the result decodes its tokens


class Scheduler:
    """The continuous-batching loop of an engine, on its own thread (started on first use)."""

    def __init__(self, engine, slots: int, max_len: int):
        self.engine = engine
        self.slots = slots
        self.max_len = max_len
        self.dp = engine.layouts[0].dp
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[tuple[int, int], _Sequence] = {}  # (replica, slot) -> sequence
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.stats = {"steps": 0, "max_decode_batch": 0, "max_running": 0}

    def submit(self, seqs: list[_Sequence]) -> None:
        """Queue sequences (together: they join the batch at the same step)."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._stopping:
                raise RuntimeError("the engine is closed")
            for seq in seqs:
                if seq.sampling.seed is not None and not seq.sampling.greedy:
                    seq.stream = np.random.default_rng([int(seq.sampling.seed), 0])
                self._waiting.append(seq)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="shardcore-engine-scheduler", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        """Fail the sequences still queued or running and end the loop (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._fail_all(RuntimeError("the engine was closed before the request finished"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            pending = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
            self._running.clear()
        for seq in pending:
            if not seq.future.done():
                seq.future.set_exception(exc)

    def _admit(self) -> dict[int, list[_Sequence]]:
        """Waiting sequences into free slots, each to the replica with the most free slots."""
        admitted: dict[int, list[_Sequence]] = {}
        while self._waiting:
            used: list[set[int]] = [set() for _ in range(self.dp)]
            for r, s in self._running:
                used[r].add(s)
            free = [self.slots - len(u) for u in used]
            replica = int(np.argmax(free))
            if free[replica] == 0:
                break
            seq = self._waiting.popleft()
            seq.replica = replica
            seq.slot = min(set(range(self.slots)) - used[replica])
            self._running[(replica, seq.slot)] = seq
            admitted.setdefault(replica, []).append(seq)
        return admitted

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._running and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    new = self._admit()
                    decoding = [s for s in self._running.values() if s.tokens]
                    self.stats["max_running"] = max(self.stats["max_running"], len(self._running))
                work: dict[int, ReplicaWork] = {}
                for r in range(self.dp):
                    pre = new.get(r, [])
                    dec = [s for s in decoding if s.replica == r]
                    if not pre and not dec:
                        continue
                    work[r] = ReplicaWork(
                        prefills=tuple((s.slot, np.asarray(s.prompt, np.int64)) for s in pre),
                        decodes=tuple(
                            (s.slot, s.tokens[-1], len(s.prompt) + len(s.tokens) - 1) for s in dec
                        ),
                        logits_for=frozenset(s.slot for s in pre + dec if not s.sampling.greedy),
                    )
                self.stats["steps"] += 1
                self.stats["max_decode_batch"] = max(
                    self.stats["max_decode_batch"],
                    max((len(w.decodes) for w in work.values()), default=0),
                )
                replies = self.engine._step(Step(self.slots, self.max_len, work))
                self._advance(replies)
        except BaseException as exc:  # noqa: BLE001 - every caller gets it
            with self._cond:
                self._error = exc
            self._fail_all(exc)

    def _advance(self, replies: list[dict[int, Any] | None]) -> None:
        """Take each running sequence's new token; finish those that are done."""
        by_replica: dict[int, dict[int, Any]] = {}
        for lay, reply in zip(self.engine.layouts, replies):
            if reply is not None:
                by_replica[lay.dp_index] = reply
        now = time.perf_counter()
        finished = []
        with self._cond:
            running = list(self._running.items())
        for key, seq in running:
            reply = by_replica.get(seq.replica, {})
            if seq.slot not in reply:
                continue
            value = reply[seq.slot]
            if isinstance(value, np.ndarray):
                assert seq.stream is not None
                token = pick(value, seq.sampling, float(seq.stream.random()))
            else:
                token = int(value)
            if not seq.tokens:
                seq.first_token_at = now
            seq.tokens.append(token)
            if seq.on_token is not None:
                seq.on_token(token)
            if token in seq.stops or len(seq.tokens) == seq.max_new_tokens:
                finished.append((key, seq))
        with self._cond:
            for key, _ in finished:
                del self._running[key]
        for _, seq in finished:
            seq.future.set_result(self.engine._completion(seq, now))
