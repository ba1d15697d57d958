"""``Engine``: a checkpoint loaded once on long-lived worker ranks, serving many requests.

    with Engine("tiny-qwen3", tp=2) as engine:
        a = engine.generate([[5, 17, 42]], max_new_tokens=8)
        b = engine.generate(["some text"], temperature=0.8, top_p=0.9, seed=1)

Each rank reads and packs its shard of the weights when the engine starts (in this process
when the plan has one rank, on worker processes otherwise; ``workers.WorkerPool``) and keeps
them, with its communicators and symmetric workspace, until ``close``. A request's prompts may
differ in length: prompts of one length form one batch, and the batches run one after the
other. Every batch is the same computation as ``generate`` on those prompts, so its tokens,
logits and traffic (checked against the plan's prediction) are the ones a separate run gives.

``submit(prompt)`` is the other way in: continuous batching (``continuous.Scheduler``), where
sequences join and leave the running batch between decode steps.

A worker that raises or dies fails the request in flight with the launcher's LaunchError
naming the rank; the engine is then broken (its communicator was aborted), its workers are
stopped, and every later request raises the same error at once.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from .continuous import Scheduler, Step, _Sequence, run_step
from .engine import FailureInjection
from .groups import AxisGroup, single
from .model import StageModel
from .runner import (
    PAD,
    GenerateResult,
    Request,
    _check_max_new_tokens,
    _micro_batches,
    _prepare_model,
    _replicas_independent,
    _result,
    _serve,
    _split_comms,
    _sum_traffic,
)
from .sampling import Sampling, generation_stop_ids
from .traffic import normalise


def _setup_rank(comm, checkpoint_dir, layouts, dtype, backend, record):
    """A worker's state: its communicators and its shard of the model; returns its handler."""
    from .checkpoint import Checkpoint
    from .ops import Precision

    layout = layouts[comm.rank]
    precision = Precision(dtype)
    tp_comm, ep_comm = _split_comms(comm, layout)
    comms = [c for c in (comm, tp_comm, ep_comm) if c is not None]
    model = StageModel(
        Checkpoint(checkpoint_dir),
        layout,
        precision,
        AxisGroup(tp_comm, precision),
        AxisGroup(ep_comm, precision),
        batch=1,
        max_len=1,
        record_routing=record,
        backend=backend,
    )
    return functools.partial(_handle, comm, comms, model, layouts)


def _handle(comm, comms, model, layouts, payload):
    """A worker's answer to one call: a batch request or a continuous-batching step."""
    if isinstance(payload, Step):
        return run_step(comm, model, payload)
    return _serve(comm, comms, model, layouts, payload)


def _as_prompts(prompts, tokenizer_of) -> tuple[list[list[int]], bool]:
    """A request's prompts as lists of ids, and whether they were given as text."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, np.ndarray):
        if prompts.ndim == 1:
            prompts = prompts[None, :]
        if prompts.ndim != 2:
            raise ValueError(f"prompt ids must be [batch, length], got shape {prompts.shape}")
        if not np.issubdtype(prompts.dtype, np.integer):
            raise TypeError(f"prompt ids must be integers, got {prompts.dtype}")
        rows: list[list[int]] = [[int(t) for t in row] for row in prompts.tolist()]
        texts = False
    else:
        items = list(prompts)
        if items and all(isinstance(p, (int, np.integer)) for p in items):
            items = [items]  # one prompt of ids
        texts = bool(items) and all(isinstance(p, str) for p in items)
        if texts:
            tok = tokenizer_of()
            rows = [tok.encode(str(p)) for p in items]
        else:
            rows = []
            for p in items:
                if isinstance(p, str):
                    raise TypeError("a request's prompts are all text or all token ids")
                ids = np.asarray(p, dtype=np.int64 if len(p) == 0 else None)
                if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                    raise TypeError(f"a prompt of ids must be a list of integers, got {p!r}")
                rows.append([int(t) for t in ids.tolist()])
    if not rows:
        raise ValueError("a request needs at least one prompt")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} is empty")
    return rows, texts


class Engine:
    """A checkpoint on tp*pp*dp ranks, loaded once, serving ``generate`` requests."""

    def __init__(
        self,
        checkpoint,
        plan=None,
        tp: int = 1,
        pp: int = 1,
        dp: int = 1,
        ep: int = 1,
        dtype: str = "float32",
        backend: str = "auto",
        micro_batches: int | None = None,
        processes: bool | None = None,
        timeout: float | None = None,
        comm_timeout: float | None = None,
        max_slots: int = 8,
        max_seq_len: int | None = None,
    ):
        """Place the checkpoint (``plan``, or a plan made for tp/pp/dp/ep) and load every rank.

        ``processes``: run on worker processes even for one rank (default: only for more than
        one). ``timeout`` bounds the start and, by default, each request; ``comm_timeout`` is
        the communicator's wait deadline (Communicator.connect). ``max_slots`` and
        ``max_seq_len``: sequences per DP replica that ``submit`` keeps decoding at once, and
        their longest prompt + new tokens (default: max_position_embeddings, at most 4096).
        """
        self.checkpoint, self.precision, self.backend, self._ckpt, self.plan, self.layouts = (
            _prepare_model(checkpoint, plan, tp, pp, dp, ep, dtype, backend)
        )
        self.dtype = dtype
        self.micro_batches = _micro_batches(micro_batches, self.layouts[0].pp)
        self.timeout = timeout
        self.stop_ids = generation_stop_ids(self.checkpoint, self._ckpt.hf_config)
        self._record = self._ckpt.config.is_moe
        self._tokenizer: Any = None
        self._pool = None
        self._handler = None
        self._closed = False
        self._lock = threading.Lock()
        if isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1:
            raise ValueError(f"max_slots must be a positive integer, got {max_slots!r}")
        if max_seq_len is None:
            max_seq_len = min(int(self._ckpt.hf_config.get("max_position_embeddings", 4096)), 4096)
        self.max_slots, self.max_seq_len = max_slots, int(max_seq_len)
        self._scheduler: Scheduler | None = None
        world = len(self.layouts)
        if processes is None:
            processes = world > 1
        if processes:
            from .workers import WorkerPool

            self._pool = WorkerPool(
                functools.partial(
                    _setup_rank,
                    checkpoint_dir=self.checkpoint,
                    layouts=self.layouts,
                    dtype=dtype,
                    backend=self.backend,
                    record=self._record,
                ),
                world,
                timeout=timeout,
                comm_timeout=comm_timeout,
            )
        else:
            lay0 = self.layouts[0]
            model = StageModel(
                self._ckpt,
                lay0,
                self.precision,
                single(self.precision),
                single(self.precision),
                batch=1,
                max_len=1,
                record_routing=self._record,
                backend=self.backend,
            )
            self._handler = functools.partial(_handle, None, [], model, self.layouts)

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent; a request in flight on another thread ends first)."""
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.stop()
        with self._lock:
            self._closed = True
            if self._pool is not None:
                self._pool.close()
            self._handler = None

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (empty when the engine runs in this process)."""
        return [] if self._pool is None else self._pool.pids

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (``text.TextTokenizer``), loaded on first use."""
        if self._tokenizer is None:
            from .text import TextTokenizer

            self._tokenizer = TextTokenizer.from_checkpoint(self.checkpoint)
        return self._tokenizer

    # -- requests ------------------------------------------------------------------------------

    def generate(
        self,
        prompts,
        max_new_tokens: int = 8,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_ids: Sequence[int] | None = None,
        logits: bool = True,
        timeout: float | None = None,
        _failure: FailureInjection | None = None,
    ) -> GenerateResult:
        """Up to ``max_new_tokens`` tokens for each prompt.

        ``prompts``: a string or a list of strings (encoded with the checkpoint's
        tokenizer.json; the result's ``text`` holds the decoded outputs), or token ids: a
        [batch, length] array, one list of ints, or a list of lists of any lengths. Greedy by
        default; ``temperature`` > 0 samples (``top_k``, ``top_p``; ``seed`` makes it
        reproducible, on any layout). ``stop_ids`` end a sequence (default: the eos ids of
        generation_config.json; () for none). Tokens after a sequence's stop are PAD (-1) and
        ``lengths`` counts each sequence's tokens, its stop included. ``logits``: return every
        step's logits (False: ``result.logits`` is None and the workers send only tokens).
        ``result.timing``: TTFT, time per later token and tokens/s as the ranks measured them.
        """
        if self._closed:
            raise RuntimeError("the engine is closed")
        _check_max_new_tokens(max_new_tokens)
        sampling = Sampling(float(temperature), top_k, float(top_p), seed).seeded()
        stops = self.stop_ids if stop_ids is None else tuple(int(t) for t in stop_ids)
        rows, texts = _as_prompts(prompts, lambda: self.tokenizer)
        vocab = self._ckpt.config.vocab_size
        for i, row in enumerate(rows):
            if min(row) < 0 or max(row) >= vocab:
                raise ValueError(f"prompt {i}'s token ids must be in [0, {vocab})")
        timeout = self.timeout if timeout is None else timeout
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        parts = []
        with self._lock:  # one request at a time, its batches back to back
            if self._closed:
                raise RuntimeError("the engine is closed")
            for length in sorted(by_length):
                index = by_length[length]
                batch = np.asarray([rows[i] for i in index], np.int64)
                request = Request(
                    batch,
                    tuple(index),
                    max_new_tokens,
                    self.micro_batches,
                    sampling,
                    stops,
                    _failure,
                    keep_logits=logits,
                )
                result = self._run_batch(request, timeout)
                parts.append((index, result))
        result = parts[0][1] if len(parts) == 1 else self._merge(parts, len(rows))
        result.seed = sampling.seed
        if texts:
            tok = self.tokenizer
            lengths = np.asarray(result.lengths)
            result.text = [
                tok.decode([int(t) for t in result.tokens[i, : lengths[i]] if t not in stops])
                for i in range(len(rows))
            ]
        return result

    def _run_batch(self, request: Request, timeout: float | None) -> GenerateResult:
        """One batch of equal-length prompts on every rank."""
        dp = self.layouts[0].dp
        prompts, rows = request.prompts, request.rows
        real = prompts.shape[0]
        if real < dp:  # every replica needs a sequence: the last one repeated, dropped after
            extra = dp - real
            prompts = np.concatenate([prompts, np.repeat(prompts[-1:], extra, axis=0)])
            rows = rows + tuple(range(max(rows) + 1, max(rows) + 1 + extra))
            request = dataclasses.replace(request, prompts=prompts, rows=rows)
        if self._pool is not None:
            outputs = self._pool.call([request] * len(self.layouts), timeout=timeout)
        else:
            if request.failure is not None:
                raise ValueError("failure injection needs worker processes (processes=True)")
            assert self._handler is not None
            outputs = [self._handler(request)]
        result = _result(
            outputs,
            self.plan,
            self._ckpt,
            self.layouts,
            prompts,
            request.max_new_tokens,
            self.micro_batches,
            self.dtype,
            self._record,
            stop_ids=request.stop_ids,
        )
        if real < prompts.shape[0]:
            result.tokens = result.tokens[:real]
            if result.logits is not None:
                result.logits = result.logits[:, :real]
            result.lengths = np.asarray(result.lengths)[:real]
        return result

    def _merge(self, parts, batch: int) -> GenerateResult:
        """The results of several batches as one, rows in the request's order; traffic and
        its prediction summed."""
        steps = max(r.tokens.shape[1] for _, r in parts)
        tokens = np.full((batch, steps), PAD, np.int64)
        logits = None
        if all(r.logits is not None for _, r in parts):
            logits = np.zeros((steps, batch, self._ckpt.config.vocab_size), np.float32)
        lengths = np.zeros(batch, np.int64)
        for index, r in parts:
            n = r.tokens.shape[1]
            tokens[index, :n] = r.tokens
            if logits is not None:
                logits[:n, index] = r.logits
            lengths[index] = r.lengths
        first = parts[0][1]
        seconds = sum(r.timing["seconds"] for _, r in parts)
        timing = {
            "ttft_s": first.timing["ttft_s"],  # the first batch's: the others wait for it
            "tpot_s": float(np.mean([r.timing["tpot_s"] for _, r in parts])),
            "tokens_per_s": float(lengths.sum() / seconds) if seconds > 0 else 0.0,
            "seconds": seconds,
        }
        return GenerateResult(
            tokens=tokens,
            logits=logits,
            traffic=[
                normalise(_sum_traffic([r.traffic[k] for _, r in parts]))
                for k in range(len(self.layouts))
            ],
            predicted_traffic=[
                normalise(_sum_traffic([r.predicted_traffic[k] for _, r in parts]))
                for k in range(len(self.layouts))
            ],
            plan=first.plan,
            layouts=first.layouts,
            routing=None,
            lengths=lengths,
            timing=timing,
            rank_seconds=[
                {
                    k: sum(r.rank_seconds[rank][k] for _, r in parts)
                    for k in first.rank_seconds[rank]
                }
                for rank in range(len(first.rank_seconds))
            ],
        )

    # -- continuous batching ---------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Of ``submit``'s scheduler: steps run, the largest decode batch, most sequences held."""
        return {} if self._scheduler is None else dict(self._scheduler.stats)

    def submit(
        self,
        prompt,
        max_new_tokens: int = 8,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_ids: Sequence[int] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Future:
        """Queue one sequence for continuous batching; a Future of its GenerateResult.

        ``prompt``: a string (tokenizer.json) or a list of ids. The sequence joins the running
        batch at the next step and leaves it at a stop id or at ``max_new_tokens``, whatever
        else is running; sampling as in ``generate`` (the stream of row 0 for ``seed``).
        ``on_token(token)`` is called on the scheduler's thread as each token is chosen (it may
        submit more). The result has no logits and no traffic (not predicted per step); its
        timing is measured here from the submission.
        """
        return self.submit_all(
            [prompt],
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_ids=stop_ids,
            on_token=on_token,
        )[0]

    def submit_all(
        self,
        prompts: Sequence,
        max_new_tokens: int | Sequence[int] = 8,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_ids: Sequence[int] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> list[Future]:
        """``submit`` of several prompts at once (they join the batch at the same step);
        ``max_new_tokens`` may give each its own."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not _replicas_independent(self.layouts):
            raise NotImplementedError(
                "continuous batching needs every EP group inside one DP replica"
            )
        news = (
            [max_new_tokens] * len(prompts)
            if isinstance(max_new_tokens, int)
            else list(max_new_tokens)
        )
        if len(news) != len(prompts):
            raise ValueError(f"{len(news)} max_new_tokens for {len(prompts)} prompts")
        sampling = Sampling(float(temperature), top_k, float(top_p), seed).seeded()
        stops = self.stop_ids if stop_ids is None else tuple(int(t) for t in stop_ids)
        vocab = self._ckpt.config.vocab_size
        seqs = []
        for prompt, new in zip(prompts, news):
            _check_max_new_tokens(new)
            rows, texts = _as_prompts(
                [prompt] if isinstance(prompt, str) else [list(prompt)], lambda: self.tokenizer
            )
            ids = rows[0]
            if min(ids) < 0 or max(ids) >= vocab:
                raise ValueError(f"the prompt's token ids must be in [0, {vocab})")
            if len(ids) + new > self.max_seq_len:
                raise ValueError(
                    f"prompt ({len(ids)}) + max_new_tokens ({new}) exceeds max_seq_len "
                    f"({self.max_seq_len})"
                )
            seq = _Sequence(ids, new, sampling, stops, Future(), on_token, time.perf_counter())
            seq.text = texts
            seqs.append(seq)
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self, self.max_slots, self.max_seq_len)
        self._scheduler.submit(seqs)
        return [seq.future for seq in seqs]

    def _step(self, step: Step) -> list:
        """One continuous-batching step on every rank (between batch requests)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._pool is not None:
                return self._pool.call([step] * len(self.layouts), timeout=self.timeout)
            assert self._handler is not None
            return [self._handler(step)]

    def _completion(self, seq: _Sequence, now: float) -> GenerateResult:
        """The GenerateResult of a finished submitted sequence."""
        tokens = np.asarray([seq.tokens], np.int64)
        n = len(seq.tokens)
        ttft = seq.first_token_at - seq.submitted
        seconds = now - seq.submitted
        result = GenerateResult(
            tokens=tokens,
            logits=None,
            traffic=[],
            predicted_traffic=[],
            plan=self.plan,
            layouts=self.layouts,
            lengths=np.asarray([n], np.int64),
            seed=seq.sampling.seed,
            timing={
                "ttft_s": ttft,
                "tpot_s": (seconds - ttft) / (n - 1) if n > 1 else 0.0,
                "tokens_per_s": n / seconds if seconds > 0 else 0.0,
                "seconds": seconds,
            },
        )
        if seq.text:
            result.text = [self.tokenizer.decode([t for t in seq.tokens if t not in seq.stops])]
        return result
