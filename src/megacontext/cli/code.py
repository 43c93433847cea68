"""``megacontext code``: a coding assistant's memory of whole repositories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from megacontext.cli.output import console, emit_json, err_console
from megacontext.cli.session import (
    DEFAULT_TREE,
    BaseOpt,
    FocusOpt,
    FocusStepsOpt,
    JsonOpt,
    MaxNewOpt,
    PromptOpt,
    TreeOpt,
    WMaxOpt,
    _check_session,
    _config,
    _opened,
)
from megacontext.errors import InvalidInputError

app = typer.Typer(
    help=(
        "A coding assistant's memory: whole repositories in a session, every span citable as "
        "PATH:LINE.\n\n"
        "Examples:\n\n"
        "  megacontext code ingest ~/src/project --tree runs/code --base smollm2\n\n"
        "  megacontext code ingest ~/src/project --tree runs/code   (again: only what changed)\n\n"
        "  megacontext code watch ~/src/project --tree runs/code\n\n"
        '  megacontext code ask "Where is the retry limit set?" --tree runs/code\n\n'
        '  megacontext code agent "What does checkout return?" --tree runs/code'
    ),
    no_args_is_help=True,
)


RepoArg = Annotated[Path, typer.Argument(help="The repository's directory.", show_default=False)]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="The repository's name in citations and source URIs (repo://NAME/PATH). "
        "Default: the directory's name.",
        show_default=False,
    ),
]
OnlyRepoOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Only this repository's old versions are kept closed (default: every repository's).",
        show_default=False,
    ),
]
MaxFileBytesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-file-bytes",
        help="Skip files larger than this (data dumps, not code). Default: 1,000,000.",
        show_default=False,
    ),
]


@app.command()
def ingest(
    repo: RepoArg,
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    name: NameOpt = None,
    max_file_bytes: MaxFileBytesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a repository's source files to a session, each with its path and line ranges.

    Files are read in sorted path order, one file's text contiguous in the history. Skipped,
    and counted in the summary: what .gitignore (every directory's own, and .git/info/exclude)
    excludes; vendored directories (node_modules, vendor, third_party, virtual environments,
    caches); generated files (lock files, minified bundles, protobuf stubs, files whose first
    lines say "@generated" or "DO NOT EDIT"); files over --max-file-bytes; empty and binary
    files; symbolic links.

    Run it again after the code changed: unchanged files are skipped, a changed file is added
    as a new version that supersedes the old one (which stays in the history, marked
    superseded), and files gone from the repository are listed.
    """
    from megacontext.apps.code import ingest_repo, scan_repo

    config = _config(tree, w_max, None, prompt)
    scan = scan_repo(repo, max_bytes=_max_file_bytes(max_file_bytes))
    scan.check_readable()  # before a model loads
    with _opened(tree, base, focus, config) as mc:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} files"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("reading", total=len(scan.files))

            def on_file(number: int, total: int, path: str) -> None:
                bar.update(task, completed=number - 1, description=escape(path))

            try:
                report = ingest_repo(mc, scan, name, on_file)
            except KeyboardInterrupt:
                err_console.print(
                    "[yellow]interrupted:[/yellow] the files read so far are kept (the one "
                    "being read was rolled back); run the same command again to go on"
                )
                raise typer.Exit(130) from None
        history = {"tokens": mc.tree.num_tokens, "levels": mc.tree.num_levels}
    _summary(report.to_json(), tree, history, as_json)


@app.command()
def watch(
    repo: RepoArg,
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    name: NameOpt = None,
    max_file_bytes: MaxFileBytesOpt = None,
    debounce: Annotated[
        float,
        typer.Option(
            "--debounce",
            help="Seconds of quiet after the last file event before the changes are read.",
        ),
    ] = 0.5,
) -> None:
    """Keep a session current with a repository while you edit it (Ctrl-C stops).

    First brings the session up to date (as `code ingest` does), then appends each change as
    it happens: a saved file as its new version (superseding the old one), a new file, a
    deleted file as a deletion record, a rename as both. Changes are read by content once the
    repository has been quiet for --debounce seconds, so editors' save patterns (a temporary
    file renamed over the original, bursts of writes) end in one update, and a save that
    changes nothing appends nothing.
    """
    from megacontext.apps.code import RepoWatcher
    from megacontext.apps.code.repo import repo_root

    if debounce < 0:
        raise InvalidInputError(f"--debounce must be >= 0 seconds, got {debounce}")
    config = _config(tree, w_max, None, prompt)
    repo_root(repo)  # before a model loads
    max_bytes = _max_file_bytes(max_file_bytes)
    with _opened(tree, base, focus, config) as mc:

        def show(report: Any) -> None:
            data = report.to_json()
            parts = [
                f"{len(data[key])} {key}" for key in ("added", "changed", "removed") if data[key]
            ]
            stamp = time.strftime("%H:%M:%S")
            console.print(
                f"[dim]{stamp}[/dim] {escape(data['repo'])}: "
                + (", ".join(parts) or "up to date")
                + f" ({data['tokens']:,} tokens; history {mc.tree.num_tokens:,})"
            )

        watcher = RepoWatcher(mc, repo, name, max_bytes, debounce, on_update=show)
        err_console.print(f"watching {escape(str(watcher.root))} (Ctrl-C stops)")
        try:
            watcher.run()
        except KeyboardInterrupt:
            err_console.print(f"stopped after {watcher.updates} update(s); the session is saved")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question about the code.")],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    name: OnlyRepoOpt = None,
    focus_steps: FocusStepsOpt = None,
    max_new_tokens: MaxNewOpt = 64,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about ingested code, citing PATH:LINE-LINE.

    Focus opens the current version of each file: the text of versions a later save superseded
    stays in the history, but is never expanded for the question (its gists stay in view), so
    the answer reads — and cites — the code as it is now. Each citation says whether it is a
    live version. Reads beside a running `code watch`.
    """
    from megacontext.apps.code import ask_code

    _check_session(tree)
    config = _config(tree, w_max, focus_steps, prompt)
    with _opened(tree, base, focus, config, readonly=True) as mc:
        answer = ask_code(mc, question, name, max_new_tokens=max_new_tokens)
    if as_json:
        emit_json(
            {
                "answer": answer.text,
                "focus_steps": answer.focus_steps,
                "avoided_tokens": answer.avoided_tokens,
                "citations": [
                    {
                        "label": c.label,
                        "path": c.path,
                        "lines": list(c.lines) if c.lines else None,
                        "live": c.live,
                        "score": c.score,
                    }
                    for c in answer.citations
                ],
            }
        )
        return
    console.print(escape(answer.text.strip()) or "[dim](no answer)[/dim]")
    for c in answer.citations[:8]:
        mark = "" if c.live else " [yellow](superseded version)[/yellow]"
        console.print(f"[dim]  {escape(c.label)}{mark}[/dim]")
    if answer.avoided_tokens:
        console.print(
            f"[dim]{answer.avoided_tokens:,} tokens of superseded versions kept closed[/dim]"
        )


@app.command()
def agent(
    question: Annotated[str, typer.Argument(help="The question about the code.")],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    name: OnlyRepoOpt = None,
    max_steps: Annotated[
        int,
        typer.Option(
            "--max-steps",
            help="The step budget: searches, opens and asks together (at least 3).",
        ),
    ] = 8,
    max_new_tokens: MaxNewOpt = 64,
    transcript: Annotated[
        Path | None,
        typer.Option(
            "--transcript",
            help="Write every step (tool, argument, result, seconds) and the answer as JSON "
            "to this file.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question that takes more than one look: search, open, ask, follow up.

    The loop searches the code for the question, opens the best hits (pinned raw in the
    working context), asks; then searches for the names the answer mentions that the code
    defines, opens their definitions and asks again — until the answer stops changing, nothing
    new is left to open, or --max-steps is spent. Every step is shown as it runs (and written
    with --transcript). Superseded file versions are never searched, opened or focused.

    Example: megacontext code agent "What does checkout return, and what does that call
    raise?" --tree runs/code --max-steps 10 --transcript runs/agent.json
    """
    from megacontext.apps.code.agent import CodeAgent

    _check_session(tree)
    config = _config(tree, w_max, None, prompt)
    if max_steps < 3:
        raise InvalidInputError(
            f"--max-steps must be >= 3 (a search, an open, an ask), got {max_steps}"
        )

    def show(step: Any) -> None:
        if not as_json:
            err_console.print(
                f"[dim]{step.tool:>6}[/dim] {escape(step.argument[:80])} "
                f"[dim]→ {escape(step.result[:100])} ({step.seconds:.1f} s)[/dim]"
            )

    with _opened(tree, base, focus, config, readonly=True) as mc:
        helper = CodeAgent(
            mc, name, max_steps=max_steps, max_new_tokens=max_new_tokens, on_step=show
        )
        run = helper.run(question)
    record = run.transcript()
    if transcript is not None:
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if as_json:
        emit_json(record)
        return
    console.print(escape((record["answer"] or "").strip()) or "[dim](no answer)[/dim]")
    for c in run.answer.citations[:8] if run.answer else []:
        mark = "" if c.live else " [yellow](superseded version)[/yellow]"
        console.print(f"[dim]  {escape(c.label)}{mark}[/dim]")
    console.print(
        f"[dim]{len(run.steps)} steps, {len(run.opened)} span(s) opened; {escape(run.stopped)}"
        + (f"; transcript: {escape(str(transcript))}" if transcript else "")
        + "[/dim]"
    )


def _max_file_bytes(value: int | None) -> int:
    """--max-file-bytes, or the default (apps.code.repo.MAX_FILE_BYTES)."""
    from megacontext.apps.code.repo import MAX_FILE_BYTES

    if value is None:
        return MAX_FILE_BYTES
    if value < 1:
        raise InvalidInputError(f"--max-file-bytes must be >= 1, got {value}")
    return value


def _summary(report: dict[str, Any], tree: Path, history: dict[str, int], as_json: bool) -> None:
    if as_json:
        emit_json({"tree": str(tree), "history": history, **report})
        return
    added, changed = len(report["added"]), len(report["changed"])
    console.print(
        f"{escape(report['repo'])}: {report['tokens']:,} tokens from {added} new and {changed} "
        f"changed file(s) into {escape(str(tree))}; {len(report['unchanged'])} unchanged "
        f"(history: {history['tokens']:,} tokens, {history['levels']} gist levels, "
        f"{report['seconds']:.1f} s)"
    )
    reasons: dict[str, int] = {}
    for why in report["skipped"].values():
        reasons[why] = reasons.get(why, 0) + 1
    if reasons:
        shown = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        console.print(f"[dim]skipped: {shown} (--json lists them)[/dim]")
    if report["removed"]:
        console.print(
            f"[yellow]{len(report['removed'])} file(s) gone from the repository[/yellow], "
            "recorded as deleted (their text stays in the history; `megacontext sources "
            "remove` erases it):"
        )
        for path in report["removed"][:10]:
            console.print(f"  {escape(path)}")
