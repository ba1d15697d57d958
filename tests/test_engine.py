"""Engine: weights loaded once on long-lived workers, many requests served, failures raised.

Each request an Engine serves is the computation a separate ``generate`` call makes: the same
tokens and logits bit for bit, and traffic equal to the plan's prediction.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading

import numpy as np
import pytest
from runtime_fixtures import (  # noqa: F401
    make_checkpoint,
    prompts,
    qwen3_ckpt,
    qwen3_moe_ckpt,
    reference_logits,
    rel_err,
)

from shardcore import LaunchError
from shardcore.runtime import Engine, FailureInjection, generate
from shardcore.runtime.runner import PAD

pytestmark = pytest.mark.timeout(120)


def _assert_same_run(got, want):
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.logits, want.logits)


def _assert_traffic_predicted(result):
    for rank, (measured, predicted) in enumerate(zip(result.traffic, result.predicted_traffic)):
        assert measured == predicted, f"rank {rank}: measured {measured} predicted {predicted}"


@pytest.mark.parametrize(
    "kind,degrees", [("dense", dict(tp=2, pp=2)), ("moe", dict(tp=2, ep=2, dp=2))]
)
def test_engine_requests_equal_separate_generate_calls(qwen3_ckpt, qwen3_moe_ckpt, kind, degrees):  # noqa: F811
    path = qwen3_ckpt if kind == "dense" else qwen3_moe_ckpt
    requests = [prompts(2, 7, seed=1), prompts(3, 4, seed=2), prompts(2, 9, seed=3)]
    with Engine(path, **degrees) as engine:
        pids = engine.pids
        assert len(pids) == 4
        results = [engine.generate(ids, max_new_tokens=4) for ids in requests]
        assert engine.pids == pids  # the same workers served every request
    for ids, got in zip(requests, results):
        _assert_same_run(got, generate(path, ids, max_new_tokens=4, **degrees))
        _assert_traffic_predicted(got)
        assert got.lengths.tolist() == [4] * ids.shape[0]


def test_engine_prompts_of_different_lengths_in_one_request(qwen3_ckpt):  # noqa: F811
    a, b, c = prompts(1, 5, seed=4)[0], prompts(1, 8, seed=5)[0], prompts(1, 5, seed=6)[0]
    with Engine(qwen3_ckpt, tp=2) as engine:
        got = engine.generate([a.tolist(), b.tolist(), c.tolist()], max_new_tokens=3)
        one = engine.generate(b.tolist(), max_new_tokens=3)  # a single list of ids: one prompt
    short = generate(qwen3_ckpt, np.stack([a, c]), max_new_tokens=3, tp=2)
    long = generate(qwen3_ckpt, b[None], max_new_tokens=3, tp=2)
    np.testing.assert_array_equal(got.tokens[[0, 2]], short.tokens)
    np.testing.assert_array_equal(got.tokens[1:2], long.tokens)
    np.testing.assert_array_equal(one.tokens, long.tokens)
    np.testing.assert_array_equal(got.logits[:, [0, 2]], short.logits)
    _assert_traffic_predicted(got)  # the two batches' traffic and predictions, summed


def test_engine_matches_transformers(qwen3_moe_ckpt):  # noqa: F811
    ids = prompts(2, 6, seed=7)
    with Engine(qwen3_moe_ckpt, tp=2, pp=2) as engine:
        first = engine.generate(ids, max_new_tokens=4)
        second = engine.generate(ids, max_new_tokens=4)
    _assert_same_run(second, first)  # nothing of the first request leaks into the second
    prefill, decode = reference_logits(qwen3_moe_ckpt, ids, first.tokens)
    assert rel_err(first.logits[0], prefill[:, -1]) < 1e-4
    assert rel_err(first.logits[1:], decode) < 1e-4


def test_engine_in_this_process_for_one_rank(qwen3_ckpt):  # noqa: F811
    ids = prompts(3, 5, seed=8)
    with Engine(qwen3_ckpt) as engine:
        assert engine.pids == []
        got = engine.generate(ids, max_new_tokens=3)
    _assert_same_run(got, generate(qwen3_ckpt, ids, max_new_tokens=3))


def test_fewer_prompts_than_replicas(qwen3_ckpt):  # noqa: F811
    ids = prompts(1, 6, seed=9)
    with Engine(qwen3_ckpt, dp=2) as engine:
        got = engine.generate(ids, max_new_tokens=3)
    assert got.tokens.shape == (1, 3)
    np.testing.assert_array_equal(got.tokens, generate(qwen3_ckpt, ids, max_new_tokens=3).tokens)


def test_callers_on_several_threads_are_served_one_at_a_time(qwen3_ckpt):  # noqa: F811
    requests = [prompts(1, 4 + i, seed=10 + i) for i in range(4)]
    results: dict[int, np.ndarray] = {}
    with Engine(qwen3_ckpt, tp=2) as engine:

        def serve(i):
            results[i] = engine.generate(requests[i], max_new_tokens=3).tokens

        threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, ids in enumerate(requests):
            np.testing.assert_array_equal(results[i], engine.generate(ids, max_new_tokens=3).tokens)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["kill", "raise"])
def test_a_failing_worker_fails_the_request_and_every_later_one(qwen3_moe_ckpt, kind):  # noqa: F811
    ids = prompts(2, 5)
    with Engine(qwen3_moe_ckpt, tp=2, pp=2, ep=2) as engine:
        engine.generate(ids, max_new_tokens=3)  # a request served before the failure
        with pytest.raises(LaunchError) as info:
            engine.generate(
                ids, max_new_tokens=4, _failure=FailureInjection(rank=1, step=2, kind=kind)
            )
        err = info.value
        assert err.rank == 1
        if kind == "kill":
            assert err.exitcode == -9 and "SIGKILL" in str(err)
        else:
            assert isinstance(err, RuntimeError)
            assert "injected failure on rank 1 at step 2" in str(err)
        with pytest.raises(LaunchError) as later:
            engine.generate(ids, max_new_tokens=2)
        assert later.value is err
        for pid in engine.pids:  # every worker was stopped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


@pytest.mark.timeout(60)
def test_a_worker_killed_between_requests_fails_the_next(qwen3_ckpt):  # noqa: F811
    with Engine(qwen3_ckpt, tp=2, pp=2) as engine:
        engine.generate(prompts(1, 4), max_new_tokens=2)
        os.kill(engine.pids[2], signal.SIGKILL)
        with pytest.raises(LaunchError) as info:
            engine.generate(prompts(1, 4), max_new_tokens=2)
    assert info.value.rank == 2
    assert "SIGKILL" in str(info.value)


def test_close_stops_the_workers_and_refuses_requests(qwen3_ckpt):  # noqa: F811
    engine = Engine(qwen3_ckpt, tp=2)
    pids = engine.pids
    engine.close()
    engine.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(prompts(1, 3))


def test_a_rank_that_cannot_load_fails_the_start(tmp_path, qwen3_ckpt):  # noqa: F811
    """A checkpoint whose tensors cannot be read fails in every worker's setup: the engine's
    constructor raises, and nothing keeps running."""
    broken = tmp_path / "broken"
    shutil.copytree(qwen3_ckpt, broken)
    with open(broken / "model.safetensors", "r+b") as f:
        header = int.from_bytes(f.read(8), "little")
        f.truncate(8 + header + 16)  # the header stays; the data it points to is gone
    with pytest.raises(LaunchError):
        Engine(broken, tp=2)


# -- stopping ---------------------------------------------------------------------------------


def _greedy(path, ids, new=6, **degrees):
    return generate(path, ids, max_new_tokens=new, **degrees)


def test_stop_ids_cut_each_sequence_after_its_stop(qwen3_ckpt):  # noqa: F811
    ids = prompts(3, 5, seed=11)
    full = _greedy(qwen3_ckpt, ids, stop_ids=())
    stop = int(full.tokens[0, 2])  # row 0 stops at step 2 (or earlier, if it repeats)
    for degrees in (dict(tp=2), dict(pp=2), dict(dp=2)):
        got = _greedy(qwen3_ckpt, ids, stop_ids=[stop], **degrees)
        for row in range(3):
            hits = np.nonzero(full.tokens[row] == stop)[0]
            n = int(hits[0]) + 1 if hits.size else 6
            assert got.lengths[row] == n
            np.testing.assert_array_equal(got.tokens[row, :n], full.tokens[row, :n])
            assert (got.tokens[row, n:] == PAD).all()
        _assert_traffic_predicted(got)  # a replica that stopped early is predicted as such


def test_one_stage_replicas_stop_when_every_sequence_has(qwen3_ckpt):  # noqa: F811
    ids = prompts(1, 5, seed=12)
    full = _greedy(qwen3_ckpt, ids, stop_ids=())
    stop = int(full.tokens[0, 1])
    got = _greedy(qwen3_ckpt, ids, stop_ids=[stop], tp=2)
    assert got.tokens.shape[1] == got.lengths[0] <= 2  # no step after the last stop was run
    _assert_traffic_predicted(got)


def test_eos_of_generation_config_stops_by_default(tmp_path, qwen3_ckpt):  # noqa: F811
    ids = prompts(1, 5, seed=13)
    full = _greedy(qwen3_ckpt, ids)
    path = tmp_path / "eos"
    shutil.copytree(qwen3_ckpt, path)
    eos = int(full.tokens[0, 2])
    with open(path / "generation_config.json") as f:
        gen = json.load(f)
    gen["eos_token_id"] = [eos, 130]
    with open(path / "generation_config.json", "w") as f:
        json.dump(gen, f)
    with Engine(path) as engine:
        assert engine.stop_ids == (eos, 130)
        stopped = engine.generate(ids, max_new_tokens=6)
        ignored = engine.generate(ids, max_new_tokens=6, stop_ids=())
    assert stopped.lengths[0] <= 3 and stopped.tokens[0, stopped.lengths[0] - 1] == eos
    _assert_same_run(ignored, full)


# -- text -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("text"), "qwen3", seed=2, tokenizer=True)


def test_text_in_and_out(text_ckpt):
    from shardcore.runtime import TextTokenizer

    tok = TextTokenizer.from_checkpoint(text_ckpt)
    assert tok.vocab_size == 131
    prompt = "hello world, the quick brown fox"
    ids = tok.encode(prompt)
    assert tok.decode(ids) == prompt
    with Engine(text_ckpt, tp=2) as engine:
        assert engine.stop_ids == (0,)  # the tiny tokenizer's <|endoftext|>
        got = engine.generate([prompt, "shared memory"], max_new_tokens=5)
        by_ids = engine.generate([ids], max_new_tokens=5)
    np.testing.assert_array_equal(got.tokens[0], by_ids.tokens[0])
    for row in range(2):
        n = got.lengths[row]
        kept = [int(t) for t in got.tokens[row, :n] if t != 0]
        assert got.text[row] == tok.decode(kept)
    assert by_ids.text is None


def test_text_needs_a_tokenizer(qwen3_ckpt):  # noqa: F811
    with Engine(qwen3_ckpt) as engine:
        with pytest.raises(FileNotFoundError, match="tokenizer.json"):
            engine.generate("hello")


@pytest.mark.parametrize(
    "bad,error",
    [([], ValueError), ([[]], ValueError), ([[1, 2], "x"], TypeError), ([[1, 131]], ValueError)],
)
def test_bad_prompts_are_refused_before_any_worker_runs(qwen3_ckpt, bad, error):  # noqa: F811
    with Engine(qwen3_ckpt) as engine:
        with pytest.raises(error):
            engine.generate(bad)
        engine.generate([[1, 2]], max_new_tokens=1)  # still serving


def test_tokens_only_and_timing(qwen3_ckpt):  # noqa: F811
    ids = [prompts(1, 5, seed=14)[0].tolist(), prompts(1, 7, seed=15)[0].tolist()]
    with Engine(qwen3_ckpt, pp=2) as engine:
        full = engine.generate(ids, max_new_tokens=4)
        lean = engine.generate(ids, max_new_tokens=4, logits=False)
    assert lean.logits is None and full.logits is not None
    np.testing.assert_array_equal(lean.tokens, full.tokens)
    _assert_traffic_predicted(lean)
    t = lean.timing
    assert 0 < t["ttft_s"] <= t["seconds"] and t["tpot_s"] > 0
    assert t["tokens_per_s"] == pytest.approx(8 / t["seconds"])


@pytest.mark.timeout(60)
def test_workers_exit_when_their_parent_dies(qwen3_ckpt, tmp_path):  # noqa: F811
    """A process that holds an engine and dies without closing it leaves nothing running: each
    worker sees its pipe close and exits (waited for with pidfds, not by polling)."""
    import select
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from shardcore.runtime import Engine\n"
        f"e = Engine({str(qwen3_ckpt)!r}, tp=2, pp=2)\n"
        "e.generate([[1, 2, 3]], max_new_tokens=2)\n"
        "print(' '.join(map(str, e.pids)), flush=True)\n"
        "os._exit(0)\n"  # no close, no finalizers
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50
    )
    assert child.returncode == 0, child.stderr
    pids = [int(p) for p in child.stdout.split()]
    assert len(pids) == 4
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:  # already gone
            pass
    try:
        pending = set(fds)
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 30)
            assert ready, "workers still running 30 s after their parent died"
            pending -= set(ready)
    finally:
        for fd in fds:
            os.close(fd)


def test_each_rank_reports_its_time_in_gemm_and_communication(qwen3_moe_ckpt):  # noqa: F811
    ids = [prompts(1, 5, seed=16)[0].tolist(), prompts(1, 3, seed=17)[0].tolist()]
    with Engine(qwen3_moe_ckpt, tp=2, pp=2, ep=2) as engine:
        got = engine.generate(ids, max_new_tokens=3)
    assert len(got.rank_seconds) == 4
    for split in got.rank_seconds:
        assert split["gemm_s"] > 0 and split["comm_s"] > 0 and split["other_s"] >= 0
        total = split["gemm_s"] + split["comm_s"] + split["other_s"]
        assert total == pytest.approx(split["total_s"])


@pytest.mark.timeout(60)
def test_a_stuck_worker_ends_in_the_request_timeout(qwen3_ckpt):  # noqa: F811
    """A rank that never returns: the request raises at its timeout (a TimeoutError and a
    LaunchError), the ranks are stopped and the engine refuses later requests."""
    with Engine(qwen3_ckpt, tp=2) as engine:
        with pytest.raises(LaunchError) as info:
            engine.generate(
                prompts(1, 4), timeout=2, _failure=FailureInjection(rank=1, step=1, kind="hang")
            )
        assert isinstance(info.value, TimeoutError)
        assert "timed out after 2" in str(info.value)
        with pytest.raises(LaunchError):
            engine.generate(prompts(1, 4))
        for pid in engine.pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
