"""pytest-benchmark suite for the collectives (speed, not pass/fail: not part of tests/).

    pytest bench/test_bench_collectives.py --benchmark-columns=min,median,mean,ops

The pytest process is rank 0; the other ranks are forked helpers that join the same segment and
make exactly as many calls as pytest-benchmark's pedantic mode makes (rounds + warm-up rounds).
Buffers rotate among sets as ``shardcore bench collectives`` does (see
``shardcore.bench.sweep.rotation_bytes``), so no call finds its input in cache.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from contextlib import contextmanager

import numpy as np
import pytest

from shardcore.bench.backends import ShardcoreBackend, buffer_shapes
from shardcore.bench.metrics import element_count, numpy_dtype
from shardcore.bench.sweep import fill, rotation_bytes

ROUNDS, WARMUP = 200, 20


def _buffer_sets(backend, op, count, dtype, inplace):
    send_elems, recv_elems = buffer_shapes(op, count, backend.size, inplace)
    set_bytes = (send_elems + (recv_elems or 0)) * dtype.itemsize
    nsets = max(1, min(64, math.ceil(rotation_bytes(backend.size) / set_bytes)))
    calls = []
    for s in range(nsets):
        send = np.empty(send_elems, dtype)
        fill(send, backend.rank, s)
        recv = None if recv_elems is None else np.zeros(recv_elems, dtype)
        calls.append(backend.caller(op, send, recv, None))
    state = {"i": 0}

    def call():
        calls[state["i"] % nsets]()
        state["i"] += 1

    return call


def _helper(name, rank, size, op, count, dtype_name, inplace, calls):
    status = 1
    try:
        from shardcore.comm import Communicator

        comm = Communicator.connect(name, rank, size)
        call = _buffer_sets(ShardcoreBackend(comm), op, count, numpy_dtype(dtype_name), inplace)
        for _ in range(calls):
            call()
        comm.barrier()
        comm.close()
        status = 0
    finally:
        os._exit(status)


@contextmanager
def ranks(size, op, count, dtype_name, inplace, calls):
    """Rank 0's backend in this process; ranks 1..size-1 forked, making ``calls`` calls each."""
    from shardcore.comm import Communicator, new_segment_name

    name = new_segment_name()
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_helper, args=(name, r, size, op, count, dtype_name, inplace, calls))
        for r in range(1, size)
    ]
    for p in procs:
        p.start()
    comm = Communicator.connect(name, 0, size, timeout=120)
    try:
        yield ShardcoreBackend(comm)
        comm.barrier()
    finally:
        comm.close()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


SIZES = [8, 64 << 10, 1 << 20, 16 << 20]


@pytest.mark.parametrize("nbytes", SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("op", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"])
def test_collective(benchmark, op, world, nbytes):
    dtype = numpy_dtype("float32")
    count = element_count(op, nbytes, dtype.itemsize, world)
    if count == 0:
        pytest.skip("too small to split over the ranks")
    rounds = ROUNDS if nbytes <= 1 << 20 else 20
    with ranks(world, op, count, "float32", op == "all_reduce", rounds + WARMUP) as backend:
        call = _buffer_sets(backend, op, count, dtype, op == "all_reduce")
        benchmark.extra_info.update(op=op, world_size=world, nbytes=count * dtype.itemsize)
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=WARMUP)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_all_reduce_dtype_1mib(benchmark, dtype_name):
    dtype = numpy_dtype(dtype_name)
    count = (1 << 20) // dtype.itemsize
    with ranks(2, "all_reduce", count, dtype_name, True, ROUNDS + WARMUP) as backend:
        call = _buffer_sets(backend, "all_reduce", count, dtype, True)
        benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
