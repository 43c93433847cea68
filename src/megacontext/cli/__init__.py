"""The ``megacontext`` command line (Typer).

One module per command or command group, named after it (``bench``, ``demo``, ``demo_tree``,
``session`` for ingest/ask/chat/generate, ``sources``, ``trace``, ``explore``, ``audit``,
``compliance``, ``models``, ``store``, ``train``, ``leaderboard``), registered here. Heavy
imports happen inside commands so that ``megacontext --help`` stays fast.
"""

from __future__ import annotations

import typer

from megacontext._version import __version__
from megacontext.cli import audit as _audit_cli
from megacontext.cli import bench as _bench_cli
from megacontext.cli import code as _code_cli
from megacontext.cli import compliance as _compliance_cli
from megacontext.cli import demo as _demo_cli
from megacontext.cli import demo_tree as _demo_tree_cli
from megacontext.cli import explore as _explore_cli
from megacontext.cli import knowledge as _knowledge_cli
from megacontext.cli import leaderboard as _leaderboard_cli
from megacontext.cli import lmeval as _lmeval_cli
from megacontext.cli import models as _models_cli
from megacontext.cli import serve as _serve_cli
from megacontext.cli import session as _session_cli
from megacontext.cli import sources as _sources_cli
from megacontext.cli import store as _store_cli
from megacontext.cli import trace as _trace_cli
from megacontext.cli import train as _train_cli
from megacontext.cli.output import console, err_console
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


@app.command()
def version() -> None:
    """Print the installed MegaContext version."""
    console.print(f"megacontext {__version__}")


app.command("bench")(_bench_cli.bench)
app.command("demo")(_demo_cli.demo)
app.command("demo-tree")(_demo_tree_cli.demo_tree)
app.command("port-model")(_models_cli.port_model)
app.command("leaderboard")(_leaderboard_cli.leaderboard)
app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help goes to lm-eval, which knows its own options
)(_lmeval_cli.lm_eval)
app.add_typer(_models_cli.app, name="models")
app.add_typer(_store_cli.app, name="store")
app.add_typer(_train_cli.app, name="train")
app.command()(_session_cli.ingest)
app.command()(_session_cli.ask)
app.command()(_session_cli.chat)
app.add_typer(_sources_cli.app, name="sources")
app.add_typer(_code_cli.app, name="code")
app.add_typer(_knowledge_cli.app, name="knowledge")
app.command()(_session_cli.generate)
app.add_typer(_trace_cli.app, name="trace")
app.command()(_serve_cli.serve)
app.command()(_explore_cli.explore)
app.add_typer(_serve_cli.keys_app, name="keys")
app.add_typer(_serve_cli.dashboards_app, name="dashboards")
app.add_typer(_audit_cli.app, name="audit")
app.add_typer(_compliance_cli.app, name="compliance")


def main() -> None:
    """Entry point: run the app, turning MegaContext errors into a one-line message and exit 2."""
    try:
        app()
    except MegaContextError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}")
        raise SystemExit(2) from None


__all__ = ["app", "console", "main"]
