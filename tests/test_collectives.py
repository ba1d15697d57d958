"""Every collective, op and dtype on world sizes 1-8 against NumPy float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from collective_refs import BF16, OPS, REDUCIBLE, assert_reduced, make_input

import shardcore

WORLD_SIZES = range(1, 9)
# Slots of 512 bytes make every size below but the smallest span several chunks per block.
SMALL_SLOT = 512
SIZES = [0, 1, 7, 131, 4099]
MOVABLE = REDUCIBLE + [
    np.dtype(np.int8),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
    np.dtype(np.complex64),
    np.dtype("S3"),
]


def ring_allreduce_bytes(count: int, n: int, r: int, itemsize: int) -> int:
    """Bytes rank r sends in a ring all-reduce: (S - |B_r+1|) + (S - |B_r+2|) elements."""
    if n == 1:
        return 0
    base, rem = divmod(count, n)
    length = lambda b: base + (1 if b < rem else 0)  # noqa: E731
    return ((count - length((r + 1) % n)) + (count - length((r + 2) % n))) * itemsize


def two_shot_bytes(count: int, n: int, r: int, itemsize: int, slot_bytes: int) -> int:
    """Bytes rank r sends (= receives) in a two-shot all-reduce: per slot-sized chunk of S
    elements, the peers' blocks of its input plus its reduced block to each peer."""
    if n == 1:
        return 0
    total, chunk = 0, slot_bytes // itemsize
    for lo in range(0, count, chunk):
        length = min(chunk, count - lo)
        base, rem = divmod(length, n)
        mine = base + (1 if r < rem else 0)
        total += (length - mine) + (n - 1) * mine
    return total * itemsize


def expected_bytes(algo: str, count: int, n: int, r: int, itemsize: int, slot: int):
    """(sent, received) of rank r for one all-reduce by the named algorithm."""
    if algo == "ring":
        # what a rank receives is what its predecessor sent
        return (
            ring_allreduce_bytes(count, n, r, itemsize),
            ring_allreduce_bytes(count, n, (r - 1) % n, itemsize),
        )
    if algo == "one_shot":
        return ((n - 1) * count * itemsize,) * 2
    return (two_shot_bytes(count, n, r, itemsize, slot),) * 2


ALGOS = ["ring", "one_shot", "two_shot", None]


def _all_reduce_cases(comm):
    out = []
    for di, dtype in enumerate(REDUCIBLE):
        for oi, op in enumerate(OPS):
            for size in SIZES:
                for algo in ALGOS:
                    if algo == "one_shot" and size * dtype.itemsize > SMALL_SLOT:
                        continue
                    x = make_input((di, oi, size), comm.rank, (size,), dtype, op)
                    comm.reset_traffic()
                    if (size + oi) % 2:
                        res = comm.all_reduce(x, op=op, algorithm=algo)
                    else:
                        res = comm.all_reduce(x, op=op, out=np.empty_like(x), algorithm=algo)
                    t = comm.traffic()["all_reduce"]
                    out.append((res, t["sent"], t["recv"], comm.last_algorithm, t["algorithms"]))
    return out


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_all_reduce_every_dtype_op_size_algorithm(n):
    results = shardcore.launch(_all_reduce_cases, n, slot_bytes=SMALL_SLOT)
    i = 0
    for di, dtype in enumerate(REDUCIBLE):
        for oi, op in enumerate(OPS):
            for size in SIZES:
                inputs = [make_input((di, oi, size), r, (size,), dtype, op) for r in range(n)]
                for algo in ALGOS:
                    if algo == "one_shot" and size * dtype.itemsize > SMALL_SLOT:
                        continue
                    first = results[0][i][0]
                    assert first.shape == (size,)
                    assert_reduced(first, inputs, op, dtype)
                    for r in range(n):
                        res, sent, recv, used, counted = results[r][i]
                        assert res.tobytes() == first.tobytes(), (
                            f"rank {r} differs ({dtype}, {op}, {size}, {algo})"
                        )
                        assert used == (algo or used) and counted == {used: 1}
                        if n > 1 or algo is not None:
                            assert (sent, recv) == expected_bytes(
                                used, size, n, r, dtype.itemsize, SMALL_SLOT
                            )
                    i += 1


def _choice(comm, sizes):
    out = []
    for nbytes in sizes:
        comm.all_reduce(np.zeros(nbytes // 4, np.float32))
        out.append(comm.last_algorithm)
    return out


@pytest.mark.parametrize("n", [2, 4, 8])
def test_automatic_choice_follows_the_size_thresholds(n, monkeypatch):
    monkeypatch.setenv("SHARDCORE_ONE_SHOT_MAX", "4096")
    monkeypatch.setenv("SHARDCORE_TWO_SHOT_MAX", "65536")
    sizes = [8, 88, 4096, 4100, 65536, 65540, 64 << 20]
    got = shardcore.launch(_choice, n, args=(sizes,))[0]
    assert got == ["one_shot"] * 3 + ["two_shot"] * 2 + ["ring"] * 2


def _thresholds(comm):
    return comm._core.one_shot_max, comm._core.two_shot_max


def test_default_thresholds_shrink_one_shot_as_ranks_grow(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent")  # no tuning cache
    one2, two2 = shardcore.launch(_thresholds, 2)[0]
    one8, two8 = shardcore.launch(_thresholds, 8)[0]
    assert one2 > one8 >= 88
    # two ranks: two-shot above one-shot at every size (the ring is the same two steps there);
    # eight: two-shot in a middle band, the ring above it
    assert two2 >= 1 << 40 and one8 < two8 < two2


def _big_all_reduce(comm, count):
    x = make_input(99, comm.rank, (count,), np.dtype(np.float32))
    comm.all_reduce(x, algorithm="ring")
    ring = comm.traffic()["all_reduce"]["sent"]
    y = make_input(98, comm.rank, (count // 2, 2), BF16)
    comm.all_reduce(y, op="max", algorithm="two_shot")
    return x, y, ring, comm.traffic()["all_reduce"]["sent"] - ring


@pytest.mark.parametrize("n", [2, 3, 8])
def test_all_reduce_larger_than_default_slot(n):
    count = 1_200_007 if n == 8 else 300_007  # blocks larger than the 512 KiB default slot
    results = shardcore.launch(_big_all_reduce, n, args=(count,))
    xs = [make_input(99, r, (count,), np.dtype(np.float32)) for r in range(n)]
    ys = [make_input(98, r, (count // 2, 2), BF16) for r in range(n)]
    assert_reduced(results[0][0], xs, "sum", np.dtype(np.float32))
    assert_reduced(results[0][1], ys, "max", BF16)
    for r in range(n):
        assert results[r][0].tobytes() == results[0][0].tobytes()
        assert results[r][1].tobytes() == results[0][1].tobytes()
        assert results[r][2] == ring_allreduce_bytes(count, n, r, 4)
        assert results[r][3] == two_shot_bytes(count // 2 * 2, n, r, 2, 1 << 19)


def _movement_cases(comm):
    n, r = comm.size, comm.rank
    out = {}
    for di, dtype in enumerate(REDUCIBLE):
        for oi, op in enumerate(OPS):
            for rows in (0, 1, 5, 300):
                x = make_input(("rs", di, oi, rows), r, (n * rows, 3), dtype, op)
                comm.reset_traffic()
                res = comm.reduce_scatter(x, op=op)
                out["rs", di, oi, rows] = (res, comm.traffic()["reduce_scatter"]["sent"])
    for di, dtype in enumerate(MOVABLE):
        for rows in (0, 1, 7, 300):
            x = make_input(("ag", di, rows), r, (rows, 2), dtype)
            for algo in ("ring", "flat", "cma", None):
                if algo == "cma" and not comm._core.cma:
                    continue
                comm.reset_traffic()
                res = comm.all_gather(x, algorithm=algo)
                out["ag", di, rows, algo] = (res, comm.traffic()["all_gather"]["sent"])
            x = make_input(("a2a", di, rows), r, (n * rows, 2), dtype)
            for algo in ("pairwise", "flat", "cma", None):
                if algo == "cma" and not comm._core.cma:
                    continue
                comm.reset_traffic()
                res = comm.all_to_all(x, out=np.empty_like(x), algorithm=algo)
                out["a2a", di, rows, algo] = (res, comm.traffic()["all_to_all"]["sent"])
            counts = make_input(("cnt", di, rows), r, (n,), np.dtype(np.int64), "prod") % (rows + 2)
            counts = np.abs(counts)
            x = make_input(("a2av", di, rows), r, (int(counts.sum()), 3), dtype)
            comm.reset_traffic()
            res, recv = comm.all_to_allv(x, counts)
            out["a2av", di, rows] = (res, recv, comm.traffic()["all_to_allv"]["sent"])
            for root in range(n):
                x = make_input(("bc", di, rows, root), r, (rows, 3), dtype)
                comm.reset_traffic()
                comm.broadcast(x, root=root)
                out["bc", di, rows, root] = (x, comm.traffic()["broadcast"])
    # scalars: all_gather of a 0-d array gives a vector
    out["scalar"] = comm.all_gather(np.array(r * 1.5))
    return out


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_data_movement_collectives(n):
    results = shardcore.launch(_movement_cases, n, slot_bytes=SMALL_SLOT)
    for di, dtype in enumerate(REDUCIBLE):
        for oi, op in enumerate(OPS):
            for rows in (0, 1, 5, 300):
                xs = [
                    make_input(("rs", di, oi, rows), r, (n * rows, 3), dtype, op) for r in range(n)
                ]
                full = np.stack(xs)
                for r in range(n):
                    res, sent = results[r]["rs", di, oi, rows]
                    assert res.shape == (rows, 3)
                    assert_reduced(res, list(full[:, r * rows : (r + 1) * rows]), op, dtype)
                    assert sent == (n - 1) * rows * 3 * dtype.itemsize
    for di, dtype in enumerate(MOVABLE):
        for rows in (0, 1, 7, 300):
            xs = [make_input(("ag", di, rows), r, (rows, 2), dtype) for r in range(n)]
            a2a = [make_input(("a2a", di, rows), r, (n * rows, 2), dtype) for r in range(n)]
            counts = [
                np.abs(
                    make_input(("cnt", di, rows), r, (n,), np.dtype(np.int64), "prod") % (rows + 2)
                )
                for r in range(n)
            ]
            a2av = [
                make_input(("a2av", di, rows), r, (int(counts[r].sum()), 3), dtype)
                for r in range(n)
            ]
            for r in range(n):
                for algo in ("ring", "flat", "cma", None):
                    if ("ag", di, rows, algo) not in results[r]:
                        continue
                    res, sent = results[r]["ag", di, rows, algo]
                    np.testing.assert_array_equal(res, np.concatenate(xs))
                    assert sent == (n - 1) * xs[r].nbytes
                expect = np.concatenate([a2a[src][r * rows : (r + 1) * rows] for src in range(n)])
                for algo in ("pairwise", "flat", "cma", None):
                    if ("a2a", di, rows, algo) not in results[r]:
                        continue
                    res, sent = results[r]["a2a", di, rows, algo]
                    np.testing.assert_array_equal(res, expect)
                    assert sent == (n - 1) * rows * 2 * dtype.itemsize
                res, recv, sent = results[r]["a2av", di, rows]
                offsets = [np.concatenate([[0], np.cumsum(c)]) for c in counts]
                expect = np.concatenate(
                    [a2av[s][offsets[s][r] : offsets[s][r + 1]] for s in range(n)]
                )
                np.testing.assert_array_equal(res, expect)
                assert recv == [int(counts[s][r]) for s in range(n)]
                assert sent == (int(counts[r].sum()) - int(counts[r][r])) * 3 * dtype.itemsize
                for root in range(n):
                    res, t = results[r]["bc", di, rows, root]
                    np.testing.assert_array_equal(
                        res, make_input(("bc", di, rows, root), root, (rows, 3), dtype)
                    )
                    nbytes = rows * 3 * dtype.itemsize if n > 1 else 0
                    assert (t["sent"], t["recv"]) == ((nbytes, 0) if r == root else (0, nbytes))
    for r in range(n):
        np.testing.assert_array_equal(results[r]["scalar"], np.arange(n) * 1.5)


def _sendrecv(comm, sizes):
    n, r = comm.size, comm.rank
    got = []
    # Eager: every rank sends to its successor before receiving (fits in the mailbox).
    for tag, size in enumerate(sizes):
        x = make_input(("p2p", tag), r, (size,), np.dtype(np.float32))
        small = size * 4 <= 2 * 64 * 1024
        if small or r % 2 == 0:
            comm.send(x, (r + 1) % n, tag=tag)
            y = comm.recv(np.empty(size, np.float32), (r - 1) % n, tag=tag)
        else:
            y = comm.recv(np.empty(size, np.float32), (r - 1) % n, tag=tag)
            comm.send(x, (r + 1) % n, tag=tag)
        got.append(y)
    return got, comm.traffic()["send"]["sent"], comm.traffic()["recv"]["recv"]


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_send_recv_ring_shift(n):
    sizes = [0, 1, 7, 16411, 200003]  # the last streams through the 64 KiB mailbox chunks
    if n % 2:
        sizes = sizes[:-1]  # an odd ring of blocking large sends has a cycle of senders
    results = shardcore.launch(_sendrecv, n, args=(sizes,))
    for r in range(n):
        got, sent, recv = results[r]
        for tag, size in enumerate(sizes):
            np.testing.assert_array_equal(
                got[tag], make_input(("p2p", tag), (r - 1) % n, (size,), np.dtype(np.float32))
            )
        assert sent == recv == 4 * sum(sizes)


def _split_concurrent(comm):
    r = comm.rank
    half = comm.split(r % 2, key=-r)  # reversed order inside each half
    quarter = half.split(half.rank // 2)
    a = np.full(3, float(r))
    half.all_reduce(a)
    b = np.full(2, float(r + 1))
    quarter.all_reduce(b, op="max")
    c = np.array([float(r)])
    comm.all_reduce(c)
    none = comm.split(None if r == 0 else 1)
    res = (half.rank, half.size, half.group_ranks, a, b, c, none is None)
    for sub in (quarter, half) + ((none,) if none else ()):
        sub.close()
    return res


def test_split_groups_run_independently():
    n = 8
    results = shardcore.launch(_split_concurrent, n)
    for r, (hrank, hsize, granks, a, b, c, none) in enumerate(results):
        same = [q for q in range(n) if q % 2 == r % 2]
        assert hsize == len(same)
        assert granks == sorted(same, reverse=True)
        assert hrank == granks.index(r)
        np.testing.assert_array_equal(a, np.full(3, float(sum(same))))
        quarter = [q for q in granks if granks.index(q) // 2 == hrank // 2]
        np.testing.assert_array_equal(b, np.full(2, float(max(quarter) + 1)))
        assert c[0] == sum(range(n))
        assert none == (r == 0)


def _gil_released(comm):
    import threading

    a = comm.split(0)
    b = comm.split(0)
    x, y = np.ones(4), np.ones(4)
    if comm.rank == 0:
        # While this thread waits in a, rank 1 is in b: b must run in the other thread meanwhile,
        # which it can only do if the wait in a released the GIL.
        t = threading.Thread(target=a.all_reduce, args=(x,))
        t.start()
        b.all_reduce(y)
        t.join()
    else:
        b.all_reduce(y)
        a.all_reduce(x)
    return x.sum() + y.sum()


def test_waits_release_the_gil():
    assert shardcore.launch(_gil_released, 2, comm_timeout=60) == [16.0, 16.0]


def _mixed_stress(comm, iters):
    rng = np.random.default_rng(1234)  # same sequence of collectives on every rank
    acc = 0.0
    for _ in range(iters):
        kind = rng.integers(0, 5)
        size = int(rng.integers(0, 700))
        if kind == 0:
            acc += comm.all_reduce(np.full(size, 1.0))[:1].sum()
        elif kind == 1:
            acc += comm.all_gather(np.full(size, float(comm.rank))).sum()
        elif kind == 2:
            acc += comm.reduce_scatter(np.ones(size * comm.size)).sum()
        elif kind == 3:
            acc += comm.broadcast(
                np.full(size, float(comm.rank)), root=int(rng.integers(comm.size))
            ).sum()
        else:
            comm.barrier()
    return acc


@pytest.mark.parametrize("n", [5, 8])
def test_many_mixed_collectives_oversubscribed(n):
    results = shardcore.launch(_mixed_stress, n, args=(150,), slot_bytes=1024)
    assert len(set(results)) == 1


def _cma_cases(comm):
    x = np.arange(50_000, dtype=np.float64) + comm.rank  # 400 KB blocks: many slot chunks
    y = np.arange(comm.size * 200_000, dtype=np.int32) + 7 * comm.rank
    out = {"available": comm._core.cma}
    out["ag"] = comm.all_gather(x)
    out["ag_algo"] = comm.last_algorithm
    out["a2a"] = comm.all_to_all(y)
    out["a2a_algo"] = comm.last_algorithm
    try:
        out["forced_ag"] = comm.all_gather(x, algorithm="cma")
        out["forced_a2a"] = comm.all_to_all(y, algorithm="cma")
        out["forced"] = "ok"
    except ValueError as exc:
        out["forced"] = str(exc)
    return out


@pytest.mark.parametrize("disable", [False, True])
def test_single_copy_cma_path_and_its_switch(disable, monkeypatch):
    if disable:
        monkeypatch.setenv("SHARDCORE_CMA", "0")
    n = 2
    results = shardcore.launch(_cma_cases, n)
    for r, out in enumerate(results):
        xs = [np.arange(50_000, dtype=np.float64) + q for q in range(n)]
        np.testing.assert_array_equal(out["ag"], np.concatenate(xs))
        ys = [np.arange(n * 200_000, dtype=np.int32) + 7 * q for q in range(n)]
        expect = np.concatenate([ys[q][r * 200_000 : (r + 1) * 200_000] for q in range(n)])
        np.testing.assert_array_equal(out["a2a"], expect)
        # The automatic choice never reads through CMA (slower or no faster, measured).
        assert out["ag_algo"] == "flat" and out["a2a_algo"] == "pairwise"
        if disable:
            assert not out["available"]
            assert "not available" in out["forced"]
        elif out["available"]:  # the kernel lets the ranks read each other
            assert out["forced"] == "ok"
            np.testing.assert_array_equal(out["forced_ag"], np.concatenate(xs))
            np.testing.assert_array_equal(out["forced_a2a"], expect)
