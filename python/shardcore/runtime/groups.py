"""The collectives the model calls, on one parallel axis's communicator or on no one.

A group of one rank (or no communicator at all, the single-process run) turns every collective
into the identity, so the single-process model and every shard run the same code. Messages
travel in the model dtype (bfloat16 halves the bytes, as the traffic model assumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .ops import Precision

# The ring is the algorithm the traffic model (and so the plan's prediction) describes; the
# core's size-based choice of one-shot or two-shot would move different byte counts.
ALL_REDUCE_ALGORITHM = "ring"


class AxisGroup:
    """One rank's view of a TP or EP group."""

    def __init__(self, comm, precision: Precision):
        self.comm = comm
        self.precision = precision
        self.size = 1 if comm is None else comm.size
        self.rank = 0 if comm is None else comm.rank

    def all_reduce(self, x: np.ndarray) -> np.ndarray:
        """Sum of x (float32) over the group, in the model dtype's values."""
        if self.size == 1:
            return x
        buf = np.ascontiguousarray(x, dtype=self.precision.dtype)
        self.comm.all_reduce(buf, algorithm=ALL_REDUCE_ALGORITHM)
        return buf.astype(np.float32)

    def all_gather(self, x: np.ndarray) -> np.ndarray:
        """Every rank's x (any dtype) concatenated along axis 0 in rank order."""
        if self.size == 1:
            return x
        return self.comm.all_gather(np.ascontiguousarray(x))

    def all_to_all_counts(self, counts: np.ndarray) -> np.ndarray:
        """Exchange an int64 [size, m] matrix: row j goes to rank j; returns the rows received."""
        if self.size == 1:
            return counts
        return self.comm.all_to_all(np.ascontiguousarray(counts, dtype=np.int64))

    def all_to_allv(
        self, rows: np.ndarray, send_counts: Sequence[int]
    ) -> tuple[np.ndarray, list[int]]:
        """Rows (float32, grouped by destination) to their ranks; returns rows received."""
        if self.size == 1:
            return rows, list(send_counts)
        buf = np.ascontiguousarray(rows, dtype=self.precision.dtype)
        out, recv_counts = self.comm.all_to_allv(buf, [int(c) for c in send_counts])
        return np.asarray(out).astype(np.float32), [int(c) for c in recv_counts]


def single(precision: Precision) -> AxisGroup:
    """The group of this rank alone."""
    return AxisGroup(None, precision)
