"""Column- and row-parallel linear layers on world sizes 1-8 against the unsharded product."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import shardcore

kernels = pytest.importorskip("shardcore.kernels")
from shardcore import linear

BF16 = np.dtype(ml_dtypes.bfloat16)
# Odd sizes: N and K divide unevenly for most world sizes, and K < 8 leaves some ranks empty.
M, K, N = 6, 45, 37


def _full(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return x, w, b


def _bound(x, w, b, terms):
    """gamma(terms) * (|x| @ |w| + |b|): the float32 summation bound of kernels.py."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)) + np.abs(b.astype(np.float64))
    u = 2.0**-24
    return terms * u / (1 - terms * u) * mag


def _worker(comm):
    """Every layer variant on this rank; returns what the parent compares."""
    x, w, b = _full()
    r, s = comm.rank, comm.size
    out = {}
    # Column parallel, weight cut from the HF [N, K] layout and packed from it.
    w_nk = np.ascontiguousarray(w.T)
    pw = kernels.PackedWeight.from_linear(linear.column_shard(w_nk, r, s, layout="nk"))
    bs = linear.bias_shard(b, r, s)
    out["col_local"] = linear.column_parallel_linear(x, pw, bs)
    out["col"] = linear.column_parallel_linear(x, pw, bs, gather_output=True, comm=comm)
    out["col_known_n"] = linear.column_parallel_linear(
        x, pw, bs, gather_output=True, comm=comm, out_features=N
    )
    # bf16 weights and activations, bf16 on the wire of the gather.
    pwb = kernels.PackedWeight(linear.column_shard(w, r, s), "bfloat16")
    out["col_bf16"] = linear.column_parallel_linear(
        x.astype(BF16), pwb, bs, gather_output=True, comm=comm
    )
    # Row parallel.
    xs = linear.input_shard(x, r, s)
    wr = linear.row_shard(w, r, s)
    out["row"] = linear.row_parallel_linear(xs, kernels.PackedWeight(wr), b, comm)
    out["row_nk"] = linear.row_parallel_linear(
        xs, kernels.PackedWeight.from_linear(linear.row_shard(w_nk, r, s, layout="nk")), b, comm
    )
    # reduce_scatter needs the first axis divisible by the world size: use size * 3 rows.
    x3 = np.random.default_rng(1).standard_normal((3 * s, K)).astype(np.float32)
    out["row_rs"] = linear.row_parallel_linear(
        linear.input_shard(x3, r, s), wr, b, comm, reduce="reduce_scatter"
    )
    pbr = kernels.PackedWeight(wr, "bfloat16")
    xb = xs.astype(BF16)
    comm.reset_traffic()
    out["row_bf16_f32wire"] = linear.row_parallel_linear(xb, pbr, b, comm, out_dtype="float32")
    out["traffic_f32"] = comm.traffic()["all_reduce"]["sent"]
    comm.reset_traffic()
    out["row_bf16_bf16wire"] = linear.row_parallel_linear(
        xb, pbr, b, comm, wire_dtype="bfloat16", out_dtype="float32"
    )
    out["traffic_bf16"] = comm.traffic()["all_reduce"]["sent"]
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", range(1, 9))
def test_parallel_linear_equals_unsharded(world, monkeypatch):
    # The ring for every size, so that the bytes compare like for like across dtypes.
    monkeypatch.setenv("SHARDCORE_ONE_SHOT_MAX", "88")
    monkeypatch.setenv("SHARDCORE_TWO_SHOT_MAX", "88")
    x, w, b = _full()
    results = shardcore.launch(_worker, world)
    assert len(results) == world
    full = kernels.matmul(x, w, b)
    ref = x.astype(np.float64) @ w.astype(np.float64) + b
    xb, wb = x.astype(BF16).astype(np.float32), w.astype(BF16).astype(np.float32)
    ref_b = xb.astype(np.float64) @ wb.astype(np.float64) + b
    x3 = np.random.default_rng(1).standard_normal((3 * world, K)).astype(np.float32)
    ref3 = x3.astype(np.float64) @ w.astype(np.float64) + b
    for rank, out in enumerate(results):
        a, e = linear.shard_range(N, world, rank)
        # Column parallel: each output column is summed exactly as in the unsharded kernel.
        np.testing.assert_array_equal(out["col_local"], full[:, a:e])
        np.testing.assert_array_equal(out["col"], full)
        np.testing.assert_array_equal(out["col_known_n"], full)
        got = out["col_bf16"]
        assert got.dtype == BF16 and got.shape == (M, N)
        bound = _bound(xb, wb, b, K + 1) * (1 + 2.0**-8) + 2.0**-8 * np.abs(ref_b)
        assert (np.abs(got.astype(np.float64) - ref_b) <= bound).all()
        # Row parallel: the partials add in a different order; K + world + 1 terms in all.
        terms = K + world + 1
        for key in ("row", "row_nk"):
            assert out[key].shape == (M, N) and out[key].dtype == np.float32
            assert (np.abs(out[key] - ref) <= _bound(x, w, b, terms)).all(), key
        rows = slice(3 * rank, 3 * rank + 3)
        assert out["row_rs"].shape == (3, N)
        assert (np.abs(out["row_rs"] - ref3[rows]) <= _bound(x3[rows], w, b, terms)).all()
        assert (np.abs(out["row_bf16_f32wire"] - ref_b) <= _bound(xb, wb, b, terms)).all()
        # bf16 on the wire: every partial (and the reduced sum) is rounded once more.
        wire = out["row_bf16_bf16wire"]
        mag = np.abs(xb.astype(np.float64)) @ np.abs(wb.astype(np.float64))
        assert (np.abs(wire - ref_b) <= _bound(xb, wb, b, terms) + 2.0**-7 * 1.01 * mag).all()
        if world > 1:
            # Half the bytes on the wire for the same all-reduce.
            assert out["traffic_bf16"] * 2 == out["traffic_f32"] > 0


def test_shard_rule_contiguous_first_ranks_get_extra():
    assert linear.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert linear.shard_sizes(3, 5) == [1, 1, 1, 0, 0]
    assert linear.shard_sizes(8, 8) == [1] * 8
    assert [linear.shard_range(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    w = np.arange(7 * 11, dtype=np.float32).reshape(7, 11)
    for size in range(1, 9):
        np.testing.assert_array_equal(
            np.concatenate([linear.column_shard(w, r, size) for r in range(size)], axis=1), w
        )
        np.testing.assert_array_equal(
            np.concatenate([linear.row_shard(w, r, size) for r in range(size)], axis=0), w
        )
        np.testing.assert_array_equal(
            np.concatenate(
                [linear.column_shard(w.T, r, size, layout="nk") for r in range(size)], axis=0
            ),
            w.T,
        )
        np.testing.assert_array_equal(
            np.concatenate(
                [linear.row_shard(w.T, r, size, layout="nk") for r in range(size)], axis=1
            ),
            w.T,
        )
        assert linear.column_shard(w, 0, size).flags.c_contiguous


def test_single_rank_without_comm():
    x, w, b = _full()
    full = kernels.matmul(x, w, b)
    np.testing.assert_array_equal(linear.column_parallel_linear(x, w, b), full)
    # Row parallel adds the bias after the (here trivial) reduction.
    np.testing.assert_array_equal(linear.row_parallel_linear(x, w, b), kernels.matmul(x, w) + b)


def test_bad_arguments():
    x, w, _ = _full()
    with pytest.raises(ValueError, match="rank must be in"):
        linear.shard_range(10, 4, 4)
    with pytest.raises(ValueError, match="size must be"):
        linear.shard_sizes(10, 0)
    with pytest.raises(ValueError, match="layout"):
        linear.column_shard(w, 0, 2, layout="kk")
    with pytest.raises(ValueError, match="needs comm"):
        linear.column_parallel_linear(x, w, gather_output=True)
    with pytest.raises(ValueError, match="reduce must be"):
        linear.row_parallel_linear(x, w, reduce="sum")
    with pytest.raises(TypeError, match="wire_dtype"):
        linear.row_parallel_linear(x, w, wire_dtype=np.float64)
    with pytest.raises(ValueError, match="bias must be"):
        linear.row_parallel_linear(x, w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="shape mismatch"):
        linear.row_parallel_linear(x[:, :5], w)
