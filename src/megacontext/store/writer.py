"""The write path of a store: append to the open segment of a level, seal it, flush (DESIGN §5).

:class:`Writer` owns each level's *open* segment — the one after its last sealed segment — and
the durability bookkeeping around it:

- recovery of the tail on open: cut the open segment back to its checksummed records (whole
  records for a v1 segment), seal it when it is full; a read-only store only opens it and takes
  the checksummed records as its snapshot;
- appends, written straight to the OS so they survive a process crash, each followed by the
  checksum of the block(s) it touched (:mod:`megacontext.store.checksums`);
- a background sha256 of the open segment (one thread), so sealing a full segment does not read
  it again;
- sealing: check every block against its checksum while hashing, record the digest, replicate,
  fsync in the background (a second thread) and make the file read-only;
- ``flush()``, the group commit: fsync everything written since the last flush (segments and
  their checksum files), record the flushed counts, then commit the manifest, which therefore
  only ever names durable segments.

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

from megacontext.store.checksums import ChecksumMismatchError, SumFile, block_records
from megacontext.store.errors import (
    DiskFullError,
    InvalidInputError,
    StorageCorruptionError,
    StoreError,
)
from megacontext.store.manifest import LevelEntry, SegmentEntry, write_manifest
from megacontext.store.segment import (
    FORMAT_VERSION,
    HEADER_BYTES,
    fsync_dir,
    numpy_dtype,
    os_error,
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

    def open_tail(self, level: LevelState) -> None:
        """Open the segment after the sealed ones (if any), find how many records it holds, cut
        what a crash left half-written, and seal it when it is full.

        A v2 segment holds the records its checksum file covers. For a writer, a tail whose
        checksums do not hold is cut off when it lies past the durable marker (a crash) or on a
        level that can be recomputed; on the token level, records the marker says were flushed
        are never cut here: the level is marked damaged (appends refuse, ``verify`` reports it,
        ``repair`` decides). A committed truncation's ``limit`` caps the count.
        """
        state = self.state
        while True:
            seq = len(level.sealed)
            path = state.segment_path(level, seq)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                self._orphan_sums(level, seq)
                return
            if (
                size < HEADER_BYTES + level.record_bytes
                and not state.header_ok(path, level, seq)
                and not self._flushed_to(level, seq)
            ):
                if not state.readonly:  # torn while its header was written: it holds no record
                    path.unlink()
                    state.sums_path(level, seq).unlink(missing_ok=True)
                return
            flags = os.O_RDONLY if state.readonly else os.O_RDWR
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                raise os_error(exc, path, "opening") from exc
            level.fd, level.open_path = fd, path
            size = max(size, os.fstat(fd).st_size)  # a writer may have grown it since the stat
            try:
                header = state.check_header(os.pread(fd, HEADER_BYTES, 0), level, seq, path)
            except StorageCorruptionError as exc:
                self._damaged(level, seq, str(exc), size)
                return
            level.version = header.version
            opened = (
                self._open_v1(level, size)
                if header.version == 1
                else self._open_v2(level, seq, size)
            )
            if opened is None:
                return
            level.open_count = opened
            self._cap_at_limit(level, seq)
            if level.open_count < level.capacity or state.readonly or level.damage:
                if not state.readonly and level.sums is not None and not level.damage:
                    level.sums.resume(fd, level.open_count)
                return
            self._seal(level)

    def _cap_at_limit(self, level: LevelState, seq: int) -> None:
        """Apply a committed truncation's ``limit`` to the open segment ``seq``."""
        limit = level.entry.limit
        first = seq * level.capacity
        if limit is None or first + level.open_count <= limit:
            return
        if self.state.readonly:
            level.open_count = max(0, limit - first)
        else:
            self._truncate_open(level, max(0, limit - first))

    def _open_v1(self, level: LevelState, size: int) -> int:
        """A v1 open segment: whole records count; a torn trailing record is cut (writer)."""
        count, torn = divmod(size - HEADER_BYTES, level.record_bytes)
        if count > level.capacity:
            raise StorageCorruptionError(
                f"{level.open_path}: open segment holds {count} records, more than its capacity "
                f"{level.capacity}; {self.state.fix()}"
            )
        if torn and not self.state.readonly:
            level.open_count = count
            self._truncate_open(level, count)
        return count

    def _open_v2(self, level: LevelState, seq: int, size: int) -> int | None:
        """Open the checksum file and decide the record count (see :meth:`open_tail`)."""
        state = self.state
        assert level.fd is not None
        spath = state.sums_path(level, seq)
        try:
            sums = SumFile.open(
                spath, state.sums_layout(level, seq), not state.readonly, state.fix()
            )
        except FileNotFoundError:
            self._damaged(level, seq, f"{spath}: checksum file is missing", size)
            return None
        except StorageCorruptionError as exc:
            self._damaged(level, seq, str(exc), size)
            return None
        except OSError as exc:
            raise os_error(exc, spath, "opening") from exc
        level.sums = sums
        data_records = max(0, size - HEADER_BYTES) // level.record_bytes
        if state.readonly:
            return sums.extent(data_records)
        scan = sums.scan(level.fd, size)  # every record: damage is found at open
        if scan.verified >= scan.durable or state.derivable(level.entry.level):
            if scan.verified < scan.durable:
                state.recovered.append(
                    f"level {level.entry.level}: records from "
                    f"{seq * level.capacity + scan.verified} of {level.open_path} failed their "
                    "checksums and were dropped (derived records: recomputed from their source)"
                )
            if not scan.clean:
                level.open_count = scan.verified
                self._truncate_open(level, scan.verified)
            return scan.verified
        first = seq * level.capacity
        ranges = ", ".join(f"[{first + lo}, {first + hi})" for lo, hi in scan.bad) or (
            f"[{first + scan.verified}, {first + scan.durable})"
        )
        level.damage = (
            f"{level.open_path}: records {ranges} of level {level.entry.level} were flushed but "
            f"fail their checksums or are missing; {state.fix()} (repair cuts the level back to "
            "its last good record and reports what is lost)"
        )
        return min(scan.extent, data_records)

    def _damaged(self, level: LevelState, seq: int, why: str, size: int) -> None:
        """The open segment's header or checksum file is bad. A writer drops it on a level that
        can be recomputed; otherwise the level is marked damaged and keeps its best count."""
        state = self.state
        path = state.segment_path(level, seq)
        if not state.readonly and state.derivable(level.entry.level):
            self.drop_open(level)
            path.unlink(missing_ok=True)
            state.sums_path(level, seq).unlink(missing_ok=True)
            state.recovered.append(
                f"level {level.entry.level}: dropped the open segment {path} ({why}); derived "
                "records are recomputed from their source"
            )
            return
        level.damage = f"{why}; {state.fix()}" if state.fix() not in why else why
        level.open_count = min(level.capacity, max(0, size - HEADER_BYTES) // level.record_bytes)

    def _orphan_sums(self, level: LevelState, seq: int) -> None:
        """No open segment file: a checksum file without one is left by a crash between the two
        creations (nothing flushed: removed), or says flushed records were lost (damage)."""
        state = self.state
        spath = state.sums_path(level, seq)
        if state.readonly or not spath.exists():
            return
        durable = self._flushed_to(level, seq)
        if durable and not state.derivable(level.entry.level):
            level.damage = (
                f"{state.segment_path(level, seq)} is missing but its checksum file says "
                f"{durable} records were flushed to it; {state.fix()}"
            )
            return
        spath.unlink()

    def _flushed_to(self, level: LevelState, seq: int) -> int:
        """Records the checksum file of segment ``seq`` says were flushed (0 without one)."""
        state = self.state
        try:
            sums = SumFile.open(
                state.sums_path(level, seq), state.sums_layout(level, seq), False, state.fix()
            )
        except (OSError, StorageCorruptionError):
            return 0
        durable = sums.durable
        sums.close()
        return durable

    def _truncate_open(self, level: LevelState, count: int) -> None:
        assert level.fd is not None
        level.open_view = None
        self._reset_hash(level)
        if level.sums is not None:
            level.sums.cut(level.fd, count)
        else:
            os.ftruncate(level.fd, HEADER_BYTES + count * level.record_bytes)
            os.fsync(level.fd)
        level.open_count = count

    def drop_open(self, level: LevelState) -> None:
        """Forget the open segment (its files stay): close it and its checksum file."""
        level.open_view = None
        self._reset_hash(level)
        if level.sums is not None:
            level.sums.close()
            level.sums = None
        if level.fd is not None:
            os.close(level.fd)
            level.fd = None
        level.open_count, level.dirty = 0, False

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
        block = block_records(manifest.block_bytes, record_bytes, capacity)
        entry = LevelEntry(
            level=level, dtype=dtype, width=width, capacity=capacity, block_records=block
        )
        manifest.levels.append(entry)
        state.levels.append(LevelState.of(entry))
        self._dirty_dirs.add(state.root)
        state.manifest_dirty = True  # committed by the next flush()

    def _start_segment(self, lv: LevelState) -> None:
        """Create the next segment: its checksum file first, so a segment never exists
        without one (a crash in between leaves an empty checksum file, removed at open)."""
        state = self.state
        seq = len(lv.sealed)
        path, spath = state.segment_path(lv, seq), state.sums_path(lv, seq)
        sums = SumFile.create(spath, state.sums_layout(lv, seq))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            sums.close()
            spath.unlink(missing_ok=True)
            raise os_error(exc, path, "creating") from exc
        try:
            write_all(fd, state.header(lv, seq).pack(), 0, path)
        except BaseException:
            os.close(fd)
            sums.close()
            path.unlink(missing_ok=True)
            spath.unlink(missing_ok=True)
            raise
        lv.fd, lv.open_count, lv.dirty, lv.open_view, lv.open_path = fd, 0, True, None, path
        lv.sums, lv.version = sums, FORMAT_VERSION
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
            if lv.damage:
                raise StorageCorruptionError(f"cannot append to level {level}: {lv.damage}")
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
                payload = chunk.reshape(-1).view(np.uint8).data
                write_all(lv.fd, payload, offset, lv.open_path)
                if lv.sums is not None:
                    try:
                        lv.sums.record(lv.open_count, payload)
                    except StoreError:  # no checksum, no record: cut the bytes off again
                        with contextlib.suppress(OSError):
                            os.ftruncate(lv.fd, offset)
                        raise
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
        """Feed bytes ``[hashed, end)`` of the open segment to its running sha256 (and check
        each whole block against its checksum on the way, so sealing never blesses a record
        that changed after it was written)."""
        assert fd is not None
        sums = lv.sums
        while lv.hashed < end:
            data = os.pread(fd, min(4 << 20, end - lv.hashed), lv.hashed)
            if not data:
                raise StoreError("open segment shrank while it was being hashed")
            lv.hasher.update(data)
            if sums is not None:
                sums.feed(data, lv.hashed)
            lv.hashed += len(data)

    @staticmethod
    def _reset_hash(lv: LevelState) -> None:
        if lv.hash_job is not None:
            with contextlib.suppress(Exception):
                lv.hash_job.result()
        lv.hasher, lv.hashed, lv.hash_job, lv.hash_submitted = hashlib.sha256(), 0, None, 0
        if lv.sums is not None:
            lv.sums.reset_feed()

    def _seal(self, lv: LevelState) -> None:
        """Seal the full open segment: sha256 (already running in the background), replicate,
        record it in the in-memory manifest. The next :meth:`flush` fsyncs it and commits."""
        state = self.state
        seq = len(lv.sealed)
        path = state.segment_path(lv, seq)
        name = f"{path.parent.name}/{path.name}"
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
        if lv.sums is not None and lv.sums.seal_errors:
            ranges = ", ".join(f"[{lo}, {hi})" for lo, hi in lv.sums.seal_errors)
            self._reset_hash(lv)
            lv.damage = (
                f"{path}: records {ranges} of level {lv.entry.level} changed after they were "
                f"written (they fail their checksums), so the segment cannot be sealed; "
                f"{state.fix()}"
            )
            raise ChecksumMismatchError(lv.damage, 0, 0)
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
        if lv.sums is not None:  # kept: a reader whose snapshot has this segment open uses it
            lv.sums.close()
            lv.sums = None
            with contextlib.suppress(OSError):
                os.chmod(state.sums_path(lv, seq), 0o444)
        state.verified.add((lv.entry.level, seq))  # hashed from the file just now
        with contextlib.suppress(OSError):
            os.chmod(path, 0o444)
        rep = state.manifest.replication
        if rep is not None and not rep.keep_local:
            path.unlink()

    # -- durability ------------------------------------------------------------------------------

    def flush(self, lenient_commit: bool = False) -> None:
        """See :meth:`megacontext.store.local.LocalStore.flush`. With ``lenient_commit``, a
        manifest that cannot be written on a full disk is left behind (closing): every record
        is durable by then, and the next writer's open seals the full segments it lacks."""
        state = self.state
        if state.readonly or state.closed:
            return
        with state.lock:
            synced = []
            try:
                for lv in state.levels:
                    if lv.dirty and lv.fd is not None:
                        os.fsync(lv.fd)
                        if lv.sums is not None:
                            os.fsync(lv.sums.fd)
                            synced.append(lv)
                        lv.dirty = False
                while self._unsynced:
                    self._unsynced[0][1].result()  # raises the OSError of a failed fsync
                    self._unsynced.pop(0)
                for directory in sorted(self._dirty_dirs):
                    fsync_dir(directory)
                self._dirty_dirs.clear()
            except OSError as exc:
                raise os_error(exc, state.root, "flushing the segments of") from exc
            for lv in synced:  # durable from here: later appends leave these slots alone
                assert lv.sums is not None
                lv.sums.mark_durable(lv.open_count)
            if state.manifest_dirty:
                try:
                    write_manifest(state.root, state.manifest)
                except DiskFullError:
                    if not lenient_commit:
                        raise
                    return
                state.manifest_dirty = False

    def close(self) -> None:
        """Close every open segment and stop the background threads (after their work)."""
        for lv in self.state.levels:
            lv.open_view = None
            self._reset_hash(lv)
            if lv.sums is not None:  # the flushed count marked last is made durable too
                with contextlib.suppress(OSError):
                    lv.sums.close(sync=not self.state.readonly)
                lv.sums = None
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
