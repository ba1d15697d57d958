"""pytest-benchmark suite for the packed GEMM (not part of the test suite; run explicitly):

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=python pytest bench/test_bench_gemm.py --benchmark-only

Each case times one call on the default shapes of `shardcore bench gemm`; ``extra_info`` carries GFLOP/s and weight GB/s.
``shardcore bench gemm`` prints the same comparison as one table with ratios and peak fractions.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import ml_dtypes
import numpy as np
import pytest
from shardcore import kernels
from shardcore.bench.gemm import DEFAULT_SHAPES

BF16 = np.dtype(ml_dtypes.bfloat16)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


_one_blas_thread()


@pytest.fixture(scope="module", params=DEFAULT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def operands(request):
    m, k, n = request.param
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    return x, w


def _record(benchmark, x, w, itemsize):
    m, k = x.shape
    n = w.shape[1]
    s = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = 2.0 * m * k * n / s * 1e-9
    benchmark.extra_info["weight_gbs"] = k * n * itemsize / s * 1e-9


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shardcore_matmul(benchmark, operands, dtype):
    x, w = operands
    pw = kernels.PackedWeight(w, dtype)
    xin = x if dtype == "float32" else x.astype(BF16)
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    benchmark(kernels.matmul, xin, pw, out=out)
    _record(benchmark, x, w, np.dtype(pw.dtype).itemsize)


def test_numpy_matmul(benchmark, operands):
    x, w = operands
    out = np.empty((x.shape[0], w.shape[1]), np.float32)
    benchmark(np.matmul, x, w, out=out)
    _record(benchmark, x, w, 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_matmul(benchmark, operands, dtype):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    x, w = operands
    tdt = getattr(torch, dtype)
    tx = torch.from_numpy(x).to(tdt)
    tw = torch.from_numpy(np.ascontiguousarray(w.T)).to(tdt)  # [N, K], as nn.Linear stores it
    with torch.inference_mode():
        benchmark(lambda: tx @ tw.T)
    _record(benchmark, x, w, 4 if dtype == "float32" else 2)
