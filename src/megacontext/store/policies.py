"""Compliance policies of a tree's sources: access labels, retention and legal holds (table
``source_policies`` of :mod:`megacontext.store.metadata`).

A source is one ingest row. Its **retention** is a moment after which it is due for erasure
(``megacontext compliance retention apply`` erases what is due; a scheduler runs it). A **legal
hold** blocks erasure of the source, by retention or by hand, until it is released. Its
**labels** name who may see it. Every change is put on the tree's audit trail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from megacontext.store.audit import AuditLog
from megacontext.store.errors import InvalidInputError, StoreError
from megacontext.store.metadata import COMPLETE, MetadataDB, ingests, policy_table


class SourceOnHoldError(StoreError):
    """A source under legal hold cannot be erased: release the hold first."""


@dataclass(frozen=True)
class Policy:
    ingest_id: int
    labels: list[str]
    retain_until: dt.datetime | None
    hold: str | None  # the hold's reason; None: not held


class Policies:
    """The policies of one tree's sources in a metadata database opened for writing."""

    def __init__(self, db: MetadataDB, tree_id: str):
        self.db, self.tree_id = db, tree_id

    def get(self, ingest_id: int) -> Policy:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(policy_table).where(policy_table.c.ingest_id == ingest_id)
            ).first()
        if row is None:
            return Policy(ingest_id, [], None, None)
        return Policy(ingest_id, list(row.labels), _utc(row.retain_until), row.hold)

    def all(self) -> dict[int, Policy]:
        if not self.db.has(policy_table):
            return {}  # no policy was ever set
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(policy_table).where(policy_table.c.tree_id == self.tree_id)
            ).all()
        return {
            int(r.ingest_id): Policy(int(r.ingest_id), list(r.labels), _utc(r.retain_until), r.hold)
            for r in rows
        }

    def set_labels(self, ingest_id: int, labels: list[str], actor: str) -> Policy:
        cleaned = sorted({label.strip() for label in labels if label.strip()})
        return self._change(ingest_id, actor, "labels", {"labels": cleaned}, {"labels": cleaned})

    def retain_until(self, ingest_id: int, until: dt.datetime | None, actor: str) -> Policy:
        """Erase the source once ``until`` has passed (``None``: keep it)."""
        if until is not None and until.tzinfo is None:
            raise InvalidInputError("a retention time needs a time zone (UTC, e.g. ...+00:00)")
        detail = {"retain_until": until.isoformat() if until else None}
        return self._change(ingest_id, actor, "retention", {"retain_until": until}, detail)

    def hold(self, ingest_id: int, reason: str, actor: str) -> Policy:
        if not reason.strip():
            raise InvalidInputError("a legal hold needs a reason (a case or ticket reference)")
        return self._change(ingest_id, actor, "hold", {"hold": reason.strip()}, {"reason": reason})

    def release(self, ingest_id: int, actor: str) -> Policy:
        if self.get(ingest_id).hold is None:
            raise InvalidInputError(f"source #{ingest_id} is not under legal hold")
        return self._change(ingest_id, actor, "release", {"hold": None}, {})

    def check_erasable(self, ingest_ids: list[int]) -> None:
        """Raise :class:`SourceOnHoldError` naming every held source among ``ingest_ids``."""
        held = {i: p.hold for i, p in self.all().items() if i in ingest_ids and p.hold}
        if held:
            names = "; ".join(f"source #{i} ({reason})" for i, reason in sorted(held.items()))
            raise SourceOnHoldError(
                f"under legal hold, not erased: {names}; release the hold first "
                "(megacontext compliance release)"
            )

    def due(self, now: dt.datetime) -> list[int]:
        """Complete sources whose retention has passed and that no hold covers."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(policy_table.c.ingest_id)
                .join(ingests, ingests.c.id == policy_table.c.ingest_id)
                .where(
                    policy_table.c.tree_id == self.tree_id,
                    policy_table.c.retain_until.is_not(None),
                    policy_table.c.retain_until <= now,
                    policy_table.c.hold.is_(None),
                    ingests.c.status == COMPLETE,
                )
                .order_by(policy_table.c.ingest_id)
            ).all()
        return [int(r.ingest_id) for r in rows]

    def _change(
        self,
        ingest_id: int,
        actor: str,
        what: str,
        values: dict[str, Any],
        detail: dict[str, Any],
    ) -> Policy:
        now = dt.datetime.now(dt.UTC)
        with self.db.engine.begin() as conn:
            known = conn.execute(
                sa.select(ingests.c.id).where(
                    ingests.c.id == ingest_id, ingests.c.tree_id == self.tree_id
                )
            ).first()
            if known is None:
                raise InvalidInputError(
                    f"this tree has no source #{ingest_id}; `megacontext sources list` shows them"
                )
            found = conn.execute(
                sa.select(policy_table.c.ingest_id).where(policy_table.c.ingest_id == ingest_id)
            ).first()
            stamp = {"updated_by": actor, "updated_at": now}
            if found is None:
                defaults: dict[str, Any] = {"labels": [], "retain_until": None, "hold": None}
                conn.execute(
                    policy_table.insert().values(
                        ingest_id=ingest_id,
                        tree_id=self.tree_id,
                        **{**defaults, **values},
                        **stamp,
                    )
                )
            else:
                conn.execute(
                    policy_table.update()
                    .where(policy_table.c.ingest_id == ingest_id)
                    .values(**values, **stamp)
                )
        AuditLog(self.db, self.tree_id).record(
            f"policy.{what}", actor, f"source #{ingest_id}", {"ingest": ingest_id, **detail}
        )
        return self.get(ingest_id)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


__all__ = ["Policies", "Policy", "SourceOnHoldError"]
