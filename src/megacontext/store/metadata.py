"""Metadata and provenance in SQL (DESIGN §5, D11): SQLAlchemy 2 Core, one code path.

SQLite (``sqlite:///tree/meta.sqlite``) is the embedded default; PostgreSQL
(``postgresql+psycopg://user@host:port/db``) serves shared deployments through the same queries.

Tables:

- ``trees``: one row per tree (id = the manifest's ``tree_id``), K, dim, fingerprints.
- ``sources``: what was ingested — ``uri``, ``kind``, ``content_hash`` (sha256), user metadata JSON.
- ``spans``: ``(tree, level, [start, stop))`` → source, byte and line range, ingest time, gist
  version, tags. Ingest records level-0 spans (token ranges); a node's provenance is every span
  its token range overlaps.
- ``ingests``: the journal of what was appended to a tree, one row per source: its token range
  and its status — ``running`` from before its first token is stored, ``complete`` once its
  tokens and spans are (one transaction), ``rolled_back`` when an interrupted one was undone,
  ``removed`` when ``sources remove`` erased it. A running row found when a writer opens the
  tree is finished or rolled back (see :mod:`megacontext.runtime.journal`).
- ``annotations``, ``annotation_events``: notes on spans and their history
  (:mod:`megacontext.store.annotations`).
- ``audit_events``: the hash-chained audit trail (:mod:`megacontext.store.audit`).
- ``lineage``: the Merkle hash of every gist (:mod:`megacontext.store.lineage`).
- ``erasures``, ``source_policies``: erasure records and per-source labels, retention and
  legal holds (:mod:`megacontext.runtime.erasure`, :mod:`megacontext.store.policies`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from megacontext.core.spans import check_block_size, span_tokens
from megacontext.store.errors import InvalidInputError, StoreError

schema = sa.MetaData()

trees = sa.Table(
    "trees",
    schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("K", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("fingerprints", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

sources = sa.Table(
    "sources",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("uri", "content_hash", name="uq_sources_uri_hash"),
)

spans = sa.Table(
    "spans",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tree_id", sa.String(64), sa.ForeignKey("trees.id"), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("start_index", sa.BigInteger, nullable=False),
    sa.Column("stop_index", sa.BigInteger, nullable=False),
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("byte_start", sa.BigInteger),
    sa.Column("byte_stop", sa.BigInteger),
    sa.Column("line_start", sa.Integer),
    sa.Column("line_stop", sa.Integer),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("gist_version", sa.String(128), nullable=False, server_default=""),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.CheckConstraint("stop_index > start_index", name="ck_spans_nonempty"),
    sa.Index("ix_spans_tree_level_start", "tree_id", "level", "start_index"),
    sa.Index("ix_spans_source", "source_id"),
)


ingests = sa.Table(
    "ingests",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tree_id", sa.String(64), sa.ForeignKey("trees.id"), nullable=False),
    sa.Column("source_id", sa.Integer, sa.ForeignKey("sources.id"), nullable=False),
    sa.Column("start_index", sa.BigInteger, nullable=False),
    sa.Column("stop_index", sa.BigInteger),  # unknown while a generation is running
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("planned", sa.JSON),  # the span rows to record once the tokens are stored
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index("ix_ingests_tree_status", "tree_id", "status"),
)

# Notes and tags people attach to spans of a tree (explorers write them; see
# megacontext.store.annotations). A span is a token range at a level: level 0 any [start, stop),
# level l >= 1 exactly one node. Rows are edited in place under a version number (an edit names
# the version it read: concurrent edits conflict instead of overwriting); every change is also
# appended to annotation_events with who made it and when. Deleting marks the row deleted.
annotation_table = sa.Table(
    "annotations",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tree_id", sa.String(64), sa.ForeignKey("trees.id"), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("start_index", sa.BigInteger, nullable=False),
    sa.Column("stop_index", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("stop_index > start_index", name="ck_annotations_nonempty"),
    sa.Index("ix_annotations_tree_start", "tree_id", "start_index"),
)

annotation_event_table = sa.Table(
    "annotation_events",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("annotation_id", sa.Integer, sa.ForeignKey("annotations.id"), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # create, edit, delete
    sa.Column("version", sa.Integer, nullable=False),  # the row's version after the change
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_annotation_events_annotation", "annotation_id"),
)

# The audit trail (megacontext.store.audit): hash-chained events per chain (a tree's id, or
# "service"). ``at`` is the ISO text that was hashed, never a database timestamp that could come
# back in another form.
audit_table = sa.Table(
    "audit_events",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("chain", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("chain", "seq", name="uq_audit_chain_seq"),
)

# Lineage (megacontext.store.lineage): the Merkle hash of every gist, over its tokens (level 1)
# or its children's hashes, recorded as the gist is made.
lineage_table = sa.Table(
    "lineage",
    schema,
    sa.Column("tree_id", sa.String(64), nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("idx", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("tree_id", "level", "idx", name="pk_lineage"),
)

# Erasures (megacontext.runtime.erasure): what a source's removal must leave no trace of, as
# keyed fingerprints of its token windows (never the tokens), for the byte-scan verifier.
erasure_table = sa.Table(
    "erasures",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tree_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("sources", sa.JSON, nullable=False),  # [{"ingest", "source", "start", "stop"}]
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("window", sa.Integer, nullable=False),
    sa.Column("salt", sa.String(20), nullable=False),  # the hash's secret multiplier, decimal
    sa.Column("fingerprints", sa.LargeBinary, nullable=False),  # little-endian uint64s
    # "pending" from before the removal until the cleanup is done: a writer that opens the
    # tree and finds one pending finishes it (megacontext.runtime.erasure.finish_erasures).
    sa.Column("status", sa.String(16), nullable=False, server_default="done"),
)

# Compliance policies per source (an ingest row): access labels, retention, legal hold.
policy_table = sa.Table(
    "source_policies",
    schema,
    sa.Column("ingest_id", sa.Integer, sa.ForeignKey("ingests.id"), primary_key=True),
    sa.Column("tree_id", sa.String(64), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("retain_until", sa.DateTime(timezone=True)),
    sa.Column("hold", sa.Text),  # the reason of a legal hold; NULL: none
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

_SOURCE_COLUMNS = (sources.c.uri, sources.c.kind, sources.c.content_hash, sources.c.meta)
RUNNING, COMPLETE, ROLLED_BACK, REMOVED = "running", "complete", "rolled_back", "removed"
SpanTuple = tuple[int, int, tuple[int, int] | None, tuple[int, int] | None]


@dataclass(frozen=True)
class Source:
    id: int
    uri: str
    kind: str
    content_hash: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Provenance:
    """One span a token range or node comes from."""

    source: Source
    level: int
    start_index: int
    stop_index: int
    byte_range: tuple[int, int] | None
    line_range: tuple[int, int] | None
    gist_version: str
    tags: list[str]
    ingested_at: dt.datetime


@dataclass(frozen=True)
class Ingest:
    """One journal row: ``source`` appended at tokens ``[start, stop)`` of a tree."""

    id: int
    source: Source
    start: int
    stop: int | None
    status: str
    planned: list[SpanTuple] | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


def default_url(store_path: str) -> str:
    """The embedded default: ``meta.sqlite`` inside the store directory."""
    return f"sqlite:///{store_path}/meta.sqlite"


class MetadataDB:
    """Sources and provenance of trees, over any SQLAlchemy URL (SQLite or PostgreSQL).

    Example:
        >>> db = MetadataDB("sqlite:///tree/meta.sqlite")                       # doctest: +SKIP
        >>> src = db.add_source("file:///a.py", "code", data, {"repo": "x"})   # doctest: +SKIP
        >>> db.add_span(tree_id, 0, 0, 120, src, lines=(1, 10))                # doctest: +SKIP
        >>> db.provenance_of_node(tree_id, level=1, index=2)                   # doctest: +SKIP
    """

    def __init__(
        self, url: str, *, create: bool = True, echo: bool = False, readonly: bool = False
    ):
        self.readonly = readonly
        if readonly:
            create = False
            url = _readonly_url(url)
        try:
            self.engine = sa.create_engine(url, echo=echo, future=True)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise InvalidInputError(
                f"bad metadata database URL {url!r} ({exc}); use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:PORT/DB"
            ) from None
        if self.engine.dialect.name == "sqlite" and not readonly:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            try:
                schema.create_all(self.engine)
            except sa.exc.OperationalError as exc:
                raise StoreError(
                    f"cannot reach the metadata database {url!r}: {exc.orig}"
                ) from None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def integrity(self) -> list[str]:
        """What the database's own consistency check finds (SQLite's ``integrity_check``;
        a PostgreSQL server checks its own pages, so nothing is reported there)."""
        if self.dialect != "sqlite":
            return []
        try:
            with self.engine.connect() as conn:
                rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check")]
        except sa.exc.DatabaseError as exc:
            return [f"the database cannot be read ({exc.orig})"]
        return [] if rows == ["ok"] else rows

    def close(self) -> None:
        self.engine.dispose()

    def has(self, table: sa.Table) -> bool:
        """Whether the database holds ``table``: one last written by a version without it, and
        opened without creating anything (read-only), does not until the next writer opens it."""
        return sa.inspect(self.engine).has_table(table.name)

    # -- writing ---------------------------------------------------------------------------------

    def register_tree(
        self, tree_id: str, path: str, K: int, dim: int, fingerprints: dict[str, str]
    ) -> None:
        """Insert (or update) the row of a tree."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(trees.c.id).where(trees.c.id == tree_id)).first()
            values = {"path": path, "K": K, "dim": dim, "fingerprints": fingerprints}
            if row is None:
                conn.execute(trees.insert().values(id=tree_id, created_at=_now(), **values))
            else:
                conn.execute(trees.update().where(trees.c.id == tree_id).values(**values))

    def add_source(
        self, uri: str, kind: str, content: bytes, meta: dict[str, Any] | None = None
    ) -> int:
        """Record a source (idempotent for the same uri and content). Returns its id."""
        if not uri:
            raise InvalidInputError("a source needs a non-empty uri")
        digest = hashlib.sha256(content).hexdigest()
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(sources.c.id).where(
                    sources.c.uri == uri, sources.c.content_hash == digest
                )
            ).first()
            if found is not None:
                return int(found[0])
            result = conn.execute(
                sources.insert().values(
                    uri=uri, kind=kind, content_hash=digest, meta=meta or {}, created_at=_now()
                )
            )
            return _primary_key(result)

    def add_span(  # noqa: PLR0913  (one argument per column of the spans table)
        self,
        tree_id: str,
        level: int,
        start: int,
        stop: int,
        source_id: int,
        *,
        bytes_: tuple[int, int] | None = None,
        lines: tuple[int, int] | None = None,
        gist_version: str = "",
        tags: list[str] | None = None,
    ) -> int:
        """Record that records ``[start, stop)`` of ``level`` came from ``source_id``."""
        if level < 0 or start < 0 or stop <= start:
            raise InvalidInputError(
                f"a span needs level >= 0 and 0 <= start < stop, got {level}, [{start}, {stop})"
            )
        values = {
            "tree_id": tree_id,
            "level": level,
            "start_index": start,
            "stop_index": stop,
            "source_id": source_id,
            "byte_start": bytes_[0] if bytes_ else None,
            "byte_stop": bytes_[1] if bytes_ else None,
            "line_start": lines[0] if lines else None,
            "line_stop": lines[1] if lines else None,
            "ingested_at": _now(),
            "gist_version": gist_version,
            "tags": tags or [],
        }
        try:
            with self.engine.begin() as conn:
                return _primary_key(conn.execute(spans.insert().values(**values)))
        except sa.exc.IntegrityError as exc:
            raise InvalidInputError(
                f"span refers to an unknown tree {tree_id!r} or source {source_id}; register them "
                f"first ({exc.orig})"
            ) from None

    def add_spans(
        self,
        tree_id: str,
        source_id: int,
        rows: list[SpanTuple],
        gist_version: str = "",
        conn: sa.Connection | None = None,
    ) -> None:
        """Record level-0 spans ``(start, stop, bytes, lines)`` of one source at once."""
        if not rows:
            return
        now = _now()
        values: list[dict[str, Any]] = [
            {
                "tree_id": tree_id,
                "level": 0,
                "start_index": int(a),
                "stop_index": int(b),
                "source_id": source_id,
                "byte_start": byte[0] if byte else None,
                "byte_stop": byte[1] if byte else None,
                "line_start": line[0] if line else None,
                "line_stop": line[1] if line else None,
                "ingested_at": now,
                "gist_version": gist_version,
                "tags": [],
            }
            for a, b, byte, line in rows
        ]
        if conn is not None:
            conn.execute(spans.insert(), values)
            return
        with self.engine.begin() as own:
            own.execute(spans.insert(), values)

    # -- the ingest journal ----------------------------------------------------------------------

    def begin_ingest(
        self,
        tree_id: str,
        source_id: int,
        start: int,
        stop: int | None,
        planned: list[SpanTuple] | None = None,
    ) -> int:
        """Journal that ``source_id`` is about to be appended at ``[start, stop)`` (``stop`` is
        ``None`` while unknown). Committed before the first token is stored. Returns its id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                ingests.insert().values(
                    tree_id=tree_id,
                    source_id=source_id,
                    start_index=start,
                    stop_index=stop,
                    status=RUNNING,
                    planned=[list(_jsonable(r)) for r in planned] if planned else None,
                    started_at=_now(),
                )
            )
            return _primary_key(result)

    def complete_ingest(
        self, ingest_id: int, stop: int, rows: list[SpanTuple], gist_version: str = ""
    ) -> None:
        """Record the spans of a running ingest and mark it complete, in one transaction."""
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(ingests.c.tree_id, ingests.c.source_id, ingests.c.status).where(
                    ingests.c.id == ingest_id
                )
            ).first()
            if found is None or found.status != RUNNING:
                raise InvalidInputError(f"ingest {ingest_id} is not running; nothing to complete")
            self.add_spans(found.tree_id, found.source_id, rows, gist_version, conn=conn)
            conn.execute(
                ingests.update()
                .where(ingests.c.id == ingest_id)
                .values(status=COMPLETE, stop_index=stop, finished_at=_now())
            )

    def set_ingest_status(self, ingest_id: int, status: str) -> None:
        """Mark an ingest ``rolled_back`` or ``removed`` (its spans are dropped with it)."""
        with self.engine.begin() as conn:
            source_id = conn.execute(
                sa.select(
                    ingests.c.source_id,
                    ingests.c.tree_id,
                    ingests.c.start_index,
                    ingests.c.stop_index,
                ).where(ingests.c.id == ingest_id)
            ).first()
            if source_id is None:
                raise InvalidInputError(f"no ingest {ingest_id} in the journal")
            if status in (ROLLED_BACK, REMOVED) and source_id.stop_index is not None:
                conn.execute(
                    spans.delete().where(
                        spans.c.tree_id == source_id.tree_id,
                        spans.c.source_id == source_id.source_id,
                        spans.c.start_index >= source_id.start_index,
                        spans.c.stop_index <= source_id.stop_index,
                    )
                )
            conn.execute(
                ingests.update()
                .where(ingests.c.id == ingest_id)
                .values(status=status, finished_at=_now())
            )

    def erase(self, tree_id: str, ingest_ids: list[int]) -> None:
        """After the tokens of these complete ingests were cut out of the history: drop their
        spans, move every later span and journal row down by the tokens removed before it, and
        mark them ``removed`` — one transaction."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(ingests.c.id, ingests.c.start_index, ingests.c.stop_index)
                .where(ingests.c.tree_id == tree_id, ingests.c.id.in_(ingest_ids))
                .order_by(ingests.c.start_index.desc())
            ).all()
            for row in rows:  # latest first, so earlier positions stay valid
                a, b = int(row.start_index), int(row.stop_index)
                conn.execute(
                    spans.delete().where(
                        spans.c.tree_id == tree_id,
                        spans.c.start_index >= a,
                        spans.c.stop_index <= b,
                    )
                )
                conn.execute(
                    spans.update()
                    .where(spans.c.tree_id == tree_id, spans.c.start_index >= b)
                    .values(
                        start_index=spans.c.start_index - (b - a),
                        stop_index=spans.c.stop_index - (b - a),
                    )
                )
                conn.execute(
                    ingests.update()
                    .where(
                        ingests.c.tree_id == tree_id,
                        ingests.c.start_index >= b,
                        ingests.c.status.in_([RUNNING, COMPLETE]),
                    )
                    .values(
                        start_index=ingests.c.start_index - (b - a),
                        stop_index=ingests.c.stop_index - (b - a),
                    )
                )
                conn.execute(
                    ingests.update()
                    .where(ingests.c.id == row.id)
                    .values(status=REMOVED, finished_at=_now())
                )

    def set_source_content(self, source_id: int, content: bytes) -> None:
        """Record the content of a source known only once it was written (a generation)."""
        with self.engine.begin() as conn:
            conn.execute(
                sources.update()
                .where(sources.c.id == source_id)
                .values(content_hash=hashlib.sha256(content).hexdigest())
            )

    def ingests_of(self, tree_id: str, status: str | None = None) -> list[Ingest]:
        """The journal of a tree (optionally one status), in the order it was written."""
        query = (
            sa.select(ingests, *_SOURCE_COLUMNS)
            .join(sources, ingests.c.source_id == sources.c.id)
            .where(ingests.c.tree_id == tree_id)
            .order_by(ingests.c.id)
        )
        if status is not None:
            query = query.where(ingests.c.status == status)
        with self.engine.connect() as conn:
            return [_ingest(row) for row in conn.execute(query).mappings()]

    def straddling(self, tree_id: str, count: int) -> int | None:
        """The first token of the earliest journaled append that the first ``count`` tokens
        hold only part of (a reader's snapshot caught it running), or ``None``."""
        query = sa.select(sa.func.min(ingests.c.start_index)).where(
            ingests.c.tree_id == tree_id,
            ingests.c.status != REMOVED,
            ingests.c.start_index < count,
            sa.or_(ingests.c.stop_index.is_(None), ingests.c.stop_index > count),
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def ingested_content(self, tree_id: str, content_hash: str) -> Ingest | None:
        """The complete ingest of content with this sha256 in the tree, if there is one."""
        query = (
            sa.select(ingests, *_SOURCE_COLUMNS)
            .join(sources, ingests.c.source_id == sources.c.id)
            .where(
                ingests.c.tree_id == tree_id,
                ingests.c.status == COMPLETE,
                sources.c.content_hash == content_hash,
            )
            .order_by(ingests.c.id)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _ingest(row) if row is not None else None

    # -- queries ---------------------------------------------------------------------------------

    def provenance(
        self, tree_id: str, start: int, stop: int, limit: int | None = None
    ) -> list[Provenance]:
        """Which sources (and bytes, lines) the tokens ``[start, stop)`` come from, in order
        (the first ``limit`` spans)."""
        query = (
            sa.select(spans, sources)
            .join(sources, spans.c.source_id == sources.c.id)
            .where(
                spans.c.tree_id == tree_id,
                spans.c.level == 0,
                spans.c.start_index < stop,
                spans.c.stop_index > start,
            )
            .order_by(spans.c.start_index, spans.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_provenance(row) for row in conn.execute(query).mappings()]

    def provenance_of_node(self, tree_id: str, level: int, index: int) -> list[Provenance]:
        """Provenance of node ``(level, index)``: every span its token range overlaps."""
        width = span_tokens(level, self._K(tree_id))
        return self.provenance(tree_id, index * width, (index + 1) * width)

    def nodes_covering(self, tree_id: str, source_id: int, levels: int) -> dict[int, list[range]]:
        """Per level ``0..levels``, the node index ranges that cover any token of the source."""
        K = self._K(tree_id)
        query = (
            sa.select(spans.c.start_index, spans.c.stop_index)
            .where(spans.c.tree_id == tree_id, spans.c.source_id == source_id, spans.c.level == 0)
            .order_by(spans.c.start_index)
        )
        with self.engine.connect() as conn:
            token_ranges = [(int(a), int(b)) for a, b in conn.execute(query)]
        out: dict[int, list[range]] = {}
        for level in range(levels + 1):
            width = span_tokens(level, K)
            merged: list[range] = []
            for a, b in token_ranges:
                lo, hi = a // width, -(-b // width)
                if merged and lo <= merged[-1].stop:
                    merged[-1] = range(merged[-1].start, max(hi, merged[-1].stop))
                else:
                    merged.append(range(lo, hi))
            out[level] = merged
        return out

    def spans_of_source(self, tree_id: str, source_id: int) -> int:
        """How many provenance spans of the tree point into source ``source_id``."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.count())
                .select_from(spans)
                .where(spans.c.tree_id == tree_id, spans.c.source_id == source_id)
            ).scalar()
        return int(found or 0)

    def list_sources(self, kind: str | None = None) -> list[Source]:
        """Every source (optionally of one kind) with its metadata, oldest first."""
        query = sa.select(sources).order_by(sources.c.id)
        if kind is not None:
            query = query.where(sources.c.kind == kind)
        with self.engine.connect() as conn:
            return [_source(row) for row in conn.execute(query).mappings()]

    def _K(self, tree_id: str) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(trees.c.K).where(trees.c.id == tree_id)).first()
        if row is None:
            raise InvalidInputError(f"unknown tree {tree_id!r}; register it with register_tree")
        return check_block_size(int(row[0]))


def _readonly_url(url: str) -> str:
    """The URL of a read-only connection: SQLite opened with ``mode=ro`` (no file is created);
    other databases as given (the reader simply never writes)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "mode=ro" in url:
        return url
    return f"{prefix}file:{url[len(prefix) :]}?mode=ro&uri=true"


def _primary_key(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _source(row: Any) -> Source:
    return Source(int(row["id"]), row["uri"], row["kind"], row["content_hash"], dict(row["meta"]))


def _jsonable(row: SpanTuple) -> tuple[int, int, list[int] | None, list[int] | None]:
    a, b, byte, line = row
    return int(a), int(b), list(byte) if byte else None, list(line) if line else None


def _span_tuple(row: list[Any]) -> SpanTuple:
    a, b, byte, line = row
    return int(a), int(b), tuple(byte) if byte else None, tuple(line) if line else None  # type: ignore[return-value]


def _ingest(row: Any) -> Ingest:
    planned = row["planned"]
    return Ingest(
        id=int(row["id"]),
        source=Source(
            int(row["source_id"]), row["uri"], row["kind"], row["content_hash"], dict(row["meta"])
        ),
        start=int(row["start_index"]),
        stop=None if row["stop_index"] is None else int(row["stop_index"]),
        status=row["status"],
        planned=[_span_tuple(r) for r in planned] if planned else None,
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _provenance(row: Any) -> Provenance:
    has_bytes = row["byte_start"] is not None
    has_lines = row["line_start"] is not None
    return Provenance(
        source=Source(
            int(row["source_id"]), row["uri"], row["kind"], row["content_hash"], dict(row["meta"])
        ),
        level=int(row["level"]),
        start_index=int(row["start_index"]),
        stop_index=int(row["stop_index"]),
        byte_range=(int(row["byte_start"]), int(row["byte_stop"])) if has_bytes else None,
        line_range=(int(row["line_start"]), int(row["line_stop"])) if has_lines else None,
        gist_version=row["gist_version"],
        tags=list(row["tags"]),
        ingested_at=row["ingested_at"],
    )
