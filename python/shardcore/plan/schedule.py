"""Pipeline schedules: which stage works on which micro-batch at which time step.

Every forward (F) and backward (B) of one micro-batch on one stage takes one time step. A stage
runs its operations in the schedule's order; an operation starts at the first step at which
its input is ready: F of micro-batch m on stage s needs F(m) of stage s-1, B(m) on stage s
needs B(m) of stage s+1 (the last stage's B needs its own F). GPipe runs every forward, then
every backward; 1F1B runs ``S - s - 1`` warm-up forwards on stage s, then alternates one
forward and one backward, then drains the backwards (same length as GPipe, but at most S
micro-batches' activations live per stage instead of M). ``backward=False`` gives the
inference (forward-only) table, where both schedules are the same fill-and-drain.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A time table: ``grid[stage][step]`` is "" (idle) or e.g. "F3" / "B0"."""

    name: str
    stages: int
    micro_batches: int
    grid: tuple

    @property
    def steps(self) -> int:
        """Length of the schedule in time steps."""
        return len(self.grid[0]) if self.grid else 0

    @property
    def bubble_fraction(self) -> float:
        """Idle stage-steps over all stage-steps: (S-1)/(M+S-1) for these schedules."""
        total = self.stages * self.steps
        idle = sum(1 for row in self.grid for cell in row if not cell)
        return idle / total if total else 0.0

    def peak_in_flight(self, stage: int) -> int:
        """Most micro-batches whose forward ran and backward did not yet, on ``stage``."""
        live = peak = 0
        for cell in self.grid[stage]:
            if cell.startswith("F"):
                live += 1
            elif cell.startswith("B"):
                live -= 1
            peak = max(peak, live)
        return peak

    def text(self) -> str:
        """The table as text: one row per stage, one column per time step, '.' for idle."""
        width = max(3, max((len(c) for row in self.grid for c in row), default=2) + 1)
        head = "stage " + "".join(f"{t:>{width}}" for t in range(self.steps))
        lines = [
            f"{self.name}: {self.stages} stages, {self.micro_batches} micro-batches, "
            f"{self.steps} steps, bubble {self.bubble_fraction:.1%}",
            head,
        ]
        for s, row in enumerate(self.grid):
            lines.append(f"{s:>5} " + "".join(f"{(c or '.'):>{width}}" for c in row))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _orders(kind: str, stages: int, micro: int, backward: bool) -> list:
    orders = []
    for s in range(stages):
        fw = [("F", m) for m in range(micro)]
        if not backward:
            orders.append(fw)
        elif kind == "gpipe":
            orders.append(fw + [("B", m) for m in range(micro)])
        else:
            warm = min(stages - s - 1, micro)
            order = fw[:warm]
            f, b = warm, 0
            while f < micro or b < micro:
                if f < micro:
                    order.append(("F", f))
                    f += 1
                if b < micro and (b < f or f == micro):
                    order.append(("B", b))
                    b += 1
            orders.append(order)
    return orders


def pipeline_schedule(
    kind: str, stages: int, micro_batches: int, backward: bool = True
) -> Schedule:
    """The ``kind`` ("gpipe" or "1f1b") time table for ``stages`` stages and ``micro_batches``."""
    kind = kind.lower()
    if kind not in ("gpipe", "1f1b"):
        raise ValueError(f"schedule must be 'gpipe' or '1f1b', got {kind!r}")
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"need stages >= 1 and micro_batches >= 1, got {stages}, {micro_batches}")
    orders = _orders(kind, stages, micro_batches, backward)
    done: dict = {}  # (op, stage, m) -> finish step
    free_at = [0] * stages  # first step each stage is free
    pos = [0] * stages
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(stages):
            if pos[s] == len(orders[s]):
                continue
            op, m = orders[s][pos[s]]
            if op == "F":
                dep = ("F", s - 1, m) if s > 0 else None
            else:
                dep = ("B", s + 1, m) if s < stages - 1 else ("F", s, m)
            if dep is not None and dep not in done:
                continue
            start = max(free_at[s], done[dep] if dep is not None else 0)
            done[(op, s, m)] = start + 1
            free_at[s] = start + 1
            pos[s] += 1
            remaining -= 1
            progressed = True
        if not progressed:  # cannot happen for these orders; guards against a bad edit
            raise RuntimeError("pipeline schedule deadlocked")
    steps = max(done.values())
    grid = [[""] * steps for _ in range(stages)]
    for (op, s, m), end in done.items():
        grid[s][end - 1] = f"{op}{m}"
    name = {"gpipe": "GPipe", "1f1b": "1F1B"}[kind] + ("" if backward else " (forward only)")
    return Schedule(
        name=name, stages=stages, micro_batches=micro_batches, grid=tuple(tuple(r) for r in grid)
    )
