"""The read path of a store: records out of sealed and open segments (DESIGN §5).

:class:`Reader` owns everything a read keeps between calls:

- an LRU of memory-mapped sealed segments (``max_mapped_segments``), so RSS stays flat however
  long the tree grows;
- an LRU of sealed segments fetched from replicas (``max_remote_segments``), for segments with no
  good local copy;
- the :class:`StoreStats` counters, since every counter is about reading.

A sealed segment's sha256 is checked on its first read in a process. A bad or missing local
copy is replaced from a good replica (read-repair, also of bad replicas; a replica root that
cannot take the repair keeps its bad copy, for `store verify` to report) when the store is
writable, and served from memory otherwise. The open segment is read through a map the writer
drops whenever it changes that segment (:class:`~megacontext.store.state.LevelState`); records
of a v2 open segment are checked against its checksum file before they are first returned
(:meth:`megacontext.store.checksums.SumFile.verify`), each block once per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from megacontext.store.checksums import ChecksumMismatchError
from megacontext.store.errors import InvalidInputError, StorageCorruptionError, StoreError
from megacontext.store.manifest import SegmentEntry
from megacontext.store.segment import HEADER_BYTES, fsync_dir, os_error, segment_name
from megacontext.store.state import LevelState, StoreState


@dataclass
class StoreStats:
    """Counters of one open store (since it was opened)."""

    segments_verified: int = 0
    corrupt_copies_found: int = 0
    read_repairs: int = 0
    replica_reads: int = 0


class Reader:
    """Reads records of one store and caches segment bytes (see the module docstring)."""

    def __init__(
        self,
        state: StoreState,
        verify_reads: bool,
        max_remote_segments: int,
        max_mapped_segments: int,
    ):
        self.state = state
        self.verify_reads = verify_reads
        self.stats = StoreStats()
        self._buffers: OrderedDict[tuple[int, int], Any] = OrderedDict()  # open maps, LRU
        self._max_mapped = max_mapped_segments
        self._remote: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._max_remote = max_remote_segments

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """See :meth:`megacontext.store.local.LocalStore.read`."""
        state = self.state
        # Fast path: inside one sealed, already mapped segment (no lock: sealed bytes never
        # change, and a map closed by a concurrent eviction falls back to the locked path).
        if 0 <= level < len(state.levels) and 0 <= start < stop and not state.closed:
            lv = state.levels[level]
            cap = lv.entry.capacity
            seq = start // cap
            sealed = len(lv.entry.segments)
            buffer: Any = None
            if seq < sealed:
                buffer = self._buffers.get((level, seq))
            elif seq == sealed and lv.open_view is not None:
                buffer, mapped = lv.open_view
                sums = lv.sums
                checked = mapped if sums is None else min(mapped, sums.verified)
                trusted = sums is not None or not lv.damage
                buffer = buffer if stop - seq * cap <= checked and trusted else None
            if buffer is not None and stop <= (seq + 1) * cap:
                width = lv.entry.width
                offset = HEADER_BYTES + (start - seq * cap) * lv.record_bytes
                try:
                    flat = np.frombuffer(buffer, lv.dtype, (stop - start) * width, offset)
                except ValueError:
                    pass
                else:
                    return flat if level == 0 else flat.reshape(stop - start, width)
        state.check_open(write=False)
        with state.lock:
            have = state.count(level)
            if not 0 <= start <= stop <= have:
                raise InvalidInputError(
                    f"range [{start}, {stop}) is outside level {level}, which holds {have} records"
                )
            if start == stop:
                shape: tuple[int, ...] = () if level == 0 else (state.dim,)
                out = np.empty((0, *shape), np.uint32 if level == 0 else state.gist_dtype)
                out.flags.writeable = False
                return out
            lv = state.levels[level]
            cap = lv.capacity
            parts = []
            for seq in range(start // cap, (stop - 1) // cap + 1):
                lo, hi = max(start, seq * cap) - seq * cap, min(stop, (seq + 1) * cap) - seq * cap
                parts.append(self._read_segment(lv, seq, lo, hi))
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out.flags.writeable = False
        return out

    @staticmethod
    def _shape(lv: LevelState, flat: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        return (
            flat
            if lv.entry.width == 1 and lv.entry.level == 0
            else flat.reshape(-1, lv.entry.width)
        )

    def _read_segment(self, lv: LevelState, seq: int, lo: int, hi: int) -> npt.NDArray[np.generic]:
        offset = HEADER_BYTES + lo * lv.record_bytes
        items = (hi - lo) * lv.entry.width
        if seq < len(lv.sealed):
            buffer = self.sealed_buffer(lv, seq)
            return self._shape(lv, np.frombuffer(buffer, lv.dtype, items, offset))
        if lv.damage and lv.sums is None:  # a bad header or no checksum file: not trusted
            raise StorageCorruptionError(f"cannot read level {lv.entry.level}: {lv.damage}")
        assert lv.fd is not None
        if lv.sums is not None:
            try:
                lv.sums.verify(lv.fd, lo, hi)
            except ChecksumMismatchError as exc:
                self.stats.corrupt_copies_found += 1
                raise ChecksumMismatchError(
                    f"{lv.open_path}: {exc}; {self.state.fix()}", exc.lo, exc.hi
                ) from None
            except OSError as exc:
                raise os_error(exc, lv.open_path, "checking") from exc
        if lv.open_view is None or lv.open_view[1] < hi:
            size = HEADER_BYTES + lv.open_count * lv.record_bytes
            if os.fstat(lv.fd).st_size < size:
                root = self.state.root
                raise StorageCorruptionError(
                    f"{root / segment_name(lv.entry.level, seq)}: open segment is shorter "
                    f"than its {lv.open_count} records (was it truncated by another program?); "
                    f"run `megacontext store verify {root}`"
                )
            lv.open_view = (mmap.mmap(lv.fd, size, access=mmap.ACCESS_READ), lv.open_count)
        return self._shape(lv, np.frombuffer(lv.open_view[0], lv.dtype, items, offset))

    # -- sealed segments -------------------------------------------------------------------------

    def sealed_buffer(self, lv: LevelState, seq: int) -> Any:
        """The verified bytes of a sealed segment: a local mmap, else a replica copy.

        At most ``max_mapped_segments`` maps stay open (LRU); a segment is hashed once per
        process, by streaming the file (not through the map, whose pages would otherwise count
        as resident).
        """
        state = self.state
        key = (lv.entry.level, seq)
        for cache in (self._buffers, self._remote):
            buffer = cache.get(key)
            if buffer is not None:
                cache.move_to_end(key)
                return buffer
        entry = lv.sealed[seq]
        path = state.root / entry.name
        size = lv.segment_size
        local = self._map_local(path, size, entry, key)
        if local is None:
            data = self._fetch_replica(entry, size)
            rep = state.manifest.replication
            keep_local = rep is not None and rep.keep_local
            if (path.exists() or keep_local) and not state.readonly:  # read-repair the local copy
                replace_local(path, data)
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
        state = self.state
        fix = (
            f"run `megacontext store verify {state.root}` and "
            f"`megacontext store repair {state.root}`"
        )
        try:
            with open(path, "rb") as handle:
                actual = os.fstat(handle.fileno()).st_size
                if actual != size:
                    problem = f"{path}: sealed segment has {actual} bytes, expected {size}; {fix}"
                elif self.verify_reads and key not in state.verified:
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
                    if state.replicas is None:
                        raise StorageCorruptionError(problem)
                    return None
                if self.verify_reads and key not in state.verified:
                    state.verified.add(key)
                    self.stats.segments_verified += 1
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            if state.replicas is None:
                raise StorageCorruptionError(
                    f"{path}: sealed segment is missing and the store has no replicas; {fix}"
                ) from None
            return None
        except OSError as exc:
            raise os_error(exc, path, "mapping") from exc

    def _fetch_replica(self, entry: SegmentEntry, size: int) -> bytes:
        replicas = self.state.replicas
        assert replicas is not None
        data, bad = replicas.fetch(entry.name, entry.sha256, size)
        self.stats.replica_reads += 1
        self.stats.corrupt_copies_found += len(bad)
        if not self.state.readonly:
            for root_url in bad:  # read-repair of bad or missing replicas
                try:
                    replicas.write(root_url, entry.name, data)
                except StoreError:
                    # The read has its good bytes: a root that cannot take the repair now (down,
                    # full) must not fail it. The copy stays bad, and `store verify` says so.
                    continue
                self.stats.read_repairs += 1
        return data

    def forget(self, level: int, seq: int) -> None:
        """Drop what this process knows of a sealed segment whose local copy is being replaced,
        so its next read maps and checks the new file."""
        self._buffers.pop((level, seq), None)
        self.state.verified.discard((level, seq))

    def close(self) -> None:
        for buffer in self._buffers.values():
            if isinstance(buffer, mmap.mmap):
                # arrays may still view it: the map then closes when they are freed
                with contextlib.suppress(BufferError):
                    buffer.close()
        self._buffers.clear()
        self._remote.clear()


def replace_local(path: Path, data: bytes) -> None:
    """Replace the local copy of a sealed segment by good bytes, atomically and read-only."""
    tmp = path.with_name(path.name + ".repair")
    tmp.write_bytes(data)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    fsync_dir(path.parent)
