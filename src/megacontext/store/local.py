"""The local durable backend: per-level append-only segmented logs plus a manifest (DESIGN §5).

A store is one directory::

    tree/
      LOCK                  exclusive writer lock (fcntl.flock)
      manifest.json         source of truth (+ manifest.backup.json, refreshed at open/close)
      L0/00000000.seg …     token ids, uint32
      L1/00000000.seg …     gists, float16 × dim (bf16 / f32 selectable)

Appends go to the open segment of their level, each followed by the checksum of what it wrote
(format v2: ``L{level}/{seq:08d}.sum``, :mod:`megacontext.store.checksums`); a full segment is
sealed (sha256 recorded, file made read-only); ``flush()`` fsyncs everything and then commits the
manifest (group commit). Recovery is "cut the torn tail, trust the manifest": on open for
writing, the open segment of each level is cut back to its checksummed records, full segments
past the last committed one are sealed, and a gist level is cut back to the nodes whose children
survived. Sealed segments never change; their first read in a process checks their sha256 (a bad
local copy is replaced from a good replica and counted); records of an open segment are checked
against their CRC32C on their first read. A v1 store is migrated by its next writer
(:mod:`megacontext.store.migrate`).

Readers (``readonly=True``) take no lock and see a snapshot: the records each level held (and
had checksummed) when they opened, or at their last :meth:`LocalStore.refresh`. A writer never
rewrites or deletes a file a reader may have open, except :meth:`LocalStore.truncate`,
:meth:`LocalStore.repair` and :meth:`LocalStore.compact`, which need no readers open.

:class:`LocalStore` implements :class:`megacontext.core.tree.TreeBackend`, so
``MegaContextTree(LocalStore.create(path, dim=d), gister)`` works unchanged.

This module holds the store's lifecycle — create, open (writer lock, binding check, recovery),
close — and its public API. The work is split the LevelDB way, one concept per module, around
one shared :class:`~megacontext.store.state.StoreState` that the ``LocalStore`` owns:

- :mod:`megacontext.store.writer` — the append path: open segments, sealing, flush;
- :mod:`megacontext.store.reader` — the read path: segment maps, replica reads, read-repair;
- :mod:`megacontext.store.admin` — info, verify, repair, compact, rebalance (uses both);
- :mod:`megacontext.store.truncation` — cutting levels back (truncate, and what repair drops);
- :mod:`megacontext.store.migrate` — format v1 → v2, by the next writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import check_block_size
from megacontext.store import admin, migrate, repair, truncation
from megacontext.store.admin import Problem
from megacontext.store.errors import (
    DiskFullError,
    FingerprintMismatchError,
    InvalidInputError,
    NotAStoreError,
    StorageCorruptionError,
    StoreLockedError,
)
from megacontext.store.manifest import (
    BACKUP,
    MANIFEST,
    Fingerprints,
    Manifest,
    Replication,
    read_manifest,
    recover_manifest,
    sync_backup,
    write_manifest,
)
from megacontext.store.migrate import MigrationReport
from megacontext.store.reader import Reader, StoreStats
from megacontext.store.repair import RepairReport
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import HEADER_BYTES, dtype_name, numpy_dtype, os_error
from megacontext.store.state import LevelState, StoreState
from megacontext.store.truncation import Cut
from megacontext.store.writer import Writer

if TYPE_CHECKING:
    from megacontext.core.tree import Gister
    from megacontext.store.metadata import MetadataDB

__all__ = [
    "Cut",
    "LocalStore",
    "MigrationReport",
    "Problem",
    "RepairReport",
    "StoreStats",
    "recover_manifest",
]

DEFAULT_SEGMENT_BYTES = 16 << 20
DEFAULT_BLOCK_BYTES = 64 << 10
LOCK = "LOCK"


class LocalStore:
    """A durable tree backend in a local directory. Use :meth:`create` or :meth:`open`.

    Example:
        >>> store = LocalStore.create("tree", dim=64, K=32)          # doctest: +SKIP
        >>> tree = MegaContextTree(store, gister, K=32)               # doctest: +SKIP
        >>> tree.append(ids); tree.flush(); tree.close()              # doctest: +SKIP
        >>> store = LocalStore.open("tree", fingerprints=fp)          # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path,
        readonly: bool,
        verify_reads: bool,
        max_remote_segments: int = 8,
        max_mapped_segments: int = 16,
    ):
        self._state = StoreState(root, readonly)
        self._writer = Writer(self._state)
        self._reader = Reader(self._state, verify_reads, max_remote_segments, max_mapped_segments)
        self._lock_fd: int | None = None
        self.migration: MigrationReport | None = None
        """What opening migrated (a v1 store opened for writing), else ``None``."""

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(  # noqa: PLR0913  (every setting of a new store, keyword-only)
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        K: int = 32,
        gist_dtype: str | npt.DTypeLike = "float16",
        fingerprints: Fingerprints | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_records: int | None = None,
        replication: Replication | None = None,
        metadata_url: str | None = None,
        verify_reads: bool = True,
        role: str = "tree",
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> LocalStore:
        """Create an empty store at ``path`` (a new or empty directory) and open it for writing.

        Args:
            dim: gist width (the base model's embedding size).
            K: block size; recorded in every segment header.
            gist_dtype: ``float16`` (default), ``bfloat16`` or ``float32``.
            fingerprints: base model / tokenizer / GistNet this tree is bound to (D13).
            segment_bytes: target segment size; records per segment = segment_bytes // record size.
            segment_records: records per segment for every level (overrides ``segment_bytes``).
            replication: copy sealed segments to fsspec roots (:mod:`megacontext.store.replicas`).
            metadata_url: SQLAlchemy URL of the metadata DB (default: ``meta.sqlite`` beside it).
            verify_reads: check a sealed segment's sha256 on its first read in this process.
            role: ``"tree"`` (tokens at level 0, gists above), or ``"keys"`` for the key store
                of a tree (``MegaContextTree(..., key_backend=...)``, D7): retrieval keys per
                gist level, level 0 unused, so levels are not checked against the level below.
            block_bytes: bytes of records per CRC32C of an open segment (at least one record).
                Smaller blocks cost more checksum slots; a damaged block loses at most this much.
        """
        root = Path(path)
        gist_name = _check_layout(dim, K, gist_dtype, segment_bytes, segment_records, block_bytes)
        if role not in ("tree", "keys"):
            raise InvalidInputError(f"role must be 'tree' or 'keys', got {role!r}")
        if replication is not None:
            ReplicaSet.check_config(replication)
        if root.exists() and not root.is_dir():
            raise NotAStoreError(f"{root} is a file, not a directory; choose another path")
        if (root / MANIFEST).exists() or (root / BACKUP).exists():
            raise InvalidInputError(f"{root} already holds a store; open it with LocalStore.open")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, root, "creating the store directory") from exc
        if any(p.name != LOCK for p in root.iterdir()):
            raise InvalidInputError(
                f"{root} is not empty; create a store in a new or empty directory"
            )
        store = cls(root, readonly=False, verify_reads=verify_reads)
        store._acquire_lock()
        try:
            store._state.manifest = Manifest(
                tree_id=uuid.uuid4().hex,
                K=int(K),
                dim=dim,
                gist_dtype=gist_name,
                fingerprints=fingerprints or Fingerprints(),
                replication=replication,
                metadata_url=metadata_url,
                segment_bytes=segment_bytes,
                segment_records=segment_records,
                role=role,
                block_bytes=block_bytes,
            )
            store._setup_replicas()
            store._writer.add_level(0)
            store.flush()
            sync_backup(root)
        except BaseException:
            store._release_lock()
            raise
        return store

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprints: Fingerprints | None = None,
        regist: bool = False,
        readonly: bool = False,
        verify_reads: bool = True,
        max_remote_segments: int = 8,
        max_mapped_segments: int = 16,
    ) -> LocalStore:
        """Open an existing store. Writers take an exclusive lock; readers see a snapshot.

        A writer finishes what a crash left (torn tails cut, full segments sealed, an
        interrupted truncation completed, gists of lost children dropped; :attr:`recovered`
        says what beyond the routine) and migrates a v1 store to v2 (:attr:`migration`). A
        reader changes nothing: it sees each level's checksummed records as of now, and more
        after :meth:`refresh`.

        Args:
            fingerprints: what the caller is bound to. A recorded fingerprint that differs raises
                :class:`FingerprintMismatchError`, unless ``regist=True`` and only the base model
                or GistNet changed: then every gist level is dropped (tokens are kept) and the
                tree re-gists on open.
            readonly: do not lock, never write (recovery is left for the next writer).
            max_remote_segments: replica-fetched segments kept in memory (LRU).
            max_mapped_segments: local segments kept memory-mapped (LRU).
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise NotAStoreError(f"{root} is a file, not a store directory")
        if not root.exists():
            raise NotAStoreError(f"{root} does not exist; create a store with LocalStore.create")
        store = cls(root, readonly, verify_reads, max_remote_segments, max_mapped_segments)
        if not readonly:
            store._acquire_lock()
        try:
            store._state.manifest = read_manifest(root)
            store._setup_replicas()
            store._check_binding(fingerprints, regist)
            store._recover()
        except BaseException:
            store._close_files()
            store._release_lock()
            raise
        return store

    def _acquire_lock(self) -> None:
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "creating the writer lock") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{self.root} is open for writing elsewhere (another process or handle holds "
                f"{path}); close it first, or open read-only with readonly=True"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _setup_replicas(self) -> None:
        rep = self.manifest.replication
        self._state.replicas = ReplicaSet(rep, self.manifest.tree_id) if rep else None

    def _check_binding(self, given: Fingerprints | None, regist: bool) -> None:
        if given is None:
            return
        recorded = self.manifest.fingerprints
        wrong = recorded.mismatches(given)
        if wrong and (not regist or "tokenizer" in wrong):
            detail = "; ".join(
                f"{n}: tree has {getattr(recorded, n)!r}, caller has {getattr(given, n)!r}"
                for n in wrong
            )
            hint = (
                "token ids from another tokenizer mean different text: use the tree's tokenizer"
                if "tokenizer" in wrong
                else "open with regist=True to recompute every gist (tokens are kept)"
            )
            raise FingerprintMismatchError(
                f"{self.root} is bound to other components ({detail}); {hint}"
            )
        merged = Fingerprints(
            base=given.base or recorded.base,
            tokenizer=given.tokenizer or recorded.tokenizer,
            gistnet=given.gistnet or recorded.gistnet,
        )
        if merged == recorded or self.readonly:
            return
        if wrong:  # regist: drop every gist level; the tree recomputes them on open
            self.manifest.levels = self.manifest.levels[:1]
        self.manifest.fingerprints = merged
        write_manifest(self.root, self.manifest)
        if wrong:
            for stale in self.root.glob("L*"):
                if stale.is_dir() and stale.name != "L0":
                    shutil.rmtree(stale, ignore_errors=True)

    def _recover(self) -> None:
        """Load every level. A writer cuts torn tails, seals full open segments, finishes an
        interrupted truncation, migrates a v1 store, and cuts gists whose children were lost
        (possible only after a power loss before ``flush()``)."""
        state = self._state
        if self.readonly:
            state.levels = self._snapshot()
            return
        with contextlib.suppress(DiskFullError):  # the backup may lag; see manifest.py
            sync_backup(self.root)
        found = migrate.prepare(state)
        for entry in self.manifest.levels:
            level = LevelState.of(entry)
            state.levels.append(level)
            if entry.limit is not None:
                truncation.apply_limit(state, self._writer, level)
                entry.limit = None
                state.manifest_dirty = True
            else:
                self._writer.open_tail(level)
        upgraded = migrate.upgrade_open_segments(state)
        self.migration = migrate.finish(state, found, upgraded)
        self._writer.flush(lenient_commit=True)  # on a full disk the manifest may lag: safe
        if self.manifest.role == "tree":  # gists of children a power loss took go too
            for below, level in zip(state.levels, state.levels[1:], strict=False):
                want = below.count // self.K
                if level.count > want and not below.damage:  # damage: repair decides, reports
                    truncation.truncate(state, self._reader, self._writer, level.entry.level, want)

    def refresh(self) -> None:
        """Take a new snapshot (a reader): re-read the manifest and each open segment's
        checksummed length, so records appended (and segments sealed) since are visible.

        Arrays read before stay valid. Counts only grow, unless the writer truncated or
        repaired the store meanwhile (which needs no readers open). A writer's view is always
        current: for it this does nothing.
        """
        state = self._state
        state.check_open(write=False)
        if not self.readonly:
            return
        with state.lock:
            manifest = read_manifest(self.root)
            old = state.levels
            state.manifest = manifest
            self._setup_replicas()
            state.levels = self._snapshot()
            for level in old:
                self._writer.drop_open(level)

    def _snapshot(self) -> list[LevelState]:
        """A reader's levels: each one's sealed segments and checksummed open records. Levels
        are read one after the other while a writer may run, so in a tree each level is capped
        at the complete nodes of the level below it: no gist without its children."""
        levels: list[LevelState] = []
        for entry in self.manifest.levels:
            level = LevelState.of(entry)
            self._writer.open_tail(level)
            if levels and self.manifest.role == "tree":
                level.visible = levels[-1].count // self.K
            levels.append(level)
        return levels

    @property
    def recovered(self) -> list[str]:
        """What opening for writing did beyond finishing a crash (cutting torn tails and the
        gists of children a power loss took): damaged derived records it dropped (they are
        recomputed from their source)."""
        return list(self._state.recovered)

    # -- state -----------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._state.root

    @property
    def readonly(self) -> bool:
        return self._state.readonly

    @property
    def verify_reads(self) -> bool:
        """Whether a sealed segment's sha256 is checked on its first read in this process."""
        return self._reader.verify_reads

    @property
    def manifest(self) -> Manifest:
        """The in-memory manifest (ahead of ``manifest.json`` until the next :meth:`flush`)."""
        return self._state.manifest

    @property
    def replicas(self) -> ReplicaSet | None:
        """The replica roots sealed segments are copied to, if replication is configured."""
        return self._state.replicas

    @property
    def stats(self) -> StoreStats:
        return self._reader.stats

    # -- TreeBackend -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._state.dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return self._state.gist_dtype

    @property
    def K(self) -> int:
        return self._state.K

    @property
    def fingerprints(self) -> Fingerprints:
        return self.manifest.fingerprints

    @property
    def num_levels(self) -> int:
        """Levels with a manifest entry (level 0 always has one)."""
        return len(self._state.levels)

    def count(self, level: int) -> int:
        """Records stored at ``level`` (0 when the level has none)."""
        return self._state.count(level)

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        """Append records: 1-D token ids at level 0, ``(n, dim)`` gists above.

        Records reach the OS at once and survive a process crash; :meth:`flush` makes them
        survive power loss. On :class:`DiskFullError` the records not yet written are dropped
        (``count()`` says how many were stored) and everything stored before is intact.
        """
        self._writer.append(level, records)

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Records ``[start, stop)`` of ``level`` as a read-only array.

        Inside one sealed segment the result is a zero-copy view of its memory map.
        """
        return self._reader.read(level, start, stop)

    def truncate(self, level: int, count: int) -> list[Cut]:
        """Keep only the first ``count`` records of ``level`` (writers only).

        In a tree, the gists that no longer have all their children are cut too (level ℓ+1
        keeps at most ``count(ℓ) // K``), so the caller need not cut the levels above; a key
        store's levels are cut one at a time. Crash-safe: an interrupted truncation is finished
        by the next writer's open. It removes files, so no reader may be open (or readers must
        :meth:`refresh` and expect reads past the cut to fail). Returns the cuts made.
        """
        return truncation.truncate(self._state, self._reader, self._writer, level, count)

    def flush(self) -> None:
        """Make every appended record durable, then commit the manifest (group commit).

        Order: fsync the open segments and the segments sealed since the last flush, fsync the
        directories that gained entries, then replace the manifest atomically. The manifest on
        disk therefore only ever names durable segments whose children are durable too.
        """
        self._writer.flush()

    def close(self) -> None:
        """Flush, release the writer lock and close every file. Safe to call twice."""
        if self._state.closed:
            return
        try:
            # on a full disk the manifest may lag (nothing is lost; see Writer.flush)
            self._writer.flush(lenient_commit=True)
            if not self.readonly:
                with contextlib.suppress(DiskFullError):  # the backup may lag; see manifest.py
                    sync_backup(self.root)
        finally:
            self._close_files()
            self._release_lock()
            self._state.closed = True

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_files(self) -> None:
        self._writer.close()
        self._reader.close()

    def metadata(self) -> MetadataDB:
        """The tree's metadata/provenance DB (``metadata_url``, else ``meta.sqlite`` inside the
        store), with this tree registered in it."""
        from megacontext.store.metadata import MetadataDB, default_url

        db = MetadataDB(self.manifest.metadata_url or default_url(str(self.root)))
        fp = self.fingerprints
        fingerprints = {"base": fp.base, "tokenizer": fp.tokenizer, "gistnet": fp.gistnet}
        db.register_tree(self.manifest.tree_id, str(self.root), self.K, self.dim, fingerprints)
        return db

    # -- inspection and maintenance (megacontext.store.admin) ------------------------------------

    def info(self) -> dict[str, Any]:
        """Levels, records, segments and bytes, as a JSON-able dict."""
        return admin.info(self._state, self._reader)

    def verify(self) -> list[Problem]:
        """Check everything: manifest copies, every segment's header, size and sha256, every
        open-segment record against its CRC32C, replicas, and the levels against each other.

        Returns the problems found (empty when the store is healthy); :meth:`repair` fixes each
        kind. Reads every byte.
        """
        return admin.verify(self._state)

    def repair(self, gister: Gister | None = None) -> RepairReport:
        """Fix every problem :meth:`verify` reports. Needs the writer lock and no readers open.

        In order of preference: rewrite a bad manifest copy from the good one; rewrite a damaged
        segment header from the manifest (kept only if the sha256 then matches); replace a bad
        or missing copy from a good one (local or replica); recompute a gist segment from its
        children (with ``gister``); rebuild a lost checksum file from the records (reported as
        unverified). What has no good copy anywhere is dropped with everything after it on its
        level (a segment's records sit at fixed offsets) and the gists above that derive from
        it: derived records are recomputed when the tree is next opened for writing
        (:attr:`RepairReport.dropped`); tokens cannot be, so they are reported in
        :attr:`RepairReport.lost` and their files are copied to ``salvage/`` first.

        Args:
            gister: when given, a gist segment with no good copy anywhere is recomputed from its
                children (levels are repaired bottom-up). A deterministic gister restores the
                exact bytes; otherwise the new sha256 is recorded.
        """
        return repair.repair(self._state, self._reader, self._writer, gister)

    @staticmethod
    def verify_path(path: str | os.PathLike[str]) -> list[Problem]:
        """:meth:`verify` for a path, including a store that does not open (a corrupt
        manifest is reported as a problem, not raised)."""
        root = Path(path)
        try:
            with LocalStore.open(root, readonly=True) as store:
                return store.verify()
        except StorageCorruptionError as exc:
            problems: list[Problem] = []
            admin.verify_manifest_copies(root, problems)
            return problems or [Problem("error", str(root), str(exc), "open")]

    @staticmethod
    def repair_path(path: str | os.PathLike[str], gister: Gister | None = None) -> RepairReport:
        """:meth:`repair` for a path: first restore a corrupt manifest copy from the other one
        (:func:`recover_manifest`), then open for writing (which finishes a crash and migrates
        a v1 store) and repair. Both manifest copies corrupt is reported as unrecoverable."""
        root = Path(path)
        try:
            action = recover_manifest(root)
        except StorageCorruptionError as exc:
            return RepairReport(unrecoverable=[str(exc)])
        with LocalStore.open(root) as store:
            report = store.repair(gister)
            opened = store.recovered
        if action != "both manifest copies are valid":
            report.repaired.insert(0, f"{root}: {action}")
        report.dropped[:0] = opened
        return report

    @classmethod
    def migrate(cls, path: str | os.PathLike[str]) -> MigrationReport:
        """Migrate the store at ``path`` to the current format (what its next writer would do
        on open) and report; a store already current is reported as such."""
        with cls.open(path) as store:
            report = store.migration
            if report is None:
                version = store.manifest.format_version
                report = MigrationReport(str(store.root), version, version)
        return report

    def compact(self) -> list[str]:
        """Remove what no manifest references: temp files, stale levels, stray segments, and
        replicas outside each segment's placement. Returns the paths removed.
        """
        return admin.compact(self._state)

    def rebalance(self, roots: list[str]) -> dict[str, int]:
        """Change the replica roots (e.g. add one): copy each sealed segment to its new placement,
        then remove copies outside it. Data is copied, never rewritten in place.
        """
        return admin.rebalance(self._state, self._reader, self._writer, roots)


def _check_layout(
    dim: int,
    K: int,
    gist_dtype: str | npt.DTypeLike,
    segment_bytes: int,
    segment_records: int | None,
    block_bytes: int,
) -> str:
    """Check the record layout settings of a new store; return the gist dtype's name."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise InvalidInputError(f"gist dimension must be a positive integer, got {dim!r}")
    check_block_size(K)
    gist_name = gist_dtype if isinstance(gist_dtype, str) else dtype_name(np.dtype(gist_dtype))
    numpy_dtype(gist_name)
    if gist_name == "uint32":
        raise InvalidInputError("gist dtype must be float16, bfloat16 or float32, got uint32")
    if segment_records is not None and segment_records < 1:
        raise InvalidInputError(f"segment_records must be >= 1, got {segment_records}")
    if segment_bytes < HEADER_BYTES + 4:
        raise InvalidInputError(f"segment_bytes must be at least 68, got {segment_bytes}")
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        raise InvalidInputError(f"block_bytes must be a positive integer, got {block_bytes!r}")
    return gist_name
