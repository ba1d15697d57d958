"""shardcore.kernels.matmul against NumPy float64, on every kernel family this CPU can run.

Error bound (derived in shardcore.kernels): for K-deep products with float32 accumulation,
|C_hat - C| <= gamma(K+1) * (|x| @ |w| + |b|), gamma(n) = n*2**-24 / (1 - n*2**-24), where C is
the float64 product of the operands the kernel multiplies (for bfloat16 weights: x rounded to
bfloat16). A bfloat16 output adds a relative 2**-8. A kernel that drops, repeats or misplaces a
single term misses this bound by orders of magnitude on these random inputs.
"""

from __future__ import annotations

import functools
import itertools

import ml_dtypes
import numpy as np
import pytest

kernels = pytest.importorskip("shardcore.kernels")

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
KERNELS = kernels.available_kernels()
SIZES = [1, 2, 7, 16, 17, 63, 64, 65, 255, 1000]

# Every M x N at two depths, every M x K at one width, every K x N at one height.
SHAPES = sorted(
    set(
        [(m, k, n) for m, n in itertools.product(SIZES, SIZES) for k in (17, 64)]
        + [(m, k, 65) for m, k in itertools.product(SIZES, SIZES)]
        + [(7, k, n) for k, n in itertools.product(SIZES, SIZES)]
    )
)
# Transformer projections (TinyLlama-sized: hidden 2048, MLP 5632, 4 KV heads of 64).
TRANSFORMER_SHAPES = [(1, 2048, 2048), (4, 2048, 5632), (37, 5632, 2048), (128, 2048, 256)]


@functools.cache
def _operands(m: int, k: int, n: int, seed: int = 0):
    rng = np.random.default_rng([m, k, n, seed])
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, w, b


def _reference(x, w, b, w_dtype):
    """Exact-ish float64 product of the operands the kernel multiplies, and |x| @ |w| + |b|."""
    if w_dtype == BF16:
        x = x.astype(BF16)
        w = w.astype(BF16)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64
    mag = np.abs(x64) @ np.abs(w64)
    if b is not None:
        ref += b.astype(np.float64)
        mag += np.abs(b.astype(np.float64))
    return ref, mag


def _check(got, ref, mag, k, what):
    out_bf16 = got.dtype == BF16
    bound = kernels.bf16_error_bound(mag, k, out_bfloat16=out_bf16, abs_result=np.abs(ref))
    # The smallest normal float32 absorbs subnormal flushing in the bf16 dot-product kernel.
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > bound + 2.0**-126 * (k + 1)
    assert not bad.any(), (
        f"{what}: {bad.sum()} elements outside the bound, worst error {err.max():.3g} "
        f"(bound there {bound.flat[np.argmax(err)]:.3g})"
    )


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_matmul_odd_shapes(kernel, dtype):
    for i, (m, k, n) in enumerate(SHAPES):
        x, w, b = _operands(m, k, n)
        bias = b if i % 2 else None
        pw = kernels.PackedWeight(w, dtype, kernel=kernel)
        got = kernels.matmul(x, pw, bias)
        assert got.shape == (m, n) and got.dtype == F32
        ref, mag = _reference(x, w, bias, dtype)
        _check(got, ref, mag, k, f"{kernel} {dtype} M,K,N={m},{k},{n}")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_matmul_transformer_shapes(kernel, dtype):
    for m, k, n in TRANSFORMER_SHAPES:
        x, w, b = _operands(m, k, n)
        # HF layout [N, K]: pack from the transposed copy, as a runtime loading a checkpoint does.
        pw = kernels.PackedWeight.from_linear(np.ascontiguousarray(w.T), dtype, kernel=kernel)
        got = kernels.matmul(x, pw, b)
        ref, mag = _reference(x, w, b, dtype)
        _check(got, ref, mag, k, f"{kernel} {dtype} M,K,N={m},{k},{n}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_activations_and_bf16_output(kernel):
    m, k, n = 17, 255, 65
    x, w, b = _operands(m, k, n)
    pw = kernels.PackedWeight(w.astype(BF16), kernel=kernel)
    xb = x.astype(BF16)
    ref, mag = _reference(xb.astype(np.float32), w, b, BF16)
    got = kernels.matmul(xb, pw, b)  # bf16 in -> bf16 out by default
    assert got.dtype == BF16
    _check(got, ref, mag, k, f"{kernel} bf16 out")
    out = np.empty((m, n), dtype=F32)
    assert kernels.matmul(xb, pw, b, out=out) is out
    _check(out, ref, mag, k, f"{kernel} bf16 x, f32 out")
    # bf16 activations on float32 weights are widened exactly.
    ref32, mag32 = _reference(xb.astype(np.float32), w, b, F32)
    _check(
        kernels.matmul(xb, kernels.PackedWeight(w, kernel=kernel), b, out_dtype="float32"),
        ref32,
        mag32,
        k,
        f"{kernel} bf16 x on f32 w",
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_activations_are_rounded_for_bf16_weights(kernel):
    # The documented semantics: activations are rounded to bf16, so the result equals the one
    # for pre-rounded activations (same kernel, same summation order: bitwise).
    x, w, b = _operands(9, 300, 70)
    pw = kernels.PackedWeight(w, "bfloat16", kernel=kernel)
    a = kernels.matmul(x, pw, b)
    c = kernels.matmul(x.astype(BF16), pw, b, out_dtype=F32)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_threads_give_identical_results(kernel, dtype):
    # Threads split panels (or rows); each element is summed in the same order either way.
    for m, k, n in [(3, 100, 1000), (300, 70, 40), (1000, 64, 17)]:
        x, w, b = _operands(m, k, n)
        pw = kernels.PackedWeight(w, dtype, kernel=kernel)
        one = kernels.matmul(x, pw, b)
        for t in (2, 3, 8):
            np.testing.assert_array_equal(kernels.matmul(x, pw, b, threads=t), one)


@pytest.mark.parametrize("kernel", KERNELS)
def test_layouts_and_strides(kernel):
    x, w, _ = _operands(5, 63, 65)
    base = kernels.matmul(x, kernels.PackedWeight(w, kernel=kernel))
    np.testing.assert_array_equal(
        kernels.matmul(
            x, kernels.PackedWeight(np.ascontiguousarray(w.T), transpose=True, kernel=kernel)
        ),
        base,
    )
    np.testing.assert_array_equal(
        kernels.matmul(x, kernels.PackedWeight.from_linear(np.asfortranarray(w).T, kernel=kernel)),
        base,
    )
    # A strided view (every other column of a wider matrix), packed without a copy by the caller.
    wide = np.zeros((63, 130), dtype=np.float32)
    wide[:, ::2] = w
    np.testing.assert_array_equal(
        kernels.matmul(x, kernels.PackedWeight(wide[:, ::2], kernel=kernel)), base
    )
    # A plain array is packed per call with the same kernel.
    np.testing.assert_array_equal(kernels.matmul(x, w, kernel=kernel), base)


def test_leading_dimensions_and_edges():
    x, w, b = _operands(12, 33, 20)
    pw = kernels.PackedWeight(w)
    flat = kernels.matmul(x, pw, b)
    np.testing.assert_array_equal(
        kernels.matmul(x.reshape(3, 4, 33), pw, b), flat.reshape(3, 4, 20)
    )
    # One row sums in another order than a 12-row block (split accumulators for latency), so
    # equal within the bound rather than bitwise.
    one = kernels.matmul(x[3], pw, b)
    assert one.shape == (20,)
    ref, mag = _reference(x[3:4], w, b, F32)
    _check(one[None], ref, mag, 33, "1-D x")
    assert kernels.matmul(np.zeros((0, 33), np.float32), pw).shape == (0, 20)
    # K = 0: the empty sum, so the result is the bias.
    empty = kernels.PackedWeight(np.zeros((0, 20), np.float32))
    np.testing.assert_array_equal(
        kernels.matmul(np.zeros((4, 0), np.float32), empty, b), np.broadcast_to(b, (4, 20))
    )
    np.testing.assert_array_equal(
        kernels.matmul(np.zeros((4, 0), np.float32), empty), np.zeros((4, 20), np.float32)
    )
    assert kernels.matmul(x, kernels.PackedWeight(np.zeros((33, 0), np.float32))).shape == (12, 0)


def test_special_values_propagate():
    x = np.ones((2, 40), np.float32)
    w = np.ones((40, 3), np.float32)
    x[0, 5] = np.nan
    w[7, 2] = np.inf
    for dtype in (F32, BF16):
        got = kernels.matmul(x, kernels.PackedWeight(w, dtype))
        assert np.isnan(got[0]).all()
        np.testing.assert_array_equal(got[1], [40.0, 40.0, np.inf])


def test_bf16_output_rounds_to_nearest_even():
    # 1 + 2**-8 is halfway between bf16 neighbours 1 and 1 + 2**-7: ties go to even (1.0);
    # 1 + 3 * 2**-8 is halfway between 1 + 2**-7 and 1 + 2**-6: ties go to even (1 + 2**-6).
    x = np.array([[1.0], [1.0], [1.0]], np.float32)
    for value, want in [
        (1 + 2**-8, 1.0),
        (1 + 3 * 2**-8, 1 + 2**-6),
        (1 + 2**-8 + 2**-20, 1 + 2**-7),
    ]:
        w = np.array([[value]], np.float32)
        got = kernels.matmul(x, kernels.PackedWeight(w), out_dtype="bfloat16")
        assert got.dtype == BF16
        assert float(got[0, 0]) == want, (value, float(got[0, 0]))


def test_kernel_introspection():
    assert kernels.kernel_name() in KERNELS
    assert KERNELS[-1] == "generic"
    info = kernels.kernel_info("float32")
    assert {"name", "mr", "nr", "kc", "mc", "nc"} <= set(info)
    assert info["mr"] >= 1 and info["nr"] % 8 == 0
    pw = kernels.PackedWeight(np.ones((3, 5), np.float32))
    assert pw.shape == (3, 5) and pw.kernel == kernels.kernel_name()
    assert pw.nbytes >= 3 * 5 * 4
    assert "PackedWeight" in repr(pw)


def test_bad_input_raises():
    x, w, _ = _operands(4, 8, 6)
    pw = kernels.PackedWeight(w)
    with pytest.raises(ValueError, match="shape mismatch"):
        kernels.matmul(np.ones((4, 9), np.float32), pw)
    with pytest.raises(ValueError, match="shape mismatch"):
        kernels.matmul(x, np.ones((9, 6), np.float32))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        kernels.matmul(x.astype(np.float64), pw)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        kernels.matmul(x.tolist(), pw)
    with pytest.raises(TypeError, match="PackedWeight or numpy.ndarray"):
        kernels.matmul(x, w.tolist())
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.matmul(np.asfortranarray(x), pw)
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.matmul(x, pw, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="bias must be float32 or bfloat16"):
        kernels.matmul(x, pw, np.ones(6, np.int32))
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.matmul(x, pw, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out must be float32 or bfloat16"):
        kernels.matmul(x, pw, out=np.empty((4, 6), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.matmul(x, pw, out=np.empty((6, 4), np.float32).T)
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernels.matmul(x, pw, out=ro)
    with pytest.raises(ValueError, match="out_dtype"):
        kernels.matmul(x, pw, out=np.empty((4, 6), np.float32), out_dtype="bfloat16")
    with pytest.raises(ValueError, match="threads"):
        kernels.matmul(x, pw, threads=0)
    with pytest.raises(TypeError, match="pass dtype="):
        kernels.PackedWeight(w.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        kernels.PackedWeight(w, dtype=np.float16)
    with pytest.raises(ValueError, match="2-D"):
        kernels.PackedWeight(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.PackedWeight(w, kernel="sse9")
    other = [k for k in KERNELS if k != pw.kernel]
    if other:
        with pytest.raises(ValueError, match="packed for kernel"):
            kernels.matmul(x, pw, kernel=other[0])
    sq = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        kernels.matmul(sq, kernels.PackedWeight(sq), out=sq)
