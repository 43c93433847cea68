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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import check_block_size
from megacontext.core.tree import GistBatch
from megacontext.store.errors import (
    DiskFullError,
    FingerprintMismatchError,
    InvalidInputError,
    NotAStoreError,
    StorageCorruptionError,
    StoreError,
    StoreLockedError,
    StorePermissionError,
)
from megacontext.store.manifest import (
    BACKUP,
    MANIFEST,
    Fingerprints,
    LevelEntry,
    Manifest,
    Replication,
    SegmentEntry,
    read_manifest,
    sync_backup,
    write_manifest,
)
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import (
    HEADER_BYTES,
    SegmentHeader,
    dtype_name,
    file_sha256,
    fsync_dir,
    numpy_dtype,
    os_error,
    segment_name,
    write_all,
)

if TYPE_CHECKING:
    from megacontext.core.tree import Gister
    from megacontext.store.metadata import MetadataDB

DEFAULT_SEGMENT_BYTES = 16 << 20
HASH_STEP = 2 << 20  # background sha256 work is handed over in steps of this many bytes
LOCK = "LOCK"


@dataclass
class StoreStats:
    """Counters of one open store (since it was opened)."""

    segments_verified: int = 0
    corrupt_copies_found: int = 0
    read_repairs: int = 0
    replica_reads: int = 0


@dataclass
class _Level:
    """In-memory state of one level: its manifest entry plus the open segment."""

    entry: LevelEntry
    dtype: np.dtype[np.generic]
    record_bytes: int
    fd: int | None = None  # open segment, when it exists
    open_count: int = 0
    dirty: bool = False
    # A read-only map of the open segment's first records: (map, records). Replaced (never
    # closed) when reads need more, so arrays that view an older map stay valid.
    open_view: tuple[mmap.mmap, int] | None = None
    # Running sha256 of the open segment file's first ``hashed`` bytes, fed by a background
    # thread as records are written, so sealing does not re-read the segment.
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0
    hash_job: Future[None] | None = None
    hash_submitted: int = 0  # bytes handed to the background hasher so far
    open_path: Path = Path()

    @property
    def sealed(self) -> list[SegmentEntry]:
        return self.entry.segments

    @property
    def capacity(self) -> int:
        return self.entry.capacity

    @property
    def count(self) -> int:
        return len(self.entry.segments) * self.entry.capacity + self.open_count


@dataclass
class Problem:
    """One finding of :meth:`LocalStore.verify`: ``severity`` is ``error`` or ``warning``."""

    severity: str
    path: str
    message: str


@dataclass
class RepairReport:
    """What :meth:`LocalStore.repair` fixed and what it could not."""

    repaired: list[str] = field(default_factory=list)
    unrecoverable: list[str] = field(default_factory=list)


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
        self.root = root
        self.readonly = readonly
        self.verify_reads = verify_reads
        self.stats = StoreStats()
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._levels: list[_Level] = []
        self._buffers: OrderedDict[tuple[int, int], Any] = OrderedDict()  # open maps, LRU
        self._verified: set[tuple[int, int]] = set()  # sealed segments whose sha256 was checked
        self._max_mapped = max_mapped_segments
        self._remote: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._max_remote = max_remote_segments
        self._dirty_dirs: set[Path] = set()
        # Sealed since the last flush, each with its background fsync: waited for before commit.
        self._unsynced: list[tuple[Path, Future[None]]] = []
        self._sync_pool: ThreadPoolExecutor | None = None
        self._manifest_dirty = False
        self._hash_pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.manifest: Manifest
        self.replicas: ReplicaSet | None = None

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(
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
            store.manifest = Manifest(
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
            store._add_level(0)
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
            store.manifest = read_manifest(root)
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
        self.replicas = ReplicaSet(rep, self.manifest.tree_id) if rep else None

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
        """Load every level, truncating torn tails and sealing full open segments.

        Levels are processed bottom-up so that a gist whose children were lost (possible only
        after a power loss before ``flush()``) is cut off before its segment could be sealed.
        """
        if not self.readonly:
            with contextlib.suppress(DiskFullError):  # the backup may lag; see manifest.py
                sync_backup(self.root)
        allowed: int | None = None
        for entry in self.manifest.levels:
            level = self._make_level(entry)
            self._levels.append(level)
            self._open_tail(level, allowed)
            if self.manifest.role == "tree":
                allowed = level.count // self.manifest.K

    def _make_level(self, entry: LevelEntry) -> _Level:
        dtype = numpy_dtype(entry.dtype)
        return _Level(entry, dtype, dtype.itemsize * entry.width)

    def _open_tail(self, level: _Level, allowed: int | None) -> None:
        """Find the open segment after the sealed ones, cut it to whole records (and, for a gist
        level, to the ``allowed`` nodes whose children exist), and seal it when full."""
        while True:
            seq = len(level.sealed)
            path = self.root / segment_name(level.entry.level, seq)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return
            if size < HEADER_BYTES + level.record_bytes and not self._header_ok(path, level, seq):
                if not self.readonly:  # torn while its header was written: it holds no record
                    path.unlink()
                return
            flags = os.O_RDONLY if self.readonly else os.O_RDWR
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                raise os_error(exc, path, "opening") from exc
            level.fd, level.open_path = fd, path
            self._check_header(os.pread(fd, HEADER_BYTES, 0), level, seq, path)
            count, torn = divmod(size - HEADER_BYTES, level.record_bytes)
            if count > level.capacity:
                raise StorageCorruptionError(
                    f"{path}: open segment holds {count} records, more than its capacity "
                    f"{level.capacity}; run `megacontext store verify {self.root}`"
                )
            first = seq * level.capacity
            if allowed is not None and first + count > allowed:
                if allowed < first:
                    raise StorageCorruptionError(
                        f"{self.root}: level {level.entry.level} has sealed gists past the "
                        f"{allowed} complete nodes below; run "
                        f"`megacontext store verify {self.root}`"
                    )
                count, torn = allowed - first, 1
            level.open_count = count
            if torn and not self.readonly:
                self._truncate_open(level, count)
            if count < level.capacity or self.readonly:
                return
            self._seal(level)

    def _header_ok(self, path: Path, level: _Level, seq: int) -> bool:
        try:
            self._check_header(path.read_bytes()[:HEADER_BYTES], level, seq, path)
        except (StorageCorruptionError, OSError):
            return False
        return True

    def _check_header(self, data: bytes, level: _Level, seq: int, path: Path) -> None:
        root = self.root
        fix = f"run `megacontext store verify {root}` then `megacontext store repair {root}`"
        header = SegmentHeader.unpack(data, path, fix)
        expected = self._header(level, seq)
        if header != expected:
            raise StorageCorruptionError(
                f"{path}: header {header} does not match the manifest (expected {expected}); {fix}"
            )

    def _header(self, level: _Level, seq: int) -> SegmentHeader:
        return SegmentHeader(
            level=level.entry.level,
            dtype=level.entry.dtype,
            width=level.entry.width,
            K=self.manifest.K,
            capacity=level.capacity,
            first_index=seq * level.capacity,
            tree_fingerprint=self.manifest.tree_fingerprint,
        )

    def _truncate_open(self, level: _Level, count: int) -> None:
        assert level.fd is not None
        level.open_view = None
        self._reset_hash(level)
        os.ftruncate(level.fd, HEADER_BYTES + count * level.record_bytes)
        os.fsync(level.fd)
        level.open_count = count

    # -- TreeBackend -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return numpy_dtype(self.manifest.gist_dtype)

    @property
    def K(self) -> int:
        return self.manifest.K

    @property
    def fingerprints(self) -> Fingerprints:
        return self.manifest.fingerprints

    @property
    def num_levels(self) -> int:
        """Levels with a manifest entry (level 0 always has one)."""
        return len(self._levels)

    def count(self, level: int) -> int:
        """Records stored at ``level`` (0 when the level has none)."""
        return self._levels[level].count if 0 <= level < len(self._levels) else 0

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        """Append records: 1-D token ids at level 0, ``(n, dim)`` gists above.

        Records reach the OS at once and survive a process crash; :meth:`flush` makes them
        survive power loss. On :class:`DiskFullError` the records not yet written are dropped
        (``count()`` says how many were stored) and everything stored before is intact.
        """
        self._check_open(write=True)
        with self._lock:
            if not 0 <= level <= len(self._levels):
                raise InvalidInputError(
                    f"cannot append to level {level}: the store has levels "
                    f"0..{len(self._levels) - 1} (a new level must come right after them)"
                )
            array = self._coerce(level, records)
            if level == len(self._levels):
                self._add_level(level)
            lv = self._levels[level]
            done = 0
            while done < len(array):
                if lv.open_count == lv.capacity:
                    self._seal(lv)
                if lv.fd is None:
                    self._start_segment(lv)
                assert lv.fd is not None
                take = min(len(array) - done, lv.capacity - lv.open_count)
                chunk = array[done : done + take]
                offset = HEADER_BYTES + lv.open_count * lv.record_bytes
                write_all(lv.fd, chunk.reshape(-1).view(np.uint8).data, offset, lv.open_path)
                self._hash_in_background(lv, offset + take * lv.record_bytes)
                lv.open_count += take
                lv.dirty = True
                done += take
            if lv.open_count == lv.capacity:
                self._seal(lv)

    def _coerce(self, level: int, records: object) -> npt.NDArray[np.generic]:
        array = np.asarray(records)
        if level == 0:
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise InvalidInputError(
                    f"level 0 takes a 1-D array of integer token ids, got shape {array.shape} "
                    f"dtype {array.dtype}"
                )
            fits = array.dtype.kind == "u" and array.dtype.itemsize <= 4  # no scan needed
            if array.size and not fits and (int(array.min()) < 0 or int(array.max()) > 0xFFFFFFFF):
                raise InvalidInputError(
                    "token ids must lie in the uint32 range; validate with as_token_ids"
                )
        elif (
            array.ndim != 2
            or array.shape[1] != self.dim
            or (array.size and array.dtype.kind != "f")
        ):
            raise InvalidInputError(
                f"level {level} takes float gists of shape (n, {self.dim}), got shape "
                f"{array.shape} dtype {array.dtype}"
            )
        return np.ascontiguousarray(array, numpy_dtype("uint32") if level == 0 else self.gist_dtype)

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Records ``[start, stop)`` of ``level`` as a read-only array.

        Inside one sealed segment the result is a zero-copy view of its memory map.
        """
        # Fast path: inside one sealed, already mapped segment (no lock: sealed bytes never
        # change, and a map closed by a concurrent eviction falls back to the locked path).
        if 0 <= level < len(self._levels) and 0 <= start < stop and not self._closed:
            lv = self._levels[level]
            cap = lv.entry.capacity
            seq = start // cap
            sealed = len(lv.entry.segments)
            buffer: Any = None
            if seq < sealed:
                buffer = self._buffers.get((level, seq))
            elif seq == sealed and lv.open_view is not None:
                buffer, mapped = lv.open_view
                buffer = buffer if stop - seq * cap <= mapped else None
            if buffer is not None and stop <= (seq + 1) * cap:
                width = lv.entry.width
                offset = HEADER_BYTES + (start - seq * cap) * lv.record_bytes
                try:
                    flat = np.frombuffer(buffer, lv.dtype, (stop - start) * width, offset)
                except ValueError:
                    pass
                else:
                    return flat if level == 0 else flat.reshape(stop - start, width)
        self._check_open(write=False)
        with self._lock:
            have = self.count(level)
            if not 0 <= start <= stop <= have:
                raise InvalidInputError(
                    f"range [{start}, {stop}) is outside level {level}, which holds {have} records"
                )
            if start == stop:
                shape: tuple[int, ...] = () if level == 0 else (self.dim,)
                out = np.empty((0, *shape), np.uint32 if level == 0 else self.gist_dtype)
                out.flags.writeable = False
                return out
            lv = self._levels[level]
            cap = lv.capacity
            parts = []
            for seq in range(start // cap, (stop - 1) // cap + 1):
                lo, hi = max(start, seq * cap) - seq * cap, min(stop, (seq + 1) * cap) - seq * cap
                parts.append(self._read_segment(lv, seq, lo, hi))
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out.flags.writeable = False
        return out

    def _shape(self, lv: _Level, flat: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        return (
            flat
            if lv.entry.width == 1 and lv.entry.level == 0
            else flat.reshape(-1, lv.entry.width)
        )

    def _read_segment(self, lv: _Level, seq: int, lo: int, hi: int) -> npt.NDArray[np.generic]:
        offset = HEADER_BYTES + lo * lv.record_bytes
        items = (hi - lo) * lv.entry.width
        if seq < len(lv.sealed):
            buffer = self._sealed_buffer(lv, seq)
            return self._shape(lv, np.frombuffer(buffer, lv.dtype, items, offset))
        assert lv.fd is not None
        if lv.open_view is None or lv.open_view[1] < hi:
            size = HEADER_BYTES + lv.open_count * lv.record_bytes
            if os.fstat(lv.fd).st_size < size:
                raise StorageCorruptionError(
                    f"{self.root / segment_name(lv.entry.level, seq)}: open segment is shorter "
                    f"than its {lv.open_count} records (was it truncated by another program?); "
                    f"run `megacontext store verify {self.root}`"
                )
            lv.open_view = (mmap.mmap(lv.fd, size, access=mmap.ACCESS_READ), lv.open_count)
        return self._shape(lv, np.frombuffer(lv.open_view[0], lv.dtype, items, offset))

    def flush(self) -> None:
        """Make every appended record durable, then commit the manifest (group commit).

        Order: fsync the open segments and the segments sealed since the last flush, fsync the
        directories that gained entries, then replace the manifest atomically. The manifest on
        disk therefore only ever names durable segments whose children are durable too.
        """
        if self.readonly or self._closed:
            return
        with self._lock:
            try:
                for lv in self._levels:
                    if lv.dirty and lv.fd is not None:
                        os.fsync(lv.fd)
                        lv.dirty = False
                while self._unsynced:
                    self._unsynced[0][1].result()  # raises the OSError of a failed fsync
                    self._unsynced.pop(0)
                for directory in sorted(self._dirty_dirs):
                    fsync_dir(directory)
                self._dirty_dirs.clear()
            except OSError as exc:
                raise os_error(exc, self.root, "flushing the segments of") from exc
            if self._manifest_dirty:
                write_manifest(self.root, self.manifest)
                self._manifest_dirty = False

    def close(self) -> None:
        """Flush, release the writer lock and close every file. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
            if not self.readonly:
                with contextlib.suppress(DiskFullError):  # the backup may lag; see manifest.py
                    sync_backup(self.root)
        finally:
            self._close_files()
            self._release_lock()
            self._closed = True

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_files(self) -> None:
        for lv in self._levels:
            lv.open_view = None
            self._reset_hash(lv)
            if lv.fd is not None:
                os.close(lv.fd)
                lv.fd = None
        for buffer in self._buffers.values():
            if isinstance(buffer, mmap.mmap):
                # arrays may still view it: the map then closes when they are freed
                with contextlib.suppress(BufferError):
                    buffer.close()
        self._buffers.clear()
        self._remote.clear()
        for pool in (self._hash_pool, self._sync_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._hash_pool = self._sync_pool = None

    def _check_open(self, write: bool) -> None:
        if self._closed:
            raise StoreError(f"the store at {self.root} is closed; open it again")
        if write and self.readonly:
            raise StorePermissionError(
                f"the store at {self.root} was opened read-only; open it without readonly=True "
                "to write"
            )

    # -- segments --------------------------------------------------------------------------------

    def _add_level(self, level: int) -> None:
        width = 1 if level == 0 else self.dim
        dtype = "uint32" if level == 0 else self.manifest.gist_dtype
        record_bytes = numpy_dtype(dtype).itemsize * width
        fixed, target = self.manifest.segment_records, self.manifest.segment_bytes
        capacity = fixed or max(1, (target - HEADER_BYTES) // record_bytes)
        directory = self.root / f"L{level}"
        try:
            if directory.exists():  # left over from a dropped level (regist)
                shutil.rmtree(directory)
            directory.mkdir()
        except OSError as exc:
            raise os_error(exc, directory, "creating") from exc
        entry = LevelEntry(level=level, dtype=dtype, width=width, capacity=capacity)
        self.manifest.levels.append(entry)
        self._levels.append(self._make_level(entry))
        self._dirty_dirs.add(self.root)
        self._manifest_dirty = True  # committed by the next flush()

    def _start_segment(self, lv: _Level) -> None:
        seq = len(lv.sealed)
        path = self.root / segment_name(lv.entry.level, seq)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "creating") from exc
        try:
            write_all(fd, self._header(lv, seq).pack(), 0, path)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        lv.fd, lv.open_count, lv.dirty, lv.open_view, lv.open_path = fd, 0, True, None, path
        self._dirty_dirs.add(path.parent)

    def _hash_in_background(self, lv: _Level, end: int) -> None:
        """Hand bytes up to ``end`` to the background hasher, in steps of at least 2 MB."""
        if end - lv.hash_submitted < HASH_STEP:
            return
        if self._hash_pool is None:
            self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-sha256")
        lv.hash_job = self._hash_pool.submit(self._hash_upto, lv, lv.fd, end)
        lv.hash_submitted = end

    @staticmethod
    def _hash_upto(lv: _Level, fd: int | None, end: int) -> None:
        """Feed bytes ``[hashed, end)`` of the open segment to its running sha256."""
        assert fd is not None
        while lv.hashed < end:
            data = os.pread(fd, min(4 << 20, end - lv.hashed), lv.hashed)
            if not data:
                raise StoreError("open segment shrank while it was being hashed")
            lv.hasher.update(data)
            lv.hashed += len(data)

    def _reset_hash(self, lv: _Level) -> None:
        if lv.hash_job is not None:
            with contextlib.suppress(Exception):
                lv.hash_job.result()
        lv.hasher, lv.hashed, lv.hash_job, lv.hash_submitted = hashlib.sha256(), 0, None, 0

    def _seal(self, lv: _Level) -> None:
        """Seal the full open segment: sha256 (already running in the background), replicate,
        record it in the in-memory manifest. The next :meth:`flush` fsyncs it and commits."""
        seq = len(lv.sealed)
        name = segment_name(lv.entry.level, seq)
        path = self.root / name
        size = HEADER_BYTES + lv.capacity * lv.record_bytes
        try:
            if lv.hash_job is not None:
                lv.hash_job.result()
            self._hash_upto(lv, lv.fd, size)
        except OSError as exc:
            self._reset_hash(lv)
            raise os_error(exc, path, "hashing") from exc
        except StoreError:
            self._reset_hash(lv)
            raise
        digest = lv.hasher.hexdigest()
        replicas: list[str] = []
        if self.replicas is not None:
            replicas = self.replicas.put(name, path.read_bytes())
        entry = SegmentEntry(name, seq * lv.capacity, lv.capacity, digest, True, replicas)
        # count() reads open_count and the sealed list without the lock: zero the first, so a
        # concurrent reader may briefly see fewer records, never more.
        lv.open_count = 0
        lv.sealed.append(entry)
        self._manifest_dirty = True
        if self._sync_pool is None:
            self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-fsync")
        self._unsynced.append((path, self._sync_pool.submit(_fsync_file, path)))
        if lv.fd is not None:
            os.close(lv.fd)
        lv.fd, lv.open_count, lv.dirty, lv.open_view = None, 0, False, None
        self._reset_hash(lv)
        self._verified.add((lv.entry.level, seq))  # hashed from the file just now
        with contextlib.suppress(OSError):
            os.chmod(path, 0o444)
        rep = self.manifest.replication
        if rep is not None and not rep.keep_local:
            path.unlink()

    def _sealed_buffer(self, lv: _Level, seq: int) -> Any:
        """The verified bytes of a sealed segment: a local mmap, else a replica copy.

        At most ``max_mapped_segments`` maps stay open (LRU), so RSS stays flat however long the
        tree grows; a segment is hashed once per process, by streaming the file (not through the
        map, whose pages would otherwise count as resident).
        """
        key = (lv.entry.level, seq)
        for cache in (self._buffers, self._remote):
            buffer = cache.get(key)
            if buffer is not None:
                cache.move_to_end(key)
                return buffer
        entry = lv.sealed[seq]
        path = self.root / entry.name
        size = HEADER_BYTES + lv.capacity * lv.record_bytes
        local = self._map_local(path, size, entry, key)
        if local is None:
            data = self._fetch_replica(entry, size)
            keep_local = (
                self.manifest.replication is not None and self.manifest.replication.keep_local
            )
            if (path.exists() or keep_local) and not self.readonly:  # read-repair the local copy
                self._replace_local(path, data)
                self.stats.read_repairs += 1
                local = self._map_local(path, size, entry, key)
            if local is None:
                self._remote[key] = data
                while len(self._remote) > self._max_remote:
                    self._remote.popitem(last=False)
                return data
        self._buffers[key] = local
        while len(self._buffers) > self._max_mapped:
            _, old = self._buffers.popitem(last=False)
            with contextlib.suppress(BufferError):  # still viewed: it closes when views are freed
                old.close()
        return local

    def _map_local(self, path: Path, size: int, entry: SegmentEntry, key: tuple[int, int]) -> Any:
        """mmap and check a local sealed segment; ``None`` when missing or bad (with replicas)."""
        fix = (
            f"run `megacontext store verify {self.root}` and `megacontext store repair {self.root}`"
        )
        try:
            with open(path, "rb") as handle:
                actual = os.fstat(handle.fileno()).st_size
                if actual != size:
                    problem = f"{path}: sealed segment has {actual} bytes, expected {size}; {fix}"
                elif self.verify_reads and key not in self._verified:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                    problem = (
                        ""
                        if digest == entry.sha256
                        else f"{path}: sealed segment fails its sha256 check (its bytes changed "
                        f"after sealing); {fix}"
                    )
                else:
                    problem = ""
                if problem:
                    self.stats.corrupt_copies_found += 1
                    if self.replicas is None:
                        raise StorageCorruptionError(problem)
                    return None
                if self.verify_reads and key not in self._verified:
                    self._verified.add(key)
                    self.stats.segments_verified += 1
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            if self.replicas is None:
                raise StorageCorruptionError(
                    f"{path}: sealed segment is missing and the store has no replicas; {fix}"
                ) from None
            return None
        except OSError as exc:
            raise os_error(exc, path, "mapping") from exc

    def _fetch_replica(self, entry: SegmentEntry, size: int) -> bytes:
        assert self.replicas is not None
        data, bad = self.replicas.fetch(entry.name, entry.sha256, size)
        self.stats.replica_reads += 1
        self.stats.corrupt_copies_found += len(bad)
        if not self.readonly:
            for root_url in bad:  # read-repair of bad or missing replicas
                self.replicas.write(root_url, entry.name, data)
                self.stats.read_repairs += 1
        return data

    def _replace_local(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".repair")
        tmp.write_bytes(data)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def metadata(self) -> MetadataDB:
        """The tree's metadata/provenance DB (``metadata_url``, else ``meta.sqlite`` inside the
        store), with this tree registered in it."""
        from megacontext.store.metadata import MetadataDB, default_url

        db = MetadataDB(self.manifest.metadata_url or default_url(str(self.root)))
        fp = self.fingerprints
        fingerprints = {"base": fp.base, "tokenizer": fp.tokenizer, "gistnet": fp.gistnet}
        db.register_tree(self.manifest.tree_id, str(self.root), self.K, self.dim, fingerprints)
        return db

    # -- inspection and maintenance --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Levels, records, segments and bytes, as a JSON-able dict."""
        levels = []
        total_bytes = 0
        for lv in self._levels:
            sealed_bytes = len(lv.sealed) * (HEADER_BYTES + lv.capacity * lv.record_bytes)
            open_bytes = (
                (HEADER_BYTES + lv.open_count * lv.record_bytes) if lv.fd is not None else 0
            )
            total_bytes += sealed_bytes + open_bytes
            levels.append(
                {
                    "level": lv.entry.level,
                    "dtype": lv.entry.dtype,
                    "width": lv.entry.width,
                    "records": lv.count,
                    "capacity": lv.capacity,
                    "sealed_segments": len(lv.sealed),
                    "open_records": lv.open_count,
                    "bytes": sealed_bytes + open_bytes,
                }
            )
        tokens = self.count(0)
        rep = self.manifest.replication
        return {
            "path": str(self.root),
            "tree_id": self.manifest.tree_id,
            "format_version": self.manifest.format_version,
            "role": self.manifest.role,
            "generation": self.manifest.generation,
            "K": self.K,
            "dim": self.dim,
            "gist_dtype": self.manifest.gist_dtype,
            "fingerprints": {
                "base": self.fingerprints.base,
                "tokenizer": self.fingerprints.tokenizer,
                "gistnet": self.fingerprints.gistnet,
            },
            "tokens": tokens,
            "bytes": total_bytes,
            "bytes_per_token": total_bytes / tokens if tokens else 0.0,
            "levels": levels,
            "replication": None
            if rep is None
            else {
                "roots": rep.roots,
                "replicas": rep.replicas,
                "write_quorum": rep.write_quorum,
                "keep_local": rep.keep_local,
            },
            "stats": self.stats.__dict__.copy(),
        }

    def verify(self) -> list[Problem]:
        """Check everything: manifest copies, every segment's header, size and sha256, replicas.

        Returns the problems found (empty when the store is healthy). Reads every byte.
        """
        problems: list[Problem] = []
        self._verify_manifest_copies(problems)
        for lv in self._levels:
            size = HEADER_BYTES + lv.capacity * lv.record_bytes
            for seq, entry in enumerate(lv.sealed):
                path = self.root / entry.name
                keep_local = (
                    self.manifest.replication is None or self.manifest.replication.keep_local
                )
                if path.exists() or keep_local:
                    status = self._check_local(path, size, entry, lv, seq)
                    if status:
                        problems.append(Problem("error", str(path), status))
                if self.replicas is not None:
                    for root_url, state in self.replicas.check(entry.name, entry.sha256).items():
                        if state != "ok":
                            problems.append(
                                Problem(
                                    "error",
                                    self.replicas.url(root_url, entry.name),
                                    f"replica {state}",
                                )
                            )
            tail = self.root / segment_name(lv.entry.level, len(lv.sealed))
            if tail.exists() and tail.stat().st_size >= HEADER_BYTES:
                try:
                    self._check_header(tail.read_bytes()[:HEADER_BYTES], lv, len(lv.sealed), tail)
                except StorageCorruptionError as exc:
                    problems.append(Problem("error", str(tail), str(exc)))
                extra = (tail.stat().st_size - HEADER_BYTES) % lv.record_bytes
                if extra:
                    problems.append(
                        Problem(
                            "warning",
                            str(tail),
                            f"torn trailing record ({extra} bytes); the next writer truncates it",
                        )
                    )
        pairs = (
            zip(self._levels, self._levels[1:], strict=False)
            if self.manifest.role == "tree"
            else []
        )
        for lower, upper in pairs:
            if upper.count > lower.count // self.K:
                problems.append(
                    Problem(
                        "error",
                        str(self.root / f"L{upper.entry.level}"),
                        f"{upper.count} gists but only {lower.count // self.K} complete nodes",
                    )
                )
        return problems

    def _verify_manifest_copies(self, problems: list[Problem]) -> None:
        for name in (MANIFEST, BACKUP):  # a backup that lags behind is expected, not a problem
            try:
                read_manifest(self.root, name)
            except (StorageCorruptionError, NotAStoreError) as exc:
                problems.append(Problem("error", str(self.root / name), str(exc)))

    def _check_local(self, path: Path, size: int, entry: SegmentEntry, lv: _Level, seq: int) -> str:
        if not path.exists():
            return "sealed segment is missing"
        if path.stat().st_size != size:
            return f"sealed segment has {path.stat().st_size} bytes, expected {size}"
        try:
            self._check_header(path.read_bytes()[:HEADER_BYTES], lv, seq, path)
        except StorageCorruptionError as exc:
            return str(exc)
        if file_sha256(path) != entry.sha256:
            return "sealed segment fails its sha256 check"
        return ""

    def repair(self, gister: Gister | None = None) -> RepairReport:
        """Replace every bad or missing copy (local or replica) from a good one; rewrite a bad
        manifest copy. Needs the writer lock. Unrecoverable segments are listed, never dropped.

        Args:
            gister: when given, a gist segment with no good copy anywhere is recomputed from its
                children (levels are repaired bottom-up). A deterministic gister restores the
                exact bytes; otherwise the new sha256 is recorded.
        """
        self._check_open(write=True)
        report = RepairReport()
        self.flush()
        with self._lock:
            for name in (MANIFEST, BACKUP):
                try:
                    read_manifest(self.root, name)
                except (StorageCorruptionError, NotAStoreError):
                    self.manifest.generation -= 1  # write_manifest bumps it back
                    write_manifest(self.root, self.manifest, backup=True)
                    report.repaired.append(str(self.root / name))
            keep_local = self.manifest.replication is None or self.manifest.replication.keep_local
            for lv in self._levels:
                size = HEADER_BYTES + lv.capacity * lv.record_bytes
                for seq, entry in enumerate(lv.sealed):
                    path = self.root / entry.name
                    local_bad = (path.exists() or keep_local) and bool(
                        self._check_local(path, size, entry, lv, seq)
                    )
                    states = self.replicas.check(entry.name, entry.sha256) if self.replicas else {}
                    bad_roots = [r for r, s in states.items() if s != "ok"]
                    if not local_bad and not bad_roots:
                        continue
                    good: bytes | None = None
                    if not local_bad and path.exists():
                        good = path.read_bytes()
                    elif len(bad_roots) < len(states):
                        good, _ = self.replicas.fetch(entry.name, entry.sha256, size)  # type: ignore[union-attr]
                    if good is None and gister is not None and lv.entry.level >= 1:
                        good = self._regist_segment(lv, seq, gister)
                        local_bad = True
                    if good is None:
                        report.unrecoverable.append(str(path))
                        continue
                    if local_bad:
                        self._buffers.pop((lv.entry.level, seq), None)
                        self._verified.discard((lv.entry.level, seq))
                        self._replace_local(path, good)
                        report.repaired.append(str(path))
                    for root_url in bad_roots:
                        self.replicas.write(root_url, entry.name, good)  # type: ignore[union-attr]
                        report.repaired.append(self.replicas.url(root_url, entry.name))  # type: ignore[union-attr]
        self.flush()  # commits a changed sha256 (re-gisted segments)
        return report

    def _regist_segment(self, lv: _Level, seq: int, gister: Gister) -> bytes | None:
        """Recompute sealed gist segment ``seq`` of ``lv`` from its children, or ``None``."""
        K, level, cap = self.K, lv.entry.level, lv.capacity
        if self.manifest.role != "tree":  # a key store's children live in the gist store
            return None
        first = seq * cap
        try:
            children = np.array(self.read(level - 1, first * K, (first + cap) * K))
        except StorageCorruptionError:
            return None
        inputs = children.reshape(cap, K) if level == 1 else children.reshape(cap, K, self.dim)
        output = gister(level, inputs)
        gists = np.ascontiguousarray(
            np.asarray(output.gists if isinstance(output, GistBatch) else output), dtype=lv.dtype
        )
        if gists.shape != (cap, self.dim):
            raise InvalidInputError(
                f"gister returned shape {gists.shape}, expected {(cap, self.dim)}"
            )
        data = self._header(lv, seq).pack() + gists.tobytes()
        entry = lv.sealed[seq]
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:  # a non-deterministic gister: record the new contents
            entry.sha256 = digest
            self._manifest_dirty = True
        return data

    def compact(self) -> list[str]:
        """Remove what no manifest references: temp files, stale levels, stray segments, and
        replicas outside each segment's placement. Returns the paths removed.
        """
        self._check_open(write=True)
        removed: list[str] = []
        with self._lock:
            keep = {lv.entry.level: len(lv.sealed) for lv in self._levels}
            for path in sorted(self.root.iterdir()):
                if path.suffix in (".tmp", ".repair"):
                    path.unlink()
                    removed.append(str(path))
                elif path.is_dir() and path.name.startswith("L"):
                    level = int(path.name[1:]) if path.name[1:].isdigit() else -1
                    if level not in keep:
                        shutil.rmtree(path)
                        removed.append(str(path))
                        continue
                    for seg in sorted(path.iterdir()):
                        seq = int(seg.stem) if seg.stem.isdigit() and seg.suffix == ".seg" else -1
                        if seq > keep[level] or seq < 0:
                            seg.unlink()
                            removed.append(str(seg))
            if self.replicas is not None:
                names = [e.name for lv in self._levels for e in lv.sealed]
                removed.extend(self.replicas.remove_strays(names))
        return removed

    def rebalance(self, roots: list[str]) -> dict[str, int]:
        """Change the replica roots (e.g. add one): copy each sealed segment to its new placement,
        then remove copies outside it. Data is copied, never rewritten in place.
        """
        self._check_open(write=True)
        rep = self.manifest.replication
        if rep is None or self.replicas is None:
            raise InvalidInputError(f"{self.root} has no replication configured")
        new = Replication(list(roots), rep.replicas, rep.write_quorum, rep.keep_local)
        ReplicaSet.check_config(new)
        target = ReplicaSet(new, self.manifest.tree_id)
        copied = removed = 0
        with self._lock:
            for lv in self._levels:
                size = HEADER_BYTES + lv.capacity * lv.record_bytes
                for seq, entry in enumerate(lv.sealed):
                    want = target.placement(entry.name)
                    missing = [r for r in want if r not in entry.replicas]
                    if missing:
                        data = bytes(self._sealed_buffer(lv, seq)) if size else b""
                        for root_url in missing:
                            target.write(root_url, entry.name, data)
                            copied += 1
                    entry.replicas = list(want)
            self.manifest.replication = new
            self._manifest_dirty = True
            self.flush()
            self.replicas = target
            removed = len(target.remove_strays([e.name for lv in self._levels for e in lv.sealed]))
        return {"copied": copied, "removed": removed}


def _fsync_file(path: Path) -> None:
    """fsync a (sealed) file by path; a file already moved to replicas only is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_manifest(path: str | os.PathLike[str]) -> str:
    """Restore a corrupt ``manifest.json`` from ``manifest.backup.json`` (or the reverse).

    Returns what was done. Raises :class:`StorageCorruptionError` when both copies are bad.
    """
    root = Path(path)
    copies: dict[str, Manifest | None] = {}
    for name in (MANIFEST, BACKUP):
        try:
            copies[name] = read_manifest(root, name)
        except (StorageCorruptionError, NotAStoreError):
            copies[name] = None
    good = [m for m in copies.values() if m is not None]
    if not good:
        raise StorageCorruptionError(
            f"{root}: both {MANIFEST} and {BACKUP} are corrupt or missing; restore the directory "
            "from a backup"
        )
    if all(m is not None for m in copies.values()):
        return "both manifest copies are valid"
    best = max(good, key=lambda m: m.generation)
    best.generation -= 1  # write_manifest bumps it back
    write_manifest(root, best, backup=True)
    broken = [n for n, m in copies.items() if m is None]
    return f"rewrote {', '.join(broken)} from the valid copy"
