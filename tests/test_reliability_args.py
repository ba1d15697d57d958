"""Bad arguments and failed allocations: the same error on every rank, and a usable communicator.

An argument that a rank can check alone is checked before the call touches shared memory (the
traffic counters show no exchange); the one all_to_allv can only know after its counts
exchange (how many rows arrive) fails on every rank at once. A collective allocation either
succeeds everywhere or raises the same error everywhere.
"""

from __future__ import annotations

import resource

import numpy as np
import pytest

import shardcore


def _still_usable(c) -> bool:
    x = np.full(5, c.rank + 1.0)
    c.all_reduce(x)
    got, recv = c.all_to_allv(np.arange(2 * c.size, dtype=np.int64), [2] * c.size)
    return (
        x.tolist() == [c.size * (c.size + 1) / 2] * 5
        and recv == [2] * c.size
        and len(got) == 2 * c.size
    )


def _allv_wrong_rows(c, bad_ranks):
    x = np.ones((3 * c.size, 2), np.float32)
    rows = 3 * c.size + (1 if c.rank in bad_ranks else 0)
    try:
        c.all_to_allv(x, [3] * c.size, out=np.empty((rows, 2), np.float32))
        error = None
    except ValueError as exc:
        error = str(exc)
    return error, _still_usable(c)


@pytest.mark.parametrize("n,bad", [(2, (1,)), (3, (0, 2)), (4, (0, 1, 2, 3)), (8, (5,))])
def test_all_to_allv_wrong_out_rows_fail_everywhere_alike(n, bad):
    results = shardcore.launch(_allv_wrong_rows, n, args=(bad,))
    errors = {e for e, _ in results}
    assert len(errors) == 1, errors
    (error,) = errors
    assert error is not None and f"rank {min(bad)}'s out has {3 * n + 1} rows" in error
    assert all(usable for _, usable in results)


def _allv_local_errors(c):
    x = np.ones((2 * c.size, 3), np.float32)
    counts = [2] * c.size
    bad = {
        "out_row_shape": (
            ValueError,
            lambda: c.all_to_allv(x, counts, out=np.empty((2 * c.size, 4), np.float32)),
        ),
        "out_ndim": (
            ValueError,
            lambda: c.all_to_allv(x, counts, out=np.empty(6 * c.size, np.float32)),
        ),
        "out_dtype": (TypeError, lambda: c.all_to_allv(x, counts, out=np.empty((2 * c.size, 3)))),
        "out_readonly": (ValueError, lambda: c.all_to_allv(x, counts, out=_read_only_like(x))),
        "out_strided": (
            ValueError,
            lambda: c.all_to_allv(x, counts, out=np.empty((2 * c.size, 6), np.float32)[:, ::2]),
        ),
        "out_overlap": (ValueError, lambda: c.all_to_allv(x, counts, out=x)),
        "counts_len": (ValueError, lambda: c.all_to_allv(x, counts + [0])),
        "counts_negative": (
            ValueError,
            lambda: c.all_to_allv(x, [-1, 2 * c.size + 1] + [0] * (c.size - 2)),
        ),
        "counts_sum": (ValueError, lambda: c.all_to_allv(x, [1] * c.size)),
        "counts_float": (TypeError, lambda: c.all_to_allv(x, [2.0] * c.size)),
        "x_0d": (ValueError, lambda: c.all_to_allv(np.array(1.0, np.float32), counts)),
    }
    before = c.traffic()["internal"]["calls"]
    raised = {}
    for name, (cls, call) in bad.items():
        try:
            call()
            raised[name] = None
        except cls:
            raised[name] = cls.__name__
    exchanged = c.traffic()["internal"]["calls"] - before
    return raised, exchanged, _still_usable(c)


def _read_only_like(x):
    r = np.empty_like(x)
    r.setflags(write=False)
    return r


def test_all_to_allv_local_errors_come_before_any_exchange():
    for raised, exchanged, usable in shardcore.launch(_allv_local_errors, 3):
        assert None not in raised.values(), raised
        assert exchanged == 0  # no counts exchange happened for any of them
        assert usable


def _huge_buffer(c):
    try:
        c.empty((1 << 44,), np.float32)
        error = None
    except RuntimeError as exc:
        error = str(exc)
    small = c.empty(1000, np.float32)
    small[:] = c.rank
    c.all_reduce(small)
    return error, float(small[0]), _still_usable(c)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_an_allocation_too_large_fails_on_every_rank_alike(n):
    results = shardcore.launch(_huge_buffer, n)
    errors = {e for e, _, _ in results}
    assert len(errors) == 1 and None not in errors, errors
    assert "not enough shared memory" in errors.pop()
    assert all(v == n * (n - 1) / 2 and usable for _, v, usable in results)


def _one_rank_cannot_map(c, rank):
    nbytes = 64 << 20
    error = None
    if c.rank == rank:
        # Little room for new mappings on this rank alone: mapping the buffer fails here only.
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), old[1]))
    try:
        c.empty(nbytes // 4, np.float32)
    except RuntimeError as exc:
        error = str(exc)
    finally:
        if c.rank == rank:
            resource.setrlimit(resource.RLIMIT_AS, old)
    return error, _still_usable(c)


@pytest.mark.parametrize("n,rank", [(2, 1), (3, 0), (4, 2)])
def test_an_allocation_that_fails_on_one_rank_fails_on_every_rank_alike(n, rank):
    results = shardcore.launch(_one_rank_cannot_map, n, args=(rank,))
    errors = {e for e, _ in results}
    assert len(errors) == 1 and None not in errors, errors
    assert f"rank {rank} could not map" in errors.pop()
    assert all(usable for _, usable in results)


def _different_sizes(c):
    try:
        c.empty(10 + c.rank)
        error = None
    except ValueError as exc:
        error = str(exc)
    return error, _still_usable(c)


def test_an_allocation_of_different_sizes_fails_on_every_rank_alike():
    results = shardcore.launch(_different_sizes, 3)
    errors = {e for e, _ in results}
    assert len(errors) == 1 and "different sizes" in errors.pop()
    assert all(usable for _, usable in results)


def _read_only(n):
    r = np.ones(n, np.float32)
    r.setflags(write=False)
    return r


# (name, the good call every other rank makes, the bad call, what the bad rank raises). The bad
# ones checked in Python and those the core checks before entering (one_shot too large, a forced
# symmetric or cma path without its buffer) alike.
BAD_CALLS = [
    (
        "ar_dtype",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones(4, np.complex64)),
        TypeError,
    ),
    (
        "ar_op",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones(8), op="mean"),
        ValueError,
    ),
    (
        "ar_algo",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones(8), algorithm="x"),
        ValueError,
    ),
    (
        "ar_strided",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones((4, 4))[:, 1]),
        ValueError,
    ),
    (
        "ar_read_only",
        lambda c: c.all_reduce(np.ones(8, np.float32)),
        lambda c: c.all_reduce(_read_only(8)),
        ValueError,
    ),
    (
        "ar_out_shape",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones(8), out=np.empty(9)),
        ValueError,
    ),
    ("ar_list", lambda c: c.all_reduce(np.ones(8)), lambda c: c.all_reduce([1.0, 2.0]), TypeError),
    (
        "ar_one_shot_too_big",
        lambda c: c.all_reduce(np.ones(1 << 18, np.float32)),
        lambda c: c.all_reduce(np.ones(1 << 18, np.float32), algorithm="one_shot"),
        ValueError,
    ),
    (
        "ar_symmetric_plain",
        lambda c: c.all_reduce(np.ones(8)),
        lambda c: c.all_reduce(np.ones(8), algorithm="symmetric"),
        ValueError,
    ),
    (
        "rs_rows",
        lambda c: c.reduce_scatter(np.ones(2 * c.size)),
        lambda c: c.reduce_scatter(np.ones(2 * c.size + 1)),
        ValueError,
    ),
    (
        "ag_object",
        lambda c: c.all_gather(np.ones(2)),
        lambda c: c.all_gather(np.array([None, 1])),
        TypeError,
    ),
    (
        "ag_out_dtype",
        lambda c: c.all_gather(np.ones(2)),
        lambda c: c.all_gather(np.ones(2), out=np.empty(2 * c.size, np.float32)),
        TypeError,
    ),
    (
        "ag_symmetric_plain",
        lambda c: c.all_gather(np.ones(2)),
        lambda c: c.all_gather(np.ones(2), algorithm="symmetric"),
        ValueError,
    ),
    (
        "a2a_rows",
        lambda c: c.all_to_all(np.ones(c.size)),
        lambda c: c.all_to_all(np.ones(c.size + 1)),
        ValueError,
    ),
    (
        "a2a_symmetric_plain",
        lambda c: c.all_to_all(np.ones(c.size)),
        lambda c: c.all_to_all(np.ones(c.size), algorithm="symmetric"),
        ValueError,
    ),
    (
        "allv_sum",
        lambda c: c.all_to_allv(np.ones((c.size, 2)), [1] * c.size),
        lambda c: c.all_to_allv(np.ones((c.size + 1, 2)), [1] * c.size),
        ValueError,
    ),
    (
        "allv_len",
        lambda c: c.all_to_allv(np.ones((c.size, 2)), [1] * c.size),
        lambda c: c.all_to_allv(np.ones((c.size, 2)), [c.size]),
        ValueError,
    ),
    (
        "allv_out_rows_shape",
        lambda c: c.all_to_allv(np.ones((c.size, 2)), [1] * c.size),
        lambda c: c.all_to_allv(np.ones((c.size, 2)), [1] * c.size, out=np.empty((c.size, 3))),
        ValueError,
    ),
    (
        "bcast_root",
        lambda c: c.broadcast(np.ones(4)),
        lambda c: c.broadcast(np.ones(4), root=c.size),
        ValueError,
    ),
    ("empty_negative", lambda c: c.empty(16), lambda c: c.empty(-1), ValueError),
    ("empty_object", lambda c: c.empty(16), lambda c: c.empty(16, object), TypeError),
    ("split_color", lambda c: c.split(0), lambda c: c.split(-2), ValueError),
]


def _bad_calls(c, bad_ranks):
    outcomes = {}
    for name, good, bad, _ in BAD_CALLS:
        call = bad if c.rank in bad_ranks else good
        try:
            result = call(c)
            outcomes[name] = ("ok", None)
            if hasattr(result, "close"):  # a sub-communicator from split
                result.close()
        except Exception as exc:  # noqa: BLE001 - every outcome is compared below
            outcomes[name] = (type(exc).__name__, str(exc))
        outcomes[name + " usable"] = _still_usable(c)
    return outcomes


@pytest.mark.parametrize("n,bad", [(2, (1,)), (3, (0, 2)), (3, (0, 1, 2)), (8, (6,))])
def test_a_bad_argument_on_any_rank_fails_every_rank_and_breaks_nothing(n, bad):
    results = shardcore.launch(_bad_calls, n, args=(bad,))
    for name, _, _, raised in BAD_CALLS:
        for rank, outcomes in enumerate(results):
            kind, msg = outcomes[name]
            if rank in bad:
                assert kind == raised.__name__, (name, rank, kind, msg)
            else:  # the peers of a bad rank: told which rank, and why
                assert kind == "ValueError", (name, rank, kind, msg)
                assert f"rank {min(bad)} rejected its arguments" in msg, (name, rank, msg)
            assert outcomes[name + " usable"], (name, rank)
