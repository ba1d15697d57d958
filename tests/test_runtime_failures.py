"""A rank that fails mid-run makes generate raise naming it, and leaves nothing in /dev/shm."""

from __future__ import annotations

import os

import pytest
from runtime_fixtures import prompts, qwen3_moe_ckpt  # noqa: F401

from shardcore import LaunchError
from shardcore.runtime import FailureInjection, generate


def _shm_entries():
    """This process's shardcore segments (the launcher names them shardcore-<its pid>-...); other
    sessions' runs on the same host may come and go meanwhile, so only ours are counted."""
    mine = f"shardcore-{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if "shardcore" in name and mine in name}


@pytest.mark.parametrize("kind,rank,step", [("raise", 1, 2), ("kill", 2, 1), ("raise", 3, 0)])
def test_failing_rank_is_named_and_shm_is_clean(qwen3_moe_ckpt, kind, rank, step):  # noqa: F811
    assert _shm_entries() == set()
    with pytest.raises(LaunchError) as info:
        generate(
            qwen3_moe_ckpt,
            prompts(2, 5),
            tp=2,
            pp=2,
            ep=2,
            max_new_tokens=4,
            timeout=60,
            _failure=FailureInjection(rank=rank, step=step, kind=kind),
        )
    err = info.value
    assert err.rank == rank
    assert f"rank {rank}" in str(err)
    if kind == "raise":
        assert isinstance(err, RuntimeError)
        assert f"injected failure on rank {rank} at step {step}" in str(err)
    else:
        assert err.exitcode == -9
        assert "SIGKILL" in str(err)
    assert _shm_entries() == set()


def test_failure_injection_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        FailureInjection(rank=0, step=0, kind="segfault")
