"""Sampling: seeded, the same tokens on every layout, different across seeds; top-k=1 is greedy."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import prompts, qwen3_ckpt, qwen3_moe_ckpt  # noqa: F401

from shardcore.runtime import Engine, Sampling, generate
from shardcore.runtime.sampling import Sampler, pick

pytestmark = pytest.mark.timeout(120)

SAMPLED = dict(temperature=1.3, top_k=40, top_p=0.95)


def test_pick_keeps_only_the_allowed_tokens():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    order = np.argsort(-logits)
    us = rng.random(400)
    top3 = {pick(logits, Sampling(1.0, top_k=3), u) for u in us}
    assert top3 <= set(order[:3].tolist()) and len(top3) == 3
    assert {pick(logits, Sampling(1.0, top_k=1), u) for u in us} == {int(np.argmax(logits))}
    assert {pick(logits, Sampling(1.0, top_p=1e-6), u) for u in us} == {int(np.argmax(logits))}
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    nucleus = int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1  # smallest set reaching 0.5
    assert {pick(logits, Sampling(1.0, top_p=0.5), u) for u in us} == set(order[:nucleus].tolist())


def test_pick_follows_the_tempered_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    us = (np.arange(10_000) + 0.5) / 10_000  # an even grid: the counts are the probabilities
    counts = np.bincount([pick(logits, Sampling(1.0), u) for u in us], minlength=3)
    np.testing.assert_allclose(counts / us.size, [0.5, 0.3, 0.2], atol=1e-3)
    hot = np.bincount([pick(logits, Sampling(2.0), u) for u in us], minlength=3) / us.size
    assert hot[0] < 0.5 and hot[2] > 0.2  # a higher temperature flattens


def test_ties_go_to_the_first_token_as_in_greedy():
    logits = np.array([1.0, 3.0, 3.0, 0.0], np.float32)
    assert pick(logits, Sampling(1.0, top_k=1), 0.99) == int(np.argmax(logits)) == 1


@pytest.mark.parametrize(
    "kw,error",
    [
        (dict(temperature=-1.0), ValueError),
        (dict(top_k=-2), ValueError),
        (dict(top_k=1.5), TypeError),
        (dict(top_p=0.0), ValueError),
        (dict(top_p=1.5), ValueError),
        (dict(seed=-1), ValueError),
    ],
)
def test_bad_sampling_arguments(kw, error):
    with pytest.raises(error):
        Sampling(**kw)


def test_a_sequence_draws_the_same_wherever_it_sits():
    """Stream per sequence: sequence 2 sampled alone or in a batch of three draws the same."""
    logits = np.random.default_rng(1).normal(size=(3, 30)).astype(np.float32)
    s = Sampling(1.0, seed=5)
    batch, single = Sampler(s, [0, 1, 2]), Sampler(s, [2])
    together = [int(batch(logits)[2]) for _ in range(20)]
    alone = [int(single(logits[2:])[0]) for _ in range(20)]
    assert together == alone
    assert len(set(together)) > 1  # the stream advances step by step


LAYOUTS = [dict(tp=2), dict(pp=2), dict(dp=2), dict(tp=2, pp=2)]


def test_sampling_is_reproducible_across_layouts(qwen3_ckpt):  # noqa: F811
    ids = prompts(3, 5, seed=21)
    one = generate(qwen3_ckpt, ids, max_new_tokens=8, seed=7, **SAMPLED)
    greedy = generate(qwen3_ckpt, ids, max_new_tokens=8)
    assert one.seed == 7 and greedy.seed is None
    assert not np.array_equal(one.tokens, greedy.tokens)  # it really sampled
    for degrees in LAYOUTS:
        got = generate(qwen3_ckpt, ids, max_new_tokens=8, seed=7, **SAMPLED, **degrees)
        np.testing.assert_array_equal(got.tokens, one.tokens, err_msg=str(degrees))


def test_sampling_moe_layouts_and_engine_requests(qwen3_moe_ckpt):  # noqa: F811
    ids = prompts(2, 6, seed=22)
    one = generate(qwen3_moe_ckpt, ids, max_new_tokens=6, seed=3, **SAMPLED)
    with Engine(qwen3_moe_ckpt, tp=2, ep=2) as engine:
        a = engine.generate(ids, max_new_tokens=6, seed=3, **SAMPLED)
        b = engine.generate(ids, max_new_tokens=6, seed=3, **SAMPLED)
        other = engine.generate(ids, max_new_tokens=6, seed=4, **SAMPLED)
        fresh = engine.generate(ids, max_new_tokens=6, **SAMPLED)  # a seed chosen for it
    np.testing.assert_array_equal(a.tokens, one.tokens)
    np.testing.assert_array_equal(b.tokens, one.tokens)
    assert not np.array_equal(other.tokens, one.tokens)
    assert isinstance(fresh.seed, int)


def test_seeds_differ_and_top_k_one_is_greedy(qwen3_ckpt):  # noqa: F811
    ids = prompts(2, 5, seed=23)
    greedy = generate(qwen3_ckpt, ids, max_new_tokens=8, tp=2)
    by_seed = [
        generate(qwen3_ckpt, ids, max_new_tokens=8, seed=s, **SAMPLED).tokens for s in range(3)
    ]
    assert len({t.tobytes() for t in by_seed}) == 3
    top1 = generate(qwen3_ckpt, ids, max_new_tokens=8, tp=2, temperature=2.0, top_k=1, seed=1)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_array_equal(top1.logits, greedy.logits)
