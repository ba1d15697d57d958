"""The AMX-BF16 kernel: its loops and packing on every CPU (amx-reference), the tiles where present.

``amx-reference`` runs the amx family's own loops, packing and edge handling (amx_loops.h) with
the tile instructions replaced by a model of Intel's documented semantics, so everything but the
instructions is checked here on any CPU. The ``amx`` kernel itself runs where the CPU has
AMX-BF16 and Linux grants tile data (the Sapphire Rapids class Xeons); elsewhere those tests skip
and say why. Both are checked against NumPy float64 within the bound stated in
shardcore.kernels (test_kernels.py); on an AMX machine test_kernels.py covers ``amx`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from test_kernels import BF16, SHAPES, TRANSFORMER_SHAPES, _check, _operands, _reference

kernels = pytest.importorskip("shardcore.kernels")

REFERENCE = "amx-reference"
HAVE_AMX = "amx" in kernels.available_kernels()


def _why_no_amx() -> str:
    try:
        kernels.PackedWeight(np.ones((1, 1), np.float32), kernel="amx")
    except ValueError as exc:
        return str(exc).rsplit("AMX: ", 1)[-1].rstrip(")")
    return "amx available"


needs_amx = pytest.mark.skipif(not HAVE_AMX, reason=f"no AMX kernel here: {_why_no_amx()}")
# Both: the model everywhere, the tiles where the CPU has them.
BOTH = [REFERENCE, pytest.param("amx", marks=needs_amx)]


@pytest.mark.parametrize("kernel", BOTH)
def test_odd_shapes(kernel):
    for i, (m, k, n) in enumerate(SHAPES):
        x, w, b = _operands(m, k, n)
        bias = b if i % 2 else None
        got = kernels.matmul(x, kernels.PackedWeight(w, "bfloat16", kernel=kernel), bias)
        ref, mag = _reference(x, w, bias, BF16)
        _check(got, ref, mag, k, f"{kernel} M,K,N={m},{k},{n}")


@pytest.mark.parametrize("kernel", BOTH)
def test_transformer_shapes_and_blocking_edges(kernel):
    # Beyond the transformer projections: K past one k-block (512) and not a multiple of 32, M
    # past one row block (256) and not a multiple of 16 or 32, N past one column block (4096).
    shapes = TRANSFORMER_SHAPES + [(300, 1100, 70), (2, 40, 4100), (17, 33, 4127), (33, 545, 33)]
    for m, k, n in shapes:
        x, w, b = _operands(m, k, n)
        pw = kernels.PackedWeight.from_linear(np.ascontiguousarray(w.T), "bfloat16", kernel=kernel)
        got = kernels.matmul(x, pw, b)
        ref, mag = _reference(x, w, b, BF16)
        _check(got, ref, mag, k, f"{kernel} M,K,N={m},{k},{n}")


@pytest.mark.parametrize("kernel", BOTH)
def test_bf16_activations_output_and_threads(kernel):
    x, w, b = _operands(37, 700, 300)
    pw = kernels.PackedWeight(w.astype(BF16), kernel=kernel)
    xb = x.astype(BF16)
    ref, mag = _reference(xb.astype(np.float32), w, b, BF16)
    got = kernels.matmul(xb, pw, b)
    assert got.dtype == BF16
    _check(got, ref, mag, 700, f"{kernel} bf16 out")
    f32 = kernels.matmul(x, pw, b)  # float32 activations are rounded to bf16 when packed
    np.testing.assert_array_equal(f32, kernels.matmul(xb, pw, b, out_dtype="float32"))
    five = kernels.matmul(x[:5], pw, b)
    for t in (2, 3, 8):  # threads split panels or rows; every element sums in the same order
        np.testing.assert_array_equal(kernels.matmul(x, pw, b, threads=t), f32)
        np.testing.assert_array_equal(kernels.matmul(x[:5], pw, b, threads=t), five)


def test_reference_rows_do_not_depend_on_batch_size():
    # From 2 rows on, a C element starts at its bias and takes the 32-deep steps in k order, with
    # C going from tile to memory and back between k-blocks: the same sums for every M (small-M
    # tiles of M rows or blocks of 16/32), every k-blocking and every edge. A bug in staging,
    # blocking or padding breaks this bitwise equality.
    x, w, b = _operands(300, 1100, 70)
    pw = kernels.PackedWeight(w, "bfloat16", kernel=REFERENCE)
    full = kernels.matmul(x, pw, b)
    for m in (2, 3, 16, 17, 31, 32, 33, 257):
        np.testing.assert_array_equal(kernels.matmul(x[:m], pw, b), full[:m], err_msg=f"M={m}")
    np.testing.assert_array_equal(kernels.matmul(x[280:300], pw, b), full[280:300])


_BLOCKING_CHILD = """
import sys, numpy as np
from shardcore import kernels
rng = np.random.default_rng(3)
x = rng.standard_normal((70, 1300), dtype=np.float32)
w = rng.standard_normal((1300, 100), dtype=np.float32)
b = rng.standard_normal(100, dtype=np.float32)
pw = kernels.PackedWeight(w, "bfloat16", kernel=sys.argv[1])
sys.stdout.buffer.write(kernels.matmul(x, pw, b).tobytes())
"""


@pytest.mark.parametrize("kernel", BOTH)
def test_blocking_override_gives_the_same_bits(kernel):
    # SHARDCORE_TILES_AMX (the sweep hook, gemm_driver.h) with blocks far smaller than the table's:
    # several k-, row- and column-blocks, the next-block prefetches at every boundary, and the
    # same sums in the same order, so the same bits as the table's single block.
    def run(env: dict[str, str]) -> bytes:
        out = subprocess.run(
            [sys.executable, "-c", _BLOCKING_CHILD, kernel],
            env={**os.environ, **env},
            capture_output=True,
            check=True,
        )
        return out.stdout

    default = run({})
    assert len(default) == 70 * 100 * 4
    assert run({"SHARDCORE_TILES_AMX": "64,32,64"}) == default
    assert run({"SHARDCORE_TILES_AMX": "96,64,32"}) == default


@pytest.mark.parametrize("kernel", kernels.available_kernels() + [REFERENCE])
def test_exact_product_check(kernel):
    # What the amx family must pass at detection to be offered (dispatch.cpp); every bf16
    # kernel passes it.
    from shardcore import _core

    assert _core.gemm_check_exact(kernel) == ""


def test_reference_is_by_name_only():
    assert REFERENCE not in kernels.available_kernels()
    pw = kernels.PackedWeight(np.ones((3, 5), np.float32), "bfloat16", kernel=REFERENCE)
    assert pw.impl == REFERENCE and pw.kernel == REFERENCE
    assert kernels.kernel_info("bfloat16", REFERENCE)["mr"] == 32
    # float32 weights on the reference family run the portable kernel.
    assert kernels.kernel_info("float32", REFERENCE)["name"] == "generic"


@needs_amx
def test_amx_is_selected_where_available():
    assert kernels.kernel_name() == "amx" or "SHARDCORE_KERNEL" in os.environ
    assert kernels.kernel_info("bfloat16", "amx")["name"] == "amx"
    assert kernels.kernel_info("float32", "amx")["name"] == "avx512"


@pytest.mark.skipif(HAVE_AMX, reason="this machine runs AMX")
def test_forcing_amx_without_it_says_why():
    env = dict(os.environ, SHARDCORE_KERNEL="amx")
    code = "from shardcore import kernels; kernels.kernel_name()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "kernel 'amx' is not supported by this CPU" in proc.stderr
    assert "AMX: " in proc.stderr
    with pytest.raises(ValueError, match="AMX: "):
        kernels.PackedWeight(np.ones((2, 2), np.float32), kernel="amx")
