"""The audit trail: a hash-chained log of what happened to a tree (or to a service), kept in the
metadata database (SQLite or PostgreSQL, table ``audit_events`` of
:mod:`megacontext.store.metadata`).

Each event names its chain (a tree's id, or ``service``), its place in it (``seq``, from 1
without gaps), when, who, what (``action``: ingest, remove, rollback, ask, annotate, ...), its
subject and a JSON detail, and two hashes: the previous event's and its own, a SHA-256 over all
of that in a canonical JSON form. Changing an event changes its hash; deleting, inserting or
reordering events breaks a ``prev_hash`` link or the numbering. :meth:`AuditLog.verify` walks
the chain and names the first event that does not hold.

A chain alone cannot show that its newest events were cut off: the head an attacker leaves is a
valid head. **Anchors** close that gap. An anchor is the head (``seq``, ``hash``) signed with
HMAC-SHA256 under a secret key and kept outside the database (a file, a ticket, a log
elsewhere). Verifying against anchors checks each signature and that the chain still holds
each anchored event with the same hash. An HMAC needs the secret to check it, unlike a public-key
signature; the docs say so.

Events are appended in one transaction each; the unique ``(chain, seq)`` means two writers that
raced for the same place cannot both win, and the loser retries on the new head (no forks). On
PostgreSQL, appends to one chain also take turns on an advisory lock, so they do not race.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from megacontext.store.errors import InvalidInputError, StoreError
from megacontext.store.metadata import MetadataDB, audit_table

GENESIS = "0" * 64  # the prev_hash of a chain's first event
SERVICE_CHAIN = "service"
_RETRIES = 20


class AuditError(StoreError):
    """The audit trail could not be written (the database refused it)."""


@dataclass(frozen=True)
class AuditEvent:
    chain: str
    seq: int
    at: str  # ISO 8601, UTC, microseconds: hashed as written
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Anchor:
    """A chain head signed with a secret: ``signature`` = HMAC-SHA256(key, chain:seq:hash)."""

    chain: str
    seq: int
    hash: str
    at: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """What verifying a chain found. ``first_bad``: the seq of the first event that does not
    hold (``None`` when all do); ``problem`` says what is wrong with it."""

    chain: str
    events: int
    head: str
    first_bad: int | None = None
    problem: str = ""
    anchors_checked: int = 0

    @property
    def ok(self) -> bool:
        return self.first_bad is None and not self.problem

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def event_hash(
    chain: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any],
    prev_hash: str,
) -> str:
    """The SHA-256 of an event: its fields in canonical JSON (sorted keys, no spaces)."""
    body = {
        "chain": chain,
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """The chain ``chain`` (a tree's id, or :data:`SERVICE_CHAIN`) of a metadata database."""

    def __init__(self, db: MetadataDB, chain: str):
        if not chain:
            raise InvalidInputError("an audit chain needs a name (a tree's id, or 'service')")
        self.db, self.chain = db, chain

    def record(
        self, action: str, actor: str, subject: str = "", detail: dict[str, Any] | None = None
    ) -> AuditEvent:
        """Append one event at the head of the chain and return it."""
        detail = _jsonable(detail or {})
        for attempt in range(_RETRIES):
            try:
                with self.db.engine.begin() as conn:
                    if self.db.dialect == "postgresql":  # appends to one chain take turns
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(hashtext(:chain))"),
                            {"chain": f"megacontext-audit:{self.chain}"},
                        )
                    head = conn.execute(
                        sa.select(audit_table.c.seq, audit_table.c.hash)
                        .where(audit_table.c.chain == self.chain)
                        .order_by(audit_table.c.seq.desc())
                        .limit(1)
                    ).first()
                    seq = 1 if head is None else int(head.seq) + 1
                    prev = GENESIS if head is None else str(head.hash)
                    at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
                    digest = event_hash(self.chain, seq, at, actor, action, subject, detail, prev)
                    conn.execute(
                        audit_table.insert().values(
                            chain=self.chain,
                            seq=seq,
                            at=at,
                            actor=actor,
                            action=action,
                            subject=subject,
                            detail=detail,
                            prev_hash=prev,
                            hash=digest,
                        )
                    )
                return AuditEvent(self.chain, seq, at, actor, action, subject, detail, prev, digest)
            except sa.exc.IntegrityError:
                pass  # another writer (without the lock: SQLite) took this seq: append after it
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc.orig):
                    raise AuditError(f"cannot write the audit trail: {exc.orig}") from None
            time.sleep(random.uniform(0.001, 0.02) * (attempt + 1))
        raise AuditError(f"the audit chain {self.chain!r} stayed busy; try again")

    def events(self, first: int = 1, limit: int | None = None) -> Iterator[AuditEvent]:
        """The chain's events from seq ``first`` on, in order (read in pages)."""
        if not self.db.has(audit_table):  # none yet: an empty chain
            return
        page = 1000 if limit is None else min(limit, 1000)
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            with self.db.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(audit_table)
                    .where(audit_table.c.chain == self.chain, audit_table.c.seq >= first)
                    .order_by(audit_table.c.seq, audit_table.c.id)
                    .limit(size)
                ).all()
            for row in rows:
                yield _event(row)
            if len(rows) < size:
                return
            first = int(rows[-1].seq) + 1
            if left is not None:
                left -= len(rows)

    def head(self) -> AuditEvent | None:
        if not self.db.has(audit_table):  # none yet: an empty chain
            return None
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(audit_table)
                .where(audit_table.c.chain == self.chain)
                .order_by(audit_table.c.seq.desc())
                .limit(1)
            ).first()
        return None if row is None else _event(row)

    def verify(self, anchors: list[Anchor] | None = None, key: bytes | None = None) -> Verdict:
        """Walk the chain: every event's hash recomputes, links to the one before and follows
        it in number. With ``anchors`` (and the ``key`` they were signed with), also check that
        each is genuine and its event is still in the chain, unchanged."""
        prev, expected, count, head = GENESIS, 1, 0, GENESIS
        hashes: dict[int, str] = {}
        for event in self.events():
            count += 1
            if event.seq != expected:
                what = "missing" if event.seq > expected else "repeated or out of order"
                return Verdict(
                    self.chain,
                    count,
                    head,
                    expected,
                    f"event {expected} is {what} (the next event found is {event.seq})",
                )
            recomputed = event_hash(
                event.chain,
                event.seq,
                event.at,
                event.actor,
                event.action,
                event.subject,
                event.detail,
                event.prev_hash,
            )
            if recomputed != event.hash:
                return Verdict(
                    self.chain,
                    count,
                    head,
                    event.seq,
                    f"event {event.seq} ({event.action}) was changed: its content does not "
                    "hash to its recorded hash",
                )
            if event.prev_hash != prev:
                return Verdict(
                    self.chain,
                    count,
                    head,
                    event.seq,
                    f"event {event.seq} ({event.action}) does not follow event {event.seq - 1}: "
                    "an event before it was changed, removed or inserted",
                )
            prev = head = event.hash
            hashes[event.seq] = event.hash
            expected += 1
        checked = 0
        for anchor in anchors or []:
            if anchor.chain != self.chain:
                continue
            if key is None or not anchor_is_genuine(anchor, key):
                return Verdict(
                    self.chain,
                    count,
                    head,
                    None,
                    f"the anchor of event {anchor.seq} has a bad signature (wrong key, or the "
                    "anchor was edited)",
                    checked,
                )
            if hashes.get(anchor.seq) != anchor.hash:
                where = "is gone" if anchor.seq not in hashes else "was replaced"
                return Verdict(
                    self.chain,
                    count,
                    head,
                    anchor.seq,
                    f"event {anchor.seq}, anchored at {anchor.at}, {where}: the chain was cut "
                    "back or rewritten after it was anchored",
                    checked,
                )
            checked += 1
        return Verdict(self.chain, count, head, anchors_checked=checked)

    def anchor(self, key: bytes) -> Anchor:
        """The chain's head, signed with ``key`` (keep the anchor outside the database)."""
        head = self.head()
        if head is None:
            raise InvalidInputError("the audit chain is empty: there is no head to anchor yet")
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return Anchor(self.chain, head.seq, head.hash, at, _sign(key, self.chain, head))

    def export(self, path: Path) -> int:
        """Write the chain as JSONL (one event per line, in order); returns the events."""
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for event in self.events():
                out.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
                count += 1
        return count


def anchor_is_genuine(anchor: Anchor, key: bytes) -> bool:
    expected = hmac.new(key, f"{anchor.chain}:{anchor.seq}:{anchor.hash}".encode(), "sha256")
    return hmac.compare_digest(expected.hexdigest(), anchor.signature)


def read_anchors(path: Path) -> list[Anchor]:
    """The anchors of a JSONL file (``megacontext audit anchor`` appends one per line)."""
    anchors = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            anchors.append(Anchor(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InvalidInputError(f"{path}:{number} is not an audit anchor ({exc})") from None
    return anchors


def _sign(key: bytes, chain: str, head: AuditEvent) -> str:
    return hmac.new(key, f"{chain}:{head.seq}:{head.hash}".encode(), "sha256").hexdigest()


def _jsonable(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` as the database will give it back (JSON round trip), so that the hash of the
    event written is the hash of the event read."""
    try:
        out = json.loads(json.dumps(detail, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"audit detail must be JSON: {exc}") from None
    assert isinstance(out, dict)
    return out


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        chain=row.chain,
        seq=int(row.seq),
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        detail=dict(row.detail),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


__all__ = [
    "GENESIS",
    "SERVICE_CHAIN",
    "Anchor",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "Verdict",
    "anchor_is_genuine",
    "event_hash",
    "read_anchors",
]
