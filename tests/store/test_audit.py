"""The audit trail's hash chain: appends, concurrent writers, export, and tampering of every
kind caught and named — over SQLite and a real PostgreSQL server."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from megacontext.errors import InvalidInputError
from megacontext.store.audit import GENESIS, AuditLog, event_hash, read_anchors
from megacontext.store.metadata import MetadataDB, audit_table

KEY = b"a secret kept away from the database"


@pytest.fixture()
def log(metadata_url: str) -> Iterator[AuditLog]:
    db = MetadataDB(metadata_url)
    yield AuditLog(db, uuid.uuid4().hex)
    db.close()


def filled(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.record("ingest", "ana", f"file:///notes-{i}.txt", {"tokens": 100 * i, "ids": [i]})


def tamper(log: AuditLog, statement: sa.Executable) -> None:
    with log.db.engine.begin() as conn:
        conn.execute(statement)


def where(log: AuditLog, seq: int) -> sa.ColumnElement[bool]:
    return sa.and_(audit_table.c.chain == log.chain, audit_table.c.seq == seq)


def test_events_chain_and_verify(log: AuditLog) -> None:
    filled(log)
    events = list(log.events())
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    first = events[0]
    assert first.hash == event_hash(
        first.chain, 1, first.at, "ana", "ingest", first.subject, first.detail, GENESIS
    )
    verdict = log.verify()
    assert verdict.ok and verdict.events == 5 and verdict.head == events[-1].hash
    assert list(log.events(first=4)) == events[3:]
    assert [e.seq for e in log.events(first=2, limit=2)] == [2, 3]


def test_an_edited_event_is_named(log: AuditLog) -> None:
    filled(log)
    tamper(log, audit_table.update().where(where(log, 3)).values(detail={"tokens": 1}))
    verdict = log.verify()
    assert verdict.first_bad == 3 and "was changed" in verdict.problem
    # re-hashing the edited event moves the break to the next link
    event = next(log.events(first=3))
    rehashed = event_hash(
        event.chain, 3, event.at, event.actor, event.action, event.subject, event.detail,
        event.prev_hash,
    )  # fmt: skip
    tamper(log, audit_table.update().where(where(log, 3)).values(hash=rehashed))
    verdict = log.verify()
    assert verdict.first_bad == 4 and "does not follow event 3" in verdict.problem


def test_a_deleted_event_is_named(log: AuditLog) -> None:
    filled(log)
    tamper(log, audit_table.delete().where(where(log, 2)))
    verdict = log.verify()
    assert verdict.first_bad == 2 and "missing" in verdict.problem


def test_an_inserted_event_is_named(log: AuditLog) -> None:
    filled(log)
    # make room after event 2 and slip in a well-formed event that links to it
    for seq in range(5, 2, -1):
        tamper(log, audit_table.update().where(where(log, seq)).values(seq=seq + 1))
    two = next(log.events(first=2))
    at = two.at
    forged = event_hash(log.chain, 3, at, "mallory", "remove", "x", {}, two.hash)
    tamper(
        log,
        audit_table.insert().values(
            chain=log.chain, seq=3, at=at, actor="mallory", action="remove", subject="x",
            detail={}, prev_hash=two.hash, hash=forged,
        ),
    )  # fmt: skip
    verdict = log.verify()
    assert verdict.first_bad == 4 and verdict.problem  # the shifted event no longer holds


def test_reordered_events_are_named(log: AuditLog) -> None:
    filled(log)
    tamper(log, audit_table.update().where(where(log, 2)).values(seq=-2))
    tamper(log, audit_table.update().where(where(log, 3)).values(seq=2))
    tamper(log, audit_table.update().where(where(log, -2)).values(seq=3))
    verdict = log.verify()
    assert verdict.first_bad == 2 and "was changed" in verdict.problem


def test_anchors_catch_a_chain_cut_back(log: AuditLog, tmp_path: Path) -> None:
    filled(log, 3)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps(log.anchor(KEY).to_json()) + "\n")
    filled(log, 2)
    assert log.verify(read_anchors(anchors), KEY).anchors_checked == 1
    # cutting the newest events leaves a valid chain: only the anchor can tell
    tamper(
        log, audit_table.delete().where(audit_table.c.chain == log.chain, audit_table.c.seq >= 3)
    )
    assert log.verify().ok
    verdict = log.verify(read_anchors(anchors), KEY)
    assert verdict.first_bad == 3 and "is gone" in verdict.problem
    bad = log.verify(read_anchors(anchors), b"another key")
    assert not bad.ok and "bad signature" in bad.problem


def test_concurrent_writers_never_fork_the_chain(log: AuditLog) -> None:
    def write(who: str) -> None:
        for i in range(10):
            log.record("ask", who, f"q{i}")

    threads = [threading.Thread(target=write, args=(f"w{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    verdict = log.verify()
    assert verdict.ok and verdict.events == 40


def test_export_and_bad_input(log: AuditLog, tmp_path: Path) -> None:
    filled(log, 2)
    out = tmp_path / "audit.jsonl"
    assert log.export(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [1, 2] and rows[1]["prev_hash"] == rows[0]["hash"]
    with pytest.raises(InvalidInputError, match="must be JSON"):
        log.record("ingest", "ana", "x", {"bad": float("nan")})
    with pytest.raises(InvalidInputError, match="needs a name"):
        AuditLog(log.db, "")
    empty = AuditLog(log.db, uuid.uuid4().hex)
    assert empty.verify().ok and empty.verify().events == 0
    with pytest.raises(InvalidInputError, match="empty"):
        empty.anchor(KEY)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:1 is not an audit anchor"):
        read_anchors(tmp_path / "bad.jsonl")
