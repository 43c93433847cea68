"""The CLI's two consoles — results to standard output, errors and progress to standard
error — and the one way commands print JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def emit_json(document: Any) -> None:
    """Print ``document`` as JSON on standard output (nothing else goes there with --json)."""
    typer.echo(json.dumps(document, indent=2, default=str))


__all__ = ["console", "emit_json", "err_console"]
