"""Text for plans and searches: plain tables always, ``rich`` tables when it is installed."""

from __future__ import annotations

from .specs import GB, GIB


def text_table(rows: list, title: str | None = None) -> str:
    """Rows (dicts of strings, same keys) as an aligned plain-text table."""
    if not rows:
        return title or ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = [title] if title else []
    lines.append("  ".join(k.rjust(widths[k]) for k in keys))
    lines.append("  ".join("-" * widths[k] for k in keys))
    for r in rows:
        lines.append("  ".join(str(r[k]).rjust(widths[k]) for k in keys))
    return "\n".join(lines)


def plan_text(plan, collectives_rank: int = 0) -> str:
    """The whole plan as plain text: summary, notes, per-rank table, memory, collectives."""
    out = [plan.summary()]
    out += [f"note: {n}" for n in plan.notes]
    out.append(text_table(plan.rank_rows(), "per rank:"))
    out.append(f"memory of rank {collectives_rank}:")
    out += ["  " + line for line in plan.memory(collectives_rank).lines()]
    out.append(f"collectives of rank {collectives_rank} in one decode step "
               f"(1 sequence per replica):")
    for c in plan.step_collectives(collectives_rank):
        out.append(f"  {c['kind']:<12} {c['what']:<12} x{c['calls']:<4} group {c['group']} "
                   f"sent {c['sent']:.0f} B")
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
    for k in (rows[0] if rows else []):
        table.add_column(k, overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    (console or Console()).print(table)
    return None


def gb_gib(x: float) -> str:
    """'12.34 GB / 11.49 GiB'."""
    return f"{x / GB:.2f} GB / {x / GIB:.2f} GiB"
