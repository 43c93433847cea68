"""``megacontext ingest | ask | chat | generate``: use a MegaContext session from the shell.

A session directory remembers the base, the focus bundle and the settings it was created with
(``session.json``): ``--base``, ``--focus`` and ``--w-max`` are needed only to create one, or to
override what it recorded for one command. Every flag is checked before a model loads.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from megacontext.cli.output import console, emit_json, err_console
from megacontext.errors import BudgetError, InvalidInputError
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
        help="Working-context budget in entries (at most what the base was trained to read). "
        "Default: what the session recorded (512 for a new one).",
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
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document for scripts (progress on stderr).")
]
FocusStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--focus-steps",
        help="Most refocus steps for a question (focus stops earlier once it converges). "
        "Default: what the session recorded (8).",
        show_default=False,
    ),
]


def _at_least_one_token(value: int) -> int:
    if value < 1:
        raise InvalidInputError(f"--max-new-tokens must be >= 1, got {value}")
    return value


MaxNewOpt = Annotated[
    int,
    typer.Option(
        "--max-new-tokens", help="Longest answer in tokens.", callback=_at_least_one_token
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="How questions are put to the base: raw (the question, then the answer), chat "
        "(the base's chat template: what free questions need with an instruct model such as "
        "smollm2) or chat-cue. Kept by a new session; given to a command, for that command. "
        "Default: what the session recorded, else raw.",
        show_default=False,
    ),
]


# ----------------------------------------------------------------------------- opening


def _config(
    tree: Path, w_max: int | None, focus_steps: int | None = None, prompt: str | None = None
) -> Any:
    """The settings for this command: what the session recorded, with the flags applied.

    Checked before any model loads, so a bad flag fails at once and names itself.
    """
    from megacontext.models.prompting import PROMPT_STYLES
    from megacontext.runtime import SessionConfig
    from megacontext.runtime.opening import read_recorded

    if w_max is not None and w_max < 1:
        raise InvalidInputError(f"--w-max must be >= 1, got {w_max}")
    if focus_steps is not None and focus_steps < 0:
        raise InvalidInputError(f"--focus-steps must be >= 0, got {focus_steps}")
    if prompt is not None and prompt not in PROMPT_STYLES:
        raise InvalidInputError(
            f"--prompt {prompt!r} is not a prompt style; choose one of: {', '.join(PROMPT_STYLES)}"
        )
    if w_max is None and focus_steps is None and prompt is None:
        return None
    recorded = read_recorded(tree)
    config = recorded.config if recorded else SessionConfig()
    if w_max is not None:
        try:
            config = config.resized(w_max)
        except (InvalidInputError, BudgetError) as exc:
            raise InvalidInputError(f"--w-max {w_max} cannot be used: {exc}") from None
    if focus_steps is not None:
        config = config.with_changes(focus_steps=focus_steps)
    if prompt is not None:
        config = config.with_changes(prompt=prompt)
    return config


def _check_session(tree: Path) -> None:
    """Commands that read a session refuse a path that holds none (a --tree typo)."""
    from megacontext.runtime.opening import is_session

    if not is_session(tree):
        raise InvalidInputError(
            f"{tree} holds no MegaContext session; check --tree, or create one with "
            f"`megacontext ingest FILE --tree {tree}`"
        )


@contextmanager
def _opened(
    tree: Path,
    base: str | None,
    focus: str | None,
    config: Any,
    *,
    regist: bool = False,
    readonly: bool = False,
) -> Iterator[Any]:
    """Open the session, translating what the library says into what the user typed."""
    from megacontext.runtime import open_session
    from megacontext.runtime.opening import PositionLimitError
    from megacontext.store import StoreLockedError

    try:
        session = open_session(
            tree, base=base, focus=focus, config=config, regist=regist, readonly=readonly
        )
    except PositionLimitError as exc:
        raise InvalidInputError(
            f"--w-max {exc.W_max:,} does not fit in the {exc.trained:,} positions {exc.base} was "
            f"trained on (with the prompt and room for a question and answer); use "
            f"--w-max {exc.most:,} or less"
        ) from None
    except StoreLockedError:
        raise InvalidInputError(
            f"another megacontext command is writing to {tree}; wait for it to finish (`ask` "
            "without --remember reads beside a writer)"
        ) from None
    with session:
        for settled in session.recovered:
            err_console.print(f"[yellow]note:[/yellow] {escape(settled.describe())}")
        yield session


# ----------------------------------------------------------------------------- ingest


def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files, directories (recursive) or - for stdin.")
    ],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    regist: RegistOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="Add content again that the history already holds.")
    ] = False,
    encoding: Annotated[
        str | None,
        typer.Option(
            "--encoding",
            help="Text encoding of the files (e.g. latin-1). Default: UTF-8 when the file is "
            "UTF-8, else detected.",
            show_default=False,
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="A dask scheduler address (tcp://HOST:8786): its workers tokenize and gist the "
            "files, this process commits them in order. The tree is the one a run without "
            "--cluster makes, byte for byte. Workers need megacontext and the base installed.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add files to a session's history, recording where every span came from.

    Creates the session when the directory does not hold one (with --base, --focus, --w-max, or
    the defaults); a later command needs none of them. Each file goes in whole or not at all: an
    interrupted ingest (Ctrl-C, a crash) is rolled back, and running the same command again
    resumes — files the history already holds are skipped (--force adds them again), a file
    reached twice through symlinks is read once. Text that is not UTF-8 is detected (or give
    --encoding); only files with no text encoding are skipped, and each is named.

    Example: megacontext ingest docs/ notes.txt --tree runs/mc --base smollm2

    On a dask cluster: megacontext ingest corpus/ --tree runs/mc --cluster tcp://10.0.0.5:8786
    """
    from megacontext.runtime.opening import is_session
    from megacontext.runtime.reading import check_encoding, discover

    encoding = check_encoding(encoding)
    config = _config(tree, w_max, None, prompt)
    if tree.exists() and not is_session(tree) and (not tree.is_dir() or any(tree.iterdir())):
        raise InvalidInputError(
            f"{tree} exists and is not a MegaContext session; give --tree a new or empty "
            "directory (ingest never mixes its files into another directory)"
        )
    files, repeats = discover(paths)
    report: list[dict[str, Any]] = [
        {"path": str(p), "status": "skipped", "reason": "the same file as one listed before"}
        for p in repeats
    ]
    with _opened(tree, base, focus, config, regist=regist) as mc:
        try:
            if cluster is None:
                _ingest_files(mc, files, encoding, force, report)
            else:
                _ingest_on_cluster(mc, files, encoding, force, report, cluster)
        except KeyboardInterrupt:
            _interrupted(report, tree)
            raise typer.Exit(130) from None
        history = {"tokens": mc.tree.num_tokens, "levels": mc.tree.num_levels}
    _ingest_summary(report, tree, history, as_json)


def _ingest_files(
    mc: Any, files: list[Any], encoding: str | None, force: bool, report: list[dict[str, Any]]
) -> None:
    from megacontext.runtime.reading import STDIN, read_text

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} tokens"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("reading", total=0)
        for number, source in enumerate(files, 1):
            entry: dict[str, Any] = {"path": str(source.path)}
            report.append(entry)
            name = source.path.name or str(source.path)
            bar.update(task, description=f"[{number}/{len(files)}] {escape(name)}", completed=0)
            text = read_text(source, encoding)
            if text is None:
                entry.update(status="skipped", reason="binary or empty (no text encoding fits)")
                continue
            uri = "stdin" if source.path == STDIN else source.resolved.as_uri()
            meta = {"path": str(source.path), "encoding": text.encoding}

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            entry.update(status="running", encoding=text.encoding, detected=text.detected)
            done = mc.ingest(text.text, source=uri, metadata=meta, force=force, progress=advance)
            _settle(entry, done)


def _ingest_on_cluster(
    mc: Any,
    files: list[Any],
    encoding: str | None,
    force: bool,
    report: list[dict[str, Any]],
    address: str,
) -> None:
    from megacontext.runtime.cluster import Document, ingest_on_cluster
    from megacontext.runtime.reading import STDIN, read_text

    documents, entries = [], []
    for source in files:
        entry: dict[str, Any] = {"path": str(source.path)}
        report.append(entry)
        text = read_text(source, encoding)
        if text is None:
            entry.update(status="skipped", reason="binary or empty (no text encoding fits)")
            continue
        uri = "stdin" if source.path == STDIN else source.resolved.as_uri()
        meta = {"path": str(source.path), "encoding": text.encoding}
        entry.update(status="running", encoding=text.encoding, detected=text.detected)
        documents.append(Document(text.text, uri, meta))
        entries.append(entry)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} files"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"ingesting on {escape(address)}", total=len(documents))

        def committed(i: int, done: Any) -> None:
            _settle(entries[i], done)
            bar.update(task, completed=i + 1)

        ingest_on_cluster(mc, documents, address, force=force, on_committed=committed)


def _settle(entry: dict[str, Any], done: Any) -> None:
    """Record one file's outcome (an Ingested) in the report."""
    entry.update(tokens=done.tokens, start=done.start, stop=done.stop)
    if done.duplicate_of is not None:
        entry.update(status="skipped", reason=f"already in the history ({done.duplicate_of})")
    else:
        entry["status"] = "ingested"


def _interrupted(report: list[dict[str, Any]], tree: Path) -> None:
    kept = [e for e in report if e.get("status") == "ingested"]
    cut = [e["path"] for e in report if e.get("status") == "running"]
    tokens = sum(e.get("tokens", 0) for e in kept)
    err_console.print(
        f"[yellow]interrupted:[/yellow] kept {len(kept)} file(s) ({tokens:,} tokens)"
        + (f"; {escape(cut[0])} was rolled back" if cut else "")
        + f". Run the same command again to resume: files already in {escape(str(tree))} are "
        "skipped."
    )


def _ingest_summary(
    report: list[dict[str, Any]], tree: Path, history: dict[str, int], as_json: bool
) -> None:
    ingested = [e for e in report if e["status"] == "ingested"]
    skipped = [e for e in report if e["status"] == "skipped"]
    tokens = sum(e["tokens"] for e in ingested)
    if as_json:
        emit_json({"tree": str(tree), "tokens": tokens, "history": history, "files": report})
        return
    console.print(
        f"ingested {tokens:,} tokens from {len(ingested)} file(s) into {escape(str(tree))} "
        f"(history: {history['tokens']:,} tokens, {history['levels']} gist levels)"
    )
    detected = [e for e in ingested if e.get("detected")]
    for entry in detected[:5]:
        console.print(f"[dim]{escape(entry['path'])}: read as {entry['encoding']} (detected)[/dim]")
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} file(s):[/yellow]")
        for entry in skipped[:10]:
            console.print(f"  {escape(entry['path'])}: {escape(entry['reason'])}")
        if len(skipped) > 10:
            console.print(f"  … and {len(skipped) - 10} more (--json lists them all)")


# ----------------------------------------------------------------------------- ask and chat


def ask(
    question: Annotated[str, typer.Argument(help="The question, answered from the whole history.")],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    regist: RegistOpt = False,
    focus_steps: FocusStepsOpt = None,
    max_new_tokens: MaxNewOpt = 64,
    remember: Annotated[
        bool,
        typer.Option("--remember", help="Also append the question and the answer to the history."),
    ] = False,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Answer as a principal holding these access labels (comma-separated): sources "
            "labelled otherwise never reach the model (`megacontext compliance label`)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a question about everything the session has seen; the answer cites its sources.

    Focus moves for the question until it converges (at most --focus-steps refocus steps), then
    the base answers in the session's prompt style (its chat template where it has one). Prints
    the answer, then the source file and lines of every span that came into view to answer it,
    most relevant first. The question is not written into the history unless --remember, so any
    number of `ask`s can run at once, beside an `ingest`.

    Example: megacontext ask "What is the pass key?" --tree runs/mc
    """
    if not question.strip():
        raise InvalidInputError("the question is empty; ask something")
    config = _config(tree, w_max, focus_steps, prompt)
    _check_session(tree)
    started = time.perf_counter()
    readonly = not (remember or regist)
    with _opened(tree, base, focus, config, regist=regist, readonly=readonly) as mc:
        loaded = time.perf_counter() - started
        if labels is not None:
            mc.restrict(label.strip() for label in labels.split(","))
        answer = mc.ask(question, max_new_tokens=max_new_tokens, remember=remember)
    seconds = {"load": loaded, **answer.seconds, "total": time.perf_counter() - started}
    if as_json:
        emit_json(
            {
                "question": question,
                "answer": answer.text.strip(),
                "citations": [asdict(c) for c in answer.citations],
                "spans": [list(s) for s in answer.spans],
                "focus_steps": answer.focus_steps,
                "seconds": seconds,
            }
        )
        return
    console.print(escape(answer.text.strip()) or "[dim](no answer)[/dim]")
    _print_citations(answer.citations)
    console.print(
        f"[dim]load {seconds['load']:.1f} s · focus {seconds['focus']:.2f} s "
        f"({answer.focus_steps} steps) · decode {seconds['decode']:.2f} s[/dim]"
    )


def _print_citations(citations: list[Any], limit: int = 8) -> None:
    if not citations:
        console.print(
            "[dim]no far span came into view: answered from what was already in view[/dim]"
        )
        return
    console.print("[bold]sources[/bold] (spans brought into view, most relevant first):")
    for number, citation in enumerate(citations[:limit], 1):
        snippet = " ".join(citation.text.split())
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "…"
        console.print(
            f"  {number}. {escape(citation.label())}  [dim]score {citation.score:+.2f} · "
            f"«{escape(snippet)}»[/dim]"
        )
    if len(citations) > limit:
        console.print(f"  [dim]… and {len(citations) - limit} more (--json lists them all)[/dim]")


def chat(
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    focus_steps: FocusStepsOpt = None,
    max_new_tokens: MaxNewOpt = 128,
) -> None:
    """Talk with the session: the model stays loaded and the conversation is remembered.

    Each line you type is asked like `megacontext ask --remember`: answered with citations, then
    the question and the answer join the history, so later questions can refer to them. An empty
    line, /exit or Ctrl-D ends the chat.

    Example: megacontext chat --tree runs/mc
    """
    config = _config(tree, w_max, focus_steps, prompt)
    _check_session(tree)
    with _opened(tree, base, focus, config) as mc:
        console.print(
            f"[dim]{mc.tree.num_tokens:,} tokens in the history; empty line or /exit to end[/dim]"
        )
        turns = 0
        while True:
            console.print("[bold]you>[/bold] ", end="")
            line = sys.stdin.readline()
            question = line.strip()
            if not line or not question or question in ("/exit", "/quit"):
                break
            answer = mc.ask(question, max_new_tokens=max_new_tokens, remember=True)
            console.print(f"[bold]model>[/bold] {escape(answer.text.strip())}")
            _print_citations(answer.citations, limit=3)
            turns += 1
        console.print(
            f"[dim]{turns} turn(s) remembered; history: {mc.tree.num_tokens:,} tokens[/dim]"
        )


# ----------------------------------------------------------------------------- generate


def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue (appended to the history).")] = "",
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    regist: RegistOpt = False,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Tokens to generate.")
    ] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Continue the history (after the prompt), streaming tokens as they come.

    The prompt and what is generated join the history (as one source of kind `generated`).

    Example: megacontext generate "Once upon a time" --max-new-tokens 64
    """
    if max_new_tokens < 0:
        raise InvalidInputError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    config = _config(tree, w_max)
    _check_session(tree)
    started = time.perf_counter()
    with _opened(tree, base, focus, config, regist=regist) as mc:
        loaded = time.perf_counter() - started
        before = mc.tree.num_tokens
        pieces = []
        for piece in mc.generate(prompt or None, max_new_tokens=max_new_tokens):
            pieces.append(piece)
            if not as_json:
                console.print(escape(piece), end="")
        trace = mc.trace_path if mc.trace_path is not None and mc.trace_path.is_file() else None
        appended = mc.tree.num_tokens - before
    seconds = {"load": loaded, "total": time.perf_counter() - started}
    if as_json:
        emit_json({"text": "".join(pieces), "tokens": appended, "trace": trace, "seconds": seconds})
        return
    console.print()
    if trace is not None:
        console.print(f"[dim]focus trace: {trace}[/dim]")


__all__ = ["ask", "chat", "generate", "ingest"]
