"""``megacontext bench SUITE``: run a benchmark suite (DESIGN §9), print it, write JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from megacontext.cli.output import console


def bench(
    suite: Annotated[str, typer.Argument(help="Suite to run, e.g. 'core'.")],
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller sizes; finishes in seconds to minutes.")
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the results as JSON (DESIGN §9) to this path."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base model: 'default', 'tiny', a real base ('smollm2', 'gemma3-270m'; see "
            "`megacontext models list`), a .gguf file or a model directory. Default: the "
            "default base ($MEGACONTEXT_BENCH_BASE when set).",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="How questions are put to the base: raw (question + answer cue), chat (the "
            "base's chat template, free answer) or chat-cue (template + cue). Default: raw.",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="A dask scheduler's address (tcp://HOST:8786): the longctx grid's cells run as "
            "its tasks, each worker loading the base once (results equal a serial run's); "
            "scaleout measures ingest on it instead of on local clusters of 1, 2 and 4 workers.",
        ),
    ] = None,
) -> None:
    """Run a benchmark suite, print a table, and optionally write JSON.

    Ratios are always measured against a baseline in the same run, so they survive noisy machines
    better than absolute numbers. Record notable runs in BENCHMARKS.md. Suites that need a focus
    bundle (GistNet, LensNet) use the one shipped for the base; where none exists the MegaContext
    systems are skipped with a note.

    Examples: megacontext bench core --quick --json results/core.json;
    megacontext bench longctx --base smollm2 --prompt chat --json results/longctx.json;
    megacontext bench longctx --cluster tcp://10.0.0.5:8786 --json results/longctx.json
    """
    from megacontext.bench import SUITES, BenchOptions, run_suite, write_json
    from megacontext.models.prompting import PROMPT_STYLES

    if suite not in SUITES:
        raise typer.BadParameter(
            f"unknown suite {suite!r}; choose one of: {', '.join(sorted(SUITES))}"
        )
    if prompt is not None and prompt not in PROMPT_STYLES:
        raise typer.BadParameter(
            f"unknown prompt style {prompt!r}; choose one of: {', '.join(PROMPT_STYLES)}",
            param_hint="--prompt",
        )
    if cluster is not None and suite not in ("longctx", "scaleout"):
        raise typer.BadParameter(
            f"only the longctx and scaleout suites run on a cluster; run {suite!r} without "
            "--cluster",
            param_hint="--cluster",
        )
    options = BenchOptions(base=base, prompt=prompt, cluster=cluster)
    with console.status(f"running benchmark suite '{suite}'") as status:
        document = run_suite(
            suite,
            quick=quick,
            progress=lambda msg: status.update(f"[{suite}] {msg}"),
            options=options,
        )
    table = Table(title=f"megacontext bench {suite}{' --quick' if quick else ''}")
    table.add_column("result", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    table.add_column("baseline", overflow="fold")
    table.add_column("ratio", justify="right", no_wrap=True)
    for row in document["results"]:
        baseline = row.get("baseline")
        table.add_row(
            row["name"],
            f"{row['value']:.6g}",
            row["unit"],
            f"{baseline['name']} = {baseline['value']:.6g}" if baseline else "",
            f"{row['ratio']:.3f}" if row.get("ratio") is not None else "",
        )
    # Result names are long and must not wrap: print wider than a narrow (or piped) terminal.
    longest = max((len(row["name"]) for row in document["results"]), default=0)
    console.print(table, width=max(console.width, longest + 70))
    console.print(f"[dim]{document['machine']}[/dim]")
    if json_path is not None:
        write_json(document, json_path)
        console.print(f"wrote {json_path}")


__all__ = ["bench"]
