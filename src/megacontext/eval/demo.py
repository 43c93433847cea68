"""The main demo's experiment: facts planted in a long held-out document, asked about at a budget.

1. **Document.** The held-out texts shipped with the package (Bible books, Shakespeare, Python
   documentation, standard-library source) are concatenated in a seeded order to ``tokens``
   tokens of the base's tokenizer, and ``facts`` facts are planted at spread depths, in the
   formats the tiny base was trained on: key/value lines ("key WORD has value N.") and one pass
   key. The token span of every fact is recorded.
2. **MegaContext.** A session (:func:`megacontext.open`) ingests the document once. For each
   question its focus starts afresh, and :meth:`~megacontext.runtime.Session.ask` refocuses the
   working context for the question and decodes the answer (the question is not written into
   the history). The raw spans outside the recent tail at answer time, and which of them focus
   brought back, are recorded.
3. **Side by side.** The same questions go through the recency baseline and RAG (BM25, and
   MiniLM when its packaged encoder is installed) from :mod:`megacontext.eval` with the same base,
   the same budget and the same prompt style.

:mod:`megacontext.cli.demo` renders it; this module computes it. It imports torch only when
it runs, so the command line can read :data:`DEFAULT_SYSTEMS` cheaply.
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megacontext.core import DEFAULT_W_MAX
from megacontext.data import KV_ASK, KV_LINE, PASSKEY_ASK, PASSKEY_NEEDLE, random_digits
from megacontext.errors import InvalidInputError

if TYPE_CHECKING:
    from megacontext.models.adapter import BaseAdapter
    from megacontext.models.bundle import Bundle
    from megacontext.models.prompting import PromptFormat

# Held-out sources in the order they fill the document: prose first, then source code.
SOURCE_ORDER = ("kjv", "gutenberg", "pydoc", "stdlib")
DEFAULT_SYSTEMS = ("megacontext", "recency", "rag-bm25", "rag-minilm")
# Reports progress: (stage, done, total); the CLI draws bars from it.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PlantedFact:
    """One fact hidden in the document.

    Attributes:
        kind: ``"kv"`` or ``"passkey"``.
        key: The key word (``""`` for the pass key).
        value: The digits the answer must contain.
        text: The planted line, exactly as its tokens decode.
        question: The question (``"What is the value of key lorem?"``).
        cue: The start of the answer, written for the base in the cue prompt styles.
        start: First token of the fact in the document.
        end: One past its last token.
        depth: ``start`` as a fraction of the document's length.
    """

    kind: str
    key: str
    value: str
    text: str
    question: str
    cue: str
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
class DemoAnswer:
    """One system's answer to one question."""

    question: int
    system: str
    answer: str
    expected: str
    correct: bool  # the answer contains the expected value (is_correct)
    seconds: float
    spans: list[Span] | None = None  # MegaContext only: raw runs outside the tail
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the document


def heldout_in_order(seed: int) -> list[tuple[str, str]]:
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


def _fact_lines(rng: random.Random, facts: int) -> list[tuple[str, str, str, str, str, str]]:
    """``(kind, key, value, line, question, cue)`` for ``facts`` facts: kv lines, then one pass
    key, in the formats the tiny base was trained on."""
    out = []
    keys: list[str] = []  # a list, not a set: set order changes with the process's hash seed
    while len(keys) < facts - 1:
        key = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
        if key not in keys:
            keys.append(key)
    question, cue = KV_ASK
    for key in keys:
        value = random_digits(rng, 4)
        line = KV_LINE.format(key=key, value=value)
        out.append(("kv", key, value, line, question.format(key=key), cue))
    value = random_digits(rng, 5)
    out.append(("passkey", "", value, PASSKEY_NEEDLE.format(key=value), *PASSKEY_ASK))
    return out


def minimum_tokens(fact_tokens: int, w_max: int) -> int:
    """The shortest document that holds the facts outside the recent window.

    Facts sit at depths up to 70% of the filler; with at least ``4 * w_max`` filler tokens the
    last of them is more than ``w_max`` tokens from the end, so recency alone cannot see it.
    """
    return fact_tokens + 4 * w_max


def build_document(
    base: BaseAdapter, tokens: int, facts: int = 5, seed: int = 0, w_max: int = DEFAULT_W_MAX
) -> Document:
    """Held-out text of ``tokens`` tokens (or a few more) with ``facts`` planted facts.

    Deterministic for a given base tokenizer, ``tokens``, ``facts`` and ``seed``. Each fact is
    inserted after a line break of the filler at a spread, seeded depth between 5% and 70%.

    Raises:
        InvalidInputError: ``facts < 1``, or ``tokens`` too small to hold the facts outside the
            recent window (see :func:`minimum_tokens`).
    """
    from transformers.utils import logging as hf_logging

    if facts < 1:
        raise InvalidInputError(f"--facts must be >= 1 (one pass key plus kv lines), got {facts}")
    rng = random.Random(f"longdemo/facts/{seed}")
    lines = _fact_lines(rng, facts)
    encoded = [base.encode(line, add_bos=False) for _k, _y, _v, line, _q, _c in lines]
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
    documents = heldout_in_order(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # whole documents exceed the base's context: that is the point
    try:
        while len(filler) < filler_len:
            name, text = documents[len(sources) % len(documents)]
            again = len(sources) >= len(documents)  # the held-out set is exhausted: go round
            filler += [t for t in base.encode(text + "\n\n", add_bos=False) if t not in special]
            sources.append(f"{name} (again)" if again else name)
    finally:
        hf_logging.set_verbosity(verbosity)
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
    for (kind, key, value, line, question, cue), ids, cut in zip(lines, encoded, cuts, strict=True):
        pieces.append(filler[last:cut])
        position += cut - last
        planted.append(
            PlantedFact(
                kind, key, value, line, question, cue, position, position + len(ids),
                position / tokens,
            )
        )  # fmt: skip
        pieces.append(ids)
        position += len(ids)
        last = cut
    pieces.append(filler[last:])
    document = np.asarray([t for piece in pieces for t in piece], dtype=np.int64)
    return Document(document, planted, sources, seed)


# ----------------------------------------------------------------------------- answering


def is_correct(answer: str, fact: PlantedFact) -> bool:
    """The answer contains the fact's value as a word (``"The value is 4821."`` counts)."""
    from megacontext.models.generation import contains_answer

    return contains_answer(answer, fact.value)


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
    config: Any,
    new_tokens: int,
    progress: Progress,
) -> tuple[list[DemoAnswer], float]:
    """Ingest once, then ask each question with focus starting afresh.

    Returns the answers and the ingest time in seconds.
    """
    from megacontext.runtime import open_session

    started = time.perf_counter()
    answers = []
    with open_session(workdir / "session", base=base, focus=bundle, config=config) as session:
        step = 4096
        for lo in range(0, len(document.ids), step):
            session.ingest(document.ids[lo : lo + step])
            progress("MegaContext: ingest", min(len(document.ids), lo + step), len(document.ids))
        ingest_s = time.perf_counter() - started
        for i, fact in enumerate(document.facts):
            progress("MegaContext: questions", i, len(document.facts))
            asked = time.perf_counter()
            session.reset_focus()
            assembled = {e.start for e in session.working_context() if e.level == 0}
            answer = session.ask(fact.question, cue=fact.cue, max_new_tokens=new_tokens)
            stats = session.state.stats  # this question's steps only: focus started afresh
            entries = session.working_context()
            histogram = {int(e.level): 0 for e in entries}
            for e in entries:
                histogram[int(e.level)] += 1
            answers.append(
                DemoAnswer(
                    i,
                    "megacontext",
                    answer.text,
                    fact.value,
                    is_correct(answer.text, fact),
                    time.perf_counter() - asked,
                    raw_spans(session, entries, assembled, document.facts),
                    {
                        "entries": len(entries),
                        "levels": {f"LOD{k}": v for k, v in sorted(histogram.items())},
                        "refocus_steps": stats.steps,
                        "expands": stats.expands,
                        "collapses": stats.collapses,
                    },
                )
            )
        progress("MegaContext: questions", len(document.facts), len(document.facts))
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
        from megacontext.eval.peers import RagMiniLM, minilm_available

        if minilm_available(str(base.device)):
            factories["rag-minilm"] = lambda: RagMiniLM(base)
    return factories


def baseline_answers(
    base: BaseAdapter,
    prompt: PromptFormat,
    name: str,
    factory: Callable[[], Any],
    document: Document,
    w_max: int,
    new_tokens: int,
    progress: Progress,
) -> tuple[list[DemoAnswer], float]:
    """Observe the document once, then answer every question within the same budget."""
    from megacontext.eval.harness import answer_question

    started = time.perf_counter()
    system = factory()
    total = len(document.facts) + 1
    for lo in range(0, len(document.ids), 4096):
        system.observe(document.ids[lo : lo + 4096])
    progress(f"{name}: observe + answer", 1, total)
    observe_s = time.perf_counter() - started
    answers = []
    for i, fact in enumerate(document.facts):
        asked = time.perf_counter()
        query = base.encode(f"{fact.question} {fact.cue}", add_bos=False)
        room = w_max - len(prompt.prefix) - len(prompt.question_ids(base, fact.question, fact.cue))
        built = system.build_context(np.asarray(query), room)
        text = answer_question(base, prompt, built.vectors, fact.question, fact.cue, new_tokens)
        answers.append(
            DemoAnswer(
                i, name, text, fact.value, is_correct(text, fact), time.perf_counter() - asked
            )
        )
        progress(f"{name}: observe + answer", i + 2, total)
    return answers, observe_s


__all__ = [
    "DEFAULT_SYSTEMS",
    "DemoAnswer",
    "Document",
    "PlantedFact",
    "Span",
    "baseline_answers",
    "baseline_systems",
    "build_document",
    "heldout_in_order",
    "is_correct",
    "megacontext_answers",
    "minimum_tokens",
    "raw_runs",
    "raw_spans",
]
