"""The ring and two-shot all-reduces with streaming (non-temporal) output stores, forced on small
messages.

Streaming starts at 8 MiB and 4 ranks by default; SHARDCORE_NT_MIN_BYTES lowers the size so the
tests reach it, with small slots so that chunks, blocks and the copy's unaligned head and tail
all fall at odd places.
"""

from __future__ import annotations

import numpy as np
import pytest
from collective_refs import BF16, make_input

import shardcore

pytestmark = pytest.mark.timeout(300)

SIZES = [1, 63, 64, 65, 257, 1031, 4099, 20011]


def _ring(comm, algorithm):
    out = {}
    for dtype in (np.dtype(np.float32), BF16, np.dtype(np.float64)):
        for size in SIZES:
            x = make_input(("nt", str(dtype), size), comm.rank, (size,), dtype)
            y = np.empty_like(x)
            comm.all_reduce(x, out=y, algorithm=algorithm)
            z = x.copy()
            comm.all_reduce(z, algorithm=algorithm)  # in place
            out[str(dtype), size] = (y, z)
    return out


@pytest.mark.parametrize("algorithm", ["ring", "two_shot"])
@pytest.mark.parametrize("n", [4, 5])
def test_streamed_ring_output_equals_numpy(n, algorithm, monkeypatch):
    monkeypatch.setenv("SHARDCORE_NT_MIN_BYTES", "64")
    # spawn: the threshold is read once per process, at first use
    res = shardcore.launch(_ring, n, args=(algorithm,), slot_bytes=1 << 12, start_method="spawn")
    for dtype in (np.dtype(np.float32), BF16, np.dtype(np.float64)):
        for size in SIZES:
            xs = [make_input(("nt", str(dtype), size), r, (size,), dtype) for r in range(n)]
            ref = np.sum([x.astype(np.float64) for x in xs], axis=0)
            y0, z0 = res[0][str(dtype), size]
            tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}.get(dtype, 3e-2)
            assert np.allclose(y0.astype(np.float64), ref, rtol=tol, atol=tol * n), (dtype, size)
            for r in range(n):
                y, z = res[r][str(dtype), size]
                assert y.tobytes() == y0.tobytes() == z.tobytes(), (dtype, size, r)
