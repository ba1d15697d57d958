"""Kernel selection at import: SHARDCORE_KERNEL forces a family, bad values fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

kernels = pytest.importorskip("shardcore.kernels")

_PROBE = """
import numpy as np
from shardcore import kernels
name = kernels.kernel_name()
x = np.arange(6, dtype=np.float32).reshape(2, 3)
w = np.arange(12, dtype=np.float32).reshape(3, 4)
pw = kernels.PackedWeight(w, "bfloat16")
assert pw.kernel == name, (pw.kernel, name)
np.testing.assert_array_equal(kernels.matmul(x, pw), x.astype(np.float64) @ w)
print(name, pw.impl, kernels.kernel_reason().replace(" ", "_"))
"""


def _run(value):
    env = dict(os.environ)
    if value is None:
        env.pop("SHARDCORE_KERNEL", None)
    else:
        env["SHARDCORE_KERNEL"] = value
    return subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


# amx-reference (the AMX loops with modelled tiles) is never chosen automatically, but by name.
@pytest.mark.parametrize("name", kernels.available_kernels() + ["amx-reference"])
def test_environment_forces_each_available_kernel(name):
    proc = _run(name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == name
    assert proc.stdout.split()[2] == f"SHARDCORE_KERNEL={name}"


def test_default_is_the_best_available_kernel():
    best = kernels.available_kernels()[0]
    for value in (None, "auto"):
        proc = _run(value)
        assert proc.returncode == 0, proc.stderr
        name, _, reason = proc.stdout.split()
        if best == "avx512bf16" and name == "avx512":
            # The probe found vdpbf16ps no faster than the FMA and says so.
            assert "widened" in reason
        else:
            assert name == best, reason


def test_unknown_kernel_name_is_reported():
    proc = _run("sse9")
    assert proc.returncode != 0
    assert "SHARDCORE_KERNEL" in proc.stderr and "unknown kernel 'sse9'" in proc.stderr
