"""The pipelined symmetric all-reduce: sizes that cross its chunk boundaries.

Every block is cut into chunks of SYM_CHUNK_BYTES (csrc/comm/allreduce_symmetric.cpp), which a
rank publishes one by one. The cases here sit just below and above one chunk per block, at n
chunks + 1 element (one block a chunk longer than the others, whose last chunk is empty), and at
primes; they run once with the real chunk and once with chunks of a few elements
(SHARDCORE_SYM_CHUNK_BYTES), which makes thousands of chunks out of small arrays. Each result is
checked against the float64 NumPy reduction and, bit for bit, against NumPy replaying the core's
reduction order (rank order, bf16 accumulated in float32 and rounded once), and every rank must
hold the same bytes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from collective_refs import BF16, assert_reduced, make_input

import shardcore

SYM_CHUNK_BYTES = 512 << 10  # kChunkBytes in allreduce_symmetric.cpp
DTYPES = [np.dtype(np.float32), BF16, np.dtype(np.float64)]


def boundary_sizes(n: int, chunk_elems: int) -> list[int]:
    """Element counts around the chunk boundaries of n blocks of chunk_elems-element chunks."""
    one = n * chunk_elems  # every block exactly one chunk
    return sorted({one - 1, one, one + 1, 2 * one + 1, 2 * one + n - 1, 3 * one + 7})


def in_rank_order(inputs: list[np.ndarray], op: str, dtype: np.dtype) -> np.ndarray:
    """The core's own reduction, replayed: rank order, bf16 accumulated in float32."""
    acc_type = np.float32 if dtype == BF16 else dtype
    fn = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}[op]
    acc = inputs[0].astype(acc_type)
    for x in inputs[1:]:
        acc = fn(acc, x.astype(acc_type))
    return acc.astype(dtype)


def _cases(comm, cases):
    """Runs every (seed, dtype, op, size) case; rank 0 checks, every rank returns digests."""
    largest = max(size * np.dtype(dt).itemsize for _, dt, _, size in cases)
    buf = comm.empty(largest + 64, np.uint8)
    out = []
    for seed, dtype, op, size in cases:
        dtype = np.dtype(dtype)
        # An odd byte offset's worth of elements into the buffer: blocks start unaligned.
        x = buf[dtype.itemsize * 3 : dtype.itemsize * (3 + size)].view(dtype)
        x[:] = make_input(seed, comm.rank, (size,), dtype, op)
        comm.all_reduce(x, op=op, algorithm="symmetric")
        assert comm.last_algorithm == "symmetric"
        if comm.rank == 0:
            inputs = [make_input(seed, r, (size,), dtype, op) for r in range(comm.size)]
            assert_reduced(x, inputs, op, dtype)
            exact = in_rank_order(inputs, op, dtype)
            if x.tobytes() != exact.tobytes():
                bad = np.flatnonzero(x.view(np.uint8) != exact.view(np.uint8))
                raise AssertionError(f"{seed}: first differing byte {bad[0]} of {x.nbytes}")
        out.append(hashlib.sha256(x.tobytes()).hexdigest())
    return out


def _check_digests(results):
    for r, digests in enumerate(results):
        assert digests == results[0], f"rank {r} differs from rank 0"


@pytest.mark.parametrize("n", range(1, 9))
def test_real_chunk_boundaries(n):
    """Sizes around the real chunk for float32, bfloat16 and float64."""
    cases = []
    for dtype in DTYPES:
        chunk = SYM_CHUNK_BYTES // dtype.itemsize
        sizes = boundary_sizes(n, chunk)
        if n > 4:  # keep 8 ranks on 2 cores quick: the edges, not the multiples
            sizes = sizes[:3]
        cases += [(("real", n, dtype.name, s), dtype, "sum", s) for s in sizes]
    _check_digests(shardcore.launch(_cases, n, args=(cases,)))


@pytest.mark.parametrize("n", range(1, 9))
def test_tiny_chunks(n, monkeypatch):
    """Chunks of 48 bytes: many chunks per block, empty last chunks, every dtype's edge."""
    monkeypatch.setenv("SHARDCORE_SYM_CHUNK_BYTES", "48")
    cases = []
    for dtype in DTYPES:
        chunk = max(1, 48 // dtype.itemsize)
        sizes = sorted({0, 1, 2, 7, 13, 101, 4099, *boundary_sizes(n, chunk)})
        for op in ("sum", "max", "prod"):
            cases += [(("tiny", n, dtype.name, op, s), dtype, op, s) for s in sizes]
    _check_digests(shardcore.launch(_cases, n, args=(cases,)))


@pytest.mark.parametrize("n", [3, 8])
def test_streamed_copies(n, monkeypatch):
    """Chunks of 1000 bytes copied with streaming stores (where ranks outnumber the cores)."""
    monkeypatch.setenv("SHARDCORE_SYM_CHUNK_BYTES", "1000")
    monkeypatch.setenv("SHARDCORE_NT_MIN_BYTES", "1")
    cases = []
    for dtype in DTYPES:
        chunk = 1000 // dtype.itemsize
        sizes = sorted({1, 257, 4099, 65_537, *boundary_sizes(n, chunk)})
        cases += [(("stream", n, dtype.name, s), dtype, "sum", s) for s in sizes]
    _check_digests(shardcore.launch(_cases, n, args=(cases,)))


def _after_broadcast(comm):
    # A broadcast posts rounds on its root alone, so the other ranks' counters lag behind the
    # round count when the all-reduce starts: nothing may be copied before it is posted.
    results = []
    x = comm.empty(10_007, np.float32)
    for root in range(comm.size):
        b = np.full(1000, float(root), np.float32)
        comm.broadcast(b, root=root)
        x[:] = comm.rank + 1.0 + root
        comm.all_reduce(x, algorithm="symmetric")
        results.append((float(b[0]), float(x.min()), float(x.max())))
    return results


def test_after_broadcast(monkeypatch):
    monkeypatch.setenv("SHARDCORE_SYM_CHUNK_BYTES", "256")
    n = 3
    for res in shardcore.launch(_after_broadcast, n):
        for root, (b, lo, hi) in enumerate(res):
            want = sum(r + 1.0 + root for r in range(n))
            assert b == root and lo == hi == want


def _chunk_set_per_rank(comm):
    # The chunks are counted as rounds, so every rank must cut them alike: rank 0's size wins.
    os.environ["SHARDCORE_SYM_CHUNK_BYTES"] = str(40 + 24 * comm.rank)
    inner = comm.split(0)
    x = inner.empty(10_007, np.float64)
    x[:] = make_input("per-rank", comm.rank, (10_007,), x.dtype)
    inner.all_reduce(x, algorithm="symmetric")
    return x


def test_chunk_size_is_rank_zeros():
    n = 3
    results = shardcore.launch(_chunk_set_per_rank, n, timeout=60)
    inputs = [make_input("per-rank", r, (10_007,), np.dtype(np.float64)) for r in range(n)]
    assert results[0].tobytes() == in_rank_order(inputs, "sum", np.dtype(np.float64)).tobytes()
    _check_digests([[hashlib.sha256(x.tobytes()).hexdigest()] for x in results])


def _killed_mid_pipeline(comm, victim, report_dir):
    comm.barrier()
    if comm.rank == victim:
        os.environ["SHARDCORE_FAULT_KILL_AT_ROUND"] = "40"  # inner's rounds start at 0
    inner = comm.split(0)
    x = inner.empty(200_003, np.float32)
    x[:] = 1.0
    try:
        inner.all_reduce(x, algorithm="symmetric")
        outcome = "returned"
    except shardcore.PeerFailureError as exc:
        outcome = "PeerFailureError: " + str(exc)
    with open(os.path.join(report_dir, str(comm.rank)), "w") as f:
        f.write(outcome)
    return outcome


def test_peer_killed_mid_pipeline(tmp_path, monkeypatch):
    """A rank that dies after posting some of its chunks: the others raise, naming it."""
    monkeypatch.setenv("SHARDCORE_SYM_CHUNK_BYTES", "4096")
    n, victim = 3, 1
    with pytest.raises(shardcore.LaunchError) as info:
        shardcore.launch(_killed_mid_pipeline, n, args=(victim, str(tmp_path)), timeout=60)
    assert info.value.rank == victim
    for r in (0, 2):
        outcome = (tmp_path / str(r)).read_text()
        assert outcome.startswith("PeerFailureError") and "rank 1" in outcome, outcome
