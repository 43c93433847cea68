"""The write path of a store: append to the open segment of a level, seal it, flush (DESIGN §5).

:class:`Writer` owns each level's *open* segment — the one after its last sealed segment — and
the durability bookkeeping around it:

- recovery of the tail on open: cut the open segment to whole records (and a gist level to the
  nodes whose children survived), seal it when it is full; a read-only store only opens it;
- appends, written straight to the OS so they survive a process crash;
- a background sha256 of the open segment (one thread), so sealing a full segment does not read
  it again;
- sealing: record the digest, replicate, fsync in the background (a second thread) and make the
  file read-only;
- ``flush()``, the group commit: fsync everything written since the last flush, then commit the
  manifest, which therefore only ever names durable segments.

It never reads records back for callers; that is :mod:`megacontext.store.reader`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from megacontext.store.errors import InvalidInputError, StorageCorruptionError, StoreError
from megacontext.store.manifest import LevelEntry, SegmentEntry, write_manifest
from megacontext.store.segment import (
    HEADER_BYTES,
    fsync_dir,
    numpy_dtype,
    os_error,
    segment_name,
    write_all,
)
from megacontext.store.state import LevelState, StoreState

HASH_STEP = 2 << 20  # background sha256 work is handed over in steps of this many bytes


class Writer:
    """Appends, seals and flushes the levels of one store (see the module docstring)."""

    def __init__(self, state: StoreState):
        self.state = state
        self._dirty_dirs: set[Path] = set()
        # Sealed since the last flush, each with its background fsync: waited for before commit.
        self._unsynced: list[tuple[Path, Future[None]]] = []
        self._sync_pool: ThreadPoolExecutor | None = None
        self._hash_pool: ThreadPoolExecutor | None = None

    # -- the open segment ------------------------------------------------------------------------

    def open_tail(self, level: LevelState, allowed: int | None) -> None:
        """Find the open segment after the sealed ones, cut it to whole records (and, for a gist
        level, to the ``allowed`` nodes whose children exist), and seal it when full."""
        state = self.state
        while True:
            seq = len(level.sealed)
            path = state.root / segment_name(level.entry.level, seq)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return
            if size < HEADER_BYTES + level.record_bytes and not state.header_ok(path, level, seq):
                if not state.readonly:  # torn while its header was written: it holds no record
                    path.unlink()
                return
            flags = os.O_RDONLY if state.readonly else os.O_RDWR
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                raise os_error(exc, path, "opening") from exc
            level.fd, level.open_path = fd, path
            state.check_header(os.pread(fd, HEADER_BYTES, 0), level, seq, path)
            count, torn = divmod(size - HEADER_BYTES, level.record_bytes)
            if count > level.capacity:
                raise StorageCorruptionError(
                    f"{path}: open segment holds {count} records, more than its capacity "
                    f"{level.capacity}; run `megacontext store verify {state.root}`"
                )
            first = seq * level.capacity
            if allowed is not None and first + count > allowed:
                if allowed < first:
                    raise StorageCorruptionError(
                        f"{state.root}: level {level.entry.level} has sealed gists past the "
                        f"{allowed} complete nodes below; run "
                        f"`megacontext store verify {state.root}`"
                    )
                count, torn = allowed - first, 1
            level.open_count = count
            if torn and not state.readonly:
                self._truncate_open(level, count)
            if count < level.capacity or state.readonly:
                return
            self._seal(level)

    def _truncate_open(self, level: LevelState, count: int) -> None:
        assert level.fd is not None
        level.open_view = None
        self._reset_hash(level)
        os.ftruncate(level.fd, HEADER_BYTES + count * level.record_bytes)
        os.fsync(level.fd)
        level.open_count = count

    def add_level(self, level: int) -> None:
        """Give the manifest a new, empty level (its directory is made now, committed at flush)."""
        state = self.state
        manifest = state.manifest
        width = 1 if level == 0 else manifest.dim
        dtype = "uint32" if level == 0 else manifest.gist_dtype
        record_bytes = numpy_dtype(dtype).itemsize * width
        fixed, target = manifest.segment_records, manifest.segment_bytes
        capacity = fixed or max(1, (target - HEADER_BYTES) // record_bytes)
        directory = state.root / f"L{level}"
        try:
            if directory.exists():  # left over from a dropped level (regist)
                shutil.rmtree(directory)
            directory.mkdir()
        except OSError as exc:
            raise os_error(exc, directory, "creating") from exc
        entry = LevelEntry(level=level, dtype=dtype, width=width, capacity=capacity)
        manifest.levels.append(entry)
        state.levels.append(LevelState.of(entry))
        self._dirty_dirs.add(state.root)
        state.manifest_dirty = True  # committed by the next flush()

    def _start_segment(self, lv: LevelState) -> None:
        seq = len(lv.sealed)
        path = self.state.root / segment_name(lv.entry.level, seq)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "creating") from exc
        try:
            write_all(fd, self.state.header(lv, seq).pack(), 0, path)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        lv.fd, lv.open_count, lv.dirty, lv.open_view, lv.open_path = fd, 0, True, None, path
        self._dirty_dirs.add(path.parent)

    # -- appending -------------------------------------------------------------------------------

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        """See :meth:`megacontext.store.local.LocalStore.append`."""
        state = self.state
        state.check_open(write=True)
        with state.lock:
            if not 0 <= level <= len(state.levels):
                raise InvalidInputError(
                    f"cannot append to level {level}: the store has levels "
                    f"0..{len(state.levels) - 1} (a new level must come right after them)"
                )
            array = self._coerce(level, records)
            if level == len(state.levels):
                self.add_level(level)
            lv = state.levels[level]
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
        dim = self.state.dim
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
        elif array.ndim != 2 or array.shape[1] != dim or (array.size and array.dtype.kind != "f"):
            raise InvalidInputError(
                f"level {level} takes float gists of shape (n, {dim}), got shape "
                f"{array.shape} dtype {array.dtype}"
            )
        dtype = numpy_dtype("uint32") if level == 0 else self.state.gist_dtype
        return np.ascontiguousarray(array, dtype)

    # -- hashing and sealing ---------------------------------------------------------------------

    def _hash_in_background(self, lv: LevelState, end: int) -> None:
        """Hand bytes up to ``end`` to the background hasher, in steps of at least 2 MB."""
        if end - lv.hash_submitted < HASH_STEP:
            return
        if self._hash_pool is None:
            self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-sha256")
        lv.hash_job = self._hash_pool.submit(self._hash_upto, lv, lv.fd, end)
        lv.hash_submitted = end

    @staticmethod
    def _hash_upto(lv: LevelState, fd: int | None, end: int) -> None:
        """Feed bytes ``[hashed, end)`` of the open segment to its running sha256."""
        assert fd is not None
        while lv.hashed < end:
            data = os.pread(fd, min(4 << 20, end - lv.hashed), lv.hashed)
            if not data:
                raise StoreError("open segment shrank while it was being hashed")
            lv.hasher.update(data)
            lv.hashed += len(data)

    @staticmethod
    def _reset_hash(lv: LevelState) -> None:
        if lv.hash_job is not None:
            with contextlib.suppress(Exception):
                lv.hash_job.result()
        lv.hasher, lv.hashed, lv.hash_job, lv.hash_submitted = hashlib.sha256(), 0, None, 0

    def _seal(self, lv: LevelState) -> None:
        """Seal the full open segment: sha256 (already running in the background), replicate,
        record it in the in-memory manifest. The next :meth:`flush` fsyncs it and commits."""
        state = self.state
        seq = len(lv.sealed)
        name = segment_name(lv.entry.level, seq)
        path = state.root / name
        try:
            if lv.hash_job is not None:
                lv.hash_job.result()
            self._hash_upto(lv, lv.fd, lv.segment_size)
        except OSError as exc:
            self._reset_hash(lv)
            raise os_error(exc, path, "hashing") from exc
        except StoreError:
            self._reset_hash(lv)
            raise
        digest = lv.hasher.hexdigest()
        replicas: list[str] = []
        if state.replicas is not None:
            replicas = state.replicas.put(name, path.read_bytes())
        entry = SegmentEntry(name, seq * lv.capacity, lv.capacity, digest, True, replicas)
        # count() reads open_count and the sealed list without the lock: zero the first, so a
        # concurrent reader may briefly see fewer records, never more.
        lv.open_count = 0
        lv.sealed.append(entry)
        state.manifest_dirty = True
        if self._sync_pool is None:
            self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-fsync")
        self._unsynced.append((path, self._sync_pool.submit(_fsync_file, path)))
        if lv.fd is not None:
            os.close(lv.fd)
        lv.fd, lv.open_count, lv.dirty, lv.open_view = None, 0, False, None
        self._reset_hash(lv)
        state.verified.add((lv.entry.level, seq))  # hashed from the file just now
        with contextlib.suppress(OSError):
            os.chmod(path, 0o444)
        rep = state.manifest.replication
        if rep is not None and not rep.keep_local:
            path.unlink()

    # -- durability ------------------------------------------------------------------------------

    def flush(self) -> None:
        """See :meth:`megacontext.store.local.LocalStore.flush`."""
        state = self.state
        if state.readonly or state.closed:
            return
        with state.lock:
            try:
                for lv in state.levels:
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
                raise os_error(exc, state.root, "flushing the segments of") from exc
            if state.manifest_dirty:
                write_manifest(state.root, state.manifest)
                state.manifest_dirty = False

    def close(self) -> None:
        """Close every open segment and stop the background threads (after their work)."""
        for lv in self.state.levels:
            lv.open_view = None
            self._reset_hash(lv)
            if lv.fd is not None:
                os.close(lv.fd)
                lv.fd = None
        for pool in (self._hash_pool, self._sync_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._hash_pool = self._sync_pool = None


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
