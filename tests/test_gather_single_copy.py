"""All-gather and all-to-all read straight from the peers' inputs (symmetric buffers, CMA) and
the non-temporal copies of large outputs, against NumPy on world sizes 1-8."""

from __future__ import annotations

import os

import numpy as np
import pytest
from collective_refs import BF16, REDUCIBLE, make_input

import shardcore

MOVABLE = REDUCIBLE + [
    np.dtype(np.int8),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
    np.dtype(np.complex64),
    np.dtype("S3"),  # 3-byte elements: blocks at odd offsets
]
# Rows of 3 elements: 0, 1 and 7 rows sit below the automatic symmetric threshold (4 KiB blocks)
# for every dtype, 1500 rows above it for every dtype.
ROWS = [0, 1, 7, 1500]
SLOT = 1 << 14  # all-to-alls of more than this many bytes do not fit the flat path
BIG = 1 << 20  # block bytes from which oversubscribed ranks read a symmetric input directly


def expect_symmetric(n: int, block: int, all_to_all: bool) -> bool:
    """The automatic choice for a symmetric input (communicator.h, symmetric_gather_auto)."""
    if n == 1 or block == 0:
        return False
    if n <= len(os.sched_getaffinity(0)):
        if not all_to_all and n > 2 and block > BIG:
            return False
        return block >= 4096
    return n * block > SLOT if all_to_all else block >= BIG


def _symmetric_cases(comm):
    n, r = comm.size, comm.rank
    out = {}
    for di, dtype in enumerate(MOVABLE):
        # One buffer per dtype; the inputs are views at an offset inside it, as in the runtime.
        buf = comm.empty((5 + n * max(ROWS), 3), dtype)
        for rows in ROWS:
            x = buf[5 : 5 + rows]
            x[:] = make_input(("ag", di, rows), r, (rows, 3), dtype)
            for algo in ("symmetric", None):
                comm.reset_traffic()
                res = comm.all_gather(x, algorithm=algo)
                t = comm.traffic()["all_gather"]
                out["ag", di, rows, algo] = (res, comm.last_algorithm, t["sent"], t["recv"])
            x = buf[5 : 5 + n * rows]
            x[:] = make_input(("a2a", di, rows), r, (n * rows, 3), dtype)
            for algo in ("symmetric", None):
                comm.reset_traffic()
                res = comm.all_to_all(x, algorithm=algo)
                t = comm.traffic()["all_to_all"]
                out["a2a", di, rows, algo] = (res, comm.last_algorithm, t["sent"], t["recv"])
    # Around the oversubscribed all-gather's threshold.
    big = comm.empty(BIG + 1, np.uint8)
    for block in (BIG - 1, BIG):
        x = big[:block]
        x[:] = make_input(("big", block), r, (block,), np.dtype(np.uint8))
        out["big", block] = (comm.all_gather(x), comm.last_algorithm)
    # In place: x is this rank's block of a symmetric output.
    rows = 1500
    whole = comm.empty((n * rows, 3), BF16)
    mine = whole[r * rows : (r + 1) * rows]
    mine[:] = make_input("inplace", r, (rows, 3), BF16)
    comm.all_gather(mine, out=whole, algorithm="symmetric")
    out["inplace"] = whole.copy()
    # Inputs at different places of one buffer on each rank.
    y = comm.empty(n * rows + 9, np.float32)[r : r + n * rows]
    y[:] = make_input("places", r, (n * rows,), np.dtype(np.float32))
    out["places"] = (
        comm.all_gather(y[:rows], algorithm="symmetric"),
        comm.all_to_all(y, algorithm="symmetric"),
    )
    return out


@pytest.mark.parametrize("n", range(1, 9))
def test_symmetric_all_gather_and_all_to_all(n):
    results = shardcore.launch(_symmetric_cases, n, slot_bytes=SLOT)
    for di, dtype in enumerate(MOVABLE):
        for rows in ROWS:
            block = rows * 3 * dtype.itemsize
            xs = [make_input(("ag", di, rows), r, (rows, 3), dtype) for r in range(n)]
            a2a = [make_input(("a2a", di, rows), r, (n * rows, 3), dtype) for r in range(n)]
            for r in range(n):
                for algo in ("symmetric", None):
                    res, used, sent, recv = results[r]["ag", di, rows, algo]
                    np.testing.assert_array_equal(res, np.concatenate(xs))
                    assert sent == recv == (n - 1) * block
                    forced = algo is not None
                    assert (used == "symmetric") == (forced or expect_symmetric(n, block, False))
                    res, used, sent, recv = results[r]["a2a", di, rows, algo]
                    expect = np.concatenate([a2a[s][r * rows : (r + 1) * rows] for s in range(n)])
                    np.testing.assert_array_equal(res, expect)
                    assert sent == recv == (n - 1) * block
                    assert (used == "symmetric") == (forced or expect_symmetric(n, block, True))
    for block in (BIG - 1, BIG):
        xs = [make_input(("big", block), r, (block,), np.dtype(np.uint8)) for r in range(n)]
        for r in range(n):
            res, used = results[r]["big", block]
            np.testing.assert_array_equal(res, np.concatenate(xs))
            assert (used == "symmetric") == expect_symmetric(n, block, False)
    whole = np.concatenate([make_input("inplace", r, (1500, 3), BF16) for r in range(n)])
    ys = [make_input("places", r, (n * 1500,), np.dtype(np.float32)) for r in range(n)]
    for r in range(n):
        np.testing.assert_array_equal(results[r]["inplace"], whole)
        gathered, exchanged = results[r]["places"]
        np.testing.assert_array_equal(gathered, np.concatenate([y[:1500] for y in ys]))
        expect = np.concatenate([y[r * 1500 : (r + 1) * 1500] for y in ys])
        np.testing.assert_array_equal(exchanged, expect)


def _misuse(comm):
    errors = {}
    for name, call in (
        ("ag_plain", lambda: comm.all_gather(np.ones(10), algorithm="symmetric")),
        ("a2a_plain", lambda: comm.all_to_all(np.ones(10), algorithm="symmetric")),
    ):
        try:
            call()
        except ValueError as exc:
            errors[name] = str(exc)
    other = comm.split(0)  # a mismatch breaks a communicator: one for each case below
    big = 1 << 18  # 1 MiB of float32: the automatic choice is symmetric on a symmetric input
    first, second = comm.empty(big, np.float32), comm.empty(big, np.float32)
    try:
        comm.all_gather(first if comm.rank == 0 else second)
    except shardcore.CollectiveMismatchError as exc:
        errors["buffers"] = str(exc)
    shared = other.empty(big, np.float32)
    x = shared if other.rank == 0 else np.zeros(big, np.float32)
    try:
        other.all_gather(x)
    except shardcore.CollectiveMismatchError as exc:
        errors["mixed"] = str(exc)
    return errors


def test_symmetric_gather_misuse_is_reported():
    for errors in shardcore.launch(_misuse, 2):
        assert "symmetric" in errors["ag_plain"] and "symmetric" in errors["a2a_plain"]
        assert "symmetric" in errors["mixed"]
        assert "buffer #" in errors["buffers"]


def _streaming_cases(comm, sizes):
    """Every all-gather / all-to-all algorithm on outputs above the streaming threshold."""
    n, r = comm.size, comm.rank
    out = {}
    for dtype in (np.dtype(np.uint8), BF16, np.dtype(np.float64)):
        for elems in sizes:
            x = make_input(("ag", dtype.str, elems), r, (elems,), dtype)
            for algo in ("flat", "ring", "cma", "symmetric"):
                if algo == "cma" and not comm._core.cma:
                    continue
                src = x
                if algo == "symmetric":
                    src = comm.empty(elems + 1, dtype)[1:]  # odd offset: unaligned copies
                    src[:] = x
                out["ag", dtype.str, elems, algo] = comm.all_gather(src, algorithm=algo)
            y = make_input(("a2a", dtype.str, elems), r, (n * elems,), dtype)
            for algo in ("pairwise", "flat", "cma", "symmetric"):
                if algo == "cma" and not comm._core.cma:
                    continue
                src = y
                if algo == "symmetric":
                    src = comm.empty(n * elems + 3, dtype)[3:]
                    src[:] = y
                out["a2a", dtype.str, elems, algo] = comm.all_to_all(src, algorithm=algo)
    return out


@pytest.mark.parametrize("n", [2, 3, 5])
def test_streamed_outputs(n, monkeypatch):
    # Outputs from 4 KiB up are written with non-temporal stores (fresh spawned ranks read the
    # threshold from the environment); slots of 4 KiB make the slot paths span many chunks.
    monkeypatch.setenv("SHARDCORE_NT_MIN_BYTES", "4096")
    sizes = [1, 4099, 70_001]
    results = shardcore.launch(
        _streaming_cases, n, args=(sizes,), slot_bytes=4096, start_method="spawn"
    )
    for dtype in (np.dtype(np.uint8), BF16, np.dtype(np.float64)):
        for elems in sizes:
            xs = [make_input(("ag", dtype.str, elems), q, (elems,), dtype) for q in range(n)]
            ys = [make_input(("a2a", dtype.str, elems), q, (n * elems,), dtype) for q in range(n)]
            for r in range(n):
                for algo in ("flat", "ring", "cma", "symmetric"):
                    if ("ag", dtype.str, elems, algo) in results[r]:
                        res = results[r]["ag", dtype.str, elems, algo]
                        np.testing.assert_array_equal(res, np.concatenate(xs))
                expect = np.concatenate([ys[q][r * elems : (r + 1) * elems] for q in range(n)])
                for algo in ("pairwise", "flat", "cma", "symmetric"):
                    if ("a2a", dtype.str, elems, algo) in results[r]:
                        res = results[r]["a2a", dtype.str, elems, algo]
                        np.testing.assert_array_equal(res, expect)


def _in_place_cases(comm, sizes):
    """all_gather whose input is this rank's own block of the output, on every algorithm."""
    n, r = comm.size, comm.rank
    out = {}
    for dtype in (np.dtype(np.uint8), np.dtype(np.float32), BF16):
        for elems in sizes:
            x = make_input(("ip", dtype.str, elems), r, (elems,), dtype)
            for algo in (None, "flat", "ring", "cma"):
                if algo == "cma" and not comm._core.cma:
                    continue
                res = np.empty(n * elems, dtype)
                res[r * elems : (r + 1) * elems] = x
                got = comm.all_gather(res[r * elems : (r + 1) * elems], out=res, algorithm=algo)
                assert got is res or np.shares_memory(got, res)
                out[dtype.str, elems, algo] = res
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_in_place_all_gather(n):
    # Slots of 4 KiB: the largest size spans many chunks of the flat and ring paths; 1 and 4099
    # elements sit at odd offsets.
    sizes = [0, 1, 4099, 20_011]
    results = shardcore.launch(_in_place_cases, n, args=(sizes,), slot_bytes=4096)
    for dtype in (np.dtype(np.uint8), np.dtype(np.float32), BF16):
        for elems in sizes:
            want = np.concatenate(
                [make_input(("ip", dtype.str, elems), q, (elems,), dtype) for q in range(n)]
            )
            for r in range(n):
                for key, got in results[r].items():
                    if key[:2] == (dtype.str, elems):
                        np.testing.assert_array_equal(got, want, err_msg=f"rank {r} {key}")
