"""The operations the shardcore backend builds in its torch layer, op by op against gloo.

reduce, gather, scatter (and the object collectives on them), list all_to_all, recv from any
source, bitwise reductions and reductions on uint8/int8/bool, monitored_barrier, and
non-contiguous inputs and outputs, on 1 to 8 ranks. Every rank runs each operation on the
shardcore default group and on a gloo group over the same ranks and compares bitwise (integer
valued data). Non-contiguous cases are compared with gloo on contiguous copies (gloo itself
does not handle every non-contiguous layout). The rendezvous is a TCPStore (env://, as under
torchrun) and SHARDCORE_TORCH_ANY_SOURCE=1 is set: a receive from any source needs both.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from test_torch_backend import (  # noqa: E402  (the shared multi-process harness)
    ALL_DTYPES,
    FLOATS,
    _to_gloo_dtype,
    check_equal,
    free_port,
    make,
    run_ranks,
)

R = dist.ReduceOp
RESTRICTED = "shardcore_methods_only"


class MethodsOnly:
    """A communicator with only the methods a multi-host communicator offers (the torch layer
    must build everything on these), and no C++ core behind it (so no fast path)."""

    METHODS = (
        "all_reduce",
        "reduce_scatter",
        "all_gather",
        "all_to_all",
        "all_to_allv",
        "broadcast",
        "send",
        "recv",
        "barrier",
        "abort",
        "close",
    )

    def __init__(self, comm):
        for name in self.METHODS:
            setattr(self, name, getattr(comm, name))
        self.rank, self.size, self.timeout = comm.rank, comm.size, comm.timeout


def _restricted_group(store, rank, size, timeout):
    """The shardcore backend's factory, with both communicators restricted to MethodsOnly."""
    import os

    from shardcore.torch import _anysource
    from shardcore.torch._rendezvous import connect_from_store
    from shardcore.torch.process_group import ShardcoreProcessGroup

    any_source = None
    if size > 1 and os.environ.get(_anysource.ENV) == "1":
        any_source = _anysource.AnySource(store, rank, size, 120.0)
    coll, p2p = connect_from_store(store, rank, size, timeout)
    return ShardcoreProcessGroup(
        MethodsOnly(coll), rank, size, p2p_comm=MethodsOnly(p2p), any_source=any_source
    )


if RESTRICTED.upper() not in dist.Backend._plugins:
    dist.Backend.register_backend(RESTRICTED, _restricted_group, devices=["cpu"])
INTEGRAL = [torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool]
ALL_OPS = [R.SUM, R.AVG, R.MAX, R.MIN, R.PRODUCT, R.BAND, R.BOR, R.BXOR]


def _valid(op, dtype):
    """The (op, dtype) pairs gloo serves: AVG on floats, bitwise ops on integers and bool."""
    if op == R.AVG:
        return dtype in FLOATS
    if op in (R.BAND, R.BOR, R.BXOR):
        return dtype in INTEGRAL
    return True


def _gloo_all_reduce(x, op, world, gloo):
    y = x.clone()
    dist.all_reduce(y, op=op, group=gloo)
    return y


def _data(rank, shape, dtype, seed, op):
    return make(rank, shape, dtype, seed=seed, small=op == R.PRODUCT)


# ---- cases (run inside every rank) -----------------------------------------------------------


def case_reductions(rank, world, gloo, dtypes, ops):
    """all_reduce, reduce (two roots) and reduce_scatter for every valid (op, dtype)."""
    roots = sorted({0, world - 1})
    for dtype in dtypes:
        for op in ops:
            if not _valid(op, dtype):
                continue
            for shape in [(1,), (2, 37)]:  # 74 elements: not a multiple of most world sizes
                x = _data(rank, shape, dtype, 3, op)
                want = _gloo_all_reduce(x, op, world, gloo)
                got = x.clone()
                dist.all_reduce(got, op=op)
                check_equal(got, want, f"all_reduce {op} {dtype} {shape}")
                for root in roots:
                    got = x.clone()
                    dist.reduce(got, dst=root, op=op)
                    check_equal(
                        got, want if rank == root else x, f"reduce {op} {dtype} root {root}"
                    )
            x = _data(rank, (world * 3, 2), dtype, 5, op)
            want = _gloo_all_reduce(x, op, world, gloo)[rank * 3 : (rank + 1) * 3]
            out = torch.empty(3, 2, dtype=dtype)
            dist.reduce_scatter_single(out, x, op=op)
            check_equal(out, want, f"reduce_scatter_single {op} {dtype}")
    return True


def case_rooted(rank, world, gloo, dtypes):
    """gather and scatter for every dtype and two roots, and the object forms."""
    for dtype in dtypes:
        for root in sorted({0, world - 1}):
            x = make(rank, (3, 2), dtype, seed=7 + root)
            gathered = [torch.empty(3, 2, dtype=dtype) for _ in range(world)]
            dist.gather(x, gathered if rank == root else None, dst=root)
            want = [_to_gloo_dtype(torch.empty(3, 2, dtype=dtype)) for _ in range(world)]
            dist.gather(_to_gloo_dtype(x), want if rank == root else None, dst=root, group=gloo)
            if rank == root:
                for r in range(world):
                    check_equal(_to_gloo_dtype(gathered[r]), want[r], f"gather {dtype} from {r}")
            pieces = [make(r, (4,), dtype, seed=11 + root) for r in range(world)]
            out = torch.empty(4, dtype=dtype)
            dist.scatter(out, pieces if rank == root else None, src=root)
            want = _to_gloo_dtype(torch.empty(4, dtype=dtype))
            dist.scatter(
                want,
                [_to_gloo_dtype(p) for p in pieces] if rank == root else None,
                src=root,
                group=gloo,
            )
            check_equal(_to_gloo_dtype(out), want, f"scatter {dtype} root {root}")
    root = world - 1
    objs = [None]
    dist.scatter_object_list(
        objs,
        [{"to": r, "pad": "x" * (5 * r)} for r in range(world)] if rank == root else None,
        src=root,
    )
    assert objs[0] == {"to": rank, "pad": "x" * (5 * rank)}, objs
    got = [None] * world if rank == 0 else None
    dist.gather_object(("from", rank, [0] * rank), got, dst=0)
    if rank == 0:
        assert got == [("from", r, [0] * r) for r in range(world)], got
    return True


def case_all_to_all_lists(rank, world, gloo, dtypes):
    """List all_to_all: equal sizes against gloo; a different size for every pair of ranks
    (some empty, which gloo refuses) against the data each sender made."""
    for dtype in dtypes:
        inputs = [make(rank, (2, 3), dtype, seed=13 + j) for j in range(world)]
        outputs = [torch.empty(2, 3, dtype=dtype) for _ in range(world)]
        dist.all_to_all(outputs, inputs)
        want = [_to_gloo_dtype(torch.empty_like(t)) for t in outputs]
        dist.all_to_all(want, [_to_gloo_dtype(t) for t in inputs], group=gloo)
        for j in range(world):
            check_equal(_to_gloo_dtype(outputs[j]), want[j], f"all_to_all (lists) {dtype} from {j}")
        inputs = [make(rank, ((rank + j) % 3, 2), dtype, seed=17 + j) for j in range(world)]
        outputs = [torch.empty((j + rank) % 3, 2, dtype=dtype) for j in range(world)]
        dist.all_to_all(outputs, inputs)
        for j in range(world):
            sent = make(j, ((j + rank) % 3, 2), dtype, seed=17 + rank)
            check_equal(outputs[j], sent, f"all_to_all (uneven lists) {dtype} from {j}")
    return True


def case_any_source(rank, world, gloo):
    """recv(src=None): rank 0 takes every other rank's messages in whatever order they come,
    with two tags interleaved, mixed with receives from a named rank."""
    if world == 1:
        return True
    if rank != 0:
        dist.send(torch.full((3,), 10.0 * rank), 0, tag=1)
        dist.send(torch.full((5,), 10.0 * rank + 1), 0, tag=2)
        dist.send(torch.full((2,), 10.0 * rank + 2), 0, tag=1)
        dist.send(torch.full((200_000,), float(rank)), 0, tag=3)  # larger than the mailboxes
        return True
    # rank 1's first message by name, the rest of tag 1 from anyone
    first = torch.empty(3)
    assert dist.recv(first, src=1, tag=1) == 1
    check_equal(first, torch.full((3,), 10.0), "named recv")
    seen = {}
    for _ in range(world - 2):
        t = torch.empty(3)
        src = dist.recv(t, tag=1)
        check_equal(t, torch.full((3,), 10.0 * src), f"any-source recv from {src}")
        seen[src] = True
    assert sorted(seen) == list(range(2, world)), seen
    for _ in range(world - 1):  # tag 2 from anyone
        t = torch.empty(5)
        src = dist.recv(t, tag=2)
        check_equal(t, torch.full((5,), 10.0 * src + 1), f"any-source tag 2 from {src}")
    got = set()
    for _ in range(world - 1):
        t = torch.empty(2)
        work = dist.irecv(t, tag=1)
        work.wait()
        src = work._source_rank()
        check_equal(t, torch.full((2,), 10.0 * src + 2), "any-source irecv")
        got.add(src)
    assert got == set(range(1, world)), got
    for r in range(1, world):  # the large ones by name
        t = torch.empty(200_000)
        dist.recv(t, src=r, tag=3)
        check_equal(t, torch.full((200_000,), float(r)), "large message")
    return True


def case_non_contiguous(rank, world, gloo):
    """Transposed and strided tensors as inputs and outputs: the result gloo gives on
    contiguous copies, and the tensors' other elements untouched."""
    dtype = torch.float32
    base = make(rank, (6, 2 * world), dtype, seed=17)
    ref = base.t().contiguous()  # (2 * world, 6)
    # all_reduce in place, MAX (core) and on int8 SUM (torch layer)
    for op, dt in [(R.MAX, dtype), (R.SUM, torch.int8)]:
        x = base.to(dt, copy=True).t()
        dist.all_reduce(x, op=op)
        check_equal(x, _gloo_all_reduce(ref.to(dt), op, world, gloo), f"all_reduce {op} {dt}")
    # broadcast in place
    x = base.t().clone().t().t()  # a transposed view of a fresh tensor
    dist.broadcast(x, src=world - 1)
    want = ref.clone()
    dist.broadcast(want, src=world - 1, group=gloo)
    check_equal(x, want, "broadcast")
    # all_gather_single: strided input (every other column), transposed output
    strided = make(rank, (3, 4), dtype, seed=19)[:, ::2]  # (3, 2), not contiguous
    out_t = torch.empty(2, world * 3).t()  # (world*3, 2), not contiguous
    dist.all_gather_single(out_t, strided)
    want = torch.empty(world * 3, 2)
    dist.all_gather_single(want, strided.contiguous(), group=gloo)
    check_equal(out_t, want, "all_gather_single")
    # reduce_scatter_single: transposed input and output
    inp = make(rank, (2, world * 3), dtype, seed=23).t()  # (world*3, 2)
    out_t = torch.empty(2, 3).t()
    dist.reduce_scatter_single(out_t, inp)
    check_equal(
        out_t,
        _gloo_all_reduce(inp.contiguous(), R.SUM, world, gloo)[rank * 3 : (rank + 1) * 3],
        "reduce_scatter_single",
    )
    # all_to_all_single with splits, strided output rows inside a bigger tensor
    send = [(rank + j) % 3 for j in range(world)]
    recv = [(j + rank) % 3 for j in range(world)]
    x = make(rank, (4, sum(send)), dtype, seed=29).t()  # (sum(send), 4)
    holder = torch.zeros(sum(recv), 8)
    out_v = holder[:, 2:6]  # (sum(recv), 4): rows of 4 inside rows of 8
    dist.all_to_all_single(out_v, x, recv, send)
    want = torch.empty(sum(recv), 4)
    dist.all_to_all_single(want, x.contiguous(), recv, send, group=gloo)
    check_equal(out_v, want, "all_to_all_single")
    assert not holder[:, :2].any() and not holder[:, 6:].any(), "wrote outside the view"
    # gather and scatter
    x = make(rank, (2, 3), dtype, seed=31).t()
    outs = [torch.empty(2, 3).t() for _ in range(world)]
    dist.gather(x, outs if rank == 0 else None, dst=0)
    if rank == 0:
        for r in range(world):
            check_equal(outs[r], make(r, (2, 3), dtype, seed=31).t(), f"gather from {r}")
    out = torch.empty(4, 2).t()
    pieces = [torch.arange(8.0).reshape(2, 4) + r for r in range(world)]
    dist.scatter(out, pieces if rank == 0 else None, src=0)
    check_equal(out, torch.arange(8.0).reshape(2, 4) + rank, "scatter")
    # send / recv
    if world > 1:
        right, left = (rank + 1) % world, (rank - 1) % world
        got = torch.empty(5, 3).t()
        reqs = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, make(rank, (5, 3), dtype, seed=37).t(), right),
                dist.P2POp(dist.irecv, got, left),
            ]
        )
        for req in reqs:
            req.wait()
        check_equal(got, make(left, (5, 3), dtype, seed=37).t(), "send/recv")
    return True


def case_monitored_barrier(rank, world, gloo):
    """Every rank arrives: the barrier passes (torch's front end admits gloo groups only, so
    the group's method is called)."""
    from datetime import timedelta

    group = dist.group.WORLD
    group.monitored_barrier(timeout=timedelta(seconds=60), wait_all_ranks=True)
    group.monitored_barrier()
    dist.monitored_barrier(group=gloo, timeout=timedelta(seconds=60))
    return True


def case_monitored_barrier_missing(rank, world, gloo):
    """Rank 1 stays away (in a gloo barrier) until rank 0 has raised, naming it."""
    from datetime import timedelta

    if rank == 1:
        dist.barrier(group=gloo)
        return "absent"
    try:
        dist.group.WORLD.monitored_barrier(timeout=timedelta(seconds=1))
    except RuntimeError as e:
        return str(e)
    finally:
        dist.barrier(group=gloo)
    raise AssertionError("monitored_barrier passed without rank 1")


def case_any_source_not_enabled_everywhere(rank, world, gloo):
    """A group made with the opt-in on rank 0 only: rank 0's recv(src=None) says so at once."""
    import os

    from shardcore.torch import UnsupportedError

    os.environ["SHARDCORE_TORCH_ANY_SOURCE"] = "1" if rank == 0 else "0"
    group = dist.new_group(backend="shardcore")
    if rank == 0:
        try:
            dist.recv(torch.empty(1), group=group)
        except UnsupportedError as e:
            return str(e)
        raise AssertionError("recv(src=None) did not raise")
    return True


def _table(rank, world, gloo, dtypes):
    case_reductions(rank, world, gloo, dtypes, ALL_OPS)
    case_rooted(rank, world, gloo, dtypes)
    case_all_to_all_lists(rank, world, gloo, dtypes)
    case_any_source(rank, world, gloo)
    case_non_contiguous(rank, world, gloo)
    case_monitored_barrier(rank, world, gloo)
    return True


# ---- tests -----------------------------------------------------------------------------------

# every dtype at 2 to 4 ranks; at the other sizes one float, one core-reduced integer and the
# torch-layer-reduced ones
_SOME = [torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "world,dtypes",
    [(1, _SOME), (2, ALL_DTYPES), (3, ALL_DTYPES), (4, ALL_DTYPES)]
    + [(w, _SOME) for w in (5, 6, 7, 8)],
    ids=lambda v: str(v) if isinstance(v, int) else f"{len(v)}dtypes",
)
def test_ops_match_gloo(world, dtypes, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDCORE_TORCH_ANY_SOURCE", "1")
    assert (
        run_ranks(world, _table, dtypes, tmp_path=tmp_path, tcp_port=free_port()) == [True] * world
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [3, 4])
def test_ops_on_the_communicator_methods_alone(world, tmp_path, monkeypatch):
    """The same table on a communicator with only the methods a multi-host one has."""
    monkeypatch.setenv("SHARDCORE_TORCH_ANY_SOURCE", "1")
    results = run_ranks(
        world, _table, _SOME, tmp_path=tmp_path, tcp_port=free_port(), backend=RESTRICTED
    )
    assert results == [True] * world


@pytest.mark.timeout(120)
def test_monitored_barrier_names_the_missing_rank(tmp_path):
    results = run_ranks(2, case_monitored_barrier_missing, tmp_path=tmp_path, tcp_port=free_port())
    assert results[1] == "absent"
    assert "Rank 1 failed to pass monitoredBarrier in 1000 ms" in results[0], results[0]


@pytest.mark.timeout(120)
def test_any_source_needs_the_opt_in_on_every_rank(tmp_path):
    results = run_ranks(
        2, case_any_source_not_enabled_everywhere, tmp_path=tmp_path, tcp_port=free_port()
    )
    assert "SHARDCORE_TORCH_ANY_SOURCE=1 on every rank" in results[0], results[0]
