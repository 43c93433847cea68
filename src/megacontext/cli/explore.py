"""``megacontext explore PATH``: the web explorer (or, with ``--terminal``, the terminal one) over
one session directory."""

from __future__ import annotations

import getpass
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from megacontext.cli.output import console
from megacontext.errors import InvalidInputError

_TENANT_CHARS = re.compile(r"[^a-z0-9_-]+")
_TREE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def explore(
    path: Annotated[
        Path, typer.Argument(help="A session directory (what `megacontext ingest --tree` made).")
    ],
    terminal: Annotated[
        bool, typer.Option("--terminal", help="The terminal explorer instead of the web one.")
    ] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Browse only: no annotations can be written.")
    ] = False,
    host: Annotated[str, typer.Option(help="Address the web explorer listens on.")] = ("127.0.0.1"),
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the web explorer (0: a free one).")
    ] = 0,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the explorer in the default browser.")
    ] = True,
    base: Annotated[
        str | None,
        typer.Option(help="Base model to read the tree with (default: the one it was built with)."),
    ] = None,
) -> None:
    """Explore a tree: its levels and sources, a drill-down from the top gists to raw text with
    the source lines of every span, search, focus playback of the session's traces, and notes on
    spans (stored in the session's metadata database, with who changed them and when).

    The web explorer runs the service on loopback over this one tree and prints its URL (the
    URL carries a key made for this run; anyone with it can read and annotate the tree until
    the explorer stops). `--terminal` draws the same views in the terminal (keyboard-driven,
    works over SSH).

    Examples: megacontext explore runs/notes ·
    megacontext explore runs/notes --terminal --read-only
    """
    from megacontext.runtime.opening import is_session, read_recorded

    if not is_session(path):
        raise typer.BadParameter(
            f"{path} is not a session directory (no tree/manifest.json): give the directory "
            "that `megacontext ingest --tree DIR` or `megacontext serve` wrote",
            param_hint="'PATH'",
        )
    recorded = read_recorded(path)
    base_name = base or (recorded.base if recorded is not None else "default")
    if terminal:
        from megacontext.explorer.tui import run_terminal
        from megacontext.models.loading import load_base

        run_terminal(path, base=load_base(base_name), read_only=read_only)
        return
    serve_explorer(path, base_name, host, port, read_only=read_only, open_browser=open_browser)


def serve_explorer(
    path: Path, base: str, host: str, port: int, *, read_only: bool, open_browser: bool
) -> None:
    """Serve the web explorer over the session directory ``path`` until interrupted: the
    service's app over a throwaway root whose one tenant holds ``path`` as its one tree."""
    import uvicorn

    from megacontext.runtime.opening import read_recorded
    from megacontext.server import create_app
    from megacontext.server.keys import KeyStore

    recorded = read_recorded(path)
    config = recorded.config.with_changes(trace=False) if recorded is not None else None
    focus = recorded.focus if recorded is not None else "default"
    root = Path(tempfile.mkdtemp(prefix="megacontext-explore-"))
    try:
        tenant, name = tenant_name(), tree_name(path)
        home = root / "tenants" / tenant / "trees"
        home.mkdir(parents=True)
        (home / name).symlink_to(path.resolve(), target_is_directory=True)
        scopes = "read" if read_only else "read,write"
        key, _ = KeyStore(root / "keys.sqlite").create(tenant, scopes, "megacontext explore")
        app = create_app(root, base=base, focus=focus, config=config, storage_interval_s=None)
        # uvicorn re-raises SIGTERM once it has shut the app down: the `finally` below only
        # runs on Ctrl-C, so the app's own shutdown removes the throwaway root too.
        app.state.service.on_closed.append(lambda: shutil.rmtree(root, ignore_errors=True))
        port = port or free_port(host)
        url = f"http://{host}:{port}/explorer/#tree={name}&key={key}"
        console.print(f"exploring {path} (Ctrl-C stops the explorer) at:")
        typer.echo(url)  # whole on one line, never wrapped: people and scripts copy it
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # unlinks the tree's link, never the tree


def tenant_name() -> str:
    """The local user, as a tenant name (annotations record it as who changed them)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    name = _TENANT_CHARS.sub("-", user.lower()).strip("-_")[:63]
    return name or "local"


def tree_name(path: Path) -> str:
    """The tree's name in the explorer: its directory's name, made a valid tree name."""
    name = _TREE_CHARS.sub("-", path.resolve().name).lstrip("._-")[:100]
    return name or "tree"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            raise InvalidInputError(f"cannot listen on {host}: {exc}; check --host") from None
        return int(probe.getsockname()[1])
