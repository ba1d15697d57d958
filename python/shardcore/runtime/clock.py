"""Where a rank's time goes: seconds in local GEMMs and in communication (the rest is
"other": norms, RoPE, attention, sampling, Python). Communication includes waiting for the
peers, so a rank that waits for a slower one shows it there."""

from __future__ import annotations

import time


class Clock:
    """Accumulated seconds per kind ("gemm", "comm") of one rank."""

    KINDS = ("gemm", "comm")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)

    def measure(self, kind: str) -> _Span:
        """``with clock.measure("comm"): ...`` adds the block's seconds to ``kind``."""
        return _Span(self.seconds, kind)

    def split(self, total: float) -> dict[str, float]:
        """{gemm_s, comm_s, other_s, total_s} of a run of ``total`` seconds."""
        gemm, comm = self.seconds["gemm"], self.seconds["comm"]
        return {"gemm_s": gemm, "comm_s": comm, "other_s": total - gemm - comm, "total_s": total}


class _Span:
    __slots__ = ("seconds", "kind", "start")

    def __init__(self, seconds: dict[str, float], kind: str):
        self.seconds, self.kind = seconds, kind

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self.kind] += time.perf_counter() - self.start
