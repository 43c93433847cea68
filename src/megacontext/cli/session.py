"""``megacontext ingest | ask | generate | trace``: use a MegaContext session from the shell."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from megacontext.errors import InvalidInputError

console = Console()

DEFAULT_TREE = Path(os.environ.get("MEGACONTEXT_HOME", Path.home() / ".megacontext")) / "default"

TreeOpt = Annotated[
    Path,
    typer.Option("--tree", help="Session directory (created when missing). Env: MEGACONTEXT_HOME."),
]
BaseOpt = Annotated[
    str, typer.Option("--base", help="Base model: 'default', a directory or a hub id.")
]
FocusOpt = Annotated[
    str, typer.Option("--focus", help="GistNet/LensNet bundle: 'default' or a bundle directory.")
]
WMaxOpt = Annotated[int, typer.Option("--w-max", help="Working-context budget in entries.")]


def _open(tree: Path, base: str, focus: str, w_max: int) -> Any:
    from megacontext.runtime import SessionConfig, open_session

    return open_session(tree, base=base, focus=focus, config=SessionConfig(W_max=w_max))


def _text_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if str(path) == "-":
            files.append(path)
        elif path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"{path} does not exist")
    return files


def _read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (NUL bytes or not UTF-8)."""
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files, directories (recursive) or - for stdin.")
    ],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = "default",
    focus: FocusOpt = "default",
    w_max: WMaxOpt = 512,
) -> None:
    """Add text to a session's history, with provenance (source file) recorded per span.

    Binary files are skipped with a note. Example: megacontext ingest docs/ notes.txt --tree runs/mc
    """
    files = _text_files(paths)
    skipped: list[str] = []
    total = 0
    with (
        _open(tree, base, focus, w_max) as mc,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} files"),
            console=console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("ingesting", total=len(files))
        for path in files:
            text = _read_text(path)
            if text is None or not text.strip():
                skipped.append(str(path))
            else:
                uri = "stdin" if str(path) == "-" else path.resolve().as_uri()
                total += mc.ingest(text, source=uri, metadata={"path": str(path)})
            bar.advance(task)
        tokens, levels = mc.tree.num_tokens, mc.tree.num_levels
    console.print(
        f"ingested {total:,} tokens from {len(files) - len(skipped)} file(s) into {tree} "
        f"(history: {tokens:,} tokens, {levels} gist levels)"
    )
    if skipped:
        console.print(
            f"[yellow]skipped {len(skipped)} binary or empty file(s):[/yellow] "
            + ", ".join(skipped[:5])
        )


def ask(
    question: Annotated[str, typer.Argument(help="The question, answered from the whole history.")],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = "default",
    focus: FocusOpt = "default",
    w_max: WMaxOpt = 512,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 64,
) -> None:
    """Ask a question about everything the session has seen.

    Prints the answer, then the raw spans that came into view to answer it.
    Example: megacontext ask "What is the pass key?" --tree runs/mc
    """
    with _open(tree, base, focus, w_max) as mc:
        before = {(e.level, e.index) for e in mc.working_context()}
        prompt = f"\nQuestion: {question}\nAnswer:"
        for piece in mc.generate(prompt, max_new_tokens=max_new_tokens, stop=("\n",)):
            console.print(piece, end="")
        console.print()
        opened = [
            e for e in mc.working_context() if e.level == 0 and (e.level, e.index) not in before
        ]
        _print_spans(opened)


def _print_spans(entries: list[Any]) -> None:
    if not entries:
        console.print("[dim]no far span was expanded[/dim]")
        return
    runs: list[list[int]] = []
    for e in entries:
        if runs and e.start == runs[-1][1]:
            runs[-1][1] = e.end
        else:
            runs.append([e.start, e.end])
    console.print(
        "[dim]raw spans in view that were not before: "
        + ", ".join(f"{a:,}–{b:,}" for a, b in runs[:8])
        + "[/dim]"
    )


def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue (appended to the history).")] = "",
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = "default",
    focus: FocusOpt = "default",
    w_max: WMaxOpt = 512,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 128,
) -> None:
    """Continue the history (after the prompt), streaming tokens as they come.

    Example: megacontext generate "Once upon a time" --max-new-tokens 64
    """
    with _open(tree, base, focus, w_max) as mc:
        for piece in mc.generate(prompt or None, max_new_tokens=max_new_tokens):
            console.print(piece, end="")
        console.print()
        if mc.trace_path is not None:
            console.print(f"[dim]focus trace: {mc.trace_path}[/dim]")


trace_app = typer.Typer(
    help="Read focus telemetry traces (JSONL written by sessions).", no_args_is_help=True
)


@trace_app.command("show")
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
