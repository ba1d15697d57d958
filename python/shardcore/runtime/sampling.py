"""Choosing the next token from the logits: greedy, or sampled with temperature, top-k and top-p.

Sampling is reproducible across layouts: sequence ``i`` of a request draws from its own stream,
seeded by (seed, i), one uniform number per decode step, so the tokens do not depend on which
DP replica serves the sequence, on its neighbours in the batch, or on the TP/PP split (every
last-stage rank of a TP group sees the same gathered logits and draws the same number). The
draw is an inverse-CDF pick in float64 over the kept tokens sorted by probability, so the tiny
float32 differences between layouts (summation order of TP partial sums, about 1e-7 relative)
change a token only when the uniform number lands within that distance of a boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0: greedy (argmax, the first of ties)."""

    temperature: float = 0.0
    top_k: int = 0  # keep the k most probable tokens (0: all)
    top_p: float = 1.0  # keep the smallest most-probable set whose probability reaches top_p
    seed: int | None = None  # None with temperature > 0: a fresh seed, chosen once per request

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
            raise TypeError(f"top_k must be an integer, got {self.top_k!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or int(self.seed) < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def seeded(self) -> Sampling:
        """This sampling with its seed fixed (a fresh one if none was given and it samples)."""
        if self.greedy or self.seed is not None:
            return self
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        return Sampling(self.temperature, self.top_k, self.top_p, seed)


GREEDY = Sampling()


def pick(logits: np.ndarray, sampling: Sampling, uniform: float | None = None) -> int:
    """The token chosen from one row of logits [vocab]; ``uniform`` in [0, 1) when sampling."""
    if sampling.greedy:
        return int(np.argmax(logits))
    if uniform is None:
        raise ValueError("sampling needs a uniform number")
    z = np.asarray(logits, np.float64) / sampling.temperature
    k = sampling.top_k
    if 0 < k < z.size:
        part = np.argpartition(-z, k - 1)[:k]
        # ascending index first, so that the stable sort keeps the first of tied tokens first
        part.sort()
        order = part[np.argsort(-z[part], kind="stable")]
    else:
        order = np.argsort(-z, kind="stable")
    zs = z[order]
    p = np.exp(zs - zs[0])
    p /= p.sum()
    if sampling.top_p < 1:
        before = np.cumsum(p) - p  # probability of the more probable tokens
        keep = int(np.count_nonzero(before < sampling.top_p))
        p = p[: max(1, keep)]
    cdf = np.cumsum(p)
    i = int(np.searchsorted(cdf, uniform * cdf[-1], side="right"))
    return int(order[min(i, p.size - 1)])


class Sampler:
    """The token choice of the sequences a replica serves, each with its own random stream."""

    def __init__(self, sampling: Sampling, rows: Iterable[int]):
        self.sampling = sampling
        self.rows = list(rows)
        self._streams: list[np.random.Generator] = []
        if not sampling.greedy:
            if sampling.seed is None:
                raise ValueError("a Sampler needs a seeded Sampling (Sampling.seeded())")
            self._streams = [np.random.default_rng([int(sampling.seed), r]) for r in self.rows]

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Tokens [B] for logits [B, vocab] (B = the rows given); advances every stream."""
        if self.sampling.greedy:
            return np.argmax(logits, axis=-1)
        out = np.empty(len(self._streams), np.int64)
        for i, stream in enumerate(self._streams):
            out[i] = pick(logits[i], self.sampling, float(stream.random()))
        return out


def finished_rows(generated: np.ndarray, step: int, stop_ids: Sequence[int]) -> np.ndarray:
    """Which rows of ``generated`` [B, n] have produced a stop id at or before ``step``."""
    if not stop_ids:
        return np.zeros(generated.shape[0], bool)
    hit = np.isin(generated[:, : step + 1], np.asarray(stop_ids, np.int64))
    return np.asarray(hit.any(axis=1), bool)


def generation_stop_ids(checkpoint_dir: str, hf_config: dict | None = None) -> tuple[int, ...]:
    """The eos ids of a checkpoint: generation_config.json's ``eos_token_id`` (an id or a
    list), else config.json's; () when neither names one."""
    import json
    import os

    path = os.path.join(checkpoint_dir, "generation_config.json")
    source: dict = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            source = json.load(f)
    eos = source.get("eos_token_id")
    if eos is None and hf_config is not None:
        eos = hf_config.get("eos_token_id")
    if eos is None:
        return ()
    ids = [eos] if isinstance(eos, int) else list(eos)
    return tuple(int(i) for i in ids)
