"""The ``megacontext`` command line (Typer).

Each command group lives in its own module under ``megacontext.cli`` and is registered here. Heavy
imports happen inside commands so that ``megacontext --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from megacontext._version import __version__
from megacontext.errors import MegaContextError

app = typer.Typer(
    name="megacontext",
    help=(
        "MegaContext: effectively unbounded memory for language models at constant compute.\n\n"
        "Everything a model has seen lives in the MegaContext tree (tokens, then gists of every "
        "32 tokens, gists of 32 gists, ...). The model only ever sees a fixed-size working context "
        "that covers the whole history at mixed detail, refocused as it reads."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the installed MegaContext version."""
    console.print(f"megacontext {__version__}")


@app.command()
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
        str,
        typer.Option(
            "--base",
            help="Base model: 'default', 'tiny', a real base ('smollm2', 'gemma3-270m'; see "
            "`megacontext models list`), a .gguf file or a model directory.",
        ),
    ] = "default",
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="How questions are put to the base: raw (question + answer cue), chat (the "
            "base's chat template, free answer) or chat-cue (template + cue). Default: raw.",
        ),
    ] = None,
) -> None:
    """Run a benchmark suite, print a table, and optionally write JSON.

    Ratios are always measured against a baseline in the same run, so they survive noisy machines
    better than absolute numbers. Record notable runs in BENCHMARKS.md. Suites that need a focus
    bundle (GistNet, LensNet) use the one shipped for the base; where none exists the MegaContext
    systems are skipped with a note.

    Examples: megacontext bench core --quick --json results/core.json;
    megacontext bench longctx --base smollm2 --prompt chat --json results/longctx.json
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
    options = BenchOptions(base=base, prompt=prompt)
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


@app.command("demo-tree")
def demo_tree(
    tokens: Annotated[
        int, typer.Option(help="Minimum history length to build, in tokens.")
    ] = 120_000,
    w_max: Annotated[int, typer.Option("--w-max", help="Working-context budget in entries.")] = 512,
    query: Annotated[
        str, typer.Option(help="A phrase in the text to bring back into full detail.")
    ] = "class ArgumentParser(",
    text: Annotated[
        Path | None,
        typer.Option(help="Use this text file instead of the Python standard library's source."),
    ] = None,
) -> None:
    """Show the working context covering a long real text, then refocus it on a phrase.

    Builds a MegaContext tree over >= 100k tokens of real text, assembles a 512-entry working
    context that covers all of it (coarse far past, raw recent tokens), and steers the focus
    allocator until the chosen phrase is raw tokens again.

    Example: megacontext demo-tree --query "class HTTPConnection" --w-max 1024
    """
    from megacontext.cli.demo import DemoConfig, run_demo

    run_demo(DemoConfig(min_tokens=tokens, w_max=w_max, query=query, text_path=text), console)


from megacontext.cli import leaderboard as _leaderboard_cli  # noqa: E402  (registered below)
from megacontext.cli import longdemo as _longdemo_cli  # noqa: E402
from megacontext.cli import models as _models_cli  # noqa: E402
from megacontext.cli import session as _session_cli  # noqa: E402
from megacontext.cli import store as _store_cli  # noqa: E402
from megacontext.cli import train as _train_cli  # noqa: E402
from megacontext.cli import train_nets as _train_nets_cli  # noqa: E402

app.command("demo")(_longdemo_cli.demo)
app.command("port-model")(_models_cli.port_model)
app.command("leaderboard")(_leaderboard_cli.leaderboard)
app.add_typer(_models_cli.app, name="models")
app.add_typer(_store_cli.app, name="store")
_train_cli.app.command("gist")(_train_nets_cli.gist)
_train_cli.app.command("lens")(_train_nets_cli.lens)
_train_cli.app.command("cotrain")(_train_nets_cli.cotrain)
_train_cli.app.command("card")(_train_nets_cli.card)
app.add_typer(_train_cli.app, name="train")
app.command()(_session_cli.ingest)
app.command()(_session_cli.ask)
app.command()(_session_cli.generate)
app.add_typer(_session_cli.trace_app, name="trace")


def main() -> None:
    """Entry point: run the app, turning MegaContext errors into a one-line message and exit 2."""
    try:
        app()
    except MegaContextError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}")
        raise SystemExit(2) from None
