"""The health of a whole session directory: its tree, keys, lexical index and metadata.

``megacontext store info|verify|repair SESSION`` reads these. The tree store is checked byte
by byte (:meth:`LocalStore.verify`); everything derived from it is checked against it:

- the gists: level ``l`` holds one gist per ``K**l`` tokens (fewer after a crash: the next
  writer recomputes them);
- the key store: one key per gist (rebuilt from the gists when missing, damaged or behind);
- the lexical index: one row per LOD1 block (rebuilt from the tokens when it disagrees);
- the metadata: the database's own integrity check, every token covered by exactly one
  provenance span, no append left running, no source removal left half done.

What the next writer open fixes by itself (a crash's leftovers, derived data behind the tree)
is a *warning*; what loses information or blocks opening is an *error*. :func:`repair_session`
repairs the stores, then opens the session for writing, which rebuilds the derived data and
settles the journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megacontext.core import span_tokens
from megacontext.errors import StorageCorruptionError
from megacontext.runtime.journal import journal_path, label
from megacontext.runtime.opening import SESSION_FILE, NotASessionError, is_session, metadata_reader
from megacontext.store.admin import Problem
from megacontext.store.errors import NotAStoreError
from megacontext.store.lexical import open_lexical_index
from megacontext.store.local import LocalStore
from megacontext.store.metadata import COMPLETE, RUNNING, default_url
from megacontext.store.repair import RepairReport

REBUILT = "rebuilt from the tree by the next open for writing or `megacontext store repair`"


def check_session_path(root: Path) -> None:
    """Raise :class:`NotASessionError` unless ``root`` is a session directory."""
    if not is_session(root):
        raise NotASessionError(f"{root} is not a session directory (no tree/manifest.json)")


def session_info(root: str | Path) -> dict[str, Any]:
    """What a session holds: its tree's :meth:`LocalStore.info`, key and lexical counts, and
    its sources and journal by status."""
    root = Path(root)
    check_session_path(root)
    with LocalStore.open(root / "tree", readonly=True) as store:
        document: dict[str, Any] = {"session": str(root), "tree": store.info()}
        blocks, url, tree_id = (
            store.count(0) // store.K,
            store.manifest.metadata_url,
            store.manifest.tree_id,
        )
        document["keys"] = _key_counts(root)
        document["lexical_blocks"] = _lexical_blocks(root, store)
        document["tree_blocks"] = blocks
        db = metadata_reader(store)
    if db is None:
        document["sources"], document["journal"] = 0, {}
        return document
    try:
        journal = db.ingests_of(tree_id)
    finally:
        db.close()
    by_status: dict[str, int] = {}
    for ingest in journal:
        by_status[ingest.status] = by_status.get(ingest.status, 0) + 1
    document["sources"] = sum(1 for i in journal if i.status == COMPLETE)
    document["journal"] = by_status
    document["metadata_url"] = url or default_url(str(root / "tree"))
    return document


def verify_session(root: str | Path) -> list[Problem]:
    """Every problem of the session at ``root`` (an empty list when it is healthy)."""
    root = Path(root)
    check_session_path(root)
    tree_dir = root / "tree"
    problems = [_named(p, "tree") for p in LocalStore.verify_path(tree_dir)]
    try:
        store = LocalStore.open(tree_dir, readonly=True)
    except StorageCorruptionError:
        return problems  # verify_path reported why; nothing above the tree can be checked
    with store:
        _check_levels(store, problems)
        _check_keys(root, store, problems)
        _check_lexical(root, store, problems)
        _check_metadata(root, store, problems)
    if journal_path(root).exists():
        problems.append(
            Problem(
                "warning",
                str(journal_path(root)),
                "a `sources remove` was interrupted; the next open for writing finishes it",
                "removal",
            )
        )
    if not (root / SESSION_FILE).is_file():
        problems.append(
            Problem(
                "warning",
                str(root / SESSION_FILE),
                "the session record is missing; reopen with --base (and --focus) given",
                "record",
            )
        )
    return problems


@dataclass
class SessionRepair:
    """What :func:`repair_session` did: the stores' repair reports and what reopening did."""

    tree: RepairReport
    keys: RepairReport | None = None
    reopened: list[str] = field(default_factory=list)
    remaining: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tree.ok and not any(p.severity == "error" for p in self.remaining)


def repair_session(root: str | Path, base: str | None = None) -> SessionRepair:
    """Repair the session at ``root``: the tree store (:meth:`LocalStore.repair_path`), the key
    store (dropped when it cannot be repaired: keys are derived), then open the session for
    writing — which recomputes missing gists and keys, rebuilds the lexical index and settles
    an interrupted append or removal — and verify again. Loads the session's base model."""
    from megacontext.runtime.opening import open_session

    root = Path(root)
    check_session_path(root)
    report = SessionRepair(LocalStore.repair_path(root / "tree"))
    if not report.tree.ok:
        report.remaining = verify_session(root)
        return report
    keys_dir = root / "keys"
    if (keys_dir / "manifest.json").exists() or (keys_dir / "manifest.json.bak").exists():
        report.keys = LocalStore.repair_path(keys_dir)
    session = open_session(root, base=base, create=False)
    try:
        report.reopened = [s.describe() for s in session.recovered]
    finally:
        session.close()
    report.remaining = verify_session(root)
    return report


# ----------------------------------------------------------------------------- the checks


def _named(problem: Problem, part: str) -> Problem:
    return Problem(problem.severity, problem.path, f"{part}: {problem.message}", problem.kind)


def _check_levels(store: LocalStore, problems: list[Problem]) -> None:
    n, K = store.count(0), store.K
    level = 1
    while span_tokens(level, K) <= n:
        gists, wanted = store.count(level), n // span_tokens(level, K)
        if gists < wanted:
            problems.append(
                Problem(
                    "warning",
                    str(store.root),
                    f"level {level} holds {gists:,} gists for {wanted:,}; the missing ones are "
                    f"recomputed by the next open for writing or `megacontext store repair`",
                    "gists-behind",
                )
            )
        level += 1


def _key_counts(root: Path) -> dict[int, int] | None:
    try:
        with LocalStore.open(root / "keys", readonly=True) as keys:
            return {level: keys.count(level) for level in range(1, keys.num_levels)}
    except (NotAStoreError, StorageCorruptionError):
        return None


def _check_keys(root: Path, store: LocalStore, problems: list[Problem]) -> None:
    keys_dir = root / "keys"
    if not (keys_dir / "manifest.json").exists():
        problems.append(Problem("warning", str(keys_dir), f"the key store is missing; {REBUILT}"))
        return
    problems += [
        Problem("warning", p.path, f"keys: {p.message}; {REBUILT}", p.kind)
        for p in LocalStore.verify_path(keys_dir)
        if p.severity == "error"
    ]
    counts = _key_counts(root)
    if counts is None:
        return
    for level in range(1, store.num_levels):
        have, gists = counts.get(level, 0), store.count(level)
        if have != gists:
            problems.append(
                Problem(
                    "warning",
                    str(keys_dir),
                    f"level {level} holds {have:,} keys for {gists:,} gists; {REBUILT}",
                    "keys-count",
                )
            )


def _lexical_blocks(root: Path, store: LocalStore) -> int | None:
    url = store.manifest.metadata_url
    path = root / "lexical.sqlite"
    if not (url and url.startswith("postgresql")) and not path.is_file():
        return None
    try:
        lexical = open_lexical_index(
            path, K=store.K, metadata_url=url, tree_id=store.manifest.tree_id
        )
    except StorageCorruptionError:
        return None
    try:
        return lexical.num_blocks
    finally:
        lexical.close()


def _check_lexical(root: Path, store: LocalStore, problems: list[Problem]) -> None:
    blocks, have = store.count(0) // store.K, _lexical_blocks(root, store)
    where = str(root / "lexical.sqlite")
    if have is None:
        if blocks:
            problems.append(
                Problem("warning", where, f"the lexical index is missing or damaged; {REBUILT}")
            )
    elif have != blocks:
        problems.append(
            Problem(
                "warning",
                where,
                f"the lexical index holds {have:,} blocks of {blocks:,}; {REBUILT}",
                "lexical-count",
            )
        )


def _check_metadata(root: Path, store: LocalStore, problems: list[Problem]) -> None:
    n = store.count(0)
    where = store.manifest.metadata_url or str(store.root / "meta.sqlite")
    db = metadata_reader(store)
    if db is None:
        if n:
            problems.append(
                Problem("error", where, f"no metadata database: {n:,} tokens without provenance")
            )
        return
    try:
        for finding in db.integrity():
            problems.append(Problem("error", where, f"metadata: {finding}", "metadata"))
        journal = db.ingests_of(store.manifest.tree_id)
        spans = db.provenance(store.manifest.tree_id, 0, n) if n else []
    finally:
        db.close()
    running = [i for i in journal if i.status == RUNNING]
    for ingest in running:
        problems.append(
            Problem(
                "warning",
                where,
                f"the append of {label(ingest)} at token {ingest.start:,} was interrupted; the "
                "next open for writing completes it or rolls it back",
                "running",
            )
        )
    # Every token belongs to exactly one span; a running append's tokens have none yet.
    position = 0
    for span in spans:
        if span.start_index != position:
            break
        position = span.stop_index
    tail = min((i.start for i in running), default=n)
    if position < min(n, tail) or (not running and position != n):
        severity = "error" if journal else "warning"  # trees from before the journal: no spans
        problems.append(
            Problem(
                severity,
                where,
                f"provenance covers tokens [0, {position:,}) of {n:,} without a gap; "
                f"tokens from {position:,} have no source (or two)",
                "provenance",
            )
        )


__all__ = [
    "SessionRepair",
    "check_session_path",
    "repair_session",
    "session_info",
    "verify_session",
]
