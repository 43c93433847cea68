"""Repair: fix every problem :func:`megacontext.store.admin.verify` reports (DESIGN §5, D18).

Each kind of damage has one fix, the least lossy available (``Problem.kind`` in brackets):

- a manifest copy does not load [manifest]: rewrite it from the good one (both bad:
  unrecoverable, restore the directory from a backup);
- a sealed segment is bad, short or missing [sealed]: if only its header is bad, rewrite the
  header from the manifest (kept only when the sha256 then matches); else copy a good replica;
  else recompute it (a gist level, given a gister); else drop it and everything after it;
- a replica is bad or missing [replica]: rewrite it from a good copy;
- the open segment's header is bad [header]: rewrite it from the manifest;
- its checksum file is missing [sums-missing]: rebuild it from the records (reported as
  *unverified*); its checksum file's header is bad [sums-header]: rewrite the header (the
  slots are kept, and checked);
- its records fail their checksums or are missing [open-checksum, open-short]: cut the
  segment back to its last good record;
- its file is missing but its checksum file is left [open-missing]: remove the checksum file,
  reporting the records it says were flushed;
- a torn tail [torn]: cut it (what the next writer would do);
- more gists than complete nodes below [invariant]: cut the gist level back;
- an interrupted truncation [limit]: finished by opening for writing.

Dropping is unavoidable where a record has no good copy: records sit at fixed offsets, so a
level is cut back to before the first bad one. Derived records (gists, keys) are recomputed from
their source when the tree is next opened for writing, and are reported in
:attr:`RepairReport.dropped`; tokens cannot be recomputed, so they are reported in
:attr:`RepairReport.lost`, and the files that held them are first copied to ``salvage/`` in the
store (the bytes are kept, only the store no longer counts them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from megacontext.core.tree import GistBatch
from megacontext.store import truncation
from megacontext.store.admin import OpenCheck, check_sealed, inspect_open
from megacontext.store.checksums import SumFile
from megacontext.store.errors import InvalidInputError, NotAStoreError, StorageCorruptionError
from megacontext.store.manifest import BACKUP, MANIFEST, read_manifest, write_manifest
from megacontext.store.reader import Reader, replace_local
from megacontext.store.segment import HEADER_BYTES, os_error
from megacontext.store.state import LevelState, StoreState
from megacontext.store.writer import Writer

if TYPE_CHECKING:
    from megacontext.core.tree import Gister


@dataclass
class RepairReport:
    """What :meth:`LocalStore.repair` did.

    ``repaired``: restored exactly (from a good copy, the manifest, or recomputed); ``dropped``:
    derived records cut off, recomputed when the tree is next opened for writing; ``lost``:
    tokens cut off for good (their files are in ``salvage``); ``unverified``: records kept whose
    checksums had to be rebuilt from them; ``unrecoverable``: what repair could not fix.
    """

    repaired: list[str] = field(default_factory=list)
    unrecoverable: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    salvage: str = ""

    @property
    def ok(self) -> bool:
        """Whether the store is whole again with no token lost."""
        return not self.unrecoverable and not self.lost


class _Repair:
    def __init__(
        self, state: StoreState, reader: Reader, writer: Writer, gister: Gister | None
    ) -> None:
        self.state, self.reader, self.writer, self.gister = state, reader, writer, gister
        self.report = RepairReport()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.salvage_dir = state.root / truncation.SALVAGE / f"{stamp}-g{state.manifest.generation}"

    def run(self) -> RepairReport:
        state = self.state
        self.writer.flush()
        with state.lock:
            self._manifests()
            for index in range(len(state.levels)):
                lv = state.levels[index]
                self._sealed(lv)
                self._open(lv)
            self._invariant()
        self.writer.flush()  # commits a changed sha256 (re-gisted segments)
        return self.report

    # -- reporting ---------------------------------------------------------------------------

    def _drop(self, level: int, lo: int, hi: int, why: str, kept: bool = True) -> None:
        if hi <= lo:
            return
        if self.state.derivable(level):
            source = "the tree" if self.state.manifest.role == "keys" else "the level below"
            self.report.dropped.append(
                f"level {level} records [{lo}, {hi}) dropped ({why}); derived: recomputed from "
                f"{source} when the tree is next opened for writing"
            )
        else:
            where = f"their files are kept in {self.salvage_dir}" if kept else "nothing is left"
            self.report.lost.append(
                f"level {level} records [{lo}, {hi}) lost: {hi - lo} token(s) ({why}); {where}"
            )
            if kept:
                self.report.salvage = str(self.salvage_dir)

    def _cut(self, lv: LevelState, count: int, why: str) -> None:
        """Cut ``lv`` (and the gists above it) to ``count`` records, reporting every level."""
        salvage = None if self.state.derivable(lv.entry.level) else self.salvage_dir
        cuts = truncation.truncate(
            self.state, self.reader, self.writer, lv.entry.level, count, salvage=salvage
        )
        for cut in cuts:
            reason = why if cut.level == lv.entry.level else f"children lost: {why}"
            self._drop(cut.level, cut.new, cut.old, reason)

    # -- manifests ---------------------------------------------------------------------------

    def _manifests(self) -> None:
        state, root = self.state, self.state.root
        for name in (MANIFEST, BACKUP):
            try:
                read_manifest(root, name)
            except (StorageCorruptionError, NotAStoreError):
                state.manifest.generation -= 1  # write_manifest bumps it back
                write_manifest(root, state.manifest, backup=True)
                self.report.repaired.append(str(root / name))

    # -- sealed segments ---------------------------------------------------------------------

    def _sealed(self, lv: LevelState) -> None:
        state, replicas = self.state, self.state.replicas
        rep = state.manifest.replication
        keep_local = rep is None or rep.keep_local
        for seq, entry in enumerate(list(lv.sealed)):
            path = state.root / entry.name
            problem = (
                check_sealed(state, path, entry, lv, seq) if (path.exists() or keep_local) else ""
            )
            states = replicas.check(entry.name, entry.sha256) if replicas else {}
            bad_roots = [r for r, s in states.items() if s != "ok"]
            if not problem and not bad_roots:
                continue
            good: bytes | None = None
            if not problem and path.exists():
                good = path.read_bytes()
            if good is None:
                good = _with_right_header(state, lv, seq, path, entry.sha256)
            if good is None and len(bad_roots) < len(states):
                assert replicas is not None  # states is empty without replicas
                good, _ = replicas.fetch(entry.name, entry.sha256, lv.segment_size)
            if good is None and self.gister is not None and state.derivable(lv.entry.level):
                good = _regist_segment(state, self.reader, lv, seq, self.gister)
            if good is None:
                first = seq * lv.capacity
                self._cut(lv, first, f"{path}: {problem or 'no good copy'}, and no good copy")
                return  # the segments after it went with it
            if problem:
                self.reader.forget(lv.entry.level, seq)
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o644)
                replace_local(path, good)
                self.report.repaired.append(str(path))
            for root_url in bad_roots:
                assert replicas is not None
                replicas.write(root_url, entry.name, good)
                self.report.repaired.append(replicas.url(root_url, entry.name))

    # -- the open segment --------------------------------------------------------------------

    def _open(self, lv: LevelState) -> None:
        state = self.state
        check = inspect_open(state, lv)
        damaged = bool(lv.damage)
        if not check.problems() and not damaged:
            return
        self.writer.drop_open(lv)
        lv.damage = ""
        if not check.exists:
            if check.sums_path.exists():
                self._drop(
                    lv.entry.level,
                    check.first,
                    check.first + check.orphan_durable,
                    f"{check.path} is missing",
                    kept=False,
                )
                check.sums_path.unlink()
                self.report.repaired.append(f"removed {check.sums_path} (its segment is missing)")
        elif check.version == 1 and not check.header_error:
            pass  # a v1 open segment: the writer's open migrates it (below)
        else:
            self._fix_open_files(lv, check)
        self.writer.open_tail(lv)
        if lv.fd is not None and lv.version == 1:  # checksum it like a migration would
            from megacontext.store import migrate

            for level, count in migrate.upgrade_open_segments(state).items():
                self.report.unverified.append(
                    f"level {level}: checksummed the {count} records of its v1 open segment"
                )

    def _fix_open_files(self, lv: LevelState, check: OpenCheck) -> None:
        state = self.state
        seq = len(lv.sealed)
        try:
            fd = os.open(check.path, os.O_RDWR)
        except OSError as exc:
            raise os_error(exc, check.path, "opening") from exc
        try:
            if check.header_error:
                os.pwrite(fd, state.header(lv, seq).pack(), 0)
                os.fsync(fd)
                self.report.repaired.append(f"{check.path}: rewrote its header from the manifest")
            layout = state.sums_layout(lv, seq)
            size = os.fstat(fd).st_size
            records = max(0, size - HEADER_BYTES) // lv.record_bytes
            if check.sums_error == "missing":
                sums = SumFile.create(check.sums_path, layout)
                sums.rebuild(fd, min(records, lv.capacity))
                self.report.unverified.append(
                    f"{check.path}: its checksum file was missing; rebuilt it over its "
                    f"{min(records, lv.capacity)} records as they are (they could not be checked)"
                )
            else:
                if check.sums_error:
                    sfd = os.open(check.sums_path, os.O_RDWR)
                    try:
                        os.pwrite(sfd, layout.pack(), 0)
                        os.fsync(sfd)
                    finally:
                        os.close(sfd)
                    self.report.repaired.append(
                        f"{check.sums_path}: rewrote its header from the manifest"
                    )
                sums = SumFile.open(check.sums_path, layout, True, state.fix())
            try:
                scan = sums.scan(fd, size)
                if not scan.clean:
                    keep = scan.verified
                    if keep < scan.durable:  # flushed records are bad: damage, not a crash
                        if not state.derivable(lv.entry.level):
                            truncation.salvage_files(state, lv, seq, self.salvage_dir)
                        self._drop(
                            lv.entry.level,
                            check.first + keep,
                            check.first + max(min(scan.extent, scan.data_records), scan.durable),
                            f"{check.path}: records fail their checksums or are missing",
                        )
                    else:
                        self.report.repaired.append(f"{check.path}: cut a torn tail")
                    sums.cut(fd, keep)
            finally:
                sums.close(sync=True)
        finally:
            os.close(fd)

    # -- levels against each other -----------------------------------------------------------

    def _invariant(self) -> None:
        state = self.state
        if state.manifest.role != "tree":
            return
        for below, level in zip(state.levels, state.levels[1:], strict=False):
            want = below.count // state.K
            if level.count > want:
                self._cut(level, want, "more gists than complete nodes below")


def repair(
    state: StoreState, reader: Reader, writer: Writer, gister: Gister | None = None
) -> RepairReport:
    """See :meth:`megacontext.store.local.LocalStore.repair`."""
    state.check_open(write=True)
    return _Repair(state, reader, writer, gister).run()


def _with_right_header(
    state: StoreState, lv: LevelState, seq: int, path: Path, sha256: str
) -> bytes | None:
    """The local copy with its header rewritten from the manifest, if that makes its sha256
    right (the damage was in the header only), else ``None``."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != lv.segment_size:
        return None
    for version in (1, 2):
        candidate = state.header(lv, seq, version).pack() + data[HEADER_BYTES:]
        if hashlib.sha256(candidate).hexdigest() == sha256:
            return candidate
    return None


def _regist_segment(
    state: StoreState, reader: Reader, lv: LevelState, seq: int, gister: Gister
) -> bytes | None:
    """Recompute sealed gist segment ``seq`` of ``lv`` from its children, or ``None``."""
    K, dim, level, cap = state.K, state.dim, lv.entry.level, lv.capacity
    if state.manifest.role != "tree" or level < 1:  # a key store's children live elsewhere
        return None
    first = seq * cap
    try:
        children = np.array(reader.read(level - 1, first * K, (first + cap) * K))
    except StorageCorruptionError:
        return None
    inputs = children.reshape(cap, K) if level == 1 else children.reshape(cap, K, dim)
    output = gister(level, inputs)
    gists = np.ascontiguousarray(
        np.asarray(output.gists if isinstance(output, GistBatch) else output), dtype=lv.dtype
    )
    if gists.shape != (cap, dim):
        raise InvalidInputError(f"gister returned shape {gists.shape}, expected {(cap, dim)}")
    entry = lv.sealed[seq]
    for version in (1, 2):  # the segment may have been sealed under either format
        data = state.header(lv, seq, version).pack() + gists.tobytes()
        if hashlib.sha256(data).hexdigest() == entry.sha256:
            return data
    entry.sha256 = hashlib.sha256(data).hexdigest()  # a non-deterministic gister: record it
    state.manifest_dirty = True
    return data
