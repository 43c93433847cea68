"""What the explorers show: a tree's overview, its nodes level by level down to raw text, span
details, search, focus traces replayed step by step, and annotations.

:class:`TreeBrowser` reads a session opened read-only (beside a writer, without locking) and
answers in plain JSON-ready data; the web explorer serves it over HTTP and the terminal explorer
draws it. Everything is paged or capped so that a tree of ten million tokens answers as fast as a
small one: a node lists at most K children, a span's text is capped, sources come a page at a
time, a trace a step at a time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from megacontext.core import entries_of_runs, layout_runs
from megacontext.errors import InvalidInputError
from megacontext.runtime import open_session
from megacontext.runtime.journal import label
from megacontext.runtime.opening import metadata_url
from megacontext.runtime.session import Session
from megacontext.runtime.traces import count_steps, list_traces, read_steps
from megacontext.store.annotations import Annotation, Annotations
from megacontext.store.metadata import COMPLETE, MetadataDB

PREVIEW_TOKENS = 24  # the start of a node's text shown in listings
TEXT_TOKENS = 2048  # at most this much of a span's text in its detail
PAGE = 100  # sources, search hits and nodes per page unless asked otherwise
MAX_PAGE = 1000


class SpanNotFoundError(InvalidInputError):
    """A span (level, index) or token range that the tree does not hold."""


class TraceNotFoundError(InvalidInputError):
    """No trace of that name in the session directory."""


class TreeBrowser:
    """Browse one tree through a read-only ``session``; ``annotations`` writes notes (``None``:
    the browser is read-only and annotating raises)."""

    def __init__(self, session: Session, annotations: Annotations | None = None):
        self.session, self.tree = session, session.tree
        self.annotations = annotations or _reader_annotations(session)
        self.writable = annotations is not None

    # -- overview ------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Tokens, levels (nodes per level), the base and the first page of sources."""
        tree = self.tree
        levels = [{"level": 0, "nodes": tree.num_tokens, "span_tokens": 1}]
        for level in range(1, tree.num_levels + 1):
            levels.append(
                {"level": level, "nodes": tree.count(level), "span_tokens": tree.K**level}
            )
        return {
            "path": str(self.session.path.resolve()) if self.session.path else None,
            "tokens": tree.num_tokens,
            "K": tree.K,
            "levels": levels,
            "top_level": tree.num_levels,
            "base": self.session.base.source,
            "sources": self.sources(0, PAGE),
            "annotations": len(self.annotations.overlapping()),
        }

    def sources(self, offset: int = 0, limit: int = PAGE) -> dict[str, Any]:
        """The ingest timeline: a page of the sources, in the order they were appended."""
        offset, limit = _page(offset, limit)
        journal = self._journal()
        rows = [
            {
                "id": ingest.id,
                "source": label(ingest),
                "kind": ingest.source.kind,
                "start": ingest.start,
                "stop": ingest.stop,
                "ingested_at": _iso(ingest.finished_at or ingest.started_at),
            }
            for ingest in journal[offset : offset + limit]
        ]
        return {"total": len(journal), "offset": offset, "items": rows}

    # -- nodes ----------------------------------------------------------------------------

    def nodes(self, level: int, first: int = 0, limit: int = PAGE) -> dict[str, Any]:
        """A page of the nodes of ``level`` (level 0: tokens, as text pieces) from ``first``."""
        self._check_level(level)
        first, limit = _page(first, limit)
        count = self.tree.num_tokens if level == 0 else self.tree.count(level)
        stop = min(first + limit, count)
        items = [self._node(level, i) for i in range(first, stop)] if first < count else []
        return {"level": level, "total": count, "first": first, "items": items}

    def children(self, level: int, index: int) -> dict[str, Any]:
        """The K children of node ``(level, index)``: gists one level down, or for a level-1
        node its tokens."""
        self._check_node(level, index)
        if level == 0:
            raise SpanNotFoundError("a token has no children; open its LOD1 block instead")
        K = self.tree.K
        page = self.nodes(level - 1, index * K, K)
        return {"parent": self._node(level, index), **page}

    def path_to(self, token: int) -> list[dict[str, Any]]:
        """The nodes from the top level down to the LOD1 block holding token position
        ``token`` (what a drill-down opens to reach it)."""
        if not 0 <= token < self.tree.num_tokens:
            raise SpanNotFoundError(
                f"token {token} is outside the history [0, {self.tree.num_tokens})"
            )
        path = []
        for level in range(self.tree.num_levels, 0, -1):
            index = token // self.tree.K**level
            if index < self.tree.count(level):  # complete node (the tail has none)
                path.append(self._node(level, index))
        return path

    def span(self, level: int, index: int) -> dict[str, Any]:
        """One node in detail: its text (capped), gist norm, sources (with lines) and
        annotations. Level 0 is one token."""
        self._check_node(level, index)
        node = self._node(level, index)
        start, stop = node["start"], node["stop"]
        shown = min(stop, start + TEXT_TOKENS)
        text = self.session.base.decode(self.tree.tokens(start, shown).tolist())
        return {
            **node,
            "text": text,
            "text_truncated": shown < stop,
            "provenance": provenance_json(self.session, start, stop),
            "annotations": [annotation_json(a) for a in self.annotations.overlapping(start, stop)],
        }

    def text(self, start: int, stop: int) -> str:
        """The text of tokens ``[start, stop)`` (at most TEXT_TOKENS of them)."""
        self._check_range(start, stop)
        stop = min(stop, start + TEXT_TOKENS)
        return self.session.base.decode(self.tree.tokens(start, stop).tolist())

    # -- search ---------------------------------------------------------------------------

    def search(self, query: str, limit: int = 20) -> dict[str, Any]:
        """LOD1 blocks matching ``query`` in the lexical index, best first, each with its text
        and the path a drill-down takes to it."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the search is empty; type words to look for")
        _, limit = _page(0, limit)
        scores = self.session.lexical.block_scores(query, limit)
        hits = []
        for block, score in list(scores.items())[:limit]:
            if block >= self.tree.count(1):
                continue  # the lexical index may hold a block the tree has since lost
            hits.append({**self._node(1, block), "score": round(float(score), 4)})
        return {"query": query, "items": hits}

    # -- traces ---------------------------------------------------------------------------

    def traces(self) -> list[dict[str, Any]]:
        if self.session.path is None:
            return []
        return [
            {"name": f.name, "bytes": f.stat().st_size, "steps": count_steps(f)}
            for f in list_traces(self.session.path)
        ]

    def trace(self, name: str, first: int = 0, limit: int | None = None) -> dict[str, Any]:
        """A focus trace ready for playback: for each refocus step, the working context before
        it (runs of ``[level, first index, count]``), the scores and evidence it was planned
        with, the edits, and the working context after them. Steps ``first`` to ``first +
        limit`` (all from ``first`` when ``limit`` is ``None``); ``total``: how many there are."""
        found = [f for f in list_traces(self.session.path or Path("-")) if f.name == name]
        if not found:
            raise TraceNotFoundError(
                f"no trace named {name!r} in this session; the traces: "
                + (", ".join(t["name"] for t in self.traces()) or "none")
            )
        if limit is not None:
            first, limit = _page(first, limit)
        steps, total = read_steps(found[0], first, limit)
        return {
            "name": name,
            "K": self.tree.K,
            "total": total,
            "first": first,
            "steps": replay(steps, self.tree.K),
        }

    # -- annotations ----------------------------------------------------------------------

    def annotate(
        self, level: int, start: int, stop: int, note: str, tags: list[str], actor: str
    ) -> dict[str, Any]:
        """Annotate tokens ``[start, stop)`` (level 0) or the node of ``level`` spanning them."""
        self._check_annotatable(level, start, stop)
        return annotation_json(self._writer().create(level, start, stop, note, tags, actor))

    def edit_annotation(
        self, annotation_id: int, version: int, note: str, tags: list[str], actor: str
    ) -> dict[str, Any]:
        return annotation_json(self._writer().edit(annotation_id, version, note, tags, actor))

    def delete_annotation(self, annotation_id: int, version: int, actor: str) -> None:
        self._writer().delete(annotation_id, version, actor)

    def annotation_history(self, annotation_id: int) -> list[dict[str, Any]]:
        return [
            {
                "action": e.action,
                "version": e.version,
                "note": e.note,
                "tags": e.tags,
                "actor": e.actor,
                "at": _iso(e.at),
            }
            for e in self.annotations.history(annotation_id)
        ]

    def list_annotations(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        return [annotation_json(a) for a in self.annotations.overlapping(start, stop)]

    # -- internals ------------------------------------------------------------------------

    def _node(self, level: int, index: int) -> dict[str, Any]:
        width = self.tree.K**level
        start, stop = index * width, min((index + 1) * width, self.tree.num_tokens)
        node: dict[str, Any] = {"level": level, "index": index, "start": start, "stop": stop}
        preview_stop = min(stop, start + PREVIEW_TOKENS)
        node["preview"] = self.session.base.decode(self.tree.tokens(start, preview_stop).tolist())
        if level >= 1:
            gist = np.asarray(self.tree.gists(level, index, index + 1)[0], dtype=np.float64)
            node["norm"] = round(float(np.linalg.norm(gist)), 4)
        return node

    def _journal(self) -> list[Any]:
        db = self.session.metadata
        return db.ingests_of(self.session.tree_id, COMPLETE) if db is not None else []

    def _writer(self) -> Annotations:
        if not self.writable:
            raise InvalidInputError(
                "this explorer is read-only: annotating needs write access (a key with the "
                "write scope, or `megacontext explore` without --read-only)"
            )
        return self.annotations

    def _check_level(self, level: int) -> None:
        if not 0 <= level <= self.tree.num_levels:
            raise SpanNotFoundError(
                f"level {level} does not exist: this tree has levels 0-{self.tree.num_levels}"
            )

    def _check_node(self, level: int, index: int) -> None:
        self._check_level(level)
        count = self.tree.num_tokens if level == 0 else self.tree.count(level)
        if not 0 <= index < count:
            raise SpanNotFoundError(
                f"no node {index} at level {level}: it holds nodes 0-{count - 1}"
                if count
                else f"level {level} holds no node yet"
            )

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= self.tree.num_tokens:
            raise SpanNotFoundError(
                f"tokens [{start}, {stop}) are not a span of the history [0, "
                f"{self.tree.num_tokens}): need 0 <= start < stop <= {self.tree.num_tokens}"
            )

    def _check_annotatable(self, level: int, start: int, stop: int) -> None:
        self._check_level(level)
        self._check_range(start, stop)
        if level == 0:
            return
        width = self.tree.K**level
        if start % width or stop - start != width:
            raise SpanNotFoundError(
                f"tokens [{start}, {stop}) are not a level-{level} node (its nodes span "
                f"{width} tokens from a multiple of {width}); annotate level 0 for a free range"
            )
        self._check_node(level, start // width)


def replay(steps: list[dict[str, Any]], K: int) -> list[dict[str, Any]]:
    """Each recorded step with the working context after its edits (``after``, as runs): the
    edits applied to ``layout`` (the context the step scored). Steps recorded before traces
    carried layouts come back without ``layout`` and ``after``."""
    out = []
    for step in steps:
        row = {"scores": None, **step}
        if "layout" in step:
            entries = entries_of_runs(step["layout"])
            for kind, level, index in step.get("edits", []):
                entries = _apply(entries, kind, int(level), int(index), K)
            after = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
            row["after"] = layout_runs(after[:, 0], after[:, 1])
        out.append(row)
    return out


def _apply(
    entries: list[tuple[int, int]], kind: str, level: int, index: int, K: int
) -> list[tuple[int, int]]:
    if kind == "expand":
        at = entries.index((level, index))
        children = [(level - 1, index * K + k) for k in range(K)]
        return [*entries[:at], *children, *entries[at + 1 :]]
    first = entries.index((level - 1, index * K))
    return [*entries[:first], (level, index), *entries[first + K :]]


def provenance_json(
    session: Session, start: int, stop: int, limit: int = 20
) -> list[dict[str, Any]]:
    """Where tokens ``[start, stop)`` come from: source, kind, token range and lines of each
    part (at most ``limit`` parts, in order)."""
    db = session.metadata
    if db is None:
        return []
    rows = db.provenance(session.tree_id, start, stop, limit=limit)
    return [
        {
            "source": str(r.source.meta.get("path") or r.source.uri),
            "kind": r.source.kind,
            "start": r.start_index,
            "stop": r.stop_index,
            "lines": list(r.line_range) if r.line_range else None,
        }
        for r in rows
    ]


def annotation_json(a: Annotation) -> dict[str, Any]:
    return {
        "id": a.id,
        "level": a.level,
        "start": a.start,
        "stop": a.stop,
        "note": a.note,
        "tags": a.tags,
        "version": a.version,
        "created_by": a.created_by,
        "created_at": _iso(a.created_at),
        "updated_by": a.updated_by,
        "updated_at": _iso(a.updated_at),
    }


@contextmanager
def browse(path: Path, *, base: Any = None, writable: bool = True) -> Iterator[TreeBrowser]:
    """A browser of the session directory ``path`` (opened read-only; with ``writable``,
    annotations are written to its metadata database)."""
    from megacontext.runtime.opening import is_session

    if not is_session(path):
        raise InvalidInputError(
            f"{path} is not a session directory (no tree/manifest.json): give the directory "
            "that `megacontext ingest --tree DIR` or `megacontext serve` wrote"
        )
    with open_session(path, base=base, readonly=True, create=False) as session:
        db = MetadataDB(metadata_url(path)) if writable else None
        try:
            notes = Annotations(db, session.tree_id) if db is not None else None
            yield TreeBrowser(session, notes)
        finally:
            if db is not None:
                db.close()


def _reader_annotations(session: Session) -> Annotations:
    db = session.metadata
    if db is None:  # a tree without metadata: an empty in-memory database answers "none"
        db = MetadataDB("sqlite://", create=False)
    return Annotations(db, session.tree_id)


def _page(offset: int, limit: int) -> tuple[int, int]:
    if offset < 0:
        raise InvalidInputError(f"offset must be >= 0, got {offset}")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be 1-{MAX_PAGE}, got {limit}")
    return offset, limit


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


__all__ = [
    "SpanNotFoundError",
    "TraceNotFoundError",
    "TreeBrowser",
    "annotation_json",
    "browse",
    "provenance_json",
    "replay",
]
