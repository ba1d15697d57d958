"""Seeded fuzzing of the collectives against NumPy: random programs on every world size.

Each step of a program is drawn from a generator seeded by (seed, world size, step), so every
rank draws the same program: a collective (all_reduce, reduce_scatter, all_gather, all_to_all,
all_to_allv, broadcast, send/recv), a communicator (the world, or a sub-communicator of a random
split), a dtype, an op, a size from 0 to a few MiB, where the input lives (a private array, a
view of the communicator's own symmetric buffer, or of another communicator's), an algorithm
(automatic or forced), and sometimes bad arguments on a random set of ranks. Every rank checks
its result against a float64 NumPy reference itself; results of all_reduce are compared across
the ranks of each communicator for bitwise equality.

SHARDCORE_FUZZ_CASES (default 320, spread over world sizes 1-8) and SHARDCORE_FUZZ_SEED
(default 14) choose how much and which; e.g. SHARDCORE_FUZZ_CASES=5000 for a long run.
"""

from __future__ import annotations

import os
import threading
import zlib

import numpy as np
import pytest
from collective_refs import OPS, REDUCIBLE, assert_reduced, make_input

import shardcore

SEED = int(os.environ.get("SHARDCORE_FUZZ_SEED", "14"))
CASES = int(os.environ.get("SHARDCORE_FUZZ_CASES", "320"))
WORLD_SIZES = range(1, 9)
BUFFER_BYTES = 1 << 21  # each communicator's symmetric buffer, per rank
MOVABLE = [*REDUCIBLE, np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.bool_)]
KINDS = [
    "all_reduce",
    "all_reduce",
    "reduce_scatter",
    "all_gather",
    "all_to_all",
    "all_to_allv",
    "broadcast",
    "send_recv",
    "bad",
]


def _elements(rng, itemsize: int, limit_bytes: int) -> int:
    """A size from 0 to limit_bytes, log-uniform, with zero and tiny sizes common."""
    r = rng.random()
    if r < 0.08:
        return 0
    if r < 0.2:
        return int(rng.integers(1, 9))
    return int(2 ** rng.uniform(0, np.log2(max(2, limit_bytes // itemsize))))


class _Step:
    """One step of the program, the same on every rank."""

    def __init__(self, seed: int, world: int, index: int, comm_sizes: dict, cma: bool):
        rng = np.random.default_rng([seed, world, index])
        self.key = (seed, world, index)
        self.comm = str(rng.choice(["world", "sub"]))
        self.kind = str(rng.choice(KINDS))
        reducing = self.kind in ("all_reduce", "reduce_scatter", "bad")
        self.dtype = (REDUCIBLE if reducing else MOVABLE)[
            int(rng.integers(len(REDUCIBLE if reducing else MOVABLE)))
        ]
        self.op = str(rng.choice(OPS)) if reducing else "sum"
        self.where = str(rng.choice(["private", "own", "foreign"]))
        self.in_place = bool(rng.random() < 0.7)
        self.rng = rng
        n = comm_sizes[self.comm]
        item = self.dtype.itemsize
        limit = BUFFER_BYTES // 2 if self.where != "private" else 4 << 20
        m = _elements(rng, item, limit)
        if self.kind in ("reduce_scatter", "all_to_all"):
            m -= m % n
        self.count = m
        self.offset = int(rng.integers(0, 64)) * item  # bytes into the buffer, whole elements
        self.root = int(rng.integers(n))
        self.counts = rng.integers(0, 4, size=(n, n)) * (1 if rng.random() < 0.5 else 37)
        algos = {
            "all_reduce": [None, None, "ring", "two_shot"]
            + (["one_shot"] if m * item <= 1 << 19 else [])
            + (["symmetric"] if self.where == "own" and self.in_place else []),
            "all_gather": [None, None, "ring", "flat"]
            + (["cma"] if cma else [])
            + (["symmetric"] if self.where == "own" else []),
            "all_to_all": [None, None, "pairwise", "flat"]
            + (["cma"] if cma else [])
            + (["symmetric"] if self.where == "own" else []),
        }.get(self.kind, [None])
        self.algorithm = algos[int(rng.integers(len(algos)))]
        self.bad = rng.random(n) < 0.4


def _fuzz(c, seed: int, steps: int):
    rng = np.random.default_rng([seed, c.size, 1 << 30])
    colors = rng.integers(0, 3, size=c.size)
    keys = rng.permutation(c.size) * (1 if rng.random() < 0.5 else -1)
    sub = c.split(int(colors[c.rank]), int(keys[c.rank]))
    comms = {"world": c, "sub": sub}
    buffers = {name: comm.empty(BUFFER_BYTES, np.uint8) for name, comm in comms.items()}
    # The cma path exists only where every rank can read every other's memory.
    cma = c._core.cma and sub._core.cma
    failures: list[str] = []
    digests: list = []
    for index in range(steps):
        step = _Step(seed, c.size, index, {k: v.size for k, v in comms.items()}, cma)
        comm = comms[step.comm]
        try:
            _run(step, comm, buffers, failures, digests)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next step must still work
            failures.append(f"{step.key} {step.kind}: {type(exc).__name__}: {exc}")
    c.barrier()
    return failures, digests, sub.group_ranks


def _array(step, comm, buffers, rows: int, shape_tail=()):
    """This rank's input array for the step: private, or a view of a symmetric buffer."""
    shape = (rows, *shape_tail)
    nbytes = int(np.prod(shape)) * step.dtype.itemsize
    if step.where == "private" or step.offset + nbytes > BUFFER_BYTES:
        return np.empty(shape, step.dtype)
    other = "sub" if step.comm == "world" else "world"
    buf = buffers[step.comm if step.where == "own" else other]
    return buf[step.offset : step.offset + nbytes].view(step.dtype).reshape(shape)


def _inp(step, world_rank: int, rows: int, tag: int = 0):
    return make_input((*step.key, tag), world_rank, (rows,), step.dtype, step.op)


def _assert_reduced(result: np.ndarray, inputs: list, op: str, dtype: np.dtype) -> None:
    """assert_reduced, with a float64 reference that is itself exact enough.

    collective_refs' reference rounds in float64, which for float64 inputs costs as much as the
    collective's own rounding; here float64 sums and products are formed in long double.
    """
    if dtype != np.float64 or op not in ("sum", "prod"):
        assert_reduced(result, inputs, op, dtype)
        return
    stack = np.stack([x.astype(np.longdouble) for x in inputs])
    ref = stack.sum(axis=0) if op == "sum" else stack.prod(axis=0)
    u, n = np.longdouble(2.0**-53), len(inputs)
    bound = n * u * (np.abs(stack).sum(axis=0) if op == "sum" else 2 * np.abs(ref))
    err = np.abs(result.astype(np.longdouble) - ref)
    assert np.all(err <= bound), f"max error {err.max()} exceeds bound (op={op}, float64, n={n})"


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and got.tobytes() == want.astype(got.dtype).tobytes()


def _run(step, comm, buffers, failures, digests):
    n, me = comm.size, comm.rank
    members = comm.group_ranks
    world = members[me]
    what = f"{step.key} {step.kind} on {step.comm} (n={n}) {step.dtype} {step.op} count={step.count} {step.where} algo={step.algorithm}"
    m = step.count
    if step.kind == "all_reduce":
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        out = None if step.in_place else np.empty_like(x)
        res = comm.all_reduce(x, op=step.op, out=out, algorithm=step.algorithm)
        try:
            _assert_reduced(res, [_inp(step, w, m) for w in members], step.op, step.dtype)
        except AssertionError as exc:
            failures.append(f"{what}: {exc}")
        if comm.last_algorithm == "symmetric" and step.where != "own":
            failures.append(f"{what}: a foreign or private array took the symmetric path")
        digests.append((step.key, tuple(members), zlib.crc32(res.tobytes())))
    elif step.kind == "reduce_scatter":
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        res = comm.reduce_scatter(x, op=step.op)
        b = m // n
        try:
            _assert_reduced(
                res, [_inp(step, w, m)[me * b : (me + 1) * b] for w in members], step.op, step.dtype
            )
        except AssertionError as exc:
            failures.append(f"{what}: {exc}")
    elif step.kind == "all_gather":
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        res = comm.all_gather(x, algorithm=step.algorithm)
        if not _same(res, np.concatenate([_inp(step, w, m) for w in members])):
            failures.append(what)
    elif step.kind == "all_to_all":
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        res = comm.all_to_all(x, algorithm=step.algorithm)
        b = m // n
        want = np.concatenate([_inp(step, w, m)[me * b : (me + 1) * b] for w in members])
        if not _same(res, want):
            failures.append(what)
    elif step.kind == "all_to_allv":
        counts = step.counts
        rows = int(counts[me].sum())
        x = _array(step, comm, buffers, rows)
        x[...] = _inp(step, world, rows)
        res, recv = comm.all_to_allv(x, counts[me].tolist())
        want = [
            _inp(step, w, int(counts[i].sum()))[
                int(counts[i, :me].sum()) : int(counts[i, : me + 1].sum())
            ]
            for i, w in enumerate(members)
        ]
        if recv != counts[:, me].tolist() or not _same(res, np.concatenate(want)):
            failures.append(what)
    elif step.kind == "broadcast":
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        comm.broadcast(x, root=step.root)
        if not _same(x, _inp(step, members[step.root], m)):
            failures.append(what)
    elif step.kind == "send_recv" and n > 1:
        x = _array(step, comm, buffers, m)
        x[...] = _inp(step, world, m)
        out = np.empty(m, step.dtype)
        # A long message waits for its receiver: send on a thread of its own.
        sender = threading.Thread(target=comm.send, args=(x, (me + 1) % n, 7))
        sender.start()
        comm.recv(out, (me - 1) % n, 7)
        sender.join()
        if not _same(out, _inp(step, members[(me - 1) % n], m)):
            failures.append(what)
    elif step.kind == "bad":
        # Bad arguments on a random set of ranks: every rank raises, nothing breaks.
        x = np.ones(max(m, 1) % 4096, step.dtype)
        bad = step.bad[me]
        try:
            comm.all_reduce(x, op="mean" if bad else step.op)
            outcome = "ok"
        except ValueError as exc:
            outcome = str(exc)
        if bad and "unknown op" not in outcome:
            failures.append(f"{what}: the bad rank got {outcome!r}")
        elif not bad and step.bad.any() and "rejected its arguments" not in outcome:
            failures.append(f"{what}: a good rank got {outcome!r}")
        elif not step.bad.any() and outcome != "ok":
            failures.append(f"{what}: {outcome!r}")


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_fuzz_against_numpy(n):
    steps = max(1, CASES // len(WORLD_SIZES))
    results = shardcore.launch(_fuzz, n, args=(SEED, steps))
    failures = [f for fs, _, _ in results for f in fs]
    assert failures == [], "\n".join(failures[:20])
    # all_reduce results agree bit for bit among the ranks of each communicator.
    seen: dict = {}
    for _, digests, _ in results:
        for key, members, digest in digests:
            seen.setdefault((key, members), set()).add(digest)
    assert all(len(d) == 1 for d in seen.values())
