"""Cutting levels back: :meth:`LocalStore.truncate`, and what repair drops (DESIGN §5).

A truncation keeps the first ``count`` records of a level. In a tree, the gists of nodes that no
longer have all their children go too (level ℓ+1 keeps at most ``count(ℓ) // K``), so the store
never holds a gist without its children; a key store's levels are independent (its keys derive
from another store, which the caller cuts).

It is crash-safe through the manifest, used as a journal:

1. *prepare* — where the cut falls inside a sealed segment, the kept records (checked by the
   segment's sha256) are written to ``{seq}.seg.cut`` / ``{seq}.sum.cut`` and fsynced;
2. *commit* — the manifest drops the sealed segments from the cut on and records the level's
   ``limit`` (the records kept), atomically;
3. *apply* — the files past the cut are removed, the ``.cut`` files renamed into place (the
   checksum file first), or the open segment cut to the limit;
4. *finish* — the manifest forgets the limit.

A crash before 2 leaves the store as it was (``compact`` removes stray ``.cut`` files); a crash
after 2 is finished by the next writer's open, which applies the limit again (idempotent).

Truncation removes files a reader may have open or mapped: run it (and ``repair``, which uses
it) with no readers open, or have readers :meth:`~megacontext.store.local.LocalStore.refresh`
afterwards and expect reads past the cut to fail.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from megacontext.store.checksums import SumFile
from megacontext.store.errors import InvalidInputError, StorageCorruptionError
from megacontext.store.reader import Reader
from megacontext.store.segment import HEADER_BYTES, fsync_dir, os_error, segment_seq
from megacontext.store.state import LevelState, StoreState
from megacontext.store.writer import Writer

SALVAGE = "salvage"


@dataclass(frozen=True, slots=True)
class Cut:
    """One level cut back: it held ``old`` records and keeps ``new``."""

    level: int
    old: int
    new: int

    @property
    def lost(self) -> int:
        return self.old - self.new


def truncate(
    state: StoreState,
    reader: Reader,
    writer: Writer,
    level: int,
    count: int,
    salvage: Path | None = None,
) -> list[Cut]:
    """See :meth:`megacontext.store.local.LocalStore.truncate`. With ``salvage``, the files of
    every token segment that loses records are copied there first (repair keeps what it drops).

    A derived level whose cut falls inside a sealed segment that fails its sha256 is cut at the
    start of that segment instead (its records are recomputed anyway)."""
    state.check_open(write=True)
    for name, value in (("level", level), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{name} must be a non-negative integer, got {value!r}")
    with state.lock:
        have = state.count(level)
        if count > have:
            raise InvalidInputError(
                f"cannot truncate level {level} to {count} records: it holds {have}"
            )
        writer.flush()
        cuts = _prepare_cuts(state, reader, level, count, salvage)  # 1. prepare
        if not cuts:
            return []
        for cut in cuts:  # 2. commit
            lv = state.levels[cut.level]
            seq = cut.new // lv.capacity
            for dropped in range(seq, len(lv.sealed)):
                reader.forget(cut.level, dropped)
            del lv.entry.segments[seq:]
            lv.entry.limit = cut.new
        state.manifest_dirty = True
        writer.flush()
        for cut in cuts:  # 3. apply
            apply_limit(state, writer, state.levels[cut.level])
        for cut in cuts:  # 4. finish
            state.levels[cut.level].entry.limit = None
        state.manifest_dirty = True
        writer.flush()
    return cuts


def _prepare_cuts(
    state: StoreState, reader: Reader, level: int, count: int, salvage: Path | None
) -> list[Cut]:
    """Decide the cut of ``level`` and of each level above (bottom-up), salvaging and writing
    the ``.cut`` files of segments cut inside."""
    cuts: list[Cut] = []
    keep = count
    for lv in state.levels[level:]:
        have = lv.count
        if lv.entry.level > level:
            if state.manifest.role != "tree":
                break
            keep = min(have, keep // state.K)
        if keep >= have:
            continue
        seq, kept = divmod(keep, lv.capacity)
        if salvage is not None and not state.derivable(lv.entry.level):
            salvage_files(state, lv, seq, salvage)
        if seq < len(lv.sealed) and kept:
            try:
                _prepare(state, reader, lv, seq, kept)
            except StorageCorruptionError:
                if not state.derivable(lv.entry.level):
                    raise
                keep = seq * lv.capacity
        cuts.append(Cut(lv.entry.level, have, keep))
    return cuts


def _cut_name(path: Path) -> Path:
    return path.with_name(path.name + ".cut")


def _prepare(state: StoreState, reader: Reader, lv: LevelState, seq: int, kept: int) -> None:
    """Write the first ``kept`` records of sealed segment ``seq`` as a new open segment (v2
    header and checksum file) under ``.cut`` names, durably."""
    buffer = reader.sealed_buffer(lv, seq)  # checked by its sha256 (or a good replica)
    records = bytes(memoryview(buffer)[HEADER_BYTES : HEADER_BYTES + kept * lv.record_bytes])
    data_path = _cut_name(state.segment_path(lv, seq))
    sums_path = _cut_name(state.sums_path(lv, seq))
    sums = SumFile.create(sums_path, state.sums_layout(lv, seq))
    try:
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        sums.close()
        raise os_error(exc, data_path, "creating") from exc
    try:
        payload = state.header(lv, seq).pack() + records
        done = 0
        while done < len(payload):
            done += os.pwrite(fd, payload[done:], done)
        os.fsync(fd)
        sums.rebuild(fd, kept)
    except OSError as exc:
        raise os_error(exc, data_path, "writing") from exc
    finally:
        os.close(fd)
        sums.close()
    fsync_dir(data_path.parent)


def apply_limit(state: StoreState, writer: Writer, lv: LevelState) -> None:
    """Make the files of ``lv`` agree with its committed ``limit`` (steps 3 of the module
    docstring), then reopen its tail. Idempotent: a writer's open calls it again after a
    crash."""
    limit = lv.entry.limit
    assert limit is not None
    seq, kept = divmod(limit, lv.capacity)
    writer.drop_open(lv)
    directory = state.root / f"L{lv.entry.level}"
    data_cut = _cut_name(state.segment_path(lv, seq))
    sums_cut = _cut_name(state.sums_path(lv, seq))
    try:
        for path in sorted(directory.iterdir(), reverse=True):
            number = segment_seq(path)
            if number is not None and (number > seq or (number == seq and not kept)):
                path.unlink()
        if kept and data_cut.exists():  # the checksum file first: see the module docstring
            if sums_cut.exists():
                os.replace(sums_cut, state.sums_path(lv, seq))
            os.replace(data_cut, state.segment_path(lv, seq))
        for stale in (data_cut, sums_cut):
            stale.unlink(missing_ok=True)
        fsync_dir(directory)
    except OSError as exc:
        raise os_error(exc, directory, "cutting back") from exc
    writer.open_tail(lv)


def salvage_files(state: StoreState, lv: LevelState, seq: int, salvage: Path) -> None:
    """Copy the files of segment ``seq`` and every later one of ``lv`` into ``salvage``."""
    directory = state.root / f"L{lv.entry.level}"
    if not directory.is_dir():
        return
    target = salvage / directory.name
    for path in sorted(directory.iterdir()):
        number = segment_seq(path)
        if number is not None and number >= seq:
            target.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(path, target / path.name)
            except OSError as exc:
                raise os_error(exc, path, "saving a copy of") from exc
