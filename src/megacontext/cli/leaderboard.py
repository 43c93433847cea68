"""``megacontext leaderboard``: tables and plots from ``bench longctx --json`` results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from megacontext.cli.output import console


def leaderboard(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="JSON files written by `megacontext bench longctx --json PATH` (one or more).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Directory for leaderboard.md, leaderboard.html and the plots."),
    ] = Path("leaderboard"),
) -> None:
    """Build the long-context leaderboard from `bench longctx` result files.

    Writes into --out:

      leaderboard.md    per task: systems x (history length, W_max), each cell
                        "value [95% interval]", the best of each column in bold;
                        then a summary ranking by mean rank
      leaderboard.html  the same tables with every plot embedded (one file)
      TASK_W<N>.png     score vs history length per system, with error bars
      longdoc_nll_vs_budget_<LENGTH>.png   NLL vs W_max per system

    QA tasks report accuracy (higher is better); longdoc the NLL in nats per
    token (lower is better). When several files hold the same cell, the
    later file wins.

    Examples:

      megacontext bench longctx --json results/longctx.json
      megacontext leaderboard results/longctx.json --out leaderboard/
      megacontext leaderboard quick.json full.json --out site/leaderboard
    """
    from megacontext.eval.leaderboard import HTML, build_leaderboard

    markdown = build_leaderboard(results, out)
    console.print(f"wrote {markdown}, {markdown.parent / HTML} and the PNG plots beside them")
