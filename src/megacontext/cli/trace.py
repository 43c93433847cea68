"""``megacontext trace show``: read the focus telemetry a session writes (JSONL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from megacontext.cli.output import console, emit_json
from megacontext.runtime.traces import read_trace

app = typer.Typer(
    help="Read focus telemetry traces (JSONL written by sessions).", no_args_is_help=True
)


@app.command("show")
def trace_show(
    trace: Annotated[Path, typer.Argument(help="A traces/session-*.jsonl file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the steps as JSON.")] = False,
) -> None:
    """Print a readable focus timeline, and the text each expansion brought into view.

    Per refocus step: the history size, budget use, edits (+ expand, - collapse), swap rate,
    page-cache hits and the milliseconds spent in focus and in the base.
    Example: megacontext trace show runs/mc/traces/session-*.jsonl
    """
    rows = read_trace(trace)
    expands = sum(r["expands"] for r in rows)
    collapses = sum(r["collapses"] for r in rows)
    if as_json:
        emit_json({"trace": str(trace), "steps": rows})
        return
    table = Table(title=f"focus timeline — {escape(trace.name)}", title_justify="left")
    for column, justify in (
        ("step", "right"),
        ("tokens", "right"),
        ("util", "right"),
        ("+/-", "center"),
        ("swap", "right"),
        ("cache", "right"),
        ("focus ms", "right"),
        ("base ms", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        seconds = row.get("seconds", {})
        focus_ms = 1000 * sum(
            seconds.get(k, 0.0) for k in ("fetch", "lensnet", "allocator", "apply")
        )
        hits = row.get("cache_hit_ratio")
        table.add_row(
            str(row["step"]),
            f"{row['tokens']:,}",
            f"{row['utilization']:.0%}",
            f"+{row['expands']}/-{row['collapses']}",
            f"{row.get('swap_rate', 0.0):.2f}",
            f"{hits:.0%}" if hits is not None else "—",
            f"{focus_ms:.1f}",
            f"{1000 * row.get('base_seconds', 0.0):.1f}",
        )
    console.print(table)
    console.print(f"{len(rows)} steps, {expands} expands, {collapses} collapses")
    shown = [(row["step"], span) for row in rows for span in row.get("expanded_text", [])]
    if shown:
        console.print("[bold]text brought into view[/bold]")
    for step, span in shown[:40]:
        text = " ".join(str(span["text"]).split())
        text = text if len(text) <= 48 else text[:47] + "…"
        a, b = span["tokens"]
        console.print(f"  step {step:>3}  {a:>7,}–{b:<7,} «{escape(text)}»")
    if len(shown) > 40:
        console.print(f"  … and {len(shown) - 40} more (--json has them all)")


__all__ = ["app", "read_trace", "trace_show"]
