"""The alpha-beta model fitted to measured sweeps: time = alpha * steps + bytes / beta.

``steps`` is the ring algorithm's number of sequential synchronisation steps (2(n-1) for
all-reduce, n-1 for all-gather, reduce-scatter and all-to-all, 1 otherwise) and ``bytes`` is what
one rank sends under the ring model, so that beta is the bandwidth busbw tends to at large
sizes. The fit minimises relative error (each point weighted by 1/time^2): sizes span seven
decades and an unweighted fit would ignore every size below a megabyte.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import metrics

# A fit whose R^2 (log space) is below this explains too little of the measured times to be used:
# the sweeps behind docs/performance.md fit with R^2 above 0.99, one on a loaded 2-core host -0.45.
GOOD_FIT_R2 = 0.9


@dataclass
class AlphaBetaFit:
    """One collective at one world size."""

    op: str
    world_size: int
    backend: str
    steps: int
    alpha_s: float  # seconds per step
    beta_Bps: float  # bytes per second (math.inf when time does not grow with size)
    r2_log: float  # R^2 of log(time) against log(model): the fit's share of the variance
    points: int
    departures: list  # [{"nbytes", "measured_us", "model_us", "ratio"}] beyond the threshold

    def predict(self, model_bytes) -> np.ndarray:
        """Model time in seconds for ring-model bytes per rank."""
        x = np.asarray(model_bytes, dtype=float)
        return self.alpha_s * self.steps + x / self.beta_Bps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alpha_us"] = self.alpha_s * 1e6
        d["beta_GBps"] = self.beta_Bps / 1e9
        d["explains_data"] = self.explains_data
        return d

    @property
    def explains_data(self) -> bool:
        """Whether the model accounts for the measured times (R^2 of at least GOOD_FIT_R2)."""
        return self.r2_log >= GOOD_FIT_R2


def fit_alpha_beta(model_bytes, seconds, steps: int) -> tuple[float, float, float]:
    """(alpha seconds per step, beta bytes per second, R^2 in log space) for the points.

    Least squares on relative residuals: minimise sum(((a + b*x) / t - 1)^2) over a, b; alpha =
    a/steps, beta = 1/b. Negative estimates (noise at a range of sizes that cannot pin one
    term) are clamped to zero latency or infinite bandwidth and the other term refitted.
    """
    x = np.asarray(model_bytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if x.shape != t.shape or x.size < 2:
        raise ValueError("need at least two (bytes, seconds) points of equal count")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if np.any(t <= 0) or np.any(x < 0):
        raise ValueError("times must be positive and byte counts non-negative")
    w = 1.0 / t
    a, b = np.linalg.lstsq(np.column_stack([w, x * w]), np.ones_like(t), rcond=None)[0]
    if b <= 0:  # no bandwidth term: time is a constant, fitted relative-error-wise
        a, b = float(np.sum(w) / np.sum(w * w)), 0.0
    elif a < 0:
        a, b = 0.0, float(np.sum(x * w) / np.sum((x * w) ** 2))
    pred = a + b * x
    log_t = np.log(t)
    resid = np.sum((log_t - np.log(pred)) ** 2)
    total = np.sum((log_t - log_t.mean()) ** 2)
    r2 = 1.0 - resid / total if total > 0 else (1.0 if resid == 0 else 0.0)
    return a / steps, (1.0 / b if b > 0 else math.inf), float(r2)


def fit_rows(
    rows: list[dict], threshold: float = 0.25, time_key: str = "time_avg_us"
) -> list[AlphaBetaFit]:
    """One fit per (backend, op, world size, dtype, in-place) in sweep rows; a size departs when
    measured/model time is off by more than ``threshold``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "skipped" not in r:
            groups.setdefault((r["backend"], r["op"], r["world_size"]), []).append(r)
    fits = []
    for (backend, op, n), group in groups.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: r["nbytes"])
        x = [metrics.model_sent_per_rank(op, n, r["nbytes"]) for r in group]
        t = [r[time_key] / 1e6 for r in group]
        steps = metrics.ring_steps(op, n)
        alpha, beta, r2 = fit_alpha_beta(x, t, steps)
        fit = AlphaBetaFit(op, n, backend, steps, alpha, beta, r2, len(group), [])
        for r, xi, ti in zip(group, x, t):
            pred = float(fit.predict(xi))
            if abs(ti / pred - 1) > threshold:
                fit.departures.append(
                    {
                        "nbytes": r["nbytes"],
                        "measured_us": ti * 1e6,
                        "model_us": pred * 1e6,
                        "ratio": ti / pred,
                    }
                )
        fits.append(fit)
    return fits


def format_fits(fits: list[AlphaBetaFit], threshold: float) -> str:
    """A table of fits and, below it, the sizes where measurement departs from the model."""
    lines = [
        (
            f"# alpha-beta fit: time = alpha*steps + (ring-model bytes per rank)/beta; "
            f"departure = |measured/model - 1| > {threshold:g}"
        ),
        (
            f"{'backend':>10} {'op':>15} {'ranks':>5} {'steps':>5} {'alpha(us)':>10} "
            f"{'beta(GB/s)':>10} {'R2(log)':>8} {'points':>6} {'departs':>7}"
        ),
    ]
    for f in fits:
        beta = "inf" if math.isinf(f.beta_Bps) else f"{f.beta_Bps / 1e9:.3f}"
        lines.append(
            f"{f.backend:>10} {f.op:>15} {f.world_size:>5} {f.steps:>5} "
            f"{f.alpha_s * 1e6:>10.3f} {beta:>10} {f.r2_log:>8.4f} {f.points:>6} "
            f"{len(f.departures):>7}"
        )
    for f in fits:
        if not f.explains_data:
            lines.append(
                f"# warning: the fit of {f.backend} {f.op} n={f.world_size} does not explain the "
                f"data (R2 {f.r2_log:.2f} < {GOOD_FIT_R2}): the times do not follow "
                "alpha*steps + bytes/beta, as on a loaded host; its alpha and beta mean little. "
                "Re-run on a quiet machine or with a longer --min-time."
            )
    for f in fits:
        for d in f.departures:
            lines.append(
                f"  {f.backend} {f.op} n={f.world_size} at "
                f"{metrics.format_bytes(d['nbytes'])}: measured {d['measured_us']:.2f} us, "
                f"model {d['model_us']:.2f} us ({d['ratio']:.2f}x)"
            )
    return "\n".join(lines) + "\n"
