"""The local durable backend: per-level append-only segmented logs plus a manifest (DESIGN §5).

A store is one directory::

    tree/
      LOCK                  exclusive writer lock (fcntl.flock)
      manifest.json         source of truth (+ manifest.backup.json, refreshed at open/close)
      L0/00000000.seg …     token ids, uint32
      L1/00000000.seg …     gists, float16 × dim (bf16 / f32 selectable)

Appends go to the open segment of their level; a full segment is sealed (sha256 recorded, file
made read-only); ``flush()`` fsyncs everything and then commits the manifest (group commit).
Recovery is "truncate the torn tail, trust the manifest": on open for writing, the open segment
of each level is cut to whole records, full segments past the last committed one are sealed, and
a gist level is cut back to the nodes whose children survived. Sealed segments never change;
their first read in a process checks their sha256 (a bad local copy is replaced from a good
replica and counted).

:class:`LocalStore` implements :class:`megacontext.core.tree.TreeBackend`, so
``MegaContextTree(LocalStore.create(path, dim=d), gister)`` works unchanged.

This module holds the store's lifecycle — create, open (writer lock, binding check, recovery),
close — and its public API. The work is split the LevelDB way, one concept per module, around
one shared :class:`~megacontext.store.state.StoreState` that the ``LocalStore`` owns:

- :mod:`megacontext.store.writer` — the append path: open segments, sealing, flush;
- :mod:`megacontext.store.reader` — the read path: segment maps, replica reads, read-repair;
- :mod:`megacontext.store.admin` — info, verify, repair, compact, rebalance (uses both).
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
from megacontext.store import admin
from megacontext.store.admin import Problem, RepairReport
from megacontext.store.errors import (
    DiskFullError,
    FingerprintMismatchError,
    InvalidInputError,
    NotAStoreError,
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
from megacontext.store.reader import Reader, StoreStats
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import HEADER_BYTES, dtype_name, numpy_dtype, os_error
from megacontext.store.state import LevelState, StoreState
from megacontext.store.writer import Writer

if TYPE_CHECKING:
    from megacontext.core.tree import Gister
    from megacontext.store.metadata import MetadataDB

__all__ = ["LocalStore", "Problem", "RepairReport", "StoreStats", "recover_manifest"]

DEFAULT_SEGMENT_BYTES = 16 << 20
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
        """
        root = Path(path)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"gist dimension must be a positive integer, got {dim!r}")
        check_block_size(K)
        gist_name = gist_dtype if isinstance(gist_dtype, str) else dtype_name(np.dtype(gist_dtype))
        numpy_dtype(gist_name)
        if gist_name == "uint32":
            raise InvalidInputError("gist dtype must be float16, bfloat16 or float32, got uint32")
        if role not in ("tree", "keys"):
            raise InvalidInputError(f"role must be 'tree' or 'keys', got {role!r}")
        if segment_records is not None and segment_records < 1:
            raise InvalidInputError(f"segment_records must be >= 1, got {segment_records}")
        if segment_bytes < HEADER_BYTES + 4:
            raise InvalidInputError(f"segment_bytes must be at least 68, got {segment_bytes}")
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
        """Load every level; the writer truncates torn tails and seals full open segments.

        Levels are processed bottom-up so that a gist whose children were lost (possible only
        after a power loss before ``flush()``) is cut off before its segment could be sealed.
        """
        if not self.readonly:
            with contextlib.suppress(DiskFullError):  # the backup may lag; see manifest.py
                sync_backup(self.root)
        allowed: int | None = None
        for entry in self.manifest.levels:
            level = LevelState.of(entry)
            self._state.levels.append(level)
            self._writer.open_tail(level, allowed)
            if self.manifest.role == "tree":
                allowed = level.count // self.manifest.K

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
            self.flush()
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
        """Check everything: manifest copies, every segment's header, size and sha256, replicas.

        Returns the problems found (empty when the store is healthy). Reads every byte.
        """
        return admin.verify(self._state)

    def repair(self, gister: Gister | None = None) -> RepairReport:
        """Replace every bad or missing copy (local or replica) from a good one; rewrite a bad
        manifest copy. Needs the writer lock. Unrecoverable segments are listed, never dropped.

        Args:
            gister: when given, a gist segment with no good copy anywhere is recomputed from its
                children (levels are repaired bottom-up). A deterministic gister restores the
                exact bytes; otherwise the new sha256 is recorded.
        """
        return admin.repair(self._state, self._reader, self._writer, gister)

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
