"""Questions about ingested code, answered from the live versions (``megacontext code ask``).

A session that holds several versions of a file keeps them all (the history is append-only);
for a question about the code as it is, focus must open — and the answer cite — the current
version. :func:`ask_code` has focus avoid the text of superseded versions (their LOD1 blocks are
never expanded; their gists stay in view, :meth:`~megacontext.runtime.focus_control.Focus.avoid`)
and marks every citation live or not, as ``PATH:LINE-LINE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megacontext.apps.code.ingest import code_sources
from megacontext.store.metadata import COMPLETE


@dataclass(frozen=True)
class CodeCitation:
    """A cited span: ``path:first-last``, and whether it is the file's current text."""

    label: str
    path: str | None
    lines: tuple[int, int] | None
    live: bool
    score: float
    tokens: tuple[int, int]  # the history positions cited


@dataclass(frozen=True)
class CodeAnswer:
    text: str
    citations: list[CodeCitation]
    avoided_tokens: int  # tokens of superseded versions focus kept closed
    focus_steps: int


def superseded_ranges(session: Any, repo: str | None = None) -> list[tuple[int, int]]:
    """Token ranges of the history that hold superseded file versions (of ``repo``, or of
    every repository)."""
    stale = {s.id for s in code_sources(session, repo) if s.superseded}
    return [
        (i.start, i.stop)
        for i in session.metadata.ingests_of(session.tree_id, COMPLETE)
        if i.source.id in stale and i.stop is not None and i.stop > i.start
    ]


def ask_code(
    session: Any,
    question: str,
    repo: str | None = None,
    *,
    max_new_tokens: int = 64,
    focus_steps: int | None = None,
) -> CodeAnswer:
    """Answer ``question`` from the session, focus kept off superseded versions; each citation
    says whether it is a live version of its file."""
    avoided = superseded_ranges(session, repo)
    before = list(session.focus.avoided)
    session.focus.avoid(avoided)
    try:
        answer = session.ask(question, max_new_tokens=max_new_tokens, focus_steps=focus_steps)
    finally:
        session.focus.avoid(before)
    citations = [
        CodeCitation(
            c.label(),
            c.source,
            c.lines,
            not any(a <= c.tokens[0] < b for a, b in avoided),
            c.score,
            c.tokens,
        )
        for c in answer.citations
    ]
    # A LOD1 block that straddles a version's edge also holds live text, so focus may open it
    # and a few superseded tokens get cited: the live citations come first.
    citations.sort(key=lambda c: not c.live)
    return CodeAnswer(
        answer.text,
        citations,
        sum(b - a for a, b in avoided),
        answer.focus_steps,
    )


__all__ = ["CodeAnswer", "CodeCitation", "ask_code", "superseded_ranges"]
