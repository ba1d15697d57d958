"""The vectorised reduction kernels give bitwise the same results as the portable ones."""

from __future__ import annotations

import numpy as np
import pytest
from collective_refs import BF16, FLOATS, OPS, make_input

import shardcore

SIZES = [1, 7, 8, 31, 33, 1000, 4099]


def _kernel_cases(comm):
    from shardcore import _core

    out = {"kernel": _core.reduce_kernel()}
    for di, dtype in enumerate(FLOATS):
        for oi, op in enumerate(OPS):
            for size in SIZES:
                x = make_input(("k", di, oi, size), comm.rank, (size,), dtype, op)
                if size % 7 == 1:
                    x[size // 2] = np.nan  # NaN propagation of max/min, and through sums
                for algo in ("ring", "one_shot", "two_shot"):
                    out[di, oi, size, algo] = comm.all_reduce(x.copy(), op=op, algorithm=algo)
    return out


def _run(kernel: str | None, monkeypatch):
    if kernel is None:
        monkeypatch.delenv("SHARDCORE_KERNEL", raising=False)
    else:
        monkeypatch.setenv("SHARDCORE_KERNEL", kernel)
    # spawn: fresh processes pick their kernels from the environment at first use
    return shardcore.launch(_kernel_cases, 3, slot_bytes=1 << 16, start_method="spawn")


def test_vectorised_and_generic_kernels_agree_bitwise(monkeypatch):
    default = _run(None, monkeypatch)
    generic = _run("generic", monkeypatch)
    assert generic[0]["kernel"] == "generic"
    if default[0]["kernel"] == "generic":
        pytest.skip("this CPU has no vectorised reduction kernels")
    for key, value in default[0].items():
        if key == "kernel":
            continue
        assert value.tobytes() == generic[0][key].tobytes(), key
        for r in range(1, 3):
            assert default[r][key].tobytes() == value.tobytes()


def test_float16_and_bfloat16_rounding_matches_numpy():
    """One rounding of an fp32 sum: the same as numpy's own float32 -> half conversions."""

    def fn(comm):
        out = {}
        for dtype in (np.dtype(np.float16), BF16):
            x = make_input(("r", str(dtype)), comm.rank, (5000,), dtype)
            out[str(dtype)] = comm.all_reduce(
                x.copy(), algorithm="one_shot" if x.nbytes <= 1 << 16 else None
            )
        return out

    res = shardcore.launch(fn, 2, slot_bytes=1 << 16)[0]
    for dtype in (np.dtype(np.float16), BF16):
        xs = [make_input(("r", str(dtype)), r, (5000,), dtype) for r in range(2)]
        expect = (xs[0].astype(np.float32) + xs[1].astype(np.float32)).astype(dtype)
        assert res[str(dtype)].tobytes() == expect.tobytes()
