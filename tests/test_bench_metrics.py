"""Pure-Python parts of the benchmarks: size parsing, nccl-tests bandwidths, the ring model, the
alpha-beta fit, the bytes verdict (no processes)."""

import math

import numpy as np
import pytest

from shardcore.bench import metrics
from shardcore.bench.modelfit import fit_alpha_beta, fit_rows
from shardcore.bench.report import bytes_verdict, format_table
from shardcore.bench.sweep import _traffic_columns


def test_parse_size_units():
    assert metrics.parse_size("8") == 8
    assert metrics.parse_size("64K") == 65536
    assert metrics.parse_size("256M") == 256 * 2**20
    assert metrics.parse_size("1G") == 2**30
    assert metrics.parse_size("2MiB") == 2 * 2**20
    for bad in ("", "12Q", "-4", "1.5M", "M"):
        with pytest.raises(ValueError, match="bad size"):
            metrics.parse_size(bad)


def test_size_range_powers_of_two_and_factor():
    assert metrics.size_range("8:256M") == [2**k for k in range(3, 29)]
    assert metrics.size_range("1K:64K", factor=4) == [1024, 4096, 16384, 65536]
    assert metrics.size_range("8,100,1K") == [8, 100, 1024]
    assert metrics.size_range("4K") == [4096]
    with pytest.raises(ValueError, match="factor"):
        metrics.size_range("8:64", factor=1.0)
    with pytest.raises(ValueError, match="MIN <= MAX"):
        metrics.size_range("64:8")


def test_parse_ranks():
    assert metrics.parse_ranks("2,4,8") == [2, 4, 8]
    with pytest.raises(ValueError, match="at least 2"):
        metrics.parse_ranks("1")


@pytest.mark.parametrize(
    "op,n,expected",
    [
        # hand-computed: 1 GB in 1 s is 1 GB/s algbw; busbw per nccl-tests' PERFORMANCE.md
        ("all_reduce", 2, 1.0),
        ("all_reduce", 4, 1.5),
        ("all_reduce", 8, 1.75),
        ("all_gather", 4, 0.75),
        ("reduce_scatter", 8, 0.875),
        ("all_to_all", 2, 0.5),
        ("broadcast", 8, 1.0),
        ("sendrecv", 4, 1.0),
    ],
)
def test_busbw_hand_computed(op, n, expected):
    assert metrics.algbw(10**9, 1.0) == 1.0
    assert metrics.busbw(op, n, 10**9, 1.0) == pytest.approx(expected, rel=1e-15)
    # 3 MB in 2 ms is 1.5 GB/s algbw
    assert metrics.busbw(op, n, 3 * 10**6, 2e-3) == pytest.approx(1.5 * expected, rel=1e-12)


def test_ring_model_bytes():
    # bf16 all-reduce of h elements: 4(n-1)h/n bytes per rank
    h = 4096
    for n in range(2, 9):
        assert metrics.model_sent_per_rank("all_reduce", n, 2 * h) == pytest.approx(
            4 * (n - 1) * h / n
        )
        assert metrics.model_sent_total("all_gather", n, 1000) == (n - 1) * 1000
        assert metrics.model_sent_total("sendrecv", n, 1000) == n * 1000
    with pytest.raises(ValueError, match="unknown op"):
        metrics.model_sent_total("allreduce", 2, 8)


def test_element_count_rounds_split_ops():
    assert metrics.element_count("all_reduce", 100, 4, 3) == 25
    assert metrics.element_count("all_gather", 100, 4, 3) == 24
    assert metrics.element_count("all_to_all", 8, 4, 3) == 0


def test_fit_recovers_alpha_beta_exactly():
    steps = 6  # ring all-reduce on 4 ranks
    alpha, beta = 2.5e-6, 7.3e9
    x = np.array([2.0**k for k in range(3, 28)])
    t = alpha * steps + x / beta
    a, b, r2 = fit_alpha_beta(x, t, steps)
    assert a == pytest.approx(alpha, rel=1e-9)
    assert b == pytest.approx(beta, rel=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_recovers_alpha_beta_with_noise():
    rng = np.random.default_rng(7)
    steps, alpha, beta = 2, 1.1e-6, 3.0e9
    x = np.geomspace(8, 2**28, 60)
    t = (alpha * steps + x / beta) * rng.lognormal(0.0, 0.05, x.size)
    a, b, r2 = fit_alpha_beta(x, t, steps)
    assert a == pytest.approx(alpha, rel=0.1)
    assert b == pytest.approx(beta, rel=0.1)
    assert r2 > 0.99


def test_fit_rows_flags_departures():
    alpha, beta, n = 3e-6, 5e9, 2
    rows = []
    for s in [2**k for k in range(3, 25)]:
        t = (
            alpha * metrics.ring_steps("all_reduce", n)
            + metrics.model_sent_per_rank("all_reduce", n, s) / beta
        )
        if s == 2**20:
            t *= 3  # a cache cliff at one size
        rows.append(
            {
                "backend": "x",
                "op": "all_reduce",
                "world_size": n,
                "nbytes": s,
                "time_avg_us": t * 1e6,
            }
        )
    (fit,) = fit_rows(rows, threshold=0.5)
    assert [d["nbytes"] for d in fit.departures] == [2**20]
    assert fit.departures[0]["ratio"] > 2


def test_fit_rejects_bad_points():
    with pytest.raises(ValueError, match="two"):
        fit_alpha_beta([8], [1e-6], 2)
    with pytest.raises(ValueError, match="positive"):
        fit_alpha_beta([8, 16], [1e-6, 0.0], 2)


def test_fit_constant_time_gives_infinite_beta():
    a, b, _ = fit_alpha_beta([8, 64, 512], [4e-6, 4e-6, 4e-6], 2)
    assert a == pytest.approx(2e-6)
    assert math.isinf(b)


def test_traffic_columns_detect_a_byte_off():
    n, nbytes = 3, 3 * 4 * 10
    model_total = metrics.model_sent_total("all_reduce", n, nbytes)
    exact = [{"calls": 2, "sent": 2 * model_total // n} for _ in range(n)]
    cols = _traffic_columns("all_reduce", n, nbytes, exact)
    assert cols["bytes_exact"] is True and cols["bytes_ratio"] == pytest.approx(1.0)
    off = [dict(t) for t in exact]
    off[1]["sent"] += 1
    cols = _traffic_columns("all_reduce", n, nbytes, off)
    assert cols["bytes_exact"] is False
    row = {
        "backend": "x",
        "op": "all_reduce",
        "world_size": n,
        "dtype": "float32",
        "inplace": False,
        "nbytes": nbytes,
        "count": 30,
        **cols,
    }
    assert "at 1 of 1 size != the ring model" in bytes_verdict([row])
    assert "sent/model" in format_table([row])
    with pytest.raises(AssertionError, match="disagree"):
        _traffic_columns("all_reduce", n, nbytes, [{"calls": 1, "sent": 0}, *exact[1:]])


def test_fill_is_deterministic_and_not_constant():
    from shardcore.bench.sweep import fill

    a = np.empty(200_001, np.float32)
    b = np.empty(200_001, np.float32)
    fill(a, 1, 3)
    fill(b, 1, 3)
    assert np.array_equal(a, b) and np.unique(a).size > 1000
    fill(b, 2, 3)
    assert not np.array_equal(a, b)


def test_check_catches_a_collective_that_writes_nothing():
    from shardcore.bench.backends import Backend
    from shardcore.bench.sweep import SweepConfig, check_result

    class Lazy(Backend):
        name = "lazy"

        def caller(self, op, send, recv, algorithm):
            return lambda: None  # never writes its output

    cfg = SweepConfig(op="all_gather", sizes=[64])
    with pytest.raises(AssertionError, match="relative error nan"):
        check_result(Lazy(0, 1), cfg, 16, np.dtype(np.float32))
