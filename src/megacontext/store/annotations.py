"""Annotations: notes and tags that people attach to spans of a tree, kept in its metadata
database (SQLite or PostgreSQL, the tables ``annotations`` and ``annotation_events`` of
:mod:`megacontext.store.metadata`).

Every change is appended to ``annotation_events`` with who made it and when, so an annotation's
history can be read back. Edits are optimistic: each names the version it read, and an edit of a
version that another edit replaced meanwhile raises :class:`AnnotationConflictError` instead of
overwriting it (nothing is lost; the caller reloads and tries again). Deleting keeps the row and
its history, marked deleted.

Which spans exist is the tree's business, not the database's: callers check a span against the
tree before they create an annotation on it (see :mod:`megacontext.explorer.browse`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from megacontext.store.audit import AuditLog
from megacontext.store.errors import InvalidInputError, StoreError
from megacontext.store.metadata import (
    MetadataDB,
    _now,
    _primary_key,
    annotation_event_table,
    annotation_table,
)

MAX_NOTE_CHARS = 10_000
MAX_TAGS = 20
_TAG = re.compile(r"^[\w.:/-]{1,50}$")


class AnnotationNotFoundError(InvalidInputError):
    """No annotation of that id on this tree (or it was deleted)."""


class AnnotationConflictError(StoreError):
    """The annotation changed since the caller read it: reload it and apply the edit again."""

    def __init__(self, annotation_id: int, expected: int, current: int):
        super().__init__(
            f"annotation {annotation_id} is at version {current}, not {expected}: someone "
            "changed it meanwhile; reload it and apply your edit again"
        )
        self.current = current


@dataclass(frozen=True)
class Annotation:
    id: int
    level: int
    start: int
    stop: int
    note: str
    tags: list[str]
    version: int
    created_by: str
    created_at: dt.datetime
    updated_by: str
    updated_at: dt.datetime


@dataclass(frozen=True)
class AnnotationEvent:
    action: str  # create, edit, delete
    version: int
    note: str
    tags: list[str]
    actor: str
    at: dt.datetime


class Annotations:
    """The annotations of one tree in a metadata database opened for writing (reads also work
    on a read-only one, and see none before the first annotation was ever written)."""

    def __init__(self, db: MetadataDB, tree_id: str):
        self.db, self.tree_id = db, tree_id

    def overlapping(self, start: int = 0, stop: int | None = None) -> list[Annotation]:
        """Live annotations whose span overlaps ``[start, stop)``, in order of position."""
        if not self._exists():
            return []
        query = sa.select(annotation_table).where(
            annotation_table.c.tree_id == self.tree_id,
            annotation_table.c.deleted.is_(False),
            annotation_table.c.stop_index > start,
        )
        if stop is not None:
            query = query.where(annotation_table.c.start_index < stop)
        query = query.order_by(annotation_table.c.start_index, annotation_table.c.id)
        with self.db.engine.connect() as conn:
            return [_annotation(row) for row in conn.execute(query).mappings()]

    def get(self, annotation_id: int) -> Annotation:
        if self._exists():
            with self.db.engine.connect() as conn:
                row = self._row(conn, annotation_id)
            if row is not None and not row["deleted"]:
                return _annotation(row)
        raise AnnotationNotFoundError(f"no annotation {annotation_id} on this tree")

    def create(
        self, level: int, start: int, stop: int, note: str, tags: list[str], actor: str
    ) -> Annotation:
        note, tags, actor = _checked(note, tags, actor)
        now = _now()
        with self.db.engine.begin() as conn:
            result = conn.execute(
                annotation_table.insert().values(
                    tree_id=self.tree_id,
                    level=level,
                    start_index=start,
                    stop_index=stop,
                    note=note,
                    tags=tags,
                    version=1,
                    deleted=False,
                    created_by=actor,
                    created_at=now,
                    updated_by=actor,
                    updated_at=now,
                )
            )
            annotation_id = _primary_key(result)
            self._event(conn, annotation_id, "create", 1, note, tags, actor, now)
        where = {"level": level, "start": start, "stop": stop}
        self._audit("create", annotation_id, 1, actor, {**where, "note": note, "tags": tags})
        return self.get(annotation_id)

    def edit(
        self, annotation_id: int, version: int, note: str, tags: list[str], actor: str
    ) -> Annotation:
        """Replace the note and tags of the annotation at ``version`` (the one the caller read)."""
        note, tags, actor = _checked(note, tags, actor)
        self._change(annotation_id, version, "edit", actor, {"note": note, "tags": tags})
        return self.get(annotation_id)

    def delete(self, annotation_id: int, version: int, actor: str) -> None:
        _, _, actor = _checked("-", [], actor)
        self._change(annotation_id, version, "delete", actor, {"deleted": True})

    def history(self, annotation_id: int) -> list[AnnotationEvent]:
        """Every change of the annotation, oldest first (also after it was deleted)."""
        with self.db.engine.connect() as conn:
            if not self._exists() or self._row(conn, annotation_id) is None:
                raise AnnotationNotFoundError(f"no annotation {annotation_id} on this tree")
            rows = conn.execute(
                sa.select(annotation_event_table)
                .where(annotation_event_table.c.annotation_id == annotation_id)
                .order_by(annotation_event_table.c.id)
            ).mappings()
            return [
                AnnotationEvent(
                    r["action"], r["version"], r["note"], list(r["tags"]), r["actor"], _utc(r["at"])
                )
                for r in rows
            ]

    # -- internals -------------------------------------------------------------------------

    def _change(
        self, annotation_id: int, version: int, action: str, actor: str, values: dict[str, Any]
    ) -> None:
        now = _now()
        with self.db.engine.begin() as conn:
            row = self._row(conn, annotation_id) if self._exists() else None
            if row is None or row["deleted"]:
                raise AnnotationNotFoundError(f"no annotation {annotation_id} on this tree")
            # The version in the WHERE clause makes the check and the write one step: of two
            # concurrent edits of one version, exactly one matches a row.
            done = conn.execute(
                annotation_table.update()
                .where(
                    annotation_table.c.id == annotation_id,
                    annotation_table.c.version == version,
                    annotation_table.c.deleted.is_(False),
                )
                .values(version=version + 1, updated_by=actor, updated_at=now, **values)
            )
            if done.rowcount != 1:
                current = self._row(conn, annotation_id)
                assert current is not None
                raise AnnotationConflictError(annotation_id, version, int(current["version"]))
            note = values.get("note", row["note"])
            tags = values.get("tags", list(row["tags"]))
            self._event(conn, annotation_id, action, version + 1, note, tags, actor, now)
        self._audit(action, annotation_id, version + 1, actor, {"note": note, "tags": tags})

    def _audit(
        self, action: str, annotation_id: int, version: int, actor: str, detail: dict[str, Any]
    ) -> None:
        """The change on the tree's audit trail too (the annotation's own history has it in
        full; the trail puts it in order with everything else that happened to the tree)."""
        detail = {"action": action, "annotation": annotation_id, "version": version, **detail}
        AuditLog(self.db, self.tree_id).record(
            "annotate", actor, f"annotation {annotation_id}", detail
        )

    def _row(self, conn: sa.Connection, annotation_id: int) -> Any:
        return (
            conn.execute(
                sa.select(annotation_table).where(
                    annotation_table.c.id == annotation_id,
                    annotation_table.c.tree_id == self.tree_id,
                )
            )
            .mappings()
            .first()
        )

    @staticmethod
    def _event(
        conn: sa.Connection,
        annotation_id: int,
        action: str,
        version: int,
        note: str,
        tags: list[str],
        actor: str,
        at: dt.datetime,
    ) -> None:
        conn.execute(
            annotation_event_table.insert().values(
                annotation_id=annotation_id,
                action=action,
                version=version,
                note=note,
                tags=tags,
                actor=actor,
                at=at,
            )
        )

    def _exists(self) -> bool:
        # Until a writer creates the table, there is simply nothing annotated.
        return self.db.has(annotation_table)


def _checked(note: str, tags: list[str], actor: str) -> tuple[str, list[str], str]:
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise InvalidInputError(f"a note is text of at most {MAX_NOTE_CHARS} characters")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise InvalidInputError(f"tags are a list of at most {MAX_TAGS}")
    bad = [t for t in tags if not isinstance(t, str) or not _TAG.match(t)]
    if bad:
        raise InvalidInputError(
            f"tag {bad[0]!r} is not valid: 1-50 letters, digits, '_', '.', ':', '/' or '-'"
        )
    if not note.strip() and not tags:
        raise InvalidInputError("an annotation needs a note or at least one tag")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 200:
        raise InvalidInputError("an annotation change needs who made it (1-200 characters)")
    return note, list(dict.fromkeys(tags)), actor.strip()


def _annotation(row: Any) -> Annotation:
    return Annotation(
        id=int(row["id"]),
        level=int(row["level"]),
        start=int(row["start_index"]),
        stop=int(row["stop_index"]),
        note=row["note"],
        tags=list(row["tags"]),
        version=int(row["version"]),
        created_by=row["created_by"],
        created_at=_utc(row["created_at"]),
        updated_by=row["updated_by"],
        updated_at=_utc(row["updated_at"]),
    )


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite gives naive datetimes back; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


__all__ = [
    "Annotation",
    "AnnotationConflictError",
    "AnnotationEvent",
    "AnnotationNotFoundError",
    "Annotations",
]
