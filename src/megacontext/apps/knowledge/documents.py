"""Documents in partitions, with the metadata predicates read (``megacontext knowledge add``).

A knowledge workflow keeps named **partitions** (collections: ``policies``, ``tickets``,
``logs``, …) in one session. Each document is a source with metadata:

* ``partition``: its collection; ``kind``: what it is (``policy``, ``ticket``, ``log``, …);
* ``doc``: the document's identity across versions (default: the file's name); ``version``: 1,
  2, … (default: one more than the latest version of ``doc`` in the partition); a document's
  **latest** version is the highest;
* ``time``: when it was written or took effect (ISO 8601; default: now, UTC);
* ``tags``: labels; ``owner``: who answers for it.

The history stays append-only: a new version is appended, the old one stays (and is what
``version=latest`` excludes). The URI of a version is ``kb://PARTITION/DOC@vN``.

The files of ``megacontext code ingest`` are versioned documents too (one per repository and
path): ``kind=code AND version=latest`` admits the live version of every file (a deletion record
is the latest version of a deleted file).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from megacontext.apps.knowledge.predicates import Predicate, SourceFacts, parse_predicate
from megacontext.errors import InvalidInputError
from megacontext.runtime.session import Ingested
from megacontext.store.metadata import COMPLETE

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class KnowledgeSource:
    """One ingested source, its metadata and where its tokens are."""

    id: int
    uri: str
    content_hash: str  # sha256 of the source's bytes
    meta: dict[str, Any]
    start: int
    stop: int
    latest_version: int | None  # of its document in its partition (None: not a document)

    @property
    def facts(self) -> SourceFacts:
        return SourceFacts(self.meta, self.latest_version)

    @property
    def is_document(self) -> bool:
        """A versioned document: added by ``knowledge add`` or a file of ``code ingest``."""
        return _identity(self.meta) is not None

    @property
    def superseded(self) -> bool:
        """A document version that a later version replaced."""
        version = self.meta.get("version")
        return (
            self.is_document
            and self.latest_version is not None
            and isinstance(version, int)
            and version < self.latest_version
        )

    def label(self) -> str:
        identity = _identity(self.meta)
        if identity is None:
            return str(self.meta.get("path") or self.uri)
        return f"{identity[1]}/{identity[2]}@v{self.meta.get('version')}"


def _identity(meta: dict[str, Any]) -> tuple[str, str, str] | None:
    """What makes versions one document: its partition and name, or — for a file of ``code
    ingest`` — its repository and path (so ``version=latest`` means the live file there)."""
    if "partition" in meta and "doc" in meta:
        return ("kb", str(meta["partition"]), str(meta["doc"]))
    if meta.get("kind") == "code" and "repo" in meta and "path" in meta:
        return ("code", str(meta["repo"]), str(meta["path"]))
    return None


def _name(value: str, flag: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(
            f"{flag} {value!r} is not a name: use letters, digits, '.', '_' or '-' (at most 64, "
            "starting with a letter or digit)"
        )
    return value


def knowledge_sources(session: Any) -> list[KnowledgeSource]:
    """Every complete source of the session's history (documents and anything else), in
    history order, with each document's latest version."""
    if getattr(session, "metadata", None) is None:
        raise InvalidInputError(
            "an in-memory session keeps no metadata to select by; open a session on disk"
        )
    ingests = [
        i
        for i in session.metadata.ingests_of(session.tree_id, COMPLETE)
        if i.stop is not None and i.stop > i.start
    ]
    latest: dict[tuple[str, str, str], int] = {}
    for i in ingests:
        key = _identity(i.source.meta)
        if key is not None and isinstance(i.source.meta.get("version"), int):
            latest[key] = max(latest.get(key, 0), int(i.source.meta["version"]))
    out = []
    for i in ingests:
        meta = dict(i.source.meta)
        key = _identity(meta)
        out.append(
            KnowledgeSource(
                i.source.id,
                i.source.uri,
                i.source.content_hash,
                meta,
                i.start,
                int(i.stop),
                latest.get(key) if key is not None else None,
            )
        )
    return out


def select_sources(
    session: Any, where: str | Predicate | None
) -> tuple[list[KnowledgeSource], list[KnowledgeSource]]:
    """The sources ``where`` admits and those it does not (all admitted when ``None``)."""
    sources = knowledge_sources(session)
    if where is None:
        return sources, []
    predicate = parse_predicate(where) if isinstance(where, str) else where
    chosen = [s for s in sources if predicate(s.facts)]
    return chosen, [s for s in sources if not predicate(s.facts)]


def add_document(  # noqa: PLR0913  (a document's metadata fields, keyword-only)
    session: Any,
    text: str,
    *,
    partition: str,
    doc: str,
    path: str | None = None,
    kind: str | None = None,
    version: int | None = None,
    time: str | None = None,
    tags: Sequence[str] = (),
    owner: str | None = None,
) -> tuple[KnowledgeSource | None, Any]:
    """Append ``text`` as version ``version`` of ``doc`` in ``partition`` (see the module
    docstring); returns the version's source (``None`` when the document already has this
    text as its latest version: nothing is appended) and the session's
    :class:`~megacontext.runtime.session.Ingested`.

    Raises:
        InvalidInputError: A name that is not one, a version that is not above the latest (the
            history is append-only: versions only grow), a time that is not ISO 8601, an
            in-memory session.
    """
    _name(partition, "--partition")
    _name(doc, "--doc")
    if kind is not None:
        _name(kind, "--kind")
    for tag in tags:
        _name(tag, "--tag")
    existing = [
        s
        for s in knowledge_sources(session)
        if s.meta.get("partition") == partition and s.meta.get("doc") == doc
    ]
    latest = max((int(s.meta["version"]) for s in existing), default=0)
    current = next((s for s in existing if s.meta["version"] == latest), None)
    if current is not None and current.content_hash == hashlib.sha256(text.encode()).hexdigest():
        return None, Ingested(0, current.start, current.stop, duplicate_of=current.label())
    if version is None:
        version = latest + 1
    elif isinstance(version, bool) or not isinstance(version, int) or version <= latest:
        raise InvalidInputError(
            f"--version {version!r}: {partition}/{doc} is at version {latest}; a new version "
            f"must be above it (the history is append-only), e.g. --version {latest + 1}"
        )
    if time is None:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    else:
        try:
            stamp = dt.datetime.fromisoformat(time).isoformat()
        except ValueError:
            raise InvalidInputError(
                f"--time {time!r} is not an ISO 8601 date or date-time (e.g. 2026-03-01)"
            ) from None
    meta: dict[str, Any] = {
        "partition": partition,
        "doc": doc,
        "version": version,
        "time": stamp,
        "tags": sorted(set(tags)),
        "path": path or doc,
    }
    if kind is not None:
        meta["kind"] = kind
    if owner is not None:
        meta["owner"] = owner
    uri = f"kb://{quote(partition, safe='')}/{quote(doc, safe='')}@v{version}"
    # The same bytes in another document (or an older version) are still this version's text.
    done = session.ingest(text, source=uri, metadata=meta, force=True)
    found = next(s for s in knowledge_sources(session) if s.uri == uri)
    return found, done


__all__ = [
    "KnowledgeSource",
    "add_document",
    "knowledge_sources",
    "select_sources",
]
