"""The CLI's two consoles: results to standard output, errors to standard error."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

__all__ = ["console", "err_console"]
