"""``megacontext demo``: questions about facts planted in a long document, answered at a budget.

The experiment (document, planted facts, MegaContext and the baselines answering) is
:mod:`megacontext.eval.demo`; this module runs it with progress bars and prints it: the
document, each MegaContext answer with the spans that were raw at answer time, the answers side by
side, and a summary (``--json`` writes everything).

Example:
    megacontext demo                       # 120k tokens, 5 facts, W_max 512
    megacontext demo --tokens 200000 --facts 8 --json demo.json
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from megacontext.cli.output import console
from megacontext.core import DEFAULT_W_MAX
from megacontext.errors import InvalidInputError
from megacontext.eval.demo import DEFAULT_SYSTEMS

if TYPE_CHECKING:
    from megacontext.eval.demo import DemoAnswer, Document
    from megacontext.models.bundle import Bundle

STAND_IN = "stand-in"


@dataclass
class DemoConfig:
    """Settings of the main demo (the command's options)."""

    base: str = "default"
    focus: str = "default"
    tokens: int = 120_000
    facts: int = 5
    seed: int = 0
    w_max: int = DEFAULT_W_MAX
    refocus_steps: int | None = None  # default: the sessions' focus_steps
    new_tokens: int = 24
    prompt: str | None = None
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    threads: int = 0
    json_path: Path | None = None


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_demo(config: DemoConfig, console: Console) -> dict[str, Any]:
    """Run the demo, print it, and return (and optionally write) the machine-readable results."""
    from megacontext.runtime.config import SessionConfig

    if config.w_max < 64:
        raise InvalidInputError(f"--w-max must be >= 64, got {config.w_max}")
    if (config.refocus_steps is not None and config.refocus_steps < 0) or config.new_tokens < 1:
        raise InvalidInputError(
            f"--refocus-steps must be >= 0 (got {config.refocus_steps}) and new_tokens >= 1 "
            f"(got {config.new_tokens})"
        )
    unknown = set(config.systems) - set(DEFAULT_SYSTEMS)
    if unknown:
        raise InvalidInputError(
            f"unknown system(s) {sorted(unknown)}; choose from {', '.join(DEFAULT_SYSTEMS)}"
        )
    if config.prompt is not None:
        SessionConfig(prompt=config.prompt)  # a typed error naming the styles, before loading
    if "megacontext" in config.systems and config.focus not in ("default", STAND_IN):
        from megacontext.models.bundle import resolve_focus

        resolve_focus(config.focus, {}, config.base)  # a bundle path is checked before loading
    with _threads(config.threads), tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        return _run(config, Path(tmp), console)


def _run(config: DemoConfig, workdir: Path, console: Console) -> dict[str, Any]:
    from megacontext.eval.demo import (
        baseline_answers,
        baseline_systems,
        build_document,
        megacontext_answers,
    )
    from megacontext.runtime.config import SessionConfig

    started = time.perf_counter()
    focus_steps = (
        SessionConfig().focus_steps if config.refocus_steps is None else config.refocus_steps
    )
    console.rule("[bold]MegaContext demo: questions about a long document[/bold]")
    base, prompt, bundle, focus_label = _load(config, workdir, console)
    with console.status("building the document from the packaged held-out texts"):
        document = build_document(base, config.tokens, config.facts, config.seed, config.w_max)
    _print_document(console, document)

    answers: list[DemoAnswer] = []
    seconds: dict[str, float] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        if bundle is not None:
            session_config = SessionConfig(
                W_max=config.w_max, trace=False, focus_steps=focus_steps, prompt=prompt.style
            )
            mc, ingest_s = megacontext_answers(
                base, bundle, document, workdir, session_config, config.new_tokens, progress
            )
            answers += mc
            seconds["megacontext"] = ingest_s + sum(a.seconds for a in mc)
        for name, factory in baseline_systems(base, config.systems).items():
            got, observe_s = baseline_answers(
                base, prompt, name, factory, document, config.w_max, config.new_tokens, progress
            )
            answers += got
            seconds[name] = observe_s + sum(a.seconds for a in got)

    for answer in answers:
        if answer.spans is not None:
            _print_megacontext_answer(console, document, answer)
    _print_side_by_side(console, document, answers, list(seconds))
    summary = _summary(console, answers, seconds)
    total = time.perf_counter() - started
    console.print(
        f"[bold]Summary:[/bold] {len(document.ids):,} tokens, W_max {config.w_max}, "
        f"{len(document.facts)} questions, {len(seconds)} systems; {total:.1f} s in all."
    )
    result = {
        "base": base.source,
        "focus": focus_label,
        "prompt": prompt.style,
        "w_max": config.w_max,
        "seed": config.seed,
        "refocus_steps": focus_steps,
        "document": {
            "tokens": len(document.ids),
            "sources": document.sources,
            "facts": [asdict(f) for f in document.facts],
        },
        "rows": [_row(document, a) for a in answers],
        "summary": summary,
        "seconds": total,
    }
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {config.json_path}")
    return result


def _load(
    config: DemoConfig, workdir: Path, console: Console
) -> tuple[Any, Any, Bundle | None, str]:
    """The base, the prompt format, the focus bundle (a stand-in when asked) and its label."""
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base
    from megacontext.models.prompting import PromptFormat

    with console.status(f"loading the base model ({config.base})"):
        base = load_base(config.base)
    prompt = PromptFormat.for_base(base, config.prompt or PromptFormat.default_style(base))
    bundle: Bundle | None = None
    focus_label = "none"
    if "megacontext" in config.systems:
        if config.focus == STAND_IN:
            from megacontext.bench.runtime import stand_in_bundle

            focus_dir = stand_in_bundle(base, workdir / "stand-in-focus", seed=config.seed)
            focus_label = "untrained stand-in (random GistNet/LensNet)"
        else:
            focus_dir = resolve_focus(config.focus, base.fingerprints, base.source)
            focus_label = str(focus_dir)
        bundle = load_bundle(focus_dir, fingerprints=base.fingerprints)
    console.print(
        f"Base: {base.source} ({sum(p.numel() for p in base.model.parameters()) / 1e6:.1f}M "
        f"parameters, d_model {base.d_model}); focus bundle: {focus_label}; prompt style: "
        f"{prompt.style}"
    )
    return base, prompt, bundle, focus_label


def _print_document(console: Console, document: Document) -> None:
    n = len(document.ids)
    console.print(
        f"Document: {n:,} tokens from {len(document.sources)} held-out texts "
        f"({escape(', '.join(document.sources[:3]))}{', …' if len(document.sources) > 3 else ''}); "
        f"{len(document.facts)} planted facts:"
    )
    facts_table = Table(show_header=True, header_style="bold")
    for column in ("#", "fact", "tokens", "depth"):
        facts_table.add_column(column, justify="right" if column != "fact" else "left")
    for i, fact in enumerate(document.facts):
        facts_table.add_row(
            str(i + 1),
            escape(fact.text.strip()),
            f"{fact.start:,}–{fact.end:,}",
            f"{fact.depth:.0%}",
        )
    console.print(facts_table)


def _summary(
    console: Console, answers: list[DemoAnswer], seconds: dict[str, float]
) -> list[dict[str, Any]]:
    summary = []
    for name in seconds:
        mine = [a for a in answers if a.system == name]
        right = sum(a.correct for a in mine)
        summary.append(
            {
                "system": name,
                "correct": right,
                "questions": len(mine),
                "accuracy": right / len(mine) if mine else 0.0,
                "seconds": seconds[name],
            }
        )
        console.print(
            f"[bold]{name:>12}[/bold]: {right}/{len(mine)} correct "
            f"({right / max(1, len(mine)):.0%}) in {seconds[name]:.1f} s"
        )
    return summary


def _row(document: Document, answer: DemoAnswer) -> dict[str, Any]:
    fact = document.facts[answer.question]
    row: dict[str, Any] = {
        "question": answer.question,
        "kind": fact.kind,
        "text": fact.question,
        "system": answer.system,
        "answer": answer.answer,
        "expected": answer.expected,
        "correct": answer.correct,
        "seconds": answer.seconds,
    }
    if answer.spans is not None:
        # Raw runs outside the recent tail at answer time; "expanded": refocus brought it back.
        row["raw_spans"] = [asdict(s) | {"facts": list(s.facts)} for s in answer.spans]
        row["fact_raw"] = any(answer.question in s.facts for s in answer.spans)
        row["fact_expanded"] = any(answer.question in s.facts and s.expanded for s in answer.spans)
    row.update(answer.extra)
    return row


def _mark(ok: bool) -> str:
    return "[green]✓[/green]" if ok else "[red]✗[/red]"


def _print_megacontext_answer(console: Console, document: Document, answer: DemoAnswer) -> None:
    fact = document.facts[answer.question]
    console.print(
        f"\n[bold]Q{answer.question + 1}[/bold] {escape(repr(fact.question))}  → "
        f"[bold]{escape(repr(answer.answer.strip()))}[/bold] {_mark(answer.correct)} "
        f"(expected {fact.value}; fact at tokens {fact.start:,}–{fact.end:,})"
    )
    levels = ", ".join(f"{k}: {v}" for k, v in answer.extra.get("levels", {}).items())
    console.print(
        f"  working context at answer time: {answer.extra.get('entries')} entries ({levels}); "
        f"{answer.extra.get('refocus_steps', 0)} refocus steps made "
        f"{answer.extra.get('expands', 0)} expands, {answer.extra.get('collapses', 0)} collapses"
    )
    spans = answer.spans or []
    if not spans:
        console.print("  [dim]no span outside the recent tail was raw at answer time[/dim]")
    # Spans with a planted fact first, then those refocus expanded, then the rest; at most 8.
    shown = sorted(spans, key=lambda s: (not s.facts, not s.expanded, s.start))[:8]
    for span in sorted(shown, key=lambda s: s.start):
        here = answer.question in span.facts
        tag = (
            " [bold green]← the fact[/bold green]"
            if here
            else (" [yellow]← another fact[/yellow]" if span.facts else "")
        )
        how = "expanded" if span.expanded else "raw since assembly"
        console.print(
            f"  {how:>18} {span.start:>7,}–{span.end:<7,} {escape(repr(span.preview))}{tag}"
        )
    if len(spans) > 8:
        console.print(f"  … and {len(spans) - 8} more raw spans (all in --json)")


def _print_side_by_side(
    console: Console, document: Document, answers: list[DemoAnswer], systems: list[str]
) -> None:
    table = Table(title="Side by side (same base, same budget)", show_header=True)
    table.add_column("question")
    table.add_column("expected", justify="right")
    for name in systems:
        table.add_column(name)
    for i, fact in enumerate(document.facts):
        label = f"Q{i + 1} {'pass key' if fact.kind == 'passkey' else 'key ' + fact.key}"
        cells = []
        for name in systems:
            found = [a for a in answers if a.system == name and a.question == i]
            cells.append(
                f"{escape(repr(found[0].answer.strip()[:16]))} {_mark(found[0].correct)}"
                if found
                else ""
            )
        table.add_row(label, fact.value, *cells)
    console.print(table)


# ----------------------------------------------------------------------------- the command


def demo(
    base: Annotated[
        str,
        typer.Option(
            help="Base model: 'default', 'tiny', 'smollm2', 'gemma3-270m', a .gguf file or a "
            "model directory."
        ),
    ] = "default",
    focus: Annotated[
        str,
        typer.Option(
            help="Focus bundle (GistNet + LensNet): 'default' (the one shipped for the base), a "
            f"bundle directory, or '{STAND_IN}' for untrained nets of the default shapes."
        ),
    ] = "default",
    tokens: Annotated[int, typer.Option(help="Document length in tokens (at least).")] = 120_000,
    facts: Annotated[
        int, typer.Option(help="Facts to plant and ask about (kv lines, then one pass key).")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the document and the facts.")] = 0,
    w_max: Annotated[
        int, typer.Option("--w-max", help="Budget in entries, for every system.")
    ] = DEFAULT_W_MAX,
    refocus_steps: Annotated[
        int | None,
        typer.Option(
            "--refocus-steps",
            help="Most LensNet refocus steps before each answer (fewer when a step plans "
            "nothing). Default: the sessions' focus_steps (8).",
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="How questions are put to the base: raw, chat or chat-cue (default: the "
            "base's default style).",
        ),
    ] = None,
    systems: Annotated[
        str,
        typer.Option(help="Comma-separated systems to run (rag-minilm only if installed)."),
    ] = ",".join(DEFAULT_SYSTEMS),
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch's default).")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON to this path.")
    ] = None,
) -> None:
    """Answer questions about facts planted in a long document, at a 512-entry budget.

    Builds a >= 100k-token document from the packaged held-out texts with planted facts
    ("key WORD has value N.", one pass key), lets a MegaContext session ingest it and answer a
    question about each fact with LensNet's refocus, prints each answer with the spans that were
    expanded to answer it, and compares with the recency baseline and RAG at the same budget.
    Nothing is downloaded.

    Examples: megacontext demo --tokens 200000 --facts 8 --json demo.json;
    megacontext demo --focus stand-in --systems megacontext,recency (no focus bundle built yet)
    """
    run_demo(
        DemoConfig(
            base=base,
            focus=focus,
            tokens=tokens,
            facts=facts,
            seed=seed,
            w_max=w_max,
            refocus_steps=refocus_steps,
            prompt=prompt,
            systems=tuple(s.strip() for s in systems.split(",") if s.strip()),
            threads=threads,
            json_path=json_path,
        ),
        console,
    )
