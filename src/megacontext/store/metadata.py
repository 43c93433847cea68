"""Metadata and provenance in SQL (DESIGN §5, D11): SQLAlchemy 2 Core, one code path.

SQLite (``sqlite:///tree/meta.sqlite``) is the embedded default; PostgreSQL
(``postgresql+psycopg://user@host:port/db``) serves shared deployments through the same queries.

Tables:

- ``trees``: one row per tree (id = the manifest's ``tree_id``), K, dim, fingerprints.
- ``sources``: what was ingested — ``uri``, ``kind``, ``content_hash`` (sha256), user metadata JSON.
- ``spans``: ``(tree, level, [start, stop))`` → source, byte and line range, ingest time, gist
  version, tags. Ingest records level-0 spans (token ranges); a node's provenance is every span
  its token range overlaps.
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

    def __init__(self, url: str, *, create: bool = True, echo: bool = False):
        try:
            self.engine = sa.create_engine(url, echo=echo, future=True)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise InvalidInputError(
                f"bad metadata database URL {url!r} ({exc}); use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:PORT/DB"
            ) from None
        if self.engine.dialect.name == "sqlite":
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

    def close(self) -> None:
        self.engine.dispose()

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

    # -- queries ---------------------------------------------------------------------------------

    def provenance(self, tree_id: str, start: int, stop: int) -> list[Provenance]:
        """Which sources (and bytes, lines) the tokens ``[start, stop)`` come from, in order."""
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
