"""``megacontext ingest | ask | generate``: use a MegaContext session from the shell.

A session directory remembers the base, the focus bundle and the settings it was created with
(``session.json``): ``--base``, ``--focus`` and ``--w-max`` are needed only to create one, or to
override what it recorded for one command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn

from megacontext.cli.output import console
from megacontext.errors import InvalidInputError
from megacontext.paths import default_tree

DEFAULT_TREE = default_tree()  # read once, when the command line starts
TreeOpt = Annotated[
    Path,
    typer.Option(
        "--tree",
        help="Session directory (created by ingest when missing). Default: "
        "$MEGACONTEXT_HOME/default (~/.megacontext/default).",
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        help="Base model: 'default', 'tiny', 'smollm2', a .gguf file or a model directory. "
        "Default: what the session recorded ('default' for a new one).",
        show_default=False,
    ),
]
FocusOpt = Annotated[
    str | None,
    typer.Option(
        "--focus",
        help="GistNet/LensNet bundle: 'default' (the one shipped for the base) or a bundle "
        "directory. Default: what the session recorded.",
        show_default=False,
    ),
]
WMaxOpt = Annotated[
    int | None,
    typer.Option(
        "--w-max",
        help="Working-context budget in entries. Default: what the session recorded (512 for "
        "a new one).",
        show_default=False,
    ),
]
RegistOpt = Annotated[
    bool,
    typer.Option(
        "--regist",
        help="Re-gist the tree when the base or GistNet changed (instead of refusing to open it).",
    ),
]


def _config(tree: Path, w_max: int | None) -> Any:
    """The settings for this command: what the session recorded, with ``--w-max`` applied.

    Checked before any model loads, so a bad flag fails at once.
    """
    from megacontext.runtime import SessionConfig
    from megacontext.runtime.opening import read_recorded

    if w_max is None:
        return None
    if w_max < 1:
        raise InvalidInputError(f"--w-max must be >= 1, got {w_max}")
    recorded = read_recorded(tree)
    return (recorded.config if recorded else SessionConfig()).resized(w_max)


def _open(
    tree: Path, base: str | None, focus: str | None, w_max: int | None, regist: bool = False
) -> Any:
    from megacontext.runtime import open_session

    config = _config(tree, w_max)
    return open_session(tree, base=base, focus=focus, config=config, regist=regist)


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
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    regist: RegistOpt = False,
) -> None:
    """Add text to a session's history, with provenance (source file) recorded per span.

    Creates the session when the directory does not hold one (with --base, --focus, --w-max, or
    the defaults); a later command needs none of them. Binary files are skipped with a note.
    Example: megacontext ingest docs/ notes.txt --tree runs/mc --base smollm2
    """
    files = _text_files(paths)
    skipped: list[str] = []
    total = 0
    with (
        _open(tree, base, focus, w_max, regist) as mc,
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
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    regist: RegistOpt = False,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 64,
    remember: Annotated[
        bool,
        typer.Option("--remember", help="Also append the question and the answer to the history."),
    ] = False,
) -> None:
    """Ask a question about everything the session has seen.

    Focus is moved for the question (up to the session's focus_steps refocus steps), then the base
    answers in the session's prompt style (its chat template where it has one and the session
    uses it). The question is not written into the history unless --remember. Prints the answer,
    then the raw spans that came into view to answer it.
    Example: megacontext ask "What is the pass key?" --tree runs/mc
    """
    if max_new_tokens < 1:
        raise InvalidInputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    with _open(tree, base, focus, w_max, regist) as mc:
        before = {(e.level, e.index) for e in mc.working_context()}
        answer = mc.ask(question, max_new_tokens=max_new_tokens, remember=remember)
        console.print(answer.text.strip())
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
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    regist: RegistOpt = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 128,
) -> None:
    """Continue the history (after the prompt), streaming tokens as they come.

    Example: megacontext generate "Once upon a time" --max-new-tokens 64
    """
    if max_new_tokens < 0:
        raise InvalidInputError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    with _open(tree, base, focus, w_max, regist) as mc:
        for piece in mc.generate(prompt or None, max_new_tokens=max_new_tokens):
            console.print(piece, end="")
        console.print()
        if mc.trace_path is not None:
            console.print(f"[dim]focus trace: {mc.trace_path}[/dim]")


__all__ = ["ask", "generate", "ingest"]
