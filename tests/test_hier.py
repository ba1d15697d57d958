"""The multi-host communicator against NumPy float64, on simulated hosts of this machine.

Every collective, dtype and op at odd sizes on 2x2, 2x3, 3+5, 1+1 and interleaved layouts;
the byte counters against the model; split, send/recv, failures. Ranks of different simulated
hosts talk through gloo over loopback (tests/hier_harness.py).
"""

from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np
import pytest
from hier_harness import run_hosts, run_hosts_raw

pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(400)

BF16 = np.dtype(ml_dtypes.bfloat16)
REDUCE_DTYPES = [np.float32, np.float64, np.float16, BF16, np.int32, np.int64]
# 0, 1, primes, and one above the pipeline chunk the checks set (4 KiB) and the 512 KiB slot
SIZES = [0, 1, 7, 13, 1009, 150_001]
LAYOUTS = {
    "2x2": dict(layout=[2, 2]),
    "2x3": dict(layout=[3, 3]),
    "3+5": dict(layout=[3, 5]),
    "1+1": dict(layout=[1, 1]),
    "interleaved": dict(layout=[2, 2], order=[0, 1, 0, 1]),
    "1+2+3": dict(layout=[1, 2, 3]),
}


def data(rank: int, n: int, dtype, seed: int, op: str = "sum") -> np.ndarray:
    """Rank ``rank``'s input: every rank can make every other rank's."""
    rng = np.random.default_rng([seed, rank, n])
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        if op == "prod":
            return rng.integers(-2, 3, n).astype(dtype)
        return rng.integers(-1000, 1000, n).astype(dtype)
    if op == "prod":
        return rng.uniform(0.9, 1.1, n).astype(dtype)
    return rng.uniform(-1, 1, n).astype(dtype)


REFS = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


def reference(size, n, dtype, seed, op):
    stack = np.stack([data(r, n, dtype, seed, op).astype(np.float64) for r in range(size)])
    return REFS[op](stack, axis=0)


def close(got, want, dtype, size, what):
    dtype = np.dtype(dtype)
    got = np.asarray(got).astype(np.float64)
    if dtype.kind in "iu":
        assert np.array_equal(got, want), what
        return
    tol = {2: 4e-3, 4: 1e-5, 8: 1e-12}[dtype.itemsize] * size * 4
    if dtype == BF16:
        tol = 3e-2 * size
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tol * scale, f"{what}: error {err} > {tol * scale}"


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def _collectives(comm, seed):
    """Every collective against NumPy; returns digests of the reduced results."""
    comm.chunk_bytes = 4096  # several pipeline chunks even at small sizes
    n, rank = comm.size, comm.rank
    digests = []
    for dtype in REDUCE_DTYPES:
        for op in ("sum", "max", "min", "prod"):
            for count in SIZES if (dtype, op) == (np.float32, "sum") else SIZES[:5]:
                x = data(rank, count, dtype, seed, op)
                comm.all_reduce(x, op=op)
                close(
                    x,
                    reference(n, count, dtype, seed, op),
                    dtype,
                    n,
                    f"all_reduce {dtype} {op} {count}",
                )
                digests.append(digest(x))
        # reduce_scatter: rows of 3 elements, odd row counts per rank
        for rows in (0, 1, 5):
            x = data(rank, n * rows * 3, dtype, seed + 1).reshape(n * rows, 3)
            got = comm.reduce_scatter(x)
            want = reference(n, n * rows * 3, dtype, seed + 1, "sum").reshape(n * rows, 3)
            close(
                got,
                want[rank * rows : (rank + 1) * rows],
                dtype,
                n,
                f"reduce_scatter {dtype} {rows}",
            )
    # out-of-place all_reduce leaves the input alone
    x = data(rank, 33, np.float64, seed)
    keep = x.copy()
    out = np.empty_like(x)
    comm.all_reduce(x, out=out)
    assert np.array_equal(x, keep)
    close(out, reference(n, 33, np.float64, seed, "sum"), np.float64, n, "all_reduce out=")
    # data movement in any dtype, odd sizes
    for dtype in (np.float32, BF16, np.int8, np.bool_, np.complex64):
        for count in (0, 1, 13, 70_001):
            x = (data(rank, count, np.float32, seed) * 100).astype(dtype)
            g = comm.all_gather(x)
            want = np.concatenate(
                [(data(r, count, np.float32, seed) * 100).astype(dtype) for r in range(n)]
            )
            assert np.array_equal(g, want), f"all_gather {dtype} {count}"
            blocks = [
                (data(rank * n + d, count, np.float32, seed) * 100).astype(dtype) for d in range(n)
            ]
            want = np.concatenate(
                [
                    (data(s * n + rank, count, np.float32, seed) * 100).astype(dtype)
                    for s in range(n)
                ]
            )
            for algorithm in (None, "direct"):
                a = comm.all_to_all(np.concatenate(blocks), algorithm=algorithm)
                assert np.array_equal(a, want), f"all_to_all {algorithm} {dtype} {count}"
            for root in {0, n - 1, n // 2}:
                b = x.copy() if rank == root else np.zeros_like(x)
                comm.broadcast(b, root=root)
                src = (data(root, count, np.float32, seed) * 100).astype(dtype)
                assert np.array_equal(b, src), f"broadcast {dtype} {count} root {root}"
    # 0-d all_gather is a vector
    assert comm.all_gather(np.array(rank, np.int32)).tolist() == list(range(n))
    # all_to_allv: rank s sends (s + d) % 3 rows of 2 elements to rank d
    rows = [(rank + d) % 3 for d in range(n)]
    x = np.concatenate([np.full((c, 2), 100 * rank + d, np.int64) for d, c in enumerate(rows)])
    got, recv = comm.all_to_allv(x, rows)
    assert recv == [(s + rank) % 3 for s in range(n)]
    want = np.concatenate([np.full((c, 2), 100 * s + rank, np.int64) for s, c in enumerate(recv)])
    assert np.array_equal(got, want)
    comm.barrier()
    return digests


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_collectives_match_numpy(name):
    layout = LAYOUTS[name]
    results = run_hosts(_collectives, args=(7,), **layout)
    # every rank ends with bitwise identical reductions
    assert all(r == results[0] for r in results)


def _traffic(comm, count):
    comm.reset_traffic()
    x = np.ones(count, np.float32)
    comm.all_reduce(x)
    g = comm.all_gather(np.ones(count // comm.size, np.float32))
    assert g.size == count
    return type(comm).__name__, comm.traffic()


@pytest.mark.parametrize("layout", [[2, 2], [4, 4], [3, 3, 3]])
def test_inter_host_bytes_follow_the_model(layout):
    """All-reduce of S bytes on H hosts of L ranks: 2(H-1)/H * S/L bytes between hosts per rank
    (a flat ring would send 2(n-1)/n * S); all-gather of b: (H-1) * b."""
    count = 9 * 8 * 5 * 7 * 16  # divisible by every rank count here
    results = run_hosts(_traffic, layout=layout, args=(count,))
    nhosts, nlocal = len(layout), layout[0]
    s = count * 4
    for kind, t in results:
        assert kind == "HierCommunicator"
        ar = t["all_reduce"]
        assert ar["inter_sent"] == ar["inter_recv"] == 2 * (nhosts - 1) * (s // nlocal) // nhosts
        assert ar["sent"] == ar["intra_sent"] + ar["inter_sent"]
        assert ar["intra_sent"] > 0
        ag = t["all_gather"]
        assert ag["inter_sent"] == (nhosts - 1) * s // (nhosts * nlocal)


def _one_host(comm):
    return type(comm).__name__


def test_one_host_is_the_plain_communicator():
    assert run_hosts(_one_host, layout=[3]) == ["Communicator"] * 3


def _split(comm):
    n, rank = comm.size, comm.rank
    out = {}
    # parity: spans hosts in a 2x2 layout; host halves: inside one host each
    for label, color in (("parity", rank % 2), ("half", rank // (n // 2)), ("none", None)):
        sub = comm.split(color, key=-rank)
        if sub is None:
            out[label] = None
            continue
        x = np.full(5, rank + 1, np.float32)
        sub.all_reduce(x)
        g = sub.all_gather(np.array([rank], np.int64))
        out[label] = (type(sub).__name__, sub.rank, sub.size, float(x[0]), g.tolist())
        sub.close()
    return out


def test_split_inside_and_across_hosts():
    results = run_hosts(_split, layout=[2, 2])
    for rank, r in enumerate(results):
        assert r["none"] is None
        kind, sub_rank, size, total, members = r["parity"]
        peers = [q for q in range(4) if q % 2 == rank % 2]
        assert kind == "HierCommunicator" and size == 2
        assert total == sum(q + 1 for q in peers)
        assert members == sorted(peers, reverse=True)  # key=-rank orders by descending rank
        assert sub_rank == members.index(rank)
        kind, sub_rank, size, total, members = r["half"]
        assert kind == "Communicator"
        assert members == sorted([q for q in range(4) if q // 2 == rank // 2], reverse=True)


def _p2p(comm):
    n, rank = comm.size, comm.rank
    got = []
    # a ring of messages of odd sizes, crossing hosts and staying inside them
    for count in (0, 1, 13, 100_003):
        x = np.arange(count, dtype=np.float64) + rank
        out = np.empty(count, np.float64)
        dst, src = (rank + 1) % n, (rank - 1) % n
        if rank % 2 == 0:
            comm.send(x, dst, tag=count)
            comm.recv(out, src, tag=count)
        else:
            comm.recv(out, src, tag=count)
            comm.send(x, dst, tag=count)
        got.append(bool(np.array_equal(out, np.arange(count, dtype=np.float64) + src)))
    t = comm.traffic()
    return got, t["send"]["inter_sent"] + t["send"]["intra_sent"]


def test_send_recv_inside_and_across_hosts():
    for got, sent in run_hosts(_p2p, layout=[2, 2]):
        assert all(got)
        assert sent == 8 * (1 + 13 + 100_003)


def _bad_arguments(comm):
    import shardcore

    errors = []
    for call in (
        lambda: comm.all_reduce(np.ones(3, np.int8)),
        lambda: comm.all_reduce(np.ones(3, np.float32), op="avg"),
        lambda: comm.all_reduce(np.ones(3, np.float32)[::2]),
        lambda: comm.reduce_scatter(np.ones(comm.size + 1, np.float32)),
        lambda: comm.all_to_all(np.ones(comm.size + 1, np.float32)),
        lambda: comm.broadcast(np.ones(3), root=comm.size),
        lambda: comm.send(np.ones(3), comm.rank),
        lambda: comm.all_to_allv(np.ones(3), [3] + [0] * comm.size),
    ):
        try:
            call()
        except (TypeError, ValueError) as exc:
            errors.append(type(exc).__name__)
    # a wrong out= that only the exchange can reveal: the same error on every rank, and the
    # communicator still works afterwards
    x = np.ones(comm.size, np.float32)
    out = np.empty(comm.size + (1 if comm.rank == 1 else 0), np.float32)
    try:
        comm.all_to_allv(x, [1] * comm.size, out=out)
    except ValueError as exc:
        errors.append(str(exc))
    y = np.ones(4, np.float32)
    comm.all_reduce(y)
    assert isinstance(shardcore.PeerFailureError("x"), shardcore.CommError)
    return errors, float(y[0])


def test_bad_arguments_raise_before_any_traffic_and_leave_the_communicator_usable():
    results = run_hosts(_bad_arguments, layout=[2, 2])
    for errors, total in results:
        assert len(errors) == 9
        assert errors[-1] == "all_to_allv: rank 1's out has 5 rows, it receives 4"
        assert total == 4.0


def _fail_rank(comm):
    import os

    x = np.ones(1000, np.float32)
    comm.all_reduce(x)
    if comm.rank == 3:
        os._exit(1)  # a rank of the second host dies without a word
    try:
        for _ in range(3):
            comm.all_reduce(x)
    except Exception as exc:
        return type(exc).__name__
    return "no error"


def test_a_dead_rank_on_another_host_makes_every_rank_raise():
    outcomes = run_hosts_raw(_fail_rank, layout=[2, 2], timeout=30.0)
    assert outcomes[3] == ("died", None)
    for status, value in outcomes[:3]:
        assert status == "ok" and value in ("PeerFailureError", "CommTimeoutError"), value


def _torch_job(rank, size, port):
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import shardcore.torch._rendezvous as rdzv

    made = []
    original = rdzv.connect_from_store

    def recording(*a):
        pair = original(*a)
        made.extend(type(c).__name__ for c in pair)
        return pair

    rdzv.connect_from_store = recording
    store = dist.TCPStore("127.0.0.1", port, size, False, timeout=timedelta(seconds=60))
    dist.init_process_group("shardcore", store=store, rank=rank, world_size=size)
    try:
        kind = made[0] if set(made) == {made[0]} else made
        x = torch.arange(11, dtype=torch.float32) * (rank + 1)
        dist.all_reduce(x)
        parts = [torch.empty(3, dtype=torch.int64) for _ in range(size)]
        dist.all_gather(parts, torch.full((3,), rank, dtype=torch.int64))
        y = torch.full((size, 2), float(rank))
        z = torch.empty(size, 2)
        dist.all_to_all_single(z, y)
        b = torch.full((4,), float(rank))
        dist.broadcast(b, src=size - 1)
        if rank == 0:
            dist.send(torch.ones(5), dst=size - 1)
        elif rank == size - 1:
            got = torch.zeros(5)
            dist.recv(got, src=0)
            assert got.sum().item() == 5
        dist.barrier()
        return (
            kind,
            x.tolist(),
            [p.tolist() for p in parts],
            z[:, 0].tolist(),
            b.tolist(),
        )
    finally:
        dist.destroy_process_group()


def test_torch_backend_is_hierarchical_across_hosts():
    """init_process_group("shardcore") over ranks of two hosts: the backend's communicator is
    the two-level one and torch's collectives give the right answers."""
    results = run_hosts(None, layout=[2, 2], args=(_torch_job,))
    n = 4
    for kind, x, parts, z, b in results:
        assert kind == "HierCommunicator"
        assert x == [float(i * sum(range(1, n + 1))) for i in range(11)]
        assert parts == [[r] * 3 for r in range(n)]
        assert z == [float(s) for s in range(n)]
        assert b == [float(n - 1)] * 4


def _generate(comm, ckpt, ids, degrees):
    from shardcore.runtime.distributed import generate_on

    r = generate_on(comm, ckpt, ids, max_new_tokens=3, **degrees)
    return r.tokens, r.logits, r.traffic, r.predicted_traffic


@pytest.mark.parametrize(
    "degrees,spans,crosses",
    [
        (dict(tp=2, pp=2), (), True),  # TP inside each host, PP across: the recommended layout
        (dict(tp=2, dp=2, ep=2), (), False),  # a replica per host (EP inside): nothing crosses
        (dict(tp=4), ("all_reduce", "all_gather"), True),  # TP across hosts, asked for
    ],
)
def test_runtime_across_hosts_matches_one_process(tmp_path, degrees, spans, crosses):
    """The Qwen3-MoE oracle run on 2 hosts x 2 ranks: tokens and logits equal the one-process
    run; every rank's counters equal the prediction, between hosts byte for byte."""
    from runtime_fixtures import make_checkpoint, prompts, rel_err

    from shardcore.runtime import generate

    ckpt = make_checkpoint(tmp_path / "moe", "qwen3_moe")
    ids = prompts(2, 5)
    reference = generate(ckpt, ids, max_new_tokens=3)
    results = run_hosts(_generate, layout=[2, 2], args=(ckpt, ids, degrees))
    crossed = 0
    for tokens, logits, _, _ in results:
        np.testing.assert_array_equal(tokens, reference.tokens)
        assert rel_err(logits, reference.logits) < 1e-5
    _, _, traffic, predicted = results[0]  # every rank returns every rank's counters
    assert len(traffic) == len(predicted) == 4
    for rank in range(4):
        got, want = traffic[rank], predicted[rank]
        for kind in got:
            assert got[kind]["inter_sent"] == want[kind]["inter_sent"], (rank, kind)
            assert got[kind]["inter_recv"] == want[kind]["inter_recv"], (rank, kind)
            crossed += got[kind]["inter_sent"]
            if kind not in spans and kind != "internal":
                for key in ("calls", "sent", "recv"):
                    assert got[kind][key] == want[kind][key], (rank, kind, key)
    assert (crossed > 0) == crosses


def test_generate_across_hosts_rejects_what_it_cannot_run(tmp_path, capsys):
    """shardcore generate --nnodes: one line naming the flag, exit 2, before anything starts."""
    from runtime_fixtures import make_checkpoint

    from shardcore.cli import main

    ckpt = make_checkpoint(tmp_path / "qwen3", "qwen3", num_hidden_layers=2)
    capsys.readouterr()  # the checkpoint writer's progress bar
    base = ["generate", ckpt, "--prompt-ids", "1,2,3", "--nnodes", "2"]
    cases = {
        "--master-addr": [],
        "--node-rank": ["--master-addr", "127.0.0.1", "--node-rank", "2"],
        "do not split evenly": ["--master-addr", "127.0.0.1", "-tp", "3"],
        "greedy": ["--master-addr", "127.0.0.1", "-tp", "2", "--temperature", "0.7"],
    }
    for needle, extra in cases.items():
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
