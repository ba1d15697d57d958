"""PNG plots of sweeps and fits (matplotlib is optional: ``pip install matplotlib``)."""

from __future__ import annotations

import os

import numpy as np

from . import metrics
from .modelfit import AlphaBetaFit


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], op: str):
    """{(backend, world size): sorted rows} of one op, skipped sizes left out."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["op"] == op and "skipped" not in r:
            out.setdefault((r["backend"], r["world_size"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["nbytes"]) for k, v in sorted(out.items())}


def _size_axis(ax) -> None:
    ax.set_xscale("log", base=2)
    ticks = [2**k for k in range(0, 41, 4)]
    lo, hi = ax.get_xlim()
    ax.set_xticks([t for t in ticks if lo <= t <= hi])
    ax.set_xticklabels([metrics.format_bytes(t).replace(" ", "") for t in ax.get_xticks()])
    ax.set_xlabel("message size")
    ax.grid(True, which="major", alpha=0.3)


def _plain_log_y(ax) -> None:
    """Log y axis with plain numbers (matplotlib's 3.85x10^2 is unreadable over a short span)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = ax.get_ylim()
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt if hi / max(lo, 1e-300) < 20 else NullFormatter())


def plot_busbw(rows: list[dict], op: str, path: str, title: str = "") -> str:
    """busbw against message size, one line per (backend, world size)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (backend, n), group in _series(rows, op).items():
        ax.plot(
            [r["nbytes"] for r in group],
            [r["busbw"] for r in group],
            marker="o",
            ms=3,
            label=f"{backend}, {n} ranks",
        )
    _size_axis(ax)
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(title or f"{op}: bus bandwidth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bytes(rows: list[dict], op: str, path: str, title: str = "") -> str:
    """Bytes each rank sent (the core's counters) against the ring model, per world size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (_backend, n), group in _series(rows, op).items():
        if group[0].get("sent_per_rank") is None:
            continue
        x = np.array([r["nbytes"] for r in group], dtype=float)
        (line,) = ax.plot(
            x, [metrics.model_sent_per_rank(op, n, s) for s in x], lw=1, label=f"model, {n} ranks"
        )
        ax.plot(
            x,
            [r["sent_per_rank"] for r in group],
            ls="none",
            marker="o",
            ms=4,
            mfc="none",
            color=line.get_color(),
            label=f"measured, {n} ranks",
        )
    _size_axis(ax)
    ax.set_yscale("log", base=2)
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: metrics.format_bytes(v)))
    ax.set_ylabel("bytes sent per rank per call")
    model = {
        "all_reduce": "2(n-1)/n S  (= 4(n-1)h/n for h bf16 elements)",
        "sendrecv": "S",
        "broadcast": "S/n",
    }.get(op, "(n-1)/n S")
    ax.set_title(title or f"{op}: counted bytes vs ring model {model}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fit(
    rows: list[dict],
    fits: list[AlphaBetaFit],
    op: str,
    path: str,
    time_key: str = "time_avg_us",
    title: str = "",
) -> str:
    """Measured time and the fitted alpha-beta model against message size, per world size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_key = {(f.backend, f.world_size): f for f in fits if f.op == op}
    for (backend, n), group in _series(rows, op).items():
        x = np.array([r["nbytes"] for r in group], dtype=float)
        (pts,) = ax.plot(
            x,
            [r[time_key] for r in group],
            ls="none",
            marker="o",
            ms=4,
            label=f"measured, {backend} {n} ranks",
        )
        fit = by_key.get((backend, n))
        if fit is not None:
            xs = np.geomspace(x.min(), x.max(), 200)
            model = fit.predict([metrics.model_sent_per_rank(op, n, s) for s in xs]) * 1e6
            beta = "inf" if not np.isfinite(fit.beta_Bps) else f"{fit.beta_Bps / 1e9:.2f} GB/s"
            ax.plot(
                xs,
                model,
                color=pts.get_color(),
                lw=1,
                label=f"model: alpha {fit.alpha_s * 1e6:.2f} us, beta {beta}",
            )
    _size_axis(ax)
    ax.set_yscale("log")
    _plain_log_y(ax)
    ax.set_ylabel("time (us)")
    ax.set_title(title or f"{op}: time vs alpha-beta model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(
    rows: list[dict],
    fits: list[AlphaBetaFit],
    out_dir: str,
    prefix: str = "",
    time_key: str = "time_avg_us",
) -> list[str]:
    """Every plot for every op in ``rows``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for op in sorted({r["op"] for r in rows}):
        stem = os.path.join(out_dir, f"{prefix}{op}")
        paths.append(plot_busbw(rows, op, f"{stem}_busbw.png"))
        if any(r.get("sent_per_rank") is not None for r in rows if r["op"] == op):
            paths.append(plot_bytes(rows, op, f"{stem}_bytes.png"))
        paths.append(plot_fit(rows, fits, op, f"{stem}_fit.png", time_key=time_key))
    return paths
