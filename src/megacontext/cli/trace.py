"""``megacontext trace show``: read the focus telemetry a session writes (JSONL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from megacontext.cli.output import console
from megacontext.errors import InvalidInputError

app = typer.Typer(
    help="Read focus telemetry traces (JSONL written by sessions).", no_args_is_help=True
)


@app.command("show")
def trace_show(
    trace: Annotated[Path, typer.Argument(help="A traces/session-*.jsonl file.")],
) -> None:
    """Print a readable focus timeline.

    Per refocus step: the history size, budget use, edits and where the time went.
    Example: megacontext trace show runs/mc/traces/session-*.jsonl
    """
    if not trace.is_file():
        raise InvalidInputError(f"{trace} is not a trace file")
    rows = []
    for number, line in enumerate(trace.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise InvalidInputError(
                f"{trace}:{number} is not JSON; is this a focus trace?"
            ) from None
    table = Table(title=f"focus timeline — {trace.name}")
    for column in (
        "step",
        "tokens",
        "entries",
        "util",
        "edits",
        "swap rate",
        "residency",
        "cache hits",
        "ms (fetch/lens/alloc/apply)",
        "base ms",
    ):
        table.add_column(column, justify="right" if column != "edits" else "left")
    for row in rows:
        edits = " ".join(
            f"{'+' if k == 'expand' else '-'}L{lv}#{ix}" for k, lv, ix in row.get("edits", [])
        )
        sec = row.get("seconds", {})
        ms = "/".join(
            f"{1000 * sec.get(k, 0):.1f}" for k in ("fetch", "lensnet", "allocator", "apply")
        )
        table.add_row(
            str(row["step"]),
            f"{row['tokens']:,}",
            str(row["entries"]),
            f"{row['utilization']:.2f}",
            edits or "·",
            f"{row['swap_rate']:.2f}",
            f"{row['mean_residency']:.1f}",
            f"{row['cache_hit_ratio']:.0%}" if "cache_hit_ratio" in row else "—",
            ms,
            f"{1000 * row.get('base_seconds', 0.0):.1f}",
        )
    console.print(table)
    expands = sum(r["expands"] for r in rows)
    collapses = sum(r["collapses"] for r in rows)
    console.print(f"{len(rows)} steps, {expands} expands, {collapses} collapses")


__all__ = ["app", "trace_show"]
