"""Communicator.all_reduce's C fast path (a vectorcall object bound to each communicator).

It must give exactly what the Python method gives, for every argument form it accepts, and hand
everything else (errors included) to the method. Each case is run both ways on the same data:
through ``comm.all_reduce`` (fast path where it applies) and through the unbound Python method
``Communicator.all_reduce(comm, ...)``, which never takes the fast path.
"""

from __future__ import annotations

import inspect

import ml_dtypes
import numpy as np
import pytest

import shardcore
from shardcore import Communicator

pytestmark = pytest.mark.timeout(120)

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int32, np.int64]
OPS = ["sum", "max", "min", "prod"]


def _data(rank, shape, dtype, salt):
    rng = np.random.default_rng(1000 * salt + rank)
    return rng.integers(-3, 4, size=shape).astype(dtype)


def _forms(comm):
    """(name, call(x, out) -> result) pairs: the argument forms a user writes."""
    return {
        "positional": lambda x, op, out: (
            comm.all_reduce(x, op) if out is None else comm.all_reduce(x, op, out)
        ),
        "keywords": lambda x, op, out: comm.all_reduce(x=x, op=op, out=out),
        "op_keyword": lambda x, op, out: comm.all_reduce(x, op=op, out=out, algorithm=None),
        # a str equal to "sum" etc. that is not the interned constant
        "built_op": lambda x, op, out: comm.all_reduce(x, "".join(list(op)), out=out),
    }


def _cases(comm):
    results = []
    salt = 0
    for dtype in DTYPES:
        for op in OPS:
            for shape in [(0,), (1,), (7,), (3, 5), (2, 0, 4), (131,)]:
                for name, form in _forms(comm).items():
                    for in_place in (True, False):
                        salt += 1
                        x = _data(comm.rank, shape, dtype, salt)
                        x_ref = x.copy()
                        ref = Communicator.all_reduce(comm, x_ref, op=op)
                        hits = comm.all_reduce.hits
                        if in_place:
                            got = form(x, op, None)
                            same = got is x
                        else:
                            out = np.full(shape, 99, dtype)
                            got = form(x, op, out)
                            same = got is out and np.array_equal(
                                x, _data(comm.rank, shape, dtype, salt)
                            )
                        fast = comm.all_reduce.hits == hits + 1
                        results.append(
                            (
                                np.dtype(dtype).name,
                                op,
                                shape,
                                name,
                                in_place,
                                same and fast,
                                got.dtype == ref.dtype
                                and got.shape == ref.shape
                                and got.tobytes() == ref.tobytes(),
                            )
                        )
    return results


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fast_path_equals_python_method(n):
    for rank_results in shardcore.launch(_cases, n):
        bad = [r for r in rank_results if not (r[5] and r[6])]
        assert not bad, bad[:5]
        assert len(rank_results) == len(DTYPES) * len(OPS) * 6 * 4 * 2


def _reference_values(comm):
    # The fast path against NumPy float64 on random data, 2-D, every op.
    out = {}
    for op in OPS:
        rng = np.random.default_rng(comm.rank + 17)
        x = rng.standard_normal((5, 11)).astype(np.float32)
        everyone = [
            np.random.default_rng(r + 17).standard_normal((5, 11)).astype(np.float64)
            for r in range(comm.size)
        ]
        ref = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[op](everyone, axis=0)
        got = comm.all_reduce(x, op)
        out[op] = float(np.max(np.abs(got - ref) / (np.abs(ref) + 1)))
    return out


@pytest.mark.parametrize("n", [2, 4, 7])
def test_fast_path_against_numpy(n):
    for errors in shardcore.launch(_reference_values, n):
        assert all(e < 1e-5 for e in errors.values()), errors


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects the type
        return type(e).__name__, str(e)
    return "ok", ""


def _errors(comm):
    x = np.ones(8, np.float32)
    buf = np.ones(16, np.float32)
    ro = np.ones(8, np.float32)
    ro.flags.writeable = False
    hits = comm.all_reduce.hits
    out = {
        "bad_op": _catch(lambda: comm.all_reduce(x, "mean")),
        "op_not_str": _catch(lambda: comm.all_reduce(x, 3)),
        "bad_kw": _catch(lambda: comm.all_reduce(x, colour="red")),
        "twice": _catch(lambda: comm.all_reduce(x, "sum", op="sum")),
        "no_args": _catch(lambda: comm.all_reduce()),
        "too_many": _catch(lambda: comm.all_reduce(x, "sum", None, None, 1)),
        "overlap": _catch(lambda: comm.all_reduce(buf[:8], out=buf[4:12])),
        "out_shape": _catch(lambda: comm.all_reduce(x, out=np.ones(9, np.float32))),
        "out_2d": _catch(lambda: comm.all_reduce(x, out=np.ones((2, 4), np.float32))),
        "out_dtype": _catch(lambda: comm.all_reduce(x, out=np.ones(8, np.float64))),
        "out_list": _catch(lambda: comm.all_reduce(x, out=[0.0] * 8)),
        "readonly": _catch(lambda: comm.all_reduce(ro)),
        "readonly_out": _catch(lambda: comm.all_reduce(x, out=ro)),
        "noncontig": _catch(lambda: comm.all_reduce(buf[::2])),
        "not_array": _catch(lambda: comm.all_reduce([1.0])),
        "bool": _catch(lambda: comm.all_reduce(np.ones(3, bool))),
        "algorithm": _catch(lambda: comm.all_reduce(x, algorithm="nope")),
        "forced": _catch(lambda: comm.all_reduce(x, algorithm="ring")),
    }
    out["fast_hits_during_errors"] = comm.all_reduce.hits - hits
    return out | {
        "still_usable": ("ok", comm.all_reduce(np.arange(4.0)).tolist()),
        # a read-only input with a separate output is fine
        "ro_in_out": ("ok", comm.all_reduce(ro, out=np.empty(8, np.float32)).tolist()),
    }


def test_fast_path_hands_errors_to_the_python_method():
    expected = {
        "bad_op": "ValueError",
        "op_not_str": "ValueError",
        "bad_kw": "TypeError",
        "twice": "TypeError",
        "no_args": "TypeError",
        "too_many": "TypeError",
        "overlap": "ValueError",
        "out_shape": "ValueError",
        "out_2d": "ValueError",
        "out_dtype": "TypeError",
        "out_list": "TypeError",
        "readonly": "ValueError",
        "readonly_out": "ValueError",
        "noncontig": "ValueError",
        "not_array": "TypeError",
        "bool": "TypeError",
        "algorithm": "ValueError",
    }
    for res in shardcore.launch(_errors, 2):
        for key, kind in expected.items():
            assert res[key][0] == kind, (key, res[key])
        assert res["still_usable"] == ("ok", [0.0, 2.0, 4.0, 6.0])
        assert res["ro_in_out"] == ("ok", [2.0] * 8)
        assert res["forced"][0] == "ok"
        assert res["fast_hits_during_errors"] == 0


def _introspection(comm):
    class Mine(Communicator):
        def all_reduce(self, x, op="sum", out=None, algorithm=None):
            return "overridden"

    sub = Mine(comm._core)
    x = np.ones(3, np.float32)
    comm.all_reduce(x)
    after_fast = comm.last_algorithm
    comm.all_gather(np.ones(1, np.float32))
    after_gather = comm.last_algorithm
    return {
        "signature": list(inspect.signature(comm.all_reduce).parameters),
        "name": comm.all_reduce.__name__,
        "doc": comm.all_reduce.__doc__ == Communicator.all_reduce.__doc__,
        "subclass": sub.all_reduce(x),
        "algo": (after_fast, after_gather),
    }


def test_fast_path_introspection_and_subclasses():
    for res in shardcore.launch(_introspection, 2):
        assert res["signature"] == ["x", "op", "out", "algorithm"]
        assert res["name"] == "all_reduce" and res["doc"]
        assert res["subclass"] == "overridden"
        assert res["algo"][0] == "one_shot" and res["algo"][1] is not None


def _closed(comm):
    f = comm.all_reduce
    comm.close()
    return _catch(lambda: f(np.ones(2, np.float32)))


def test_fast_path_on_a_closed_communicator_raises():
    for kind, msg in shardcore.launch(_closed, 2):
        assert kind == "RuntimeError" and "closed" in msg


# --- the other fast methods: reduce_scatter, broadcast, send, recv ------------------------------


def _other_methods(comm):
    n, r = comm.size, comm.rank
    res = []
    salt = 0
    for dtype in DTYPES + [np.int8, np.uint8, np.bool_]:
        reducible = np.dtype(dtype) not in (
            np.dtype(np.int8),
            np.dtype(np.uint8),
            np.dtype(np.bool_),
        )
        for rows in (0, 1, 3):
            for tail in ((), (5,)):
                shape = (rows * n,) + tail
                salt += 1
                if reducible:
                    for op in OPS:
                        x = _data(r, shape, dtype, salt)
                        ref = Communicator.reduce_scatter(comm, x, op)
                        hits = comm.reduce_scatter.hits
                        got = comm.reduce_scatter(x, op)
                        out = np.empty((rows,) + tail, dtype)
                        got2 = comm.reduce_scatter(x, op=op, out=out)
                        res.append(
                            (
                                "rs",
                                np.dtype(dtype).name,
                                shape,
                                op,
                                comm.reduce_scatter.hits == hits + 2 and got2 is out,
                                got.tobytes() == ref.tobytes() == got2.tobytes()
                                and got.shape == ref.shape
                                and got.dtype == ref.dtype,
                            )
                        )
                for root in range(n):
                    x = _data(r, shape, dtype, salt + 7)
                    ref = Communicator.broadcast(comm, x.copy(), root)
                    hits = comm.broadcast.hits
                    got = comm.broadcast(x, root=root) if root else comm.broadcast(x)
                    res.append(
                        (
                            "bcast",
                            np.dtype(dtype).name,
                            shape,
                            root,
                            comm.broadcast.hits == hits + 1,
                            got.tobytes() == ref.tobytes(),
                        )
                    )
                if n > 1:
                    nxt, prv = (r + 1) % n, (r - 1) % n
                    x = _data(r, shape, dtype, salt + 11)
                    out = np.empty(shape, dtype)
                    hs, hr = comm.send.hits, comm.recv.hits
                    if r % 2 == 0:
                        comm.send(x, nxt, tag=salt)
                        comm.recv(out, prv, salt)
                    else:
                        comm.recv(out, src=prv, tag=salt)
                        comm.send(x, dst=nxt, tag=salt)
                    expect = _data(prv, shape, dtype, salt + 11)
                    res.append(
                        (
                            "p2p",
                            np.dtype(dtype).name,
                            shape,
                            0,
                            comm.send.hits == hs + 1 and comm.recv.hits == hr + 1,
                            out.tobytes() == expect.tobytes(),
                        )
                    )
    return res


@pytest.mark.parametrize("n", [1, 2, 3])
def test_other_fast_methods_equal_the_python_methods(n):
    for rank_results in shardcore.launch(_other_methods, n):
        bad = [x for x in rank_results if not (x[4] and x[5])]
        assert not bad, bad[:5]


def _other_errors(comm):
    x = np.ones(4, np.float32)
    big_endian = np.ones(4, ">f4")
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    hits = {m: getattr(comm, m).hits for m in ("reduce_scatter", "broadcast", "send", "recv")}
    out = {
        "ar_big_endian": _catch(lambda: comm.all_reduce(big_endian)),
        "rs_rows": _catch(lambda: comm.reduce_scatter(np.ones(3, np.float32))),
        "rs_out_shape": _catch(lambda: comm.reduce_scatter(x, out=np.ones(3, np.float32))),
        "rs_int8": _catch(lambda: comm.reduce_scatter(np.ones(4, np.int8))),
        "rs_op": _catch(lambda: comm.reduce_scatter(x, op="avg")),
        "bcast_root": _catch(lambda: comm.broadcast(x, root=2)),
        "bcast_root_neg": _catch(lambda: comm.broadcast(x, root=-1)),
        "bcast_ro": _catch(lambda: comm.broadcast(ro, root=1 - comm.rank)),
        "send_self": _catch(lambda: comm.send(x, comm.rank)),
        "send_range": _catch(lambda: comm.send(x, 5)),
        "recv_ro": _catch(lambda: comm.recv(ro, 1 - comm.rank)),
        "recv_list": _catch(lambda: comm.recv([0.0], 1 - comm.rank)),
        "allv_float_counts": _catch(lambda: comm.all_to_allv(x, [2.0, 2.0])),
        "allv_float_array": _catch(lambda: comm.all_to_allv(x, np.array([2.0, 2.0]))),
    }
    out["hits"] = {m: getattr(comm, m).hits - h for m, h in hits.items()}
    # a root given as a numpy integer takes the Python path, and works
    y = np.full(4, comm.rank, np.float32)
    out["np_root"] = comm.broadcast(y, root=np.int64(1)).tolist()
    return out


def test_other_fast_methods_hand_errors_to_python():
    expected = {
        "ar_big_endian": "TypeError",
        "rs_rows": "ValueError",
        "rs_out_shape": "ValueError",
        "rs_int8": "TypeError",
        "rs_op": "ValueError",
        "bcast_root": "ValueError",
        "bcast_root_neg": "ValueError",
        "bcast_ro": "ValueError",
        "send_self": "ValueError",
        "send_range": "ValueError",
        "recv_ro": "ValueError",
        "recv_list": "TypeError",
        "allv_float_counts": "TypeError",
        "allv_float_array": "TypeError",
    }
    for res in shardcore.launch(_other_errors, 2):
        for key, kind in expected.items():
            assert res[key][0] == kind, (key, res[key])
        assert res["hits"] == {"reduce_scatter": 0, "broadcast": 0, "send": 0, "recv": 0}
        assert res["np_root"] == [1.0] * 4


# --- all_gather and all_to_all --------------------------------------------------------------


def _gathers(comm):
    n, r = comm.size, comm.rank
    res = []
    salt = 0
    for dtype in DTYPES + [np.int8, np.uint8, np.bool_]:
        for shape in [(), (0,), (1,), (3,), (2, 5), (7, 3)]:
            salt += 1
            x = _data(r, shape, dtype, salt)
            rows = (shape[0] if shape else 1) * n
            oshape = (rows,) + shape[1:]
            ref = Communicator.all_gather(comm, x)
            h = comm.all_gather.hits
            got = comm.all_gather(x)
            out = np.empty(oshape, dtype)
            got2 = comm.all_gather(x, out=out)
            # in place: x is this rank's block of out
            buf = np.empty(oshape, dtype)
            blk = shape[0] if shape else 1
            mine = buf[r * blk : (r + 1) * blk]
            if shape:
                mine[...] = x
                got3 = comm.all_gather(mine, out=buf)
            else:
                got3 = comm.all_gather(x, out=buf)  # 0-d: no view of out can be x
            fast = comm.all_gather.hits == h + 3 and got2 is out and got3 is buf
            same = ref.tobytes() == got.tobytes() == got2.tobytes() == got3.tobytes()
            res.append(("ag", np.dtype(dtype).name, shape, fast, same and got.shape == ref.shape))
            if shape:
                xs = _data(r, (shape[0] * n,) + shape[1:], dtype, salt + 5)
                ref = Communicator.all_to_all(comm, xs)
                h = comm.all_to_all.hits
                got = comm.all_to_all(xs)
                out = np.empty_like(xs)
                got2 = comm.all_to_all(xs, out=out)
                fast = comm.all_to_all.hits == h + 2 and got2 is out
                res.append(
                    (
                        "a2a",
                        np.dtype(dtype).name,
                        shape,
                        fast,
                        ref.tobytes() == got.tobytes() == got2.tobytes(),
                    )
                )
    # inputs in symmetric buffers take the symmetric path through the fast call too
    for count in (1, 5000, 40000):
        sym = comm.empty((count * n,), np.float32)
        sym[...] = np.arange(count * n, dtype=np.float32) + 1000 * r
        h1, h2 = comm.all_gather.hits, comm.all_to_all.hits
        g = comm.all_gather(sym)
        a = comm.all_to_all(sym)
        expect_g = np.concatenate(
            [np.arange(count * n, dtype=np.float32) + 1000 * p for p in range(n)]
        )
        expect_a = np.concatenate(
            [np.arange(r * count, (r + 1) * count, dtype=np.float32) + 1000 * p for p in range(n)]
        )
        res.append(
            (
                "sym",
                "float32",
                (count,),
                comm.all_gather.hits == h1 + 1 and comm.all_to_all.hits == h2 + 1,
                np.array_equal(g, expect_g) and np.array_equal(a, expect_a),
            )
        )
    return res


@pytest.mark.parametrize("n", [1, 2, 3])
def test_gather_fast_paths_equal_the_python_methods(n):
    for rank_results in shardcore.launch(_gathers, n):
        bad = [x for x in rank_results if not (x[3] and x[4])]
        assert not bad, bad[:5]


def _gather_errors(comm):
    x = np.ones(4, np.float32)
    buf = np.ones(16, np.float32)
    h = comm.all_gather.hits, comm.all_to_all.hits
    out = {
        "ag_out_shape": _catch(lambda: comm.all_gather(x, out=np.ones(9, np.float32))),
        "ag_out_dtype": _catch(lambda: comm.all_gather(x, out=np.ones(8, np.float64))),
        "ag_overlap": _catch(lambda: comm.all_gather(buf[1:5], out=buf[:8])),
        "ag_algorithm": _catch(lambda: comm.all_gather(x, algorithm="nope")),
        "a2a_rows": _catch(lambda: comm.all_to_all(np.ones(3, np.float32))),
        "a2a_overlap": _catch(lambda: comm.all_to_all(buf[:4], out=buf[2:6])),
        "a2a_0d": _catch(lambda: comm.all_to_all(np.ones((), np.float32))),
    }
    out["hits"] = (comm.all_gather.hits - h[0], comm.all_to_all.hits - h[1])
    return out


def test_gather_fast_paths_hand_errors_to_python():
    expected = {
        "ag_out_shape": "ValueError",
        "ag_out_dtype": "TypeError",
        "ag_overlap": "ValueError",
        "ag_algorithm": "ValueError",
        "a2a_rows": "ValueError",
        "a2a_overlap": "ValueError",
        "a2a_0d": "ValueError",
    }
    for res in shardcore.launch(_gather_errors, 2):
        for key, kind in expected.items():
            assert res[key][0] == kind, (key, res[key])
        assert res["hits"] == (0, 0)
