"""``megacontext demo``: questions about facts planted in a long document, answered at W_max = 512.

The main demo, on the packaged default base and its focus bundle, with nothing downloaded:

1. **Document.** Held-out texts shipped with the package (Bible books, Shakespeare, Python
   documentation, standard-library source) are concatenated in a seeded order to ``--tokens``
   tokens (default 120k) of the base's tokenizer, and ``--facts`` facts are planted at spread
   depths, in the formats the default base was trained on: key/value lines
   ("key WORD has value N.") and one pass key ("The pass key is N. Remember it. N is the pass
   key."). The token span of every fact is recorded.
2. **MegaContext.** A session (:func:`megacontext.open`) ingests the document once. Each question
   is then asked on a fresh copy of that session (so nothing a previous question expanded, and no
   previous question or answer, carries over): the question is appended to the history, LensNet
   refocuses the working context for a few steps, and the session decodes a short greedy answer.
   The demo prints the answer, whether it is right, and the spans that were raw tokens at answer
   time outside the recent tail (the detail LensNet brought back), marking the planted fact.
3. **Side by side.** The same questions go through the recency baseline and RAG-BM25 (and
   RAG-MiniLM when its packaged encoder is installed) from :mod:`megacontext.eval` with the same
   base and the same budget: ``[context][question]`` is at most ``W_max`` entries, greedy decode.

Example:
    megacontext demo                       # 120k tokens, 5 facts, W_max 512
    megacontext demo --tokens 200000 --facts 8 --json demo.json
"""

from __future__ import annotations

import json
import random
import re
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from megacontext.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

    from megacontext.models.adapter import BaseAdapter
    from megacontext.models.bundle import Bundle

# The trained formats (megacontext.train.tasks): the small default base learned to answer these.

# Held-out sources in the order they fill the document: prose first, then source code.
SOURCE_ORDER = ("kjv", "gutenberg", "pydoc", "stdlib")
STAND_IN = "stand-in"
DEFAULT_SYSTEMS = ("megacontext", "recency", "rag-bm25", "rag-minilm")


@dataclass(frozen=True)
class PlantedFact:
    """One fact hidden in the document.

    Attributes:
        kind: ``"kv"`` or ``"passkey"``.
        key: The key word (``""`` for the pass key).
        value: The digits the answer must start with.
        text: The planted line, exactly as its tokens decode.
        question: The question, in the trained format.
        start: First token of the fact in the document.
        end: One past its last token.
        depth: ``start`` as a fraction of the document's length.
    """

    kind: str
    key: str
    value: str
    text: str
    question: str
    start: int
    end: int
    depth: float


@dataclass
class Document:
    """The demo document: token ids, the planted facts, and the held-out texts it was built from."""

    ids: np.ndarray
    facts: list[PlantedFact]
    sources: list[str]
    seed: int


@dataclass(frozen=True)
class Span:
    """A run of raw tokens ``[start, end)`` in the working context outside the recent tail."""

    start: int
    end: int
    preview: str
    facts: tuple[int, ...]  # indices of the planted facts it overlaps
    expanded: bool  # some of it was a gist before refocus (else raw since assembly)


@dataclass
class Answer:
    """One system's answer to one question."""

    question: int
    system: str
    answer: str
    expected: str
    correct: bool
    seconds: float
    spans: list[Span] | None = None  # MegaContext only: raw runs outside the tail
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the document


def heldout_documents(seed: int) -> list[tuple[str, str]]:
    """``(source/name, text)`` of the packaged held-out texts: prose first, seeded order within."""
    from megacontext.data import heldout_documents

    rows = heldout_documents()
    rng = random.Random(f"longdemo/{seed}")
    ordered: list[tuple[str, str]] = []
    for source in SOURCE_ORDER:
        group = [r for r in rows if r["source"] == source]
        rng.shuffle(group)
        ordered += [(f"{r['source']}/{r['name']}", r["text"]) for r in group]
    return ordered


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars (load reports, long-input notices)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _fact_lines(rng: random.Random, facts: int) -> list[tuple[str, str, str, str, str]]:
    """``(kind, key, value, line, question)`` for ``facts`` facts: kv lines, then one pass key.

    The lines and questions are the templates the default base was trained on.
    """
    from megacontext.data import (
        KV_LINE,
        KV_QUESTION,
        PASSKEY_NEEDLE,
        PASSKEY_QUESTION,
        random_digits,
    )

    out = []
    keys: list[str] = []  # a list, not a set: set order changes with the process's hash seed
    while len(keys) < facts - 1:
        key = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
        if key not in keys:
            keys.append(key)
    for key in keys:
        value = random_digits(rng, 4)
        out.append(
            ("kv", key, value, KV_LINE.format(key=key, value=value), KV_QUESTION.format(key=key))
        )
    value = random_digits(rng, 5)
    out.append(("passkey", "", value, PASSKEY_NEEDLE.format(key=value), PASSKEY_QUESTION))
    return out


def minimum_tokens(fact_tokens: int, w_max: int) -> int:
    """The shortest document that holds the facts outside the recent window.

    Facts sit at depths up to 70% of the filler; with at least ``4 * w_max`` filler tokens the
    last of them is more than ``w_max`` tokens from the end, so recency alone cannot see it.
    """
    return fact_tokens + 4 * w_max


def build_document(
    base: BaseAdapter, tokens: int, facts: int = 5, seed: int = 0, w_max: int = 512
) -> Document:
    """Held-out text of ``tokens`` tokens (or a few more) with ``facts`` planted facts.

    Deterministic for a given base tokenizer, ``tokens``, ``facts`` and ``seed``. Each fact is
    inserted after a line break of the filler at a spread, seeded depth between 5% and 70%.

    Raises:
        InvalidInputError: ``facts < 1``, or ``tokens`` too small to hold the facts outside the
            recent window (see :func:`minimum_tokens`).
    """
    import numpy as np

    if facts < 1:
        raise InvalidInputError(f"--facts must be >= 1 (one pass key plus kv lines), got {facts}")
    rng = random.Random(f"longdemo/facts/{seed}")
    lines = _fact_lines(rng, facts)
    encoded = [base.encode(line, add_bos=False) for *_, line, _q in lines]
    fact_tokens = sum(map(len, encoded))
    need = minimum_tokens(fact_tokens, w_max)
    if tokens < need:
        raise InvalidInputError(
            f"--tokens {tokens} is too small to hold {facts} facts ({fact_tokens} tokens) outside "
            f"the {w_max}-entry recent window; use --tokens {need} or more"
        )
    filler_len = tokens - fact_tokens
    special = {base.bos_token_id, base.eos_token_id} - {None}
    filler: list[int] = []
    sources: list[str] = []
    documents = heldout_documents(seed)
    with _quiet_transformers():  # whole documents exceed the base's context: that is the point
        while len(filler) < filler_len:
            name, text = documents[len(sources) % len(documents)]
            again = len(sources) >= len(documents)  # the held-out set is exhausted: go round
            filler += [t for t in base.encode(text + "\n\n", add_bos=False) if t not in special]
            sources.append(f"{name} (again)" if again else name)
    filler = filler[:filler_len]

    # Spread depths: one per stratum of [5%, 70%] of the filler, jittered within it, moved to
    # just after a line break inside the same stratum where there is one. Nothing lands past 70%,
    # so the last fact is at least 0.3 * 4 * w_max > w_max tokens from the end.
    filler_ids = np.asarray(filler, dtype=np.int64)
    breaks = [t for t in np.unique(filler_ids).tolist() if "\n" in base.decode([t])]
    newline = np.isin(filler_ids, breaks)
    strata = np.linspace(0.05, 0.70, facts + 1)
    cuts = []
    for i in range(facts):
        low, high = int(filler_len * strata[i]), int(filler_len * strata[i + 1])
        want = rng.randint(low, max(low, high - 1))
        after = np.flatnonzero(newline[want:high])
        cuts.append(want + int(after[0]) + 1 if after.size else want)

    pieces: list[list[int]] = []
    planted: list[PlantedFact] = []
    last = 0
    position = 0
    for (kind, key, value, line, question), ids, cut in zip(lines, encoded, cuts, strict=True):
        pieces.append(filler[last:cut])
        position += cut - last
        planted.append(
            PlantedFact(
                kind, key, value, line, question, position, position + len(ids), position / tokens
            )
        )
        pieces.append(ids)
        position += len(ids)
        last = cut
    pieces.append(filler[last:])
    document = np.asarray([t for piece in pieces for t in piece], dtype=np.int64)
    return Document(document, planted, sources, seed)


# ----------------------------------------------------------------------------- answering


def _first_number(text: str) -> str:
    match = re.match(r"\s*(\d+)", text)
    return match.group(1) if match else ""


def is_correct(answer: str, fact: PlantedFact) -> bool:
    """The answer's leading number is the fact's value (the trained answer is ``" N."``)."""
    return _first_number(answer) == fact.value


def raw_runs(entries: Sequence[Any], num_tokens: int) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of LOD0 entries, except the one reaching ``num_tokens``."""
    runs: list[tuple[int, int]] = []
    for entry in entries:
        if entry.level != 0:
            continue
        if runs and runs[-1][1] == entry.start:
            runs[-1] = (runs[-1][0], entry.end)
        else:
            runs.append((entry.start, entry.end))
    return [r for r in runs if r[1] < num_tokens]


def raw_spans(
    session: Any, entries: Sequence[Any], assembled: set[int], facts: Sequence[PlantedFact]
) -> list[Span]:
    """The raw runs of ``entries`` outside the recent tail, as :class:`Span` for people.

    Args:
        session: The open session (its tree gives the text and the history length).
        entries: ``session.working_context()`` at answer time.
        assembled: Token positions that were raw entries before refocus (after assembly).
        facts: The planted facts, to mark the spans that overlap them.
    """
    spans = []
    for start, end in raw_runs(entries, session.tree.num_tokens):
        hits = tuple(j for j, f in enumerate(facts) if start < f.end and end > f.start)
        preview = _preview(session.base.decode(session.tree.tokens(start, end).tolist()))
        expanded = not set(range(start, end)) <= assembled
        spans.append(Span(start, end, preview, hits, expanded))
    return spans


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def megacontext_answers(
    base: BaseAdapter,
    bundle: Bundle,
    document: Document,
    workdir: Path,
    w_max: int,
    refocus_steps: int,
    new_tokens: int,
    progress: Progress,
) -> tuple[list[Answer], float]:
    """Ingest once, then answer each question on a fresh copy of the ingested session.

    Returns the answers and the ingest time in seconds.
    """
    from megacontext.runtime import SessionConfig, open_session

    config = SessionConfig(W_max=w_max, trace=False)
    ingested = workdir / "ingested"
    started = time.perf_counter()
    task = progress.add_task("MegaContext: ingest", total=len(document.ids))
    with open_session(ingested, base=base, focus=bundle, config=config) as session:
        step = 4096
        for lo in range(0, len(document.ids), step):
            session.ingest(document.ids[lo : lo + step])
            progress.update(task, completed=min(len(document.ids), lo + step))
        levels = session.tree.num_levels
    ingest_s = time.perf_counter() - started
    progress.update(task, description=f"MegaContext: ingested ({levels} gist levels)")

    answers = []
    task = progress.add_task("MegaContext: questions", total=len(document.facts))
    for i, fact in enumerate(document.facts):
        started = time.perf_counter()
        asked = workdir / f"question-{i}"
        shutil.copytree(ingested, asked)
        with open_session(asked, base=base, focus=bundle, config=config) as session:
            session.ingest(fact.question)  # re-assembles the working context over everything
            assembled = {e.start for e in session.working_context() if e.level == 0}
            for _ in range(refocus_steps):
                session.refocus()
            # generate() refocuses once more, then decodes greedily (SessionConfig defaults).
            text = "".join(session.generate(max_new_tokens=new_tokens, stop=("\n",)))
            stats = session.state.stats  # this session's steps only: it was opened fresh
            entries = session.working_context()
            spans = raw_spans(session, entries, assembled, document.facts)
            histogram = {int(e.level): 0 for e in entries}
            for e in entries:
                histogram[int(e.level)] += 1
        shutil.rmtree(asked, ignore_errors=True)
        answers.append(
            Answer(
                i,
                "megacontext",
                text,
                fact.value,
                is_correct(text, fact),
                time.perf_counter() - started,
                spans,
                {
                    "entries": len(entries),
                    "levels": {f"LOD{k}": v for k, v in sorted(histogram.items())},
                    "refocus_steps": stats.steps,
                    "expands": stats.expands,
                    "collapses": stats.collapses,
                },
            )
        )
        progress.advance(task)
    return answers, ingest_s


def baseline_systems(base: BaseAdapter, names: Sequence[str]) -> dict[str, Callable[[], Any]]:
    """Factories of the comparison systems that are available, by name."""
    from megacontext.eval.memory import RagBM25, Recency

    factories: dict[str, Callable[[], Any]] = {}
    if "recency" in names:
        factories["recency"] = lambda: Recency(base)
    if "rag-bm25" in names:
        factories["rag-bm25"] = lambda: RagBM25(base)
    if "rag-minilm" in names:
        try:
            from megacontext.eval.peers import RagMiniLM, minilm_encoder

            with _quiet_transformers():
                minilm_encoder(str(base.device))
            factories["rag-minilm"] = lambda: RagMiniLM(base)
        except Exception:  # the optional encoder package is missing or unloadable: skip it
            pass
    return factories


def baseline_answers(
    base: BaseAdapter,
    name: str,
    factory: Callable[[], Any],
    document: Document,
    w_max: int,
    new_tokens: int,
    progress: Progress,
) -> tuple[list[Answer], float]:
    """Observe the document once, then answer every question within the same budget."""
    import numpy as np
    import torch

    from megacontext.models.generation import decode

    stops = {t for t in (base.eos_token_id,) if t is not None}

    started = time.perf_counter()
    system = factory()
    task = progress.add_task(f"{name}: observe + answer", total=len(document.facts) + 1)
    for lo in range(0, len(document.ids), 4096):
        system.observe(document.ids[lo : lo + 4096])
    progress.advance(task)
    observe_s = time.perf_counter() - started
    answers = []
    for i, fact in enumerate(document.facts):
        asked = time.perf_counter()
        query = base.encode(fact.question, add_bos=False)
        built = system.build_context(np.asarray(query), w_max - len(query))
        question = base.embed(torch.as_tensor(query, device=base.device))
        inputs = torch.cat([built.vectors.to(question.dtype), question])
        text = decode(base, inputs, new_tokens, stop_ids=stops, stop_text=("\n",)).text
        answers.append(
            Answer(i, name, text, fact.value, is_correct(text, fact), time.perf_counter() - asked)
        )
        progress.advance(task)
    return answers, observe_s


# ----------------------------------------------------------------------------- the run


@dataclass
class LongDemoConfig:
    """Settings of the main demo (the command's options)."""

    base: str = "default"
    focus: str = "default"
    tokens: int = 120_000
    facts: int = 5
    seed: int = 0
    w_max: int = 512
    refocus_steps: int = 8
    new_tokens: int = 6
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


def run_longdemo(config: LongDemoConfig, console: Console) -> dict[str, Any]:
    """Run the demo, print it, and return (and optionally write) the machine-readable results."""
    if config.w_max < 64:
        raise InvalidInputError(f"--w-max must be >= 64, got {config.w_max}")
    if config.refocus_steps < 0 or config.new_tokens < 1:
        raise InvalidInputError(
            f"--refocus-steps must be >= 0 (got {config.refocus_steps}) and new_tokens >= 1 "
            f"(got {config.new_tokens})"
        )
    unknown = set(config.systems) - set(DEFAULT_SYSTEMS)
    if unknown:
        raise InvalidInputError(
            f"unknown system(s) {sorted(unknown)}; choose from {', '.join(DEFAULT_SYSTEMS)}"
        )
    if "megacontext" in config.systems and config.focus not in ("default", STAND_IN):
        from megacontext.models.bundle import resolve_focus

        resolve_focus(config.focus, {}, config.base)  # a bundle path is checked before loading
    with _threads(config.threads), tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        return _run(config, Path(tmp), console)


def _run(config: LongDemoConfig, workdir: Path, console: Console) -> dict[str, Any]:
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base

    started = time.perf_counter()
    console.rule("[bold]MegaContext demo: questions about a long document[/bold]")
    with console.status(f"loading the base model ({config.base})"):
        base = load_base(config.base)
    bundle: Bundle | None = None
    focus_label = "none"
    if "megacontext" in config.systems:
        focus_dir = (
            None
            if config.focus == STAND_IN
            else resolve_focus(config.focus, base.fingerprints, base.source)
        )
        if focus_dir is None:
            from megacontext.bench.runtime import stand_in_bundle

            focus_dir = stand_in_bundle(base, workdir / "stand-in-focus", seed=config.seed)
            focus_label = "untrained stand-in (random GistNet/LensNet)"
        else:
            focus_label = str(focus_dir)
        bundle = load_bundle(focus_dir, fingerprints=base.fingerprints)
    console.print(
        f"Base: {config.base} ({sum(p.numel() for p in base.model.parameters()) / 1e6:.1f}M "
        f"parameters, d_model {base.d_model}); focus bundle: {focus_label}"
    )

    with console.status("building the document from the packaged held-out texts"):
        document = build_document(base, config.tokens, config.facts, config.seed, config.w_max)
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

    answers: list[Answer] = []
    seconds: dict[str, float] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        if bundle is not None:
            mc, ingest_s = megacontext_answers(
                base,
                bundle,
                document,
                workdir,
                config.w_max,
                config.refocus_steps,
                config.new_tokens,
                progress,
            )
            answers += mc
            seconds["megacontext"] = ingest_s + sum(a.seconds for a in mc)
        for name, factory in baseline_systems(base, config.systems).items():
            got, observe_s = baseline_answers(
                base, name, factory, document, config.w_max, config.new_tokens, progress
            )
            answers += got
            seconds[name] = observe_s + sum(a.seconds for a in got)

    for answer in answers:
        if answer.spans is not None:
            _print_megacontext_answer(console, document, answer)
    systems = list(seconds)
    _print_side_by_side(console, document, answers, systems)
    summary = []
    for name in systems:
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
    total = time.perf_counter() - started
    console.print(
        f"[bold]Summary:[/bold] {n:,} tokens, W_max {config.w_max}, {len(document.facts)} "
        f"questions, {len(systems)} systems; {total:.1f} s in all."
    )
    result = {
        "base": config.base,
        "focus": focus_label,
        "w_max": config.w_max,
        "seed": config.seed,
        "refocus_steps": config.refocus_steps,
        "document": {
            "tokens": n,
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


def _row(document: Document, answer: Answer) -> dict[str, Any]:
    fact = document.facts[answer.question]
    row: dict[str, Any] = {
        "question": answer.question,
        "kind": fact.kind,
        "text": fact.question.strip(),
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


def _print_megacontext_answer(console: Console, document: Document, answer: Answer) -> None:
    fact = document.facts[answer.question]
    console.print(
        f"\n[bold]Q{answer.question + 1}[/bold] {escape(repr(fact.question.strip()))}  → "
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
    console: Console, document: Document, answers: list[Answer], systems: list[str]
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
        str, typer.Option(help="Base model: 'default' (packaged) or a local model directory.")
    ] = "default",
    focus: Annotated[
        str,
        typer.Option(
            help="Focus bundle (GistNet + LensNet): 'default' (packaged), a bundle directory, "
            f"or '{STAND_IN}' for untrained nets of the default shapes."
        ),
    ] = "default",
    tokens: Annotated[int, typer.Option(help="Document length in tokens (at least).")] = 120_000,
    facts: Annotated[
        int, typer.Option(help="Facts to plant and ask about (kv lines, then one pass key).")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the document and the facts.")] = 0,
    w_max: Annotated[
        int, typer.Option("--w-max", help="Budget in entries, for every system.")
    ] = 512,
    refocus_steps: Annotated[
        int, typer.Option("--refocus-steps", help="LensNet refocus steps before each answer.")
    ] = 8,
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
    from megacontext.cli import console

    run_longdemo(
        LongDemoConfig(
            base=base,
            focus=focus,
            tokens=tokens,
            facts=facts,
            seed=seed,
            w_max=w_max,
            refocus_steps=refocus_steps,
            systems=tuple(s.strip() for s in systems.split(",") if s.strip()),
            threads=threads,
            json_path=json_path,
        ),
        console,
    )
