"""Engine.submit: continuous batching. Sequences join the running batch between decode steps
and leave it when done; each one's tokens equal a separate generate() call's."""

from __future__ import annotations

import os
import signal

import pytest
from runtime_fixtures import make_checkpoint, prompts, qwen3_ckpt, qwen3_moe_ckpt  # noqa: F401

from shardcore import LaunchError
from shardcore.runtime import Engine, generate

pytestmark = pytest.mark.timeout(120)

LENGTHS = (3, 7, 5, 9)
NEW = (6, 3, 5, 4)


def _prompts():
    return [prompts(1, n, seed=30 + n)[0].tolist() for n in LENGTHS]


def _reference(path, ps, **kw):
    return [
        generate(path, [p], max_new_tokens=n, stop_ids=(), **kw).tokens[0].tolist()
        for p, n in zip(ps, NEW)
    ]


@pytest.mark.parametrize(
    "kind,degrees",
    [
        ("dense", {}),
        ("dense", dict(tp=2)),
        ("dense", dict(pp=2)),
        ("dense", dict(dp=2)),
        ("moe", dict(tp=2, ep=2)),
    ],
)
def test_submitted_sequences_equal_separate_generate_calls(
    qwen3_ckpt,  # noqa: F811
    qwen3_moe_ckpt,  # noqa: F811
    kind,
    degrees,
):
    path = qwen3_ckpt if kind == "dense" else qwen3_moe_ckpt
    ps = _prompts()
    with Engine(path, **degrees) as engine:
        futures = engine.submit_all(ps, max_new_tokens=NEW, stop_ids=())  # one step admits all
        got = [f.result(timeout=60) for f in futures]
        stats = engine.stats
    assert [r.tokens[0].tolist() for r in got] == _reference(path, ps)
    assert [int(r.lengths[0]) for r in got] == list(NEW)
    # every sequence joined at the first step: a replica decodes them together
    assert stats["max_decode_batch"] == 4 // degrees.get("dp", 1)
    for r in got:
        assert r.timing["ttft_s"] > 0 and r.logits is None


def test_a_request_arriving_mid_decode_joins_and_leaves_first(qwen3_ckpt):  # noqa: F811
    long, short = prompts(1, 6, seed=40)[0].tolist(), prompts(1, 3, seed=41)[0].tolist()
    events: list[str] = []
    with Engine(qwen3_ckpt, tp=2) as engine:
        joined: list = []

        def on_long_token(token):
            events.append("long")
            if len(events) == 2:  # the long sequence is decoding: the short one arrives now
                f = engine.submit(short, max_new_tokens=2, stop_ids=())
                f.add_done_callback(lambda _: events.append("short done"))
                joined.append(f)

        first = engine.submit(long, max_new_tokens=8, stop_ids=(), on_token=on_long_token)
        long_result = first.result(timeout=60)
        short_result = joined[0].result(timeout=60)
        stats = engine.stats
    assert events.index("short done") < len(events) - 1  # finished while the long one decoded
    assert stats["max_decode_batch"] == 2
    assert long_result.tokens[0].tolist() == _one(qwen3_ckpt, long, 8)
    assert short_result.tokens[0].tolist() == _one(qwen3_ckpt, short, 2)


def _one(path, p, n, **kw):
    return generate(path, [p], max_new_tokens=n, stop_ids=(), **kw).tokens[0].tolist()


def test_one_slot_serves_sequences_one_after_another(qwen3_ckpt):  # noqa: F811
    ps = _prompts()
    with Engine(qwen3_ckpt, max_slots=1) as engine:
        got = [engine.submit(p, max_new_tokens=n, stop_ids=()) for p, n in zip(ps, NEW)]
        tokens = [f.result(timeout=60).tokens[0].tolist() for f in got]
        assert engine.stats["max_running"] == 1
    assert tokens == _reference(qwen3_ckpt, ps)


def test_sampling_and_stops_as_in_generate(qwen3_ckpt):  # noqa: F811
    p = prompts(1, 5, seed=42)[0].tolist()
    sampled = dict(temperature=1.2, top_k=30, top_p=0.95, seed=9)
    want = _one(qwen3_ckpt, p, 6, **sampled)
    full = _one(qwen3_ckpt, p, 6)
    with Engine(qwen3_ckpt, pp=2) as engine:
        got = engine.submit(p, max_new_tokens=6, stop_ids=(), **sampled).result(timeout=60)
        stop = engine.submit(p, max_new_tokens=6, stop_ids=[full[2]]).result(timeout=60)
    assert got.tokens[0].tolist() == want and got.seed == 9
    n = full.index(full[2]) + 1
    assert stop.tokens[0].tolist() == full[:n] and stop.lengths[0] == n


def test_text_submit(tmp_path):
    path = make_checkpoint(tmp_path / "t", "qwen3", seed=2, tokenizer=True)
    with Engine(path) as engine:
        got = engine.submit("hello world", max_new_tokens=4).result(timeout=60)
        batch = engine.generate(["hello world"], max_new_tokens=4)
    assert got.text == batch.text
    assert got.tokens[0].tolist() == batch.tokens[0, : batch.lengths[0]].tolist()


@pytest.mark.timeout(60)
def test_a_worker_killed_mid_decode_fails_every_sequence(qwen3_ckpt):  # noqa: F811
    with Engine(qwen3_ckpt, tp=2, pp=2) as engine:
        victim = engine.pids[3]

        def kill_at_second_token(token, seen=[]):  # noqa: B006 - a counter across calls
            seen.append(token)
            if len(seen) == 2:
                os.kill(victim, signal.SIGKILL)

        a = engine.submit(
            prompts(1, 4)[0].tolist(), max_new_tokens=8, on_token=kill_at_second_token
        )
        b = engine.submit(prompts(1, 6)[0].tolist(), max_new_tokens=8)
        for f in (a, b):
            with pytest.raises(LaunchError) as info:
                f.result(timeout=30)
            assert info.value.rank == 3 and "SIGKILL" in str(info.value)
        with pytest.raises(LaunchError):
            engine.submit([1, 2], max_new_tokens=2)
        with pytest.raises(LaunchError):
            engine.generate([[1, 2]], max_new_tokens=2)


def test_close_fails_what_is_still_queued(qwen3_ckpt):  # noqa: F811
    engine = Engine(qwen3_ckpt, tp=2, max_slots=1)
    futures = [engine.submit([1, 2, 3], max_new_tokens=30, stop_ids=()) for _ in range(4)]
    engine.close()
    for f in futures:
        assert f.done()
        assert f.exception() is None or isinstance(f.exception(), RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([1, 2])


def test_submit_refuses_what_cannot_fit(qwen3_ckpt, qwen3_moe_ckpt):  # noqa: F811
    with Engine(qwen3_ckpt, max_seq_len=10) as engine:
        with pytest.raises(ValueError, match="max_seq_len"):
            engine.submit([1] * 8, max_new_tokens=3)
        with pytest.raises(ValueError, match="token ids"):
            engine.submit([131])
    with Engine(qwen3_moe_ckpt, tp=2, dp=2, ep=4) as engine:  # EP groups across replicas
        with pytest.raises(NotImplementedError, match="EP group"):
            engine.submit([1, 2])
