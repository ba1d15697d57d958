"""The collectives the model calls, on one parallel axis's communicator or on no one.

A group of one rank (or no communicator at all, the single-process run) turns every collective
into the identity, so the single-process model and every shard run the same code. Messages
travel in the model dtype (bfloat16 halves the bytes, as the traffic model assumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .clock import Clock
from .ops import Precision

# Activations are reduced in place in a symmetric workspace (Communicator.empty): the core reads
# the peers' partial sums where they live, with no copy through its slots. The algorithm is
# fixed (not the size-based choice) so that the plan's prediction knows the bytes it moves.
ALL_REDUCE_ALGORITHM = "symmetric"


class AxisGroup:
    """One rank's view of a TP or EP group."""

    def __init__(self, comm, precision: Precision):
        self.comm = comm
        self.precision = precision
        self.size = 1 if comm is None else comm.size
        self.rank = 0 if comm is None else comm.rank
        self._workspace: np.ndarray | None = None
        self.clock = Clock()  # the model's, once a StageModel holds the group

    def reserve(self, n: int) -> None:
        """Allocate the symmetric workspace for reductions of up to n elements now (collective):
        done before the traffic counters are reset, its bookkeeping stays out of the run's."""
        if self.size > 1 and n > 0:
            self._symmetric(n)

    def _symmetric(self, n: int) -> np.ndarray:
        """n elements of the group's symmetric workspace, grown (collectively) when too small.

        Every rank of the group reduces the same sizes in the same order, so every rank grows
        it at the same call, as Communicator.empty requires.
        """
        ws = self._workspace
        if ws is None or ws.size < n:
            grown = max(n, 0 if ws is None else 2 * ws.size)
            ws = self._workspace = self.comm.empty(grown, self.precision.dtype)
        return ws[:n]

    def all_reduce(self, x: np.ndarray) -> np.ndarray:
        """Sum of x (float32) over the group, in the model dtype's values."""
        if self.size == 1:
            return x
        buf = self._symmetric(x.size).reshape(x.shape)
        buf[...] = x  # the one copy: into shared memory, in the model dtype
        with self.clock.measure("comm"):
            self.comm.all_reduce(buf, algorithm=ALL_REDUCE_ALGORITHM)
        return buf.astype(np.float32)

    def all_gather(self, x: np.ndarray) -> np.ndarray:
        """Every rank's x (any dtype) concatenated along axis 0 in rank order."""
        if self.size == 1:
            return x
        with self.clock.measure("comm"):
            return self.comm.all_gather(np.ascontiguousarray(x))

    def all_to_all_counts(self, counts: np.ndarray) -> np.ndarray:
        """Exchange an int64 [size, m] matrix: row j goes to rank j; returns the rows received."""
        if self.size == 1:
            return counts
        with self.clock.measure("comm"):
            return self.comm.all_to_all(np.ascontiguousarray(counts, dtype=np.int64))

    def all_to_allv(
        self, rows: np.ndarray, send_counts: Sequence[int]
    ) -> tuple[np.ndarray, list[int]]:
        """Rows (float32, grouped by destination) to their ranks; returns rows received."""
        if self.size == 1:
            return rows, list(send_counts)
        buf = np.ascontiguousarray(rows, dtype=self.precision.dtype)
        with self.clock.measure("comm"):
            out, recv_counts = self.comm.all_to_allv(buf, [int(c) for c in send_counts])
        return np.asarray(out).astype(np.float32), [int(c) for c in recv_counts]


def single(precision: Precision) -> AxisGroup:
    """The group of this rank alone."""
    return AxisGroup(None, precision)
