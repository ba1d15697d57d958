"""The error model: mismatches, dead and failing peers, timeouts and bad arguments."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import shardcore
from shardcore import (
    CollectiveMismatchError,
    CommTimeoutError,
    LaunchError,
    PeerFailureError,
)


def _catch(fn):
    """Run fn and return (exception class name, message) or ('ok', result)."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the test inspects what each rank got
        return (type(exc).__name__, str(exc))


def _mismatch(comm, case):
    x = np.ones(8, np.float32)
    r = comm.rank
    calls = {
        "count": lambda: comm.all_reduce(np.ones(8 + (r == 1), np.float32)),
        "dtype": lambda: comm.all_reduce(np.ones(8, np.float64 if r == 2 else np.float32)),
        "op": lambda: comm.all_reduce(x, op="max" if r == 0 else "sum"),
        "kind": lambda: comm.all_gather(x) if r == 1 else comm.all_reduce(x),
        "root": lambda: comm.broadcast(x, root=1 if r == 2 else 0),
        "algorithm": lambda: comm.all_reduce(x, algorithm="one_shot" if r == 3 else "ring"),
    }
    first = _catch(calls[case])
    # The communicator is unusable afterwards, on every rank.
    second = _catch(lambda: comm.barrier())
    return first, second


@pytest.mark.parametrize("case", ["count", "dtype", "op", "kind", "root", "algorithm"])
def test_mismatch_raises_on_every_rank(case):
    results = shardcore.launch(_mismatch, 4, args=(case,))
    for first, second in results:
        assert first[0] == "CollectiveMismatchError", first
        assert "rank" in first[1] and "called" in first[1]
        assert second[0] in ("CollectiveMismatchError", "PeerFailureError")


def _tag_mismatch(comm):
    if comm.rank == 0:
        comm.send(np.ones(4), 1, tag=7)
        return _catch(lambda: comm.barrier())
    return _catch(lambda: comm.recv(np.empty(4), 0, tag=8))


def test_send_recv_tag_mismatch():
    sender, receiver = shardcore.launch(_tag_mismatch, 2)
    assert receiver[0] == "CollectiveMismatchError"
    assert "tag=7" in receiver[1] and "tag=8" in receiver[1]
    assert sender[0] in ("CollectiveMismatchError", "PeerFailureError")


def _raise_midway(comm):
    comm.all_reduce(np.ones(4))
    if comm.rank == 1:
        raise KeyError("injected failure")
    return _catch(lambda: comm.all_reduce(np.ones(1000)))


def test_raising_rank_fails_the_others_and_launch_names_it():
    with pytest.raises(LaunchError) as info:
        shardcore.launch(_raise_midway, 4)
    err = info.value
    assert err.rank == 1
    assert isinstance(err, KeyError)  # the original type is kept
    assert "injected failure" in str(err) and "rank 1" in str(err)
    assert "_raise_midway" in err.traceback
    # Ranks still inside the first all_reduce may see the abort there, uncaught.
    assert all(f.exc_type == "PeerFailureError" for f in err.failures if f.rank != 1)


def _report_peer_failure(comm):
    if comm.rank == 1:
        raise KeyError("injected failure")
    comm.all_reduce(np.ones(1000))


def test_peers_of_a_failed_rank_raise_peer_failure():
    with pytest.raises(LaunchError) as info:
        shardcore.launch(_report_peer_failure, 3)
    kinds = {f.rank: f.exc_type for f in info.value.failures}
    assert kinds == {0: "PeerFailureError", 1: "KeyError", 2: "PeerFailureError"}
    assert info.value.rank == 1


def _sigkill_mid_collective(comm, victim):
    comm.barrier()
    if comm.rank == victim:
        # Dies after posting some but not all rounds of the ring below.
        os.environ["SHARDCORE_FAULT_KILL_AT_ROUND"] = "5"
        inner = comm.split(0)
    else:
        inner = comm.split(0)
    return _catch(lambda: inner.all_reduce(np.ones(100_000)))


@pytest.mark.parametrize("n", [2, 5, 8])
def test_sigkill_mid_collective(n):
    victim = n - 1
    with pytest.raises(LaunchError) as info:
        shardcore.launch(_sigkill_mid_collective, n, args=(victim,), slot_bytes=4096)
    err = info.value
    assert err.rank == victim
    assert err.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(err)
    assert [f.rank for f in err.failures] == [victim]  # every survivor returned normally


def _survivor_results(comm, victim):
    comm.barrier()
    if comm.rank == victim:
        os.environ["SHARDCORE_FAULT_KILL_AT_ROUND"] = "3"
    inner = comm.split(0)
    outcome = _catch(lambda: inner.all_reduce(np.ones(50_000)))
    if comm.rank != victim:
        # Report through a file, since launch raises for the dead rank.
        path = os.environ["SURVIVOR_DIR"] + f"/{comm.rank}"
        with open(path, "w") as f:
            f.write(outcome[0] + "\n" + outcome[1])
    return outcome


def test_sigkill_survivors_raise_peer_failure_naming_the_dead_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("SURVIVOR_DIR", str(tmp_path))
    with pytest.raises(LaunchError):
        shardcore.launch(_survivor_results, 4, args=(2,), slot_bytes=4096)
    for r in (0, 1, 3):
        kind, msg = (tmp_path / str(r)).read_text().split("\n", 1)
        assert kind == "PeerFailureError"
        assert "rank 2" in msg


def _timeout(comm):
    if comm.rank == 0:
        return _catch(lambda: comm.all_reduce(np.ones(4)))
    # Rank 1 waits for a message that never comes, so rank 0 waits for rank 1 in vain.
    return _catch(lambda: comm.recv(np.empty(4), 0))


def test_timeout_names_rank_collective_and_peer():
    results = shardcore.launch(_timeout, 2, comm_timeout=0.5)
    kinds = sorted(r[0] for r in results)
    assert "CommTimeoutError" in kinds
    assert set(kinds) <= {"CommTimeoutError", "PeerFailureError"}
    msg = next(r[1] for r in results if r[0] == "CommTimeoutError")
    assert "waited" in msg and "for rank" in msg and ("all_reduce" in msg or "recv" in msg)


def _bad_arguments(comm):
    x = np.ones(8, np.float32)
    ro = np.ones(8, np.float32)
    ro.flags.writeable = False
    checks = {
        "dtype": lambda: comm.all_reduce(np.ones(4, np.complex64)),
        "object": lambda: comm.all_gather(np.array([None, 1], dtype=object)),
        "op": lambda: comm.all_reduce(x, op="mean"),
        "algorithm": lambda: comm.all_reduce(x, algorithm="butterfly"),
        "noncontig": lambda: comm.all_reduce(np.ones((4, 4), np.float32)[:, 1]),
        "readonly_inplace": lambda: comm.all_reduce(ro),
        "readonly_out": lambda: comm.all_reduce(x, out=ro),
        "out_shape": lambda: comm.all_reduce(x, out=np.empty(9, np.float32)),
        "out_dtype": lambda: comm.all_gather(x, out=np.empty(8 * comm.size, np.float64)),
        "rs_rows": lambda: comm.reduce_scatter(np.ones(comm.size * 2 + 1)),
        "a2a_rows": lambda: comm.all_to_all(np.ones(comm.size + 1)),
        "counts_sum": lambda: comm.all_to_allv(np.ones((5, 2)), [1] * comm.size),
        "counts_len": lambda: comm.all_to_allv(np.ones((5, 2)), [5]),
        "counts_neg": lambda: comm.all_to_allv(np.ones((1, 2)), [2, -1] + [0] * (comm.size - 2)),
        "root": lambda: comm.broadcast(x, root=comm.size),
        "dst_self": lambda: comm.send(x, comm.rank),
        "src_range": lambda: comm.recv(x, -1),
        "not_array": lambda: comm.all_reduce([1.0, 2.0]),
    }
    outcomes = {k: _catch(v) for k, v in checks.items()}
    y = np.arange(8, dtype=np.float32)
    outcomes["still_usable"] = ("ok", comm.all_reduce(y).tolist())
    return outcomes


def test_bad_arguments_raise_before_touching_shared_memory():
    results = shardcore.launch(_bad_arguments, 2)
    expected = {
        "dtype": "TypeError",
        "object": "TypeError",
        "op": "ValueError",
        "algorithm": "ValueError",
        "noncontig": "ValueError",
        "readonly_inplace": "ValueError",
        "readonly_out": "ValueError",
        "out_shape": "ValueError",
        "out_dtype": "TypeError",
        "rs_rows": "ValueError",
        "a2a_rows": "ValueError",
        "counts_sum": "ValueError",
        "counts_len": "ValueError",
        "counts_neg": "ValueError",
        "root": "ValueError",
        "dst_self": "ValueError",
        "src_range": "ValueError",
        "not_array": "TypeError",
    }
    for outcomes in results:
        for key, kind in expected.items():
            assert outcomes[key][0] == kind, (key, outcomes[key])
        # The same communicator still works: nothing half-written, no rank out of step.
        assert outcomes["still_usable"] == ("ok", [2.0 * i for i in range(8)])


def _overlap(comm):
    buf = np.ones(16, np.float32)
    return _catch(lambda: comm.all_reduce(buf[:8], out=buf[4:12]))


def test_partially_overlapping_out_is_rejected():
    for kind, msg in shardcore.launch(_overlap, 2):
        assert kind == "ValueError" and "overlap" in msg


def _exit_early(comm):
    if comm.rank == 0:
        return "left"
    return _catch(lambda: comm.all_reduce(np.ones(4)))


def test_rank_that_returns_early_is_a_peer_failure_not_a_hang():
    results = shardcore.launch(_exit_early, 3)
    assert results[0] == "left"
    for kind, msg in results[1:]:
        assert kind == "PeerFailureError"


def _closed_comm(comm):
    comm.close()
    return _catch(lambda: comm.barrier())


def test_closed_communicator_raises():
    for kind, msg in shardcore.launch(_closed_comm, 2):
        assert kind == "RuntimeError" and "closed" in msg


def test_launch_argument_errors():
    with pytest.raises(ValueError):
        shardcore.launch(lambda c: None, 0)
    with pytest.raises(TypeError):
        shardcore.launch("not callable", 2)


def _hang(comm):
    comm.recv(np.empty(1), 1 - comm.rank)  # both wait for each other (the comm timeout is long)


def test_launch_timeout_kills_and_raises():
    with pytest.raises(LaunchError) as info:
        shardcore.launch(_hang, 2, timeout=1.0)
    assert isinstance(info.value, TimeoutError)
    assert "timed out" in str(info.value)


def test_error_classes_are_catchable_by_their_builtin_bases():
    assert issubclass(CommTimeoutError, TimeoutError)
    assert issubclass(CollectiveMismatchError, ValueError)
    assert issubclass(PeerFailureError, RuntimeError)


@pytest.mark.parametrize(
    "var", ["SHARDCORE_SPIN_US", "SHARDCORE_YIELD_US", "SHARDCORE_SLOT_BYTES", "SHARDCORE_TIMEOUT"]
)
def test_bad_environment_numbers_name_the_variable(var, monkeypatch):
    monkeypatch.setenv(var, "fast")
    with pytest.raises(ValueError, match=var):
        shardcore.launch(lambda comm: None, 2)


def _sum_of_ranks(comm):
    return comm.all_reduce(np.full(3, comm.rank, np.float64)).tolist()


@pytest.mark.parametrize("spin, yld", [("0", "0"), ("0", "3000"), ("20", "0")])
def test_wait_settings_from_the_environment(spin, yld, monkeypatch):
    # Every combination of spinning, yielding and sleeping still completes (8 ranks on 2 cores).
    monkeypatch.setenv("SHARDCORE_SPIN_US", spin)
    monkeypatch.setenv("SHARDCORE_YIELD_US", yld)
    for res in shardcore.launch(_sum_of_ranks, 8):
        assert res == [28.0] * 3
