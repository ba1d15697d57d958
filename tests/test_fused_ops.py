"""The core's op kernels (shardcore.fused) against NumPy float64 references and ml_dtypes, on
every ISA table this CPU runs, at sizes around the vector widths (0, 1, primes, large)."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

from shardcore import fused
from shardcore.runtime import ops

BF16 = np.dtype(ml_dtypes.bfloat16)
ISAS = fused.kernels()
SIZES = (0, 1, 7, 15, 16, 17, 31, 33, 257, 100_003)


def ml_bf16(x: np.ndarray) -> np.ndarray:
    """ml_dtypes' cast (which warns on NaN: the tests feed it NaNs on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return x.astype(BF16)


def random_bits(n: int, seed: int) -> np.ndarray:
    """float32 values of random bits (NaNs, infinities and subnormals included) plus the
    rounding boundaries: ties to even both ways, the largest subnormal, the overflow to inf."""
    special = np.array(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFBFFFFF, 0x7FA00000,
         0x00000001, 0x807FFFFF, 0x007F8000, 0x00008000, 0x00018000, 0x3F808000, 0x3F818000,
         0x7F7FFFFF, 0xFF7F8000, 0x7F7F7FFF, 0x3F80FFFF],
        dtype=np.uint32,
    )  # fmt: skip
    bits = np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint32)
    bits[: min(n, special.size)] = special[: min(n, special.size)]
    return bits.view(np.float32)


def bf16_values(x: np.ndarray) -> np.ndarray:
    return ml_bf16(x.astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", SIZES)
def test_conversions_equal_ml_dtypes_bitwise(isa, n):
    x = random_bits(n, seed=n)
    want = ml_bf16(x).view(np.uint16)
    np.testing.assert_array_equal(fused.to_bfloat16(x, isa=isa).view(np.uint16), want)
    wide = want.astype(np.uint32) << 16
    np.testing.assert_array_equal(fused.round_bfloat16(x, isa=isa).view(np.uint32), wide)
    back = fused.from_bfloat16(want.view(BF16), isa=isa).view(np.uint32)
    np.testing.assert_array_equal(back, wide)
    y = x.copy()  # in place
    assert fused.round_bfloat16(y, out=y, isa=isa) is y
    np.testing.assert_array_equal(y.view(np.uint32), wide)


def test_every_isa_names_a_table_and_auto_is_the_selected_one():
    assert ISAS[-1] == "generic" and fused.selected() in ISAS
    x = random_bits(1000, seed=1)
    auto = fused.to_bfloat16(x).view(np.uint16)
    np.testing.assert_array_equal(auto, fused.to_bfloat16(x, isa="auto").view(np.uint16))
    with pytest.raises(ValueError, match="unknown op kernels 'sse9'"):
        fused.to_bfloat16(x, isa="sse9")


def _rms_ref(x, w, eps):
    x64 = x.astype(np.float64)
    return x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + eps) * w


def _assert_close_f32(got, want, rtol=4e-6):
    """Elementwise within rtol of the float64 reference, relative to the row's magnitude."""
    scale = np.max(np.abs(want), axis=-1, keepdims=True) if want.size else 0
    np.testing.assert_array_less(
        np.abs(got - want), np.broadcast_to(rtol * scale + 1e-30, got.shape)
    )


def _assert_bf16_of(got, want64):
    """got holds bfloat16 values within one bfloat16 rounding (2^-8 relative) of want64."""
    np.testing.assert_array_equal(got, bf16_values(got))
    np.testing.assert_array_less(np.abs(got - want64), 2.0**-8 * np.abs(want64) + 1e-30)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", (1, 2, 17, 31, 128, 1031, 4099))
def test_rms_norm(isa, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n)).astype(np.float32) * np.float32(3)
    w = rng.standard_normal(n).astype(np.float32)
    want = _rms_ref(x, w, 1e-6)
    got = fused.rms_norm(x, w, 1e-6, isa=isa)
    assert got.dtype == np.float32 and got.shape == x.shape
    _assert_close_f32(got, want)
    rounded = fused.rms_norm(x, w, 1e-6, round_bf16=True, isa=isa)
    np.testing.assert_array_equal(rounded, bf16_values(got))  # the rounding of the f32 result
    _assert_bf16_of(rounded, want)
    stored = fused.rms_norm(x, w, 1e-6, dtype=BF16, isa=isa)
    assert stored.dtype == BF16
    np.testing.assert_array_equal(stored.astype(np.float32), rounded)
    # Rows are independent: one row alone gives the same bits as within the batch.
    np.testing.assert_array_equal(fused.rms_norm(x[1:2], w, 1e-6, isa=isa), got[1:2])


@pytest.mark.parametrize("isa", ISAS)
def test_rms_norm_empty_and_zero_rows(isa):
    w = np.ones(5, np.float32)
    assert fused.rms_norm(np.zeros((0, 5), np.float32), w, 1e-6, isa=isa).shape == (0, 5)
    z = fused.rms_norm(np.zeros((2, 5), np.float32), w, 1e-6, isa=isa)
    np.testing.assert_array_equal(z, 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", (0, 1, 7, 16, 33, 1031, 3079))
def test_swiglu(isa, n):
    rng = np.random.default_rng(n + 1)
    gu = (rng.standard_normal((4, 2 * n)) * 4).astype(np.float32)
    g, u = gu[:, :n].astype(np.float64), gu[:, n:].astype(np.float64)
    want = g / (1 + np.exp(-g)) * u
    got = fused.swiglu(gu, isa=isa)
    assert got.shape == (4, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-37)
    rounded = fused.swiglu(gu, round_bf16=True, isa=isa)
    np.testing.assert_array_equal(rounded, bf16_values(got))
    np.testing.assert_array_equal(fused.swiglu(gu, dtype=BF16, isa=isa).astype(np.float32), rounded)
    # Extreme gates: silu(-inf side) -> -0, silu(+large) -> gate.
    big = np.array([[-200.0, 200.0, 0.0, 2.0, 3.0, 0.0]], np.float32)
    np.testing.assert_array_equal(fused.swiglu(big, isa=isa), [[-0.0, 600.0, 0.0]])
    assert np.isnan(fused.swiglu(np.array([[np.nan, 1.0]], np.float32), isa=isa)).all()
    # exp is the core's polynomial, not libm's: every gate of a dense sweep within 2 ulp-ish.
    g = np.linspace(-100, 100, 20_001, dtype=np.float32)
    sweep = fused.swiglu(np.concatenate([g, np.ones_like(g)])[None], isa=isa)[0]
    g64 = g.astype(np.float64)
    # (atol: below -88.7 e^-g overflows float32, so silu is -0 where it is ~1e-37.)
    np.testing.assert_allclose(sweep, g64 / (1 + np.exp(-g64)), rtol=5e-7, atol=1e-35)


def _rope_ref(x, cos, sin, qh, kh, d, qn, kn, eps, rnd):
    """float64 reference, rounding (through float32) to bfloat16 where the runtime rounds."""
    r = x.shape[0]
    out = x.astype(np.float64).copy()
    heads = out[:, : (qh + kh) * d].reshape(r, qh + kh, d)
    for h in range(qh + kh):
        v = heads[:, h]
        w = qn if h < qh else kn
        if w is not None:
            v = _rms_ref(v, w, eps)
            if rnd:
                v = bf16_values(v)
        half = d // 2
        rot = np.concatenate([-v[:, half:], v[:, :half]], axis=-1)
        v = v * cos + rot * sin
        heads[:, h] = bf16_values(v) if rnd else v
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("rows", "qh", "kh", "d", "extra"),
    [(1, 1, 1, 2, 0), (5, 3, 1, 6, 6), (7, 4, 2, 34, 68), (3, 16, 8, 128, 1024), (2, 0, 3, 8, 0)],
)
@pytest.mark.parametrize("with_norm", (False, True))
@pytest.mark.parametrize("rnd", (False, True))
def test_norm_rope(isa, rows, qh, kh, d, extra, with_norm, rnd):
    rng = np.random.default_rng(rows * 100 + d)
    width = (qh + kh) * d + extra  # the v heads (extra) are left alone
    x = bf16_values(rng.standard_normal((rows, width)).astype(np.float32))
    ang = rng.uniform(-50, 50, (rows, d)).astype(np.float32)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    qn = rng.standard_normal(d).astype(np.float32) if with_norm else None
    kn = rng.standard_normal(d).astype(np.float32) if with_norm else None
    want = _rope_ref(x, cos, sin, qh, kh, d, qn, kn, 1e-6, rnd)
    got = x.copy()
    assert fused.norm_rope_(got, cos, sin, qh, kh, d, qn, kn, 1e-6, rnd, isa=isa) is got
    np.testing.assert_array_equal(got[:, (qh + kh) * d :], x[:, (qh + kh) * d :])
    if rnd:
        np.testing.assert_array_equal(got, bf16_values(got))
        # Two roundings (norm, rope) each within half a bf16 step of the reference's.
        scale = np.abs(want) + np.max(np.abs(want), axis=-1, keepdims=True) * 2.0**-7
        np.testing.assert_array_less(
            np.abs(got - want), np.broadcast_to(2.0**-7 * scale + 1e-30, got.shape)
        )
    else:
        _assert_close_f32(got, want, rtol=1e-5)


def test_bad_arguments_are_refused_before_the_core():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(TypeError, match="float32"):
        fused.to_bfloat16(np.ones(3, np.float64))
    with pytest.raises(TypeError, match="bfloat16"):
        fused.from_bfloat16(x)
    with pytest.raises(ValueError, match="out must be"):
        fused.round_bfloat16(x, out=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="weight must have shape"):
        fused.rms_norm(x, np.ones(7, np.float32), 1e-6)
    with pytest.raises(TypeError, match="dtype must be float32 or bfloat16"):
        fused.rms_norm(x, np.ones(8, np.float32), 1e-6, dtype=np.float16)
    with pytest.raises(ValueError, match="must be even"):
        fused.swiglu(np.ones((2, 7), np.float32))
    cos = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="exceed a row"):
        fused.norm_rope_(x, cos, cos, 2, 1, 4)
    with pytest.raises(ValueError, match="head_dim must be even"):
        fused.norm_rope_(x, cos, cos, 1, 0, 3)
    with pytest.raises(ValueError, match="C-contiguous"):
        fused.norm_rope_(np.ones((8, 2), np.float32).T, cos, cos, 1, 0, 4)
    with pytest.raises(ValueError, match="cos and sin"):
        fused.norm_rope_(x, cos[:1], cos, 1, 0, 4)


# -- the runtime's ops on the core against their NumPy forms -------------------------------------


def test_runtime_ops_use_the_core_and_agree_with_numpy(monkeypatch):
    assert ops.fused_ops() is fused
    bf16 = ops.Precision("bfloat16")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    core_round = bf16.round(x)
    core_norm = ops.norm(x, w, 1e-6, bf16)
    core_swiglu = ops.swiglu(x, bf16)
    qkv = x.reshape(15, 96).copy()
    cos, sin = ops.rope_tables(np.arange(15), 16, 10000.0)
    ops.qk_norm_rope_(qkv, cos, sin, 3, 2, 16, w[:16], w[16:32], 1e-6, bf16)
    monkeypatch.setenv("SHARDCORE_RUNTIME_OPS", "numpy")
    ops.fused_ops.cache_clear()
    try:
        assert ops.fused_ops() is None
        np.testing.assert_array_equal(core_round, bf16.round(x))  # bitwise: ml_dtypes' cast
        np.testing.assert_array_less(np.abs(core_norm - ops.norm(x, w, 1e-6, bf16)),
                                     2.0**-7 * np.abs(core_norm) + 1e-30)  # fmt: skip
        np.testing.assert_array_less(np.abs(core_swiglu - ops.swiglu(x, bf16)),
                                     2.0**-7 * np.abs(core_swiglu) + 1e-30)  # fmt: skip
        ref = x.reshape(15, 96).copy()
        ops.qk_norm_rope_(ref, cos, sin, 3, 2, 16, w[:16], w[16:32], 1e-6, bf16)
        np.testing.assert_allclose(qkv, ref, rtol=2.0**-6, atol=2.0**-6)
        np.testing.assert_array_equal(qkv[:, 80:], ref[:, 80:])
    finally:
        monkeypatch.delenv("SHARDCORE_RUNTIME_OPS")
        ops.fused_ops.cache_clear()
    monkeypatch.setenv("SHARDCORE_RUNTIME_OPS", "torch")
    ops.fused_ops.cache_clear()
    try:
        with pytest.raises(ValueError, match="SHARDCORE_RUNTIME_OPS"):
            ops.fused_ops()
    finally:
        monkeypatch.delenv("SHARDCORE_RUNTIME_OPS")
        ops.fused_ops.cache_clear()


def _attention_ref(q, k_cache, v_cache, slots, starts, t, qh, kvh, d):
    """float64 causal GQA attention, query row n*t + i at position starts[n] + i."""
    out = np.zeros((len(slots) * t, qh * d))
    for n, (slot, start) in enumerate(zip(slots, starts, strict=True)):
        for i in range(t):
            row, pos = n * t + i, start + i
            for h in range(qh):
                k = k_cache[slot, h // (qh // kvh), : pos + 1].astype(np.float64)
                v = v_cache[slot, h // (qh // kvh), : pos + 1].astype(np.float64)
                s = k @ q[row, h * d : (h + 1) * d].astype(np.float64) / np.sqrt(d)
                p = np.exp(s - s.max())
                out[row, h * d : (h + 1) * d] = (p / p.sum()) @ v
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("qh", "kvh", "d", "length", "t", "slots", "starts"),
    [
        (1, 1, 1, 1, 1, [0], [0]),
        (4, 2, 12, 9, 3, [1, 0], [0, 6]),  # a prompt of 3 in two sequences at their own places
        (16, 8, 128, 300, 1, [2, 0, 1], [299, 0, 136]),  # decode steps, odd lengths
        (6, 1, 17, 40, 2, [0], [31]),
        (2, 2, 8, 5, 0, [], []),  # no rows
    ],
)
@pytest.mark.parametrize("rnd", (False, True))
def test_attention(isa, qh, kvh, d, length, t, slots, starts, rnd):
    rng = np.random.default_rng(qh * 1000 + d)
    n_slots = max(slots, default=0) + 1
    k_cache = rng.standard_normal((n_slots, kvh, length, d)).astype(np.float32)
    v_cache = rng.standard_normal((n_slots, kvh, length, d)).astype(np.float32)
    q = (rng.standard_normal((len(slots) * t, qh * d + 5)) * 2).astype(np.float32)  # + k, v
    want = _attention_ref(q, k_cache, v_cache, slots, starts, t, qh, kvh, d)
    got = fused.attention(q, qh, kvh, d, k_cache, v_cache, slots, starts, t, rnd, isa=isa)
    assert got.shape == want.shape and got.dtype == np.float32
    if rnd:
        np.testing.assert_array_equal(got, bf16_values(got))
        np.testing.assert_array_less(np.abs(got - want), 2.0**-8 * np.abs(want) + 1e-5)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if len(slots) > 1:  # a sequence alone gets the same bits as in the batch
        alone = fused.attention(q[t:], qh, kvh, d, k_cache, v_cache, slots[1:], starts[1:], t,
                                rnd, isa=isa)  # fmt: skip
        np.testing.assert_array_equal(alone, got[t:])


def test_attention_refuses_bad_arguments():
    cache = np.zeros((2, 2, 8, 4), np.float32)
    q = np.zeros((2, 16), np.float32)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        fused.attention(q, 3, 2, 4, cache, cache, [0], [0], 2)
    with pytest.raises(ValueError, match="slots must be in"):
        fused.attention(q, 4, 2, 4, cache, cache, [2], [0], 2)
    with pytest.raises(ValueError, match="positions must be in"):
        fused.attention(q, 4, 2, 4, cache, cache, [0], [7], 2)
    one_head = np.zeros((2, 1, 8, 4), np.float32)
    with pytest.raises(ValueError, match="must be \\[slots, 2, length, 4\\]"):
        fused.attention(q, 4, 2, 4, one_head, one_head, [0], [0], 2)
    with pytest.raises(TypeError, match="C-contiguous float32"):
        fused.attention(q, 4, 2, 4, cache[:, :, ::2], cache, [0], [0], 2)
    with pytest.raises(ValueError, match="one length"):
        fused.attention(q, 4, 2, 4, cache, cache, [0, 1], [0], 2)
