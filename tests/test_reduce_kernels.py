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


@pytest.mark.parametrize("kernel", ["avx512", "avx2"])
def test_vectorised_and_generic_kernels_agree_bitwise(kernel, monkeypatch):
    """Each vectorised unit the CPU runs (SHARDCORE_KERNEL caps the choice) equals the generic one."""
    vectorised = _run(kernel, monkeypatch)
    if vectorised[0]["kernel"] != kernel:
        pytest.skip(f"this CPU has no {kernel} reduction kernels (got {vectorised[0]['kernel']})")
    generic = _run("generic", monkeypatch)
    assert generic[0]["kernel"] == "generic"
    for key, value in vectorised[0].items():
        if key == "kernel":
            continue
        assert value.tobytes() == generic[0][key].tobytes(), key
        for r in range(1, 3):
            assert vectorised[r][key].tobytes() == value.tobytes()


def _reduce_kernel(comm):
    from shardcore import _core

    return _core.reduce_kernel()


def test_default_kernel_is_the_widest_the_cpu_runs(monkeypatch):
    monkeypatch.delenv("SHARDCORE_KERNEL", raising=False)
    chosen = shardcore.launch(_reduce_kernel, 1, start_method="spawn")[0]
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx512f", "avx512bw", "avx2", "fma", "f16c"} <= flags:
        assert chosen == "avx512"
    elif {"avx2", "fma", "f16c"} <= flags:
        assert chosen == "avx2"
    else:
        assert chosen == "generic"


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
