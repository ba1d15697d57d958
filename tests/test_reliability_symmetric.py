"""Symmetric buffers on communicators other than their own: always the right answer.

A buffer from ``comm.empty`` is symmetric only on the communicator that made it (its stride
means "the next rank" of that one). Passed to a sub-communicator of another shape, to the
parent, or after its communicator was closed, it must behave as an ordinary array. Every rank
checks its results against NumPy itself (the inputs are a function of case and world rank, small
integers, so every sum is exact), and returns what was wrong.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import shardcore

# Splits as (color, key) of the world rank: by parity, one reversed group, reversed pairs.
SPLITS = [
    (lambda r: r % 2, lambda r: 0),
    (lambda r: 0, lambda r: -r),
    (lambda r: r // 2, lambda r: -r),
]
OFFSETS = (0, 5)  # a view at the start of the buffer, and one inside it
SIZES = (0, 1, 13, 4099, (1 << 17) + 3)  # the largest: symmetric paths where they apply
PAD = 64


def _inp(tag: int, world_rank: int, n: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.int64) * 7 + world_rank * 13 + tag) % 97).astype(np.float32)


def _check(failures: list, what: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.array_equal(got, want):
        failures.append(what)


def _collectives(s, members, buf, label, failures, algos):
    """Every collective of sub-communicator ``s`` on views of ``buf`` against NumPy."""
    n, me, world = s.size, s.rank, members[s.rank]
    for off in OFFSETS:
        for size in SIZES:
            tag = size * 3 + off
            where = f"{label} off={off} size={size}"
            x = buf[off : off + size]
            x[:] = _inp(tag, world, size)
            s.all_reduce(x)
            algos.add(("all_reduce", label, size, off, s.last_algorithm))
            _check(failures, f"all_reduce {where}", x, sum(_inp(tag, w, size) for w in members))
            x[:] = _inp(tag + 1, world, size)
            got = s.all_gather(x)
            algos.add(("all_gather", label, size, off, s.last_algorithm))
            _check(
                failures,
                f"all_gather {where}",
                got,
                np.concatenate([_inp(tag + 1, w, size) for w in members]),
            )
            # In place: x is this rank's block of an output in the buffer.
            out = buf[off : off + n * size]
            if out.size == n * size:
                x = out[me * size : (me + 1) * size]
                x[:] = _inp(tag + 7, world, size)
                s.all_gather(x, out=out)
                algos.add(("all_gather_in_place", label, size, off, s.last_algorithm))
                _check(
                    failures,
                    f"all_gather in place {where}",
                    out,
                    np.concatenate([_inp(tag + 7, w, size) for w in members]),
                )
                x = buf[off : off + size]
            m = size - size % n
            y = buf[off : off + m]
            y[:] = _inp(tag + 2, world, m)
            got = s.all_to_all(y)
            algos.add(("all_to_all", label, size, off, s.last_algorithm))
            b = m // n
            _check(
                failures,
                f"all_to_all {where}",
                got,
                np.concatenate([_inp(tag + 2, w, m)[me * b : (me + 1) * b] for w in members]),
            )
            y[:] = _inp(tag + 3, world, m)
            got = s.reduce_scatter(y)
            _check(
                failures,
                f"reduce_scatter {where}",
                got,
                sum(_inp(tag + 3, w, m) for w in members)[me * b : (me + 1) * b],
            )
            x[:] = _inp(tag + 4, world, size)
            s.broadcast(x, root=n - 1)
            _check(failures, f"broadcast {where}", x, _inp(tag + 4, members[n - 1], size))
            # all_to_allv: every rank sends counts[j] rows to rank j (the same counts everywhere).
            counts = [(size + j) % 3 for j in range(n)]
            rows, lo = sum(counts), sum(counts[:me])
            z = buf[off : off + rows]
            z[:] = _inp(tag + 5, world, rows)
            got, _ = s.all_to_allv(z, counts)
            want = [_inp(tag + 5, w, rows)[lo : lo + counts[me]] for w in members]
            _check(failures, f"all_to_allv {where}", got, np.concatenate(want))
            if n > 1:
                x[:] = _inp(tag + 6, world, size)
                dst, src = (me + 1) % n, (me - 1) % n
                out = buf[off + size + 1 : off + 2 * size + 1]
                # A long message waits for its receiver: send on a thread of its own.
                sender = threading.Thread(target=s.send, args=(x, dst))
                sender.start()
                s.recv(out, src)
                sender.join()
                _check(failures, f"send/recv {where}", out, _inp(tag + 6, members[src], size))


def _foreign_buffers(c, split_index):
    color, key = SPLITS[split_index]
    failures: list[str] = []
    algos: set = set()
    s = c.split(color(c.rank), key(c.rank))
    members = s.group_ranks
    big = 2 * max(SIZES) + 2 + PAD
    world_buf = c.empty(big, np.float32)
    own_buf = s.empty(big, np.float32)
    t = c.split(0, key=-c.rank)
    closed_buf = t.empty(big, np.float32)
    t.close()
    # A buffer of the parent, of a closed communicator, and the sub-communicator's own.
    for label, buf in (("world", world_buf), ("closed", closed_buf), ("own", own_buf)):
        _collectives(s, members, buf, label, failures, algos)
    # The sub-communicator's buffers on the parent: each rank's belongs to another communicator.
    _collectives(c, list(range(c.size)), own_buf, "sub-on-world", failures, algos)
    # Forcing the symmetric algorithm on a foreign buffer: ValueError on every rank, still usable.
    forced = []
    for name, call in (
        ("all_reduce", lambda: s.all_reduce(world_buf[:PAD], algorithm="symmetric")),
        ("all_gather", lambda: s.all_gather(world_buf[:PAD], algorithm="symmetric")),
        (
            "all_to_all",
            lambda: s.all_to_all(world_buf[: PAD - PAD % s.size], algorithm="symmetric"),
        ),
    ):
        try:
            call()
        except ValueError as exc:
            forced.append((name, "symmetric" in str(exc)))
    s.barrier()
    return failures, sorted(algos, key=str), forced, s.size


@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("split_index", range(len(SPLITS)))
def test_foreign_symmetric_buffers_give_numpy_results(n, split_index):
    for failures, algos, forced, sub_size in shardcore.launch(
        _foreign_buffers, n, args=(split_index,)
    ):
        assert failures == []
        # Only a buffer of the communicator itself ever takes a symmetric path ...
        assert not [a for a in algos if a[4] == "symmetric" and a[1] != "own"]
        # ... and one does, where the size calls for it (in place, above one-shot's limit).
        if sub_size > 1:
            assert ("all_reduce", "own", SIZES[-1], 0, "symmetric") in algos
        if sub_size > 1:
            assert forced == [("all_reduce", True), ("all_gather", True), ("all_to_all", True)]


def _the_issue_repro(c):
    s = c.split(c.rank % 2)
    h = c.empty((1 << 20,), np.float32)
    h[:] = c.rank + 1
    s.all_reduce(h)
    return float(h.min()), float(h.max())


def test_the_issues_repro():
    assert shardcore.launch(_the_issue_repro, 4) == [(4, 4), (6, 6), (4, 4), (6, 6)]


def _reversed_pair(c):
    s = c.split(0, key=-c.rank)
    h = c.empty((1 << 20,), np.float32)
    h[:] = c.rank + 1
    s.all_reduce(h)
    g = s.all_gather(h[: 1 << 12])
    a = s.all_to_all(h[: 1 << 18])
    return float(h.min()), float(h.max()), float(g.sum()), float(a.sum())


def test_reversed_split_of_two_ranks():
    """It used to die with SIGSEGV: rank r's "next rank" on the split is r - 1 in the buffer."""
    for got in shardcore.launch(_reversed_pair, 2):
        assert got == (3.0, 3.0, 3.0 * (1 << 13), 3.0 * (1 << 18))
