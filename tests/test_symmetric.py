"""Symmetric buffers (Communicator.empty/zeros) and the in-place symmetric all-reduce."""

from __future__ import annotations

import numpy as np
import pytest
from collective_refs import OPS, REDUCIBLE, assert_reduced, make_input

import shardcore


def symmetric_bytes(count: int, n: int, r: int, itemsize: int) -> int:
    """Rank r sends its peers' blocks of its array and its reduced block to each peer."""
    if n == 1:
        return 0
    base, rem = divmod(count, n)
    mine = base + (1 if r < rem else 0)
    return ((count - mine) + (n - 1) * mine) * itemsize


SIZES = [0, 1, 13, 4099, 100_003]


def _symmetric_cases(comm):
    out = []
    for di, dtype in enumerate(REDUCIBLE):
        buf = comm.empty(max(SIZES) + 5, dtype)
        assert not buf.any()
        for oi, op in enumerate(OPS):
            for size in SIZES:
                x = buf[5 : 5 + size]  # a view at an offset inside the symmetric buffer
                x[:] = make_input((di, oi, size), comm.rank, (size,), dtype, op)
                comm.reset_traffic()
                comm.all_reduce(x, op=op, algorithm="symmetric")
                t = comm.traffic()["all_reduce"]
                out.append((x.copy(), t["sent"], t["recv"], comm.last_algorithm))
    return out


@pytest.mark.parametrize("n", range(1, 9))
def test_symmetric_all_reduce(n):
    results = shardcore.launch(_symmetric_cases, n)
    i = 0
    for di, dtype in enumerate(REDUCIBLE):
        for oi, op in enumerate(OPS):
            for size in SIZES:
                inputs = [make_input((di, oi, size), r, (size,), dtype, op) for r in range(n)]
                assert_reduced(results[0][i][0], inputs, op, dtype)
                for r in range(n):
                    res, sent, recv, algo = results[r][i]
                    assert res.tobytes() == results[0][i][0].tobytes()
                    assert algo == "symmetric"
                    assert sent == recv == symmetric_bytes(size, n, r, dtype.itemsize)
                i += 1


def _auto_and_fallbacks(comm):
    big = comm.zeros((256, 1024), np.float32)  # 1 MiB: above the one-shot limit
    big[:] = comm.rank + 1.0
    comm.all_reduce(big)
    auto_big = comm.last_algorithm
    small = comm.empty(4, np.float64)
    small[:] = comm.rank
    comm.all_reduce(small)
    auto_small = comm.last_algorithm
    out = np.empty_like(big)
    comm.all_reduce(big, out=out)  # out of place: the ordinary algorithms
    return (
        auto_big,
        auto_small,
        comm.last_algorithm,
        float(big[3, 7]),
        float(out[0, 0]),
        small.tolist(),
    )


def test_symmetric_is_chosen_in_place_for_large_messages():
    n = 3
    for auto_big, auto_small, out_of_place, v, w, small in shardcore.launch(_auto_and_fallbacks, n):
        assert auto_big == "symmetric"
        assert auto_small == "one_shot"
        assert out_of_place in ("ring", "two_shot")
        assert v == 6.0 and w == 18.0
        assert small == [3.0] * 4


def _misuse(comm):
    errors = {}
    try:
        comm.all_reduce(np.ones(10), algorithm="symmetric")
    except ValueError as exc:
        errors["plain"] = str(exc)
    try:
        comm.empty(10 + comm.rank)
    except ValueError as exc:
        errors["sizes"] = str(exc)
    # One rank with a symmetric array, the other with a private one: different algorithms.
    shared = comm.empty(1 << 18)
    x = shared if comm.rank == 0 else np.zeros(1 << 18, np.float32)
    try:
        comm.all_reduce(x)
    except shardcore.CollectiveMismatchError as exc:
        errors["mixed"] = str(exc)
    return errors


def test_symmetric_misuse_is_reported():
    for errors in shardcore.launch(_misuse, 2):
        assert "symmetric" in errors["plain"]
        assert "different sizes" in errors["sizes"]
        assert "symmetric" in errors["mixed"]
