"""Erasure of sources, with proof, and retention.

:func:`erase_sources` does what ``megacontext sources remove`` does — the tokens cut out of the
history, every gist, key and lexical row above them rebuilt from what remains, provenance
dropped (:func:`megacontext.runtime.journal.remove_sources`) — and then removes what else could
still hold the content:

- the SQLite databases beside the tree are vacuumed, so freed pages no longer hold rows of the
  lexical index (the blocks' text) or of provenance;
- the text that focus traces recorded for expanded blocks of the erased ranges is redacted.

It records the erasure: which sources, when, by whom, and **keyed fingerprints** of every window
of WINDOW tokens that lay wholly inside an erased source and occurs nowhere in what was kept. A
fingerprint is a polynomial hash of the window's token ids (modulo 2^64) with a random secret
multiplier kept with the record: it proves presence or absence of the window, and is not a list
of the tokens. The erasure goes on the audit trail (the fact, never the content).

:func:`verify_erasure` proves an erasure held: the lineage of every remaining gist recomputes
from the stored tokens (so none was computed from erased tokens), no provenance span points into
an erased source, and a **byte scan** of every file of the session directory — segments,
checksums, key store, SQLite databases, traces — at each of the four byte alignments finds none
of the fingerprinted windows.

A source under legal hold is never erased (:class:`~megacontext.store.policies.SourceOnHoldError`);
:func:`apply_retention` erases the sources whose retention has passed.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from megacontext.errors import InvalidInputError
from megacontext.files import write_text_atomic
from megacontext.runtime.journal import label, remove_sources
from megacontext.runtime.traces import list_traces
from megacontext.store.metadata import COMPLETE, REMOVED, Ingest, MetadataDB, erasure_table
from megacontext.store.policies import Policies

if TYPE_CHECKING:
    from megacontext.runtime.session import Session

WINDOW = 8  # tokens per fingerprinted window
SCAN_CHUNK = 1 << 24  # bytes of a file scanned at a time (windows across chunks overlap)
REDACTED = "[erased]"
PENDING, DONE = "pending", "done"


@dataclass(frozen=True)
class Erasure:
    id: int
    at: dt.datetime
    actor: str
    sources: list[dict[str, Any]]
    tokens: int
    fingerprints: int  # windows fingerprinted


@dataclass
class ErasureVerdict:
    erasure: int
    lineage_checked: int = 0
    problems: list[str] = field(default_factory=list)
    files_scanned: int = 0
    bytes_scanned: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "erasure": self.erasure,
            "ok": self.ok,
            "problems": self.problems,
            "lineage_checked": self.lineage_checked,
            "files_scanned": self.files_scanned,
            "bytes_scanned": self.bytes_scanned,
        }


def window_hashes(tokens: np.ndarray, salt: int, window: int = WINDOW) -> np.ndarray:
    """The keyed hash of every ``window``-token run of ``tokens``: sum of t[i+j]·salt^(w-1-j)
    modulo 2^64 (numpy's uint64 arithmetic wraps)."""
    values = np.ascontiguousarray(tokens).astype(np.uint64, copy=False)
    n = len(values) - window + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = np.zeros(n, dtype=np.uint64)
    power = np.uint64(1)
    multiplier = np.uint64(salt)
    with np.errstate(over="ignore"):
        for j in range(window - 1, -1, -1):
            out += values[j : j + n] * power
            power = power * multiplier
    return out


def erase_sources(session: Session, found: list[Ingest]) -> Erasure:
    """Erase ``found`` (complete sources of ``session``, none under legal hold); see the
    module docstring. Returns the erasure's record.

    The record is written first, ``pending``, with the fingerprints of the erased windows; then
    the removal (journaled: a crash is finished by the next writer), then the cleanup, and the
    record is completed. A writer that opens the tree and finds a pending record finishes its
    cleanup (:func:`finish_erasures`), so a crash anywhere leaves nothing half done."""
    db = session.metadata
    if session.path is None or db is None:
        raise InvalidInputError("an in-memory session has no sources to erase")
    Policies(db, session.tree_id).check_erasable([i.id for i in found])
    salt = secrets.randbits(64) | 1
    ranges = sorted((i.start, i.stop) for i in found if i.status == COMPLETE and i.stop)
    erased = [window_hashes(session.tree.tokens(a, b), salt) for a, b in ranges]
    sources: list[dict[str, Any]] = [
        {"ingest": i.id, "source": label(i), "start": i.start, "stop": i.stop} for i in found
    ]
    now = dt.datetime.now(dt.UTC)
    windows = np.unique(np.concatenate([*erased, np.zeros(0, np.uint64)]))
    with db.engine.begin() as conn:
        result = conn.execute(
            erasure_table.insert().values(
                tree_id=session.tree_id,
                at=now,
                actor=session.actor,
                sources=sources,
                tokens=sum(b - a for a, b in ranges),
                window=WINDOW,
                salt=str(salt),
                fingerprints=windows.astype("<u8").tobytes(),
                status=PENDING,
            )
        )
        erasure_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    remove_sources(session, found)
    return _finish(session, erasure_id)


def finish_erasures(session: Session) -> list[Erasure]:
    """Finish every erasure a crash left pending (a writer runs this when it opens the tree):
    the removal itself was finished by the journal; the cleanup and the record are done here."""
    db = session.metadata
    if db is None or session.path is None or not db.has(erasure_table):
        return []
    with db.engine.connect() as conn:
        pending = conn.execute(
            sa.select(erasure_table.c.id).where(
                erasure_table.c.tree_id == session.tree_id, erasure_table.c.status == PENDING
            )
        ).all()
    return [_finish(session, int(row.id)) for row in pending]


def _finish(session: Session, erasure_id: int) -> Erasure:
    """The cleanup of an erasure whose sources are removed, and its record completed: the
    fingerprints of windows the kept history also holds dropped, the files vacuumed, the
    traces redacted, the erasure on the audit trail."""
    db = session.metadata
    assert db is not None
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(erasure_table).where(erasure_table.c.id == erasure_id)).one()
    salt = int(row.salt)
    windows = np.frombuffer(row.fingerprints, dtype="<u8")
    kept = np.setdiff1d(windows, _history_hashes(session, salt))
    ranges = [(int(s["start"]), int(s["stop"])) for s in row.sources]
    _scrub(session, ranges)
    with db.engine.begin() as conn:
        conn.execute(
            erasure_table.update()
            .where(erasure_table.c.id == erasure_id)
            .values(fingerprints=kept.astype("<u8").tobytes(), status=DONE)
        )
    sources = list(row.sources)
    session.record(
        "erase",
        ", ".join(str(s["source"]) for s in sources),
        {"erasure": erasure_id, "sources": sources, "tokens": int(row.tokens)},
    )
    return Erasure(erasure_id, row.at, row.actor, sources, int(row.tokens), len(kept))


def apply_retention(session: Session, now: dt.datetime | None = None) -> Erasure | None:
    """Erase every source whose retention has passed and that no hold covers (``None`` when
    nothing is due)."""
    db = session.metadata
    if db is None:
        return None
    due = set(Policies(db, session.tree_id).due(now or dt.datetime.now(dt.UTC)))
    found = [i for i in db.ingests_of(session.tree_id, COMPLETE) if i.id in due]
    return erase_sources(session, found) if found else None


def erasures(db: MetadataDB, tree_id: str) -> list[Erasure]:
    if not db.has(erasure_table):
        return []
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(erasure_table)
            .where(erasure_table.c.tree_id == tree_id)
            .order_by(erasure_table.c.id)
        ).all()
    return [
        Erasure(
            int(r.id),
            r.at,
            r.actor,
            list(r.sources),
            int(r.tokens),
            len(r.fingerprints) // 8,
        )
        for r in rows
    ]


def verify_erasure(session: Session, erasure_id: int) -> ErasureVerdict:
    """Prove erasure ``erasure_id`` held (see the module docstring)."""
    db = session.metadata
    if db is None or session.path is None:
        raise InvalidInputError("this session records no erasures (it has no metadata database)")
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.select(erasure_table).where(
                erasure_table.c.id == erasure_id, erasure_table.c.tree_id == session.tree_id
            )
        ).first()
    if row is None:
        known = ", ".join(str(e.id) for e in erasures(db, session.tree_id)) or "none"
        raise InvalidInputError(f"no erasure #{erasure_id} in this tree (its erasures: {known})")
    verdict = ErasureVerdict(erasure_id)
    if row.status == PENDING:
        verdict.problems.append(
            "the erasure was interrupted before its cleanup; open the tree for writing to finish "
            "it (e.g. `megacontext compliance apply-retention --tree DIR`, which also erases "
            "nothing that is not due)"
        )
    lineage = session.lineage()
    if lineage is not None:
        verdict.lineage_checked, mismatches = lineage.verify(session.tree)
        verdict.problems += [
            f"the lineage of LOD{m.level} gist {m.index} does not hold ({m.problem})"
            for m in mismatches
        ]
    journal = {i.id: i for i in db.ingests_of(session.tree_id)}
    for source in row.sources:
        ingest = journal.get(int(source["ingest"]))
        if ingest is None:
            continue
        if ingest.status != REMOVED:
            verdict.problems.append(f"{source['source']} is {ingest.status}, not removed")
        # the same content ingested again (--force) shares the source row: its spans are its own
        shared = any(
            i.source.id == ingest.source.id and i.status == COMPLETE for i in journal.values()
        )
        if not shared and db.spans_of_source(session.tree_id, ingest.source.id):
            verdict.problems.append(f"provenance still points into {source['source']}")
    fingerprints = np.frombuffer(row.fingerprints, dtype="<u8")
    _scan(session.path, fingerprints, int(row.salt), int(row.window), verdict)
    return verdict


# -- internals --------------------------------------------------------------------------------


def _history_hashes(session: Session, salt: int) -> np.ndarray:
    """Every window hash of the whole (kept) history, sorted and unique."""
    n, step = session.tree.num_tokens, 1 << 20
    parts = []
    for lo in range(0, n, step):
        hi = min(n, lo + step + WINDOW - 1)
        parts.append(window_hashes(session.tree.tokens(lo, hi), salt))
    return np.unique(np.concatenate([*parts, np.zeros(0, np.uint64)]))


def _scrub(session: Session, ranges: list[tuple[int, int]]) -> None:
    """Vacuum the SQLite files beside the tree and redact the traces' text of erased ranges."""
    assert session.path is not None
    session.lexical.vacuum()
    session.release_trace()
    db = session.metadata
    if db is not None and db.dialect == "sqlite":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")
    for trace in list_traces(session.path):
        _redact(trace, ranges)


def _redact(trace: Path, ranges: list[tuple[int, int]]) -> None:
    changed, lines = False, []
    for line in trace.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        step = json.loads(line)
        for shown in step.get("expanded_text", []):
            a, b = shown["tokens"]
            if any(a < stop and start < b for start, stop in ranges):
                shown["text"], changed = REDACTED, True
        lines.append(json.dumps(step))
    if changed:
        write_text_atomic(trace, "\n".join(lines) + "\n")


def _scan(root: Path, fingerprints: np.ndarray, salt: int, window: int, verdict: Any) -> None:
    """Look for any fingerprinted window in every file under ``root``, read as little-endian
    uint32 token ids at each of the four byte alignments."""
    wanted = np.unique(fingerprints)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        size = path.stat().st_size
        verdict.files_scanned += 1
        verdict.bytes_scanned += size
        if not len(wanted) or size < 4 * window:
            continue
        overlap = 4 * window
        with path.open("rb") as handle:
            offset = 0
            while offset < size:
                handle.seek(offset)
                data = np.frombuffer(handle.read(SCAN_CHUNK + overlap), dtype=np.uint8)
                for align in range(4):
                    usable = (len(data) - align) // 4 * 4
                    if usable < 4 * window:
                        continue
                    ids = data[align : align + usable].view("<u4")
                    hits = np.flatnonzero(np.isin(window_hashes(ids, salt, window), wanted))
                    if len(hits):
                        where = offset + align + 4 * int(hits[0])
                        verdict.problems.append(
                            f"{path.relative_to(root)} holds erased tokens at byte {where}"
                        )
                        break
                else:
                    offset += SCAN_CHUNK
                    continue
                break


__all__ = [
    "WINDOW",
    "Erasure",
    "ErasureVerdict",
    "apply_retention",
    "erase_sources",
    "erasures",
    "finish_erasures",
    "verify_erasure",
    "window_hashes",
]
