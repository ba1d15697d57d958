"""Text for plans and searches: plain tables always, ``rich`` tables when it is installed."""

from __future__ import annotations

from .specs import GB, GIB


def text_table(rows: list, title: str | None = None, left: tuple = ("why",)) -> str:
    """Rows (dicts of strings, same keys) as an aligned plain-text table; numbers right-aligned,
    the ``left`` columns (free text) left-aligned."""
    if not rows:
        return title or ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}

    def cell(k: str, v: str) -> str:
        return v.ljust(widths[k]) if k in left else v.rjust(widths[k])

    lines = [title] if title else []
    lines.append("  ".join(cell(k, k) for k in keys).rstrip())
    lines.append("  ".join("-" * widths[k] for k in keys))
    for r in rows:
        lines.append("  ".join(cell(k, str(r[k])) for k in keys).rstrip())
    return "\n".join(lines)


def plan_text(plan, collectives_rank: int = 0) -> str:
    """The whole plan as plain text: summary, notes, per-rank table, memory, collectives."""
    out = [plan.summary()]
    out += [f"note: {n}" for n in plan.notes]
    short = [m for m in (plan.memory(r.rank) for r in plan.ranks) if not m.fits]
    if short:
        worst = min(short, key=lambda m: m.free)
        out.append(
            f"DOES NOT FIT: {len(short)} rank(s) have no room for a KV token; rank "
            f"{worst.rank} needs {-worst.free / GB:.2f} GB more than its "
            f"{worst.device_bytes / GB:.2f} GB ({worst.weights / GB:.2f} GB of weights)"
        )
    out.append(text_table(plan.rank_rows(), "per rank:"))
    out.append(f"memory of rank {collectives_rank}:")
    out += ["  " + line for line in plan.memory(collectives_rank).lines()]
    out.append(
        f"collectives of rank {collectives_rank} in one decode step (1 sequence per replica):"
    )
    for c in plan.step_collectives(collectives_rank):
        out.append(
            f"  {c['kind']:<12} {c['what']:<12} x{c['calls']:<4} group {c['group']} "
            f"sent {c['sent']:.0f} B"
        )
    return "\n".join(out)


def search_rows(result, limit: int | None = None) -> list:
    """Rows of a ``SearchResult``: rank, the candidate's numbers and why it lost."""
    rows = []
    for i, c in enumerate(result.candidates[:limit]):
        row = {"#": str(i + 1) if c.fits else "-"}
        row.update(c.row())
        row["why"] = c.why
        rows.append(row)
    return rows


def render(rows: list, title: str, console=None) -> str | None:
    """Print ``rows`` with rich when available (returns None), else return plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return text_table(rows, title)
    table = Table(title=title)
    for k in rows[0] if rows else []:
        table.add_column(k, overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    (console or Console()).print(table)
    return None


def gb_gib(x: float) -> str:
    """'12.34 GB / 11.49 GiB'."""
    return f"{x / GB:.2f} GB / {x / GIB:.2f} GiB"
