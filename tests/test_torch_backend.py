"""The "shardcore" torch.distributed backend, checked against gloo on the same inputs.

Every rank runs each operation twice, on the shardcore default group and on a gloo group over
the same ranks, and compares. Inputs are small integers (also in the float dtypes), so sums,
products and averages are exact whatever the reduction order and the comparison is bitwise;
one case per float dtype uses random normal data with a tolerance.

Matrix: world sizes 2, 3 and 4 run every operation in every dtype; 1, 5, 6, 7 and 8 run a
subset (all_reduce in every op, gathers, all-to-all with uneven splits, broadcast, send/recv).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from shardcore.errors import CollectiveMismatchError, PeerFailureError  # noqa: E402

R = dist.ReduceOp
REDUCIBLE = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64]
MOVE_ONLY = [torch.uint8, torch.int8, torch.bool]
ALL_DTYPES = REDUCIBLE + MOVE_ONLY
OPS = [R.SUM, R.AVG, R.MAX, R.MIN, R.PRODUCT]
FLOATS = {torch.float32, torch.float64, torch.float16, torch.bfloat16}


# ---- harness ---------------------------------------------------------------------------------


def _shm_names(pids):
    tags = tuple(f"-{pid}-" for pid in pids)
    return {
        n for n in os.listdir("/dev/shm") if n.startswith("shardcore") and any(t in n for t in tags)
    }


def _child(rank, world, init, case, args, queue, backend="shardcore"):
    try:
        torch.set_num_threads(1)
        import shardcore.torch  # noqa: F401  registers the backend

        if init.startswith("tcp"):
            os.environ.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=init.split(":")[-1],
                RANK=str(rank),
                WORLD_SIZE=str(world),
            )
            dist.init_process_group(backend, init_method="env://")
        else:
            dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
        gloo = dist.new_group(backend="gloo")
        fn = globals()[case] if isinstance(case, str) else case
        result = fn(rank, world, gloo, *args)
        dist.destroy_process_group()
        queue.put((rank, "ok", result))
    except BaseException as exc:  # noqa: BLE001  reported to the parent, which raises
        queue.put((rank, type(exc).__name__, traceback.format_exc()))
    finally:
        queue.close()
        queue.join_thread()


def free_port():
    """A free TCP port on the loopback interface (for rank 0's TCPStore, as under torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    world, case, *args, tmp_path, tcp_port=None, expect_exit=(), backend="shardcore", tag=""
):
    """Run ``case(rank, world, gloo_group, *args)`` on ``world`` forked ranks; return results.

    ``case`` is a function or the name of one in this module; the default group is ``backend``'s.
    ``tcp_port``: rendezvous through a TCPStore (env://, as under torchrun) instead of a file.
    ``expect_exit`` lists ranks that end the process on purpose (they report nothing).
    """
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    name = case if isinstance(case, str) else case.__name__
    init = f"tcp:{tcp_port}" if tcp_port else f"file://{tmp_path}/store-{name}{tag}-{world}"
    procs = [
        ctx.Process(target=_child, args=(r, world, init, case, args, queue, backend))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    pids = [p.pid for p in procs]
    reports = {}
    try:
        while len(reports) < world - len(expect_exit):
            rank, status, payload = queue.get(timeout=150)
            reports[rank] = (status, payload)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    failed = {r: v for r, v in reports.items() if v[0] != "ok"}
    if failed:
        r, (status, tb) = min(failed.items())
        raise AssertionError(f"rank {r} raised {status}:\n{tb}")
    assert _shm_names(pids) == set(), "shared-memory segments left in /dev/shm"
    return [reports[r][1] for r in sorted(reports)]


# ---- inputs ----------------------------------------------------------------------------------


def make(rank, shape, dtype, seed, small=False):
    """Integer-valued data, different on every rank; ``small``: values in {1, 2} (products)."""
    g = torch.Generator().manual_seed(1000 * seed + rank)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    lo, hi = (1, 3) if small else ((0, 50) if dtype is torch.uint8 else (-20, 21))
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def check_equal(got, want, what):
    if not torch.equal(got, want):
        diff = (got.double() - want.double()).abs().max().item()
        raise AssertionError(f"{what}: shardcore differs from gloo (max |diff| {diff})")


def ref_all_reduce(x, op, world, gloo):
    """gloo's result; gloo has no AVG, so AVG is gloo's SUM divided on the same dtype."""
    y = x.clone()
    dist.all_reduce(y, op=R.SUM if op == R.AVG else op, group=gloo)
    if op == R.AVG:
        y.div_(world)
    return y


def _to_gloo_dtype(t):
    # gloo moves bytes for any dtype but does not accept bool in every collective: use uint8.
    return t.view(torch.uint8) if t.dtype is torch.bool else t


# ---- cases (run inside every rank) -----------------------------------------------------------


def case_all_reduce(rank, world, gloo, dtypes, ops, shapes):
    for dtype in dtypes:
        for op in ops:
            if op == R.AVG and dtype not in FLOATS:
                continue
            for shape in shapes:
                small = op == R.PRODUCT
                x = make(rank, shape, dtype, seed=len(shape) + 7 * int(small), small=small)
                got = x.clone()
                dist.all_reduce(got, op=op)
                check_equal(
                    got, ref_all_reduce(x, op, world, gloo), f"all_reduce {op} {dtype} {shape}"
                )
    return True


def case_random_floats(rank, world, gloo):
    """Random normal data: a ring sums in another order than gloo, so compare with tolerance."""
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 2e-2}
    g = torch.Generator().manual_seed(rank)
    for dtype, rtol in tol.items():
        x = torch.randn(1237, generator=g).to(dtype)
        got = x.clone()
        dist.all_reduce(got)
        want = x.double().clone()
        dist.all_reduce(want, group=gloo)  # float64 reference sum
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * world)
        # every rank ends with bitwise the same result
        gathered = [torch.empty_like(got) for _ in range(world)]
        dist.all_gather(gathered, got, group=gloo)
        for other in gathered:
            check_equal(other, got, f"all_reduce {dtype}: ranks disagree")
    return True


def case_reduce_scatter(rank, world, gloo, dtypes, ops):
    for dtype in dtypes:
        for op in ops:
            if op == R.AVG and dtype not in FLOATS:
                continue
            small = op == R.PRODUCT
            m = 5
            x = make(rank, (world * m, 3), dtype, seed=3, small=small)
            want = ref_all_reduce(x, op, world, gloo)[rank * m : (rank + 1) * m]
            out = torch.empty(m, 3, dtype=dtype)
            dist.reduce_scatter_single(out, x, op=op)
            check_equal(out, want, f"reduce_scatter_single {op} {dtype}")
            # in place: the output is this rank's block of the input
            buf = x.clone()
            dist.reduce_scatter_single(buf[rank * m : (rank + 1) * m], buf, op=op)
            check_equal(
                buf[rank * m : (rank + 1) * m], want, f"reduce_scatter in place {op} {dtype}"
            )
            # the list form
            out2 = torch.empty(m, 3, dtype=dtype)
            dist.reduce_scatter(out2, list(x.chunk(world)), op=op)
            check_equal(out2, want, f"reduce_scatter (list) {op} {dtype}")
    return True


def case_gathers(rank, world, gloo, dtypes):
    for dtype in dtypes:
        x = make(rank, (3, 2), dtype, seed=5)
        want = torch.empty(world * 3, 2, dtype=dtype)
        dist.all_gather_single(_to_gloo_dtype(want), _to_gloo_dtype(x), group=gloo)
        # out of place, concatenated output
        out = torch.empty(world * 3, 2, dtype=dtype)
        dist.all_gather_single(out, x)
        check_equal(out, want, f"all_gather_single {dtype}")
        # out of place, stacked output (world, 3, 2)
        stacked = torch.empty(world, 3, 2, dtype=dtype)
        dist.all_gather_single(stacked, x)
        check_equal(stacked.reshape(world * 3, 2), want, f"all_gather_single stacked {dtype}")
        # in place: the input is this rank's block of the output
        inplace = torch.zeros(world * 3, 2, dtype=dtype)
        inplace[rank * 3 : (rank + 1) * 3] = x
        dist.all_gather_single(inplace, inplace[rank * 3 : (rank + 1) * 3])
        check_equal(inplace, want, f"all_gather_single in place {dtype}")
        # tensor lists
        outs = [torch.empty(3, 2, dtype=dtype) for _ in range(world)]
        dist.all_gather(outs, x)
        check_equal(torch.cat(outs), want, f"all_gather (list) {dtype}")
    return True


def case_all_to_all(rank, world, gloo, dtypes):
    for dtype in dtypes:
        # equal splits
        x = make(rank, (world * 2, 3), dtype, seed=11)
        want = torch.empty_like(x)
        dist.all_to_all_single(_to_gloo_dtype(want), _to_gloo_dtype(x), group=gloo)
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x)
        check_equal(out, want, f"all_to_all_single {dtype}")
        inplace = x.clone()  # output and input the same tensor
        dist.all_to_all_single(inplace, inplace)
        check_equal(inplace, want, f"all_to_all_single in place {dtype}")
        # uneven splits, including empty ones: rank r sends (r + j) % 3 rows to rank j
        send = [(rank + j) % 3 for j in range(world)]
        recv = [(j + rank) % 3 for j in range(world)]
        x = make(rank, (sum(send), 4), dtype, seed=13)
        want = torch.empty(sum(recv), 4, dtype=dtype)
        dist.all_to_all_single(_to_gloo_dtype(want), _to_gloo_dtype(x), recv, send, group=gloo)
        out = torch.empty(sum(recv), 4, dtype=dtype)
        dist.all_to_all_single(out, x, recv, send)
        check_equal(out, want, f"all_to_all_single with splits {dtype}")
    return True


def case_broadcast(rank, world, gloo, dtypes):
    for dtype in dtypes:
        for root in sorted({0, world - 1}):
            x = make(rank, (7,), dtype, seed=17 + root)
            want = _to_gloo_dtype(x.clone())
            dist.broadcast(want, src=root, group=gloo)
            got = x.clone()
            dist.broadcast(got, src=root)
            check_equal(_to_gloo_dtype(got), want, f"broadcast root {root} {dtype}")
    return True


def case_send_recv(rank, world, gloo, dtypes):
    if world == 1:
        return True
    right, left = (rank + 1) % world, (rank - 1) % world
    for dtype in dtypes:
        # blocking, in order: even ranks send first, odd ranks receive first
        x = make(rank, (33,), dtype, seed=19)
        want = make(left, (33,), dtype, seed=19)
        got = torch.empty_like(x)
        if rank % 2 == 0:
            dist.send(x, right)
            dist.recv(got, left)
        else:
            dist.recv(got, left)
            dist.send(x, right)
        check_equal(got, want, f"send/recv {dtype}")
    # every rank sends a message larger than the mailboxes before anyone receives
    big = make(rank, (300_001,), torch.float32, seed=23)
    got = torch.empty_like(big)
    reqs = dist.batch_isend_irecv(
        [dist.P2POp(dist.isend, big, right), dist.P2POp(dist.irecv, got, left)]
    )
    for req in reqs:
        req.wait()
    check_equal(got, make(left, (300_001,), torch.float32, seed=23), "isend/irecv ring")
    # tags are matched
    a, b = torch.full((4,), float(rank)), torch.full((4,), float(rank) + 0.5)
    ra, rb = torch.empty(4), torch.empty(4)
    sends = [dist.isend(a, right, tag=1), dist.isend(b, right, tag=2)]
    dist.recv(ra, left, tag=1)
    dist.recv(rb, left, tag=2)
    for s in sends:
        s.wait()
    check_equal(ra, torch.full((4,), float(left)), "tagged recv 1")
    check_equal(rb, torch.full((4,), float(left) + 0.5), "tagged recv 2")
    return True


def case_async(rank, world, gloo):
    x = make(rank, (10,), torch.float32, seed=29)
    want = ref_all_reduce(x, R.SUM, world, gloo)
    got = x.clone()
    work = dist.all_reduce(got, async_op=True)
    assert work.wait() is True and work.is_completed() and work.is_success()
    check_equal(got, want, "async all_reduce")
    fut_value = work.get_future().wait()
    assert len(fut_value) == 1 and fut_value[0] is got
    out = torch.empty(world * 10)
    work = dist.all_gather_single(out, x, async_op=True)
    work.wait()
    gathered = torch.empty(world * 10)
    dist.all_gather_single(gathered, x, group=gloo)
    check_equal(out, gathered, "async all_gather_single")
    rs = torch.empty(2)
    big = make(rank, (world * 2,), torch.float32, seed=30)
    dist.reduce_scatter_single(rs, big, async_op=True).wait()
    check_equal(
        rs,
        ref_all_reduce(big, R.SUM, world, gloo)[2 * rank : 2 * rank + 2],
        "async reduce_scatter_single",
    )
    a2a = torch.empty(world * 2)
    dist.all_to_all_single(a2a, torch.arange(world * 2.0), async_op=True).wait()
    work = dist.broadcast(got, src=0, async_op=True)
    work.wait()
    dist.barrier(async_op=True).wait()
    if world > 1:
        right, left = (rank + 1) % world, (rank - 1) % world
        r = torch.empty(3)
        rw = dist.irecv(r, left)
        sw = dist.isend(torch.full((3,), float(rank)), right)
        sw.wait()
        assert rw.get_future().wait()[0] is r
        check_equal(r, torch.full((3,), float(left)), "irecv")
    return True


def case_functional(rank, world, gloo):
    """Functional collectives (what DTensor and torch.compile use) reach the backend too."""
    import torch.distributed._functional_collectives as fc

    x = make(rank, (8,), torch.float32, seed=31)
    want = ref_all_reduce(x, R.SUM, world, gloo)
    got = fc.wait_tensor(fc.all_reduce(x, "sum", dist.group.WORLD))
    check_equal(got, want, "functional all_reduce")
    gathered = fc.wait_tensor(fc.all_gather_single(x, 0, dist.group.WORLD))
    ref = torch.empty(world * 8)
    dist.all_gather_single(ref, x, group=gloo)
    check_equal(gathered, ref, "functional all_gather_single")
    return True


def case_objects(rank, world, gloo):
    """Object collectives (pickles moved as uint8 tensors of different sizes per rank)."""
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "text": "x" * (37 * rank)})
    assert gathered == [{"rank": r, "text": "x" * (37 * r)} for r in range(world)], gathered
    objs = [rank, f"from {rank}"]
    dist.broadcast_object_list(objs, src=world - 1)
    assert objs == [world - 1, f"from {world - 1}"], objs
    return True


def case_compile(rank, world, gloo):
    """torch.compile(fullgraph=True) traces dist.all_reduce into a functional collective that
    runs on the shardcore group (aot_eager: no C++ code generation in the test)."""

    def fn(x, w):
        y = x @ w
        dist.all_reduce(y)
        return torch.relu(y) + 1

    x = make(rank, (4, 8), torch.float32, seed=43)
    w = make(0, (8, 8), torch.float32, seed=47)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got = compiled(x, w)
    y = x @ w
    dist.all_reduce(y, group=gloo)
    check_equal(got, torch.relu(y) + 1, "compiled all_reduce")
    return True


def case_subgroups(rank, world, gloo):
    """Even and odd ranks form shardcore groups, compared with the same gloo groups."""
    evens, odds = list(range(0, world, 2)), list(range(1, world, 2))
    sc = [dist.new_group(evens, backend="shardcore"), dist.new_group(odds, backend="shardcore")]
    gl = [dist.new_group(evens, backend="gloo"), dist.new_group(odds, backend="gloo")]
    mine = rank % 2
    group, ref = sc[mine], gl[mine]
    members = (evens, odds)[mine]
    assert dist.get_backend(group) == "shardcore"
    assert dist.get_world_size(group) == len(members)
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        x = make(rank, (9,), dtype, seed=37)
        for op in (R.SUM, R.MAX):
            got = x.clone()
            dist.all_reduce(got, op=op, group=group)
            want = x.clone()
            dist.all_reduce(want, op=op, group=ref)
            check_equal(got, want, f"sub-group all_reduce {op} {dtype}")
        root = members[-1]  # a global rank
        got = x.clone()
        dist.broadcast(got, src=root, group=group)
        want = x.clone()
        dist.broadcast(want, src=root, group=ref)
        check_equal(got, want, f"sub-group broadcast {dtype}")
        out = torch.empty(len(members) * 9, dtype=dtype)
        dist.all_gather_single(out, x, group=group)
        want = torch.empty_like(out)
        dist.all_gather_single(want, x, group=ref)
        check_equal(out, want, f"sub-group all_gather_single {dtype}")
    if len(members) > 1:  # send/recv with global ranks inside the sub-group
        i = members.index(rank)
        right, left = members[(i + 1) % len(members)], members[i - 1]
        got = torch.empty(5)
        reqs = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, torch.full((5,), float(rank)), right, group=group),
                dist.P2POp(dist.irecv, got, left, group=group),
            ]
        )
        for req in reqs:
            req.wait()
        check_equal(got, torch.full((5,), float(left)), "sub-group send/recv")
    # the world group still works after the sub-groups
    x = make(rank, (4,), torch.int32, seed=41)
    got = x.clone()
    dist.all_reduce(got)
    check_equal(got, ref_all_reduce(x, R.SUM, world, gloo), "world after sub-groups")
    return True


def case_errors(rank, world, gloo):
    """Bad input raises on every rank before anything reaches shared memory."""
    from shardcore.torch import UnsupportedError

    def raises(exc, words, fn):
        try:
            fn()
        except exc as e:
            for w in words:
                assert w in str(e), f"{w!r} not in {e}"
            return
        raise AssertionError(f"{fn} did not raise {exc.__name__}")

    raises(
        TypeError,
        ["int16", "reductions"],
        lambda: dist.all_reduce(torch.ones(3, dtype=torch.int16)),
    )
    raises(
        TypeError,
        ["int32", "AVG"],
        lambda: dist.all_reduce(torch.ones(3, dtype=torch.int32), op=R.AVG),
    )
    raises(
        TypeError, ["BAND", "integer or bool"], lambda: dist.all_reduce(torch.ones(3), op=R.BAND)
    )
    raises(
        UnsupportedError,
        ["PREMUL_SUM"],
        lambda: dist.all_reduce(torch.ones(3), op=dist._make_nccl_premul_sum(2.0)),
    )
    # a receive from any source is opt-in (every send then announces itself)
    raises(
        UnsupportedError,
        ["any source", "SHARDCORE_TORCH_ANY_SOURCE=1"],
        lambda: dist.recv(torch.ones(3)),
    )
    raises(TypeError, ["device meta"], lambda: dist.all_reduce(torch.ones(3, device="meta")))
    raises(
        ValueError,
        ["elements"],
        lambda: dist.all_gather_single(torch.empty(world * 3 + 1), torch.ones(3)),
    )
    raises(
        ValueError,
        ["input_split_sizes"],
        lambda: dist.all_to_all_single(
            torch.empty(world), torch.ones(world), [1] * world, [2] * world
        ),
    )
    # the group still works after all that
    x = torch.ones(3)
    dist.all_reduce(x)
    check_equal(x, torch.full((3,), float(world)), "all_reduce after errors")
    # ranks that disagree on the count get CollectiveMismatchError on every rank
    if world > 1:
        try:
            dist.all_reduce(torch.ones(4 + rank))
        except CollectiveMismatchError as e:
            return str(e)
        raise AssertionError("mismatched all_reduce did not raise")
    return True


def case_peer_dies(rank, world, gloo):
    """The last rank exits after a first collective; the others must raise, not hang."""
    x = torch.ones(4)
    dist.all_reduce(x)
    if rank == world - 1:
        os._exit(3)
    try:
        for _ in range(1000):
            dist.all_reduce(x)
    except PeerFailureError as e:
        return str(e)
    raise AssertionError("all_reduce went on after a peer died")


# ---- tests -----------------------------------------------------------------------------------

MOVE_OPS = [
    ("case_gathers", ALL_DTYPES),
    ("case_all_to_all", ALL_DTYPES),
    ("case_broadcast", ALL_DTYPES),
    ("case_send_recv", ALL_DTYPES),
]


def _full_matrix(rank, world, gloo):
    case_all_reduce(rank, world, gloo, REDUCIBLE, OPS, [(1,), (2, 37)])
    case_random_floats(rank, world, gloo)
    case_reduce_scatter(rank, world, gloo, REDUCIBLE, OPS)
    for case, dtypes in MOVE_OPS:
        globals()[case](rank, world, gloo, dtypes)
    case_async(rank, world, gloo)
    case_functional(rank, world, gloo)
    case_objects(rank, world, gloo)
    return True


def _subset(rank, world, gloo):
    case_all_reduce(
        rank, world, gloo, [torch.float32, torch.bfloat16, torch.int64], OPS, [(1,), (3001,)]
    )
    case_random_floats(rank, world, gloo)
    case_reduce_scatter(rank, world, gloo, [torch.float16], [R.SUM])
    case_gathers(rank, world, gloo, [torch.float32, torch.bool])
    case_all_to_all(rank, world, gloo, [torch.int32])
    case_broadcast(rank, world, gloo, [torch.float64])
    case_send_recv(rank, world, gloo, [torch.bfloat16])
    case_async(rank, world, gloo)
    return True


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_op_and_dtype_matches_gloo(world, tmp_path):
    assert run_ranks(world, "_full_matrix", tmp_path=tmp_path) == [True] * world


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [1, 5, 6, 7, 8])
def test_subset_at_other_sizes_matches_gloo(world, tmp_path):
    assert run_ranks(world, "_subset", tmp_path=tmp_path) == [True] * world


@pytest.mark.timeout(120)
def test_env_rendezvous_and_subgroups(tmp_path):
    results = run_ranks(4, "case_subgroups", tmp_path=tmp_path, tcp_port=free_port())
    assert results == [True] * 4


@pytest.mark.timeout(120)
def test_bad_input_raises_clear_errors(tmp_path):
    results = run_ranks(2, "case_errors", tmp_path=tmp_path)
    for text in results:
        assert "all_reduce" in text and "count=4" in text and "count=5" in text


@pytest.mark.timeout(120)
def test_dead_peer_makes_others_raise(tmp_path):
    results = run_ranks(3, "case_peer_dies", tmp_path=tmp_path, expect_exit=(2,))
    assert len(results) == 2
    for text in results:
        assert "rank 2" in text


@pytest.mark.timeout(180)
def test_torch_compile_fullgraph(tmp_path):
    assert run_ranks(2, "case_compile", tmp_path=tmp_path) == [True, True]


def test_installed_package_registers_backend_when_torch_is_imported():
    """The ``torch.backends`` entry point: no ``import shardcore.torch`` needed."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    if not any(
        ep.value == "shardcore.torch._autoload:register"
        for ep in entry_points(group="torch.backends")
    ):
        pytest.skip("shardcore is not installed (source tree on PYTHONPATH): no entry points")
    check = (
        "print('shardcore' in dist.Backend.backend_list, "
        "'shardcore.torch.process_group' in sys.modules)"
    )
    for first in ("import torch", "import shardcore.torch"):  # both import orders
        code = f"import sys; {first}; import torch.distributed as dist; {check}"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        ).stdout.split()
        assert out == ["True", "False"], (first, out)  # registered, backend not loaded yet


def test_backend_is_registered_for_cpu():
    import shardcore.torch  # noqa: F401

    assert "shardcore" in dist.Backend.backend_list
    assert dist.Backend.backend_capability["shardcore"] == ["cpu"]
    assert dist.is_backend_available("shardcore")


@pytest.mark.timeout(180)
def test_tp_mlp_example_under_torchrun():
    """The README's worked example: torchrun, env:// rendezvous, checked against nn.Linear."""
    import subprocess
    import sys
    from pathlib import Path

    import shardcore

    root = Path(__file__).resolve().parents[1]
    # the ranks import the same shardcore as this process (installed, or the source tree)
    package_dir = str(Path(shardcore.__file__).resolve().parents[1])
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in [package_dir, os.environ.get("PYTHONPATH", "")] if p),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "4",
            str(root / "examples" / "tp_mlp_torch.py"),
            "--hidden",
            "64",
            "--ffn",
            "256",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches the unsharded module" in proc.stdout


def test_bench_parse_size():
    from shardcore.torch.bench import parse_size

    assert [parse_size(s) for s in ("8", "64K", "2M", "1g", "32MB")] == [
        8,
        64 << 10,
        2 << 20,
        1 << 30,
        32 << 20,
    ]
    for bad in ("", "x", "0", "-3K"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.timeout(180)
def test_bench_compare_all_reduce_runs_both_backends():
    """The benchmark entry point returns a median per backend per size (timings unchecked)."""
    from shardcore.torch.bench import compare_all_reduce

    results = compare_all_reduce([8, 4096], iters=6, world_size=2, breakdown=True)
    assert sorted(results) == [8, 4096]
    for row in results.values():
        assert set(row) == {"shardcore", "gloo", "raw", "group_method", "core_pointer"}
        assert all(v > 0 for v in row.values())


@pytest.mark.timeout(240)
def test_bench_compare_transformers_tp_runs_both_backends(tmp_path):
    """The transformers TP benchmark returns a median per backend per phase (timings unchecked)."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from shardcore.runtime.tiny import make_tiny_checkpoint
    from shardcore.torch.bench import compare_transformers_tp

    path = make_tiny_checkpoint(tmp_path / "qwen3", "qwen3")
    results = compare_transformers_tp(2, path, prompt_len=4, iters=1, rounds=1)
    assert sorted(results) == ["gloo", "shardcore"]
    for row in results.values():
        assert sorted(row) == ["decode", "prefill"] and all(v > 0 for v in row.values())
