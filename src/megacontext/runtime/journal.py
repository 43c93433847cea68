"""Durable edits of a session's history: journaled appends, recovery after a crash, removal.

Every append to a session on disk is journaled (the ``ingests`` table, see
:mod:`megacontext.store.metadata`): the row is committed before the first token is stored and
completed — with the source's provenance spans, in one transaction — after the last token is
flushed. A writer that opens the session finds what a crash left running and settles it:

- an ingest whose tokens are all stored is completed (its planned spans are recorded);
- an ingest cut short is rolled back: the history is truncated to where it started (gists, keys
  and lexical rows above it too), so no token is ever left without provenance;
- a generation keeps what it generated (its source text is read back from the tree).

Removing a source (:func:`remove_sources`) rewrites the history after its first token: the
kept tokens after that point are saved beside the tree, the history is truncated and the saved
tokens appended again (re-gisting them), then the provenance is shifted in one transaction. A
crash at any point is finished by the next writer from the saved tokens (``removing.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from megacontext.errors import InvalidInputError
from megacontext.files import write_text_atomic
from megacontext.store.metadata import COMPLETE, REMOVED, ROLLED_BACK, RUNNING, Ingest

if TYPE_CHECKING:
    from megacontext.runtime.session import Session

REMOVING = "removing.json"
REMOVING_TOKENS = "removing.npy"


@dataclass(frozen=True)
class Settled:
    """What opening a session did with an append a crash left unfinished."""

    source: str
    action: str  # "completed" | "rolled back" | "kept"
    tokens: int  # tokens completed, rolled back or kept

    def describe(self) -> str:
        if self.action == "rolled back":
            return (
                f"an interrupted ingest of {self.source} was rolled back ({self.tokens:,} tokens); "
                "ingest it again to add it"
            )
        return f"an interrupted append of {self.source} was {self.action} ({self.tokens:,} tokens)"


def label(ingest: Ingest) -> str:
    """How people know a source: the path it was read from, else its URI."""
    return str(ingest.source.meta.get("path") or ingest.source.uri)


def recover(session: Session) -> list[Settled]:
    """Finish what a crash left unfinished (see the module docstring). Writers only."""
    db = session.metadata
    if db is None or session.path is None:
        return []
    settled = []
    if (session.path / REMOVING).is_file():
        settled.append(_finish_removal(session))
    tree_id = session.tree_id
    for ingest in db.ingests_of(tree_id, RUNNING):
        n = session.tree.num_tokens
        name = label(ingest)
        if ingest.stop is None:  # a generation: what it wrote is history
            if n > ingest.start:
                text = session.base.decode(session.tree.tokens(ingest.start, n).tolist())
                db.set_source_content(ingest.source.id, text.encode("utf-8"))
                db.complete_ingest(ingest.id, n, [(ingest.start, n, None, None)])
                settled.append(Settled(name, "kept", n - ingest.start))
            else:
                db.set_ingest_status(ingest.id, ROLLED_BACK)
        elif n >= ingest.stop:
            db.complete_ingest(ingest.id, ingest.stop, ingest.planned or [], "")
            settled.append(Settled(name, "completed", ingest.stop - ingest.start))
        else:
            session.cut_history(min(ingest.start, n))
            db.set_ingest_status(ingest.id, ROLLED_BACK)
            settled.append(Settled(name, "rolled back", n - ingest.start))
    for done in settled:  # what a crash left and this open settled, on the record
        session.record("recover", done.source, {"outcome": done.action, "tokens": done.tokens})
    return settled


def remove_sources(session: Session, ingests: list[Ingest], progress: object = None) -> int:
    """Erase the tokens of ``ingests`` (complete ones) from the history. Returns tokens removed.

    The gists, keys and lexical rows above them are rebuilt; later provenance moves down.
    """
    if session.path is None or session.metadata is None:
        raise InvalidInputError("an in-memory session has no sources to remove")
    for ingest in ingests:
        if ingest.status != COMPLETE or ingest.stop is None:
            raise InvalidInputError(
                f"source {label(ingest)} is {ingest.status}, not complete; nothing to remove"
            )
    ranges = sorted((i.start, i.stop) for i in ingests if i.stop is not None)
    n = session.tree.num_tokens
    cut = ranges[0][0]
    keep = np.ones(n - cut, dtype=bool)
    for a, b in ranges:
        keep[a - cut : b - cut] = False
    kept = session.tree.tokens(cut, n)[keep]
    np.save(session.path / REMOVING_TOKENS, kept)
    plan = {
        "cut": cut,
        "final_tokens": cut + len(kept),
        "ingests": [i.id for i in ingests],
    }
    write_text_atomic(session.path / REMOVING, json.dumps(plan) + "\n")
    _finish_removal(session)
    removed = n - cut - len(kept)
    session.record(
        "remove",
        ", ".join(label(i) for i in ingests),
        {
            "ingests": [i.id for i in ingests],
            "sources": [label(i) for i in ingests],
            "ranges": [list(r) for r in ranges],
            "tokens": removed,
        },
    )
    return removed


def _finish_removal(session: Session) -> Settled:
    """Carry out (or finish) the removal ``removing.json`` describes; idempotent."""
    assert session.path is not None and session.metadata is not None
    plan = json.loads((session.path / REMOVING).read_text(encoding="utf-8"))
    kept = np.load(session.path / REMOVING_TOKENS)
    cut = int(plan["cut"])
    db = session.metadata
    journal = {i.id: i for i in db.ingests_of(session.tree_id)}
    ingests = [journal[i] for i in plan["ingests"] if i in journal]
    pending = [i.id for i in ingests if i.status != REMOVED]
    if pending:  # the provenance moves in one transaction: until then, redo the rewrite
        session.cut_history(cut)
        session.append_history(kept)
        db.erase(session.tree_id, pending)
    (session.path / REMOVING).unlink()
    (session.path / REMOVING_TOKENS).unlink(missing_ok=True)
    names = ", ".join(label(i) for i in ingests) or "a source"
    return Settled(names, "removed", sum((i.stop or i.start) - i.start for i in ingests))


def journal_path(root: Path) -> Path:
    """Where an unfinished removal is described (a session directory's ``removing.json``)."""
    return root / REMOVING


__all__ = ["Settled", "journal_path", "label", "recover", "remove_sources"]
