"""Inspection and maintenance of an open store: info, verify, compact, rebalance.

These operations are rare, whole-store passes rather than part of the append or read path, so
they live apart from both and use them: rebalance fetches bytes through the
:class:`~megacontext.store.reader.Reader` and commits through the
:class:`~megacontext.store.writer.Writer`; neither of those depends on this module. Each
function takes the parts it needs explicitly; :class:`~megacontext.store.local.LocalStore`
exposes them as methods. :mod:`megacontext.store.repair` fixes what :func:`verify` finds, using
the checks defined here.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.store.checksums import Scan, SumFile
from megacontext.store.errors import InvalidInputError, NotAStoreError, StorageCorruptionError
from megacontext.store.manifest import (
    BACKUP,
    MANIFEST,
    Replication,
    SegmentEntry,
    read_manifest,
)
from megacontext.store.reader import Reader
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import HEADER_BYTES, file_sha256, segment_seq
from megacontext.store.state import LevelState, StoreState
from megacontext.store.writer import Writer


@dataclass
class Problem:
    """One finding of :meth:`LocalStore.verify`: ``severity`` is ``error`` or ``warning``;
    ``kind`` names the damage (``manifest``, ``sealed``, ``replica``, ``header``,
    ``open-checksum``, ``open-short``, ``open-missing``, ``sums-missing``, ``sums-header``,
    ``torn``, ``limit``, ``invariant``, ``open``); :meth:`LocalStore.repair` fixes each."""

    severity: str
    path: str
    message: str
    kind: str = ""


def info(state: StoreState, reader: Reader) -> dict[str, Any]:
    """See :meth:`megacontext.store.local.LocalStore.info`."""
    manifest = state.manifest
    levels = []
    total_bytes = 0
    for lv in state.levels:
        sealed_bytes = len(lv.sealed) * lv.segment_size
        open_bytes = (HEADER_BYTES + lv.open_count * lv.record_bytes) if lv.fd is not None else 0
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
                "block_records": lv.entry.block_records,
                "damage": lv.damage,
                "bytes": sealed_bytes + open_bytes,
            }
        )
    tokens = state.count(0)
    rep = manifest.replication
    return {
        "path": str(state.root),
        "tree_id": manifest.tree_id,
        "format_version": manifest.format_version,
        "role": manifest.role,
        "generation": manifest.generation,
        "K": state.K,
        "dim": state.dim,
        "gist_dtype": manifest.gist_dtype,
        "fingerprints": {
            "base": manifest.fingerprints.base,
            "tokenizer": manifest.fingerprints.tokenizer,
            "gistnet": manifest.fingerprints.gistnet,
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
        "stats": reader.stats.__dict__.copy(),
    }


def verify(state: StoreState) -> list[Problem]:
    """See :meth:`megacontext.store.local.LocalStore.verify`."""
    root, replicas = state.root, state.replicas
    problems: list[Problem] = []
    verify_manifest_copies(root, problems)
    rep = state.manifest.replication
    keep_local = rep is None or rep.keep_local
    for lv in state.levels:
        for seq, entry in enumerate(lv.sealed):
            path = root / entry.name
            if path.exists() or keep_local:
                status = check_sealed(state, path, entry, lv, seq)
                if status:
                    problems.append(Problem("error", str(path), status, "sealed"))
            if replicas is not None:
                for root_url, copy in replicas.check(entry.name, entry.sha256).items():
                    if copy != "ok":
                        url = replicas.url(root_url, entry.name)
                        problems.append(Problem("error", url, f"replica {copy}", "replica"))
        problems.extend(inspect_open(state, lv).problems())
        if lv.entry.limit is not None:
            problems.append(
                Problem(
                    "warning",
                    str(root / f"L{lv.entry.level}"),
                    f"a truncation to {lv.entry.limit} records was interrupted; the next writer "
                    "finishes it",
                    "limit",
                )
            )
    pairs = (
        zip(state.levels, state.levels[1:], strict=False) if state.manifest.role == "tree" else []
    )
    for lower, upper in pairs:  # derived, and normal while a writer runs: a warning
        if upper.stored > lower.stored // state.K:
            problems.append(
                Problem(
                    "warning",
                    str(root / f"L{upper.entry.level}"),
                    f"{upper.stored} gists but only {lower.stored // state.K} complete nodes "
                    "below (a writer is running, or their children were lost); readers see "
                    "only the complete ones, the next writer drops the others",
                    "invariant",
                )
            )
    return problems


def verify_manifest_copies(root: Path, problems: list[Problem]) -> None:
    """Add a problem for each manifest copy that does not load."""
    for name in (MANIFEST, BACKUP):  # a backup that lags behind is expected, not a problem
        try:
            read_manifest(root, name)
        except (StorageCorruptionError, NotAStoreError) as exc:
            problems.append(Problem("error", str(root / name), str(exc), "manifest"))


def check_sealed(
    state: StoreState, path: Path, entry: SegmentEntry, lv: LevelState, seq: int
) -> str:
    """What is wrong with the local copy of a sealed segment ("" when nothing)."""
    size = lv.segment_size
    if not path.exists():
        return "sealed segment is missing"
    if path.stat().st_size != size:
        return f"sealed segment has {path.stat().st_size} bytes, expected {size}"
    try:
        state.check_header(path.read_bytes()[:HEADER_BYTES], lv, seq, path)
    except StorageCorruptionError as exc:
        return str(exc)
    if file_sha256(path) != entry.sha256:
        return "sealed segment fails its sha256 check"
    return ""


@dataclass
class OpenCheck:
    """What the files of a level's open segment say, read afresh (for verify and repair).

    Record indices in ``scan`` are within the segment; ``first`` is the level index of its
    first record.
    """

    level: int
    path: Path
    sums_path: Path
    first: int
    derivable: bool
    exists: bool = False
    size: int = 0
    header_error: str = ""
    version: int = 0
    sums_error: str = ""  # "missing", or why its header is bad
    scan: Scan | None = None
    orphan_durable: int = 0  # no segment file, but its checksum file says this many were flushed

    @property
    def what(self) -> str:
        return "derived records (recomputable)" if self.derivable else "records"

    def problems(self) -> list[Problem]:
        """The findings, as :class:`Problem` s."""
        path, out = str(self.path), []
        if not self.exists:
            if self.orphan_durable:
                out.append(
                    Problem(
                        "error",
                        path,
                        f"open segment is missing, but its checksum file says "
                        f"{self.orphan_durable} {self.what} were flushed to it",
                        "open-missing",
                    )
                )
            return out
        if self.header_error:
            out.append(Problem("error", path, self.header_error, "header"))
        if self.sums_error == "missing":
            out.append(
                Problem(
                    "error",
                    str(self.sums_path),
                    f"checksum file is missing: the {self.what} of {path} cannot be checked",
                    "sums-missing",
                )
            )
        elif self.sums_error:
            out.append(Problem("error", str(self.sums_path), self.sums_error, "sums-header"))
        if self.scan is not None:
            out.extend(self._scan_problems(self.scan))
        return out

    def _scan_problems(self, scan: Scan) -> list[Problem]:
        path, out = str(self.path), []
        for lo, hi in scan.bad:
            rng = f"[{self.first + lo}, {self.first + hi})"
            if lo >= scan.durable:
                out.append(
                    Problem(
                        "warning",
                        path,
                        f"records {rng} past the last flush have no valid checksum (a torn "
                        "write); the next writer cuts them",
                        "torn",
                    )
                )
            elif hi > scan.data_records:
                out.append(
                    Problem(
                        "error",
                        path,
                        f"{self.what} {rng} of level {self.level} were flushed but the file "
                        f"is shorter than its checksums say (it holds {scan.data_records} whole "
                        "records; was it cut by another program?)",
                        "open-short",
                    )
                )
            else:
                out.append(
                    Problem(
                        "error",
                        path,
                        f"{self.what} {rng} of level {self.level} fail their CRC32C checksums",
                        "open-checksum",
                    )
                )
        unchecked = scan.data_records - min(scan.extent, scan.data_records)
        if unchecked or scan.torn_bytes:
            out.append(
                Problem(
                    "warning",
                    path,
                    f"torn tail ({unchecked} record(s) without a checksum, {scan.torn_bytes} "
                    "byte(s) of a partial record); the next writer cuts it",
                    "torn",
                )
            )
        return out


def inspect_open(state: StoreState, lv: LevelState) -> OpenCheck:
    """Read the open segment of ``lv`` and its checksum file from disk and check every
    record (see :class:`OpenCheck`)."""
    seq = len(lv.sealed)
    check = OpenCheck(
        lv.entry.level,
        state.segment_path(lv, seq),
        state.sums_path(lv, seq),
        seq * lv.capacity,
        state.derivable(lv.entry.level),
    )
    layout = state.sums_layout(lv, seq)
    flushed = 0
    if check.sums_path.exists():
        with contextlib.suppress(OSError, StorageCorruptionError):
            sums = SumFile.open(check.sums_path, layout, False, state.fix())
            flushed = sums.durable
            sums.close()
    if not check.path.exists():
        check.orphan_durable = flushed
        return check
    check.exists = True
    check.size = check.path.stat().st_size
    if (
        check.size < HEADER_BYTES + lv.record_bytes
        and not state.header_ok(check.path, lv, seq)
        and not flushed
    ):
        return check  # torn while its header was written; the next writer removes it
    with open(check.path, "rb") as handle:
        try:
            check.version = state.check_header(
                handle.read(HEADER_BYTES), lv, seq, check.path
            ).version
        except StorageCorruptionError as exc:
            check.header_error = str(exc)
            check.version = 2 if check.sums_path.exists() else state.manifest.format_version
        if check.version == 1:
            records, torn = divmod(check.size - HEADER_BYTES, lv.record_bytes)
            check.scan = Scan(records, torn, records, records, records)
            return check
        try:
            sums = SumFile.open(check.sums_path, layout, False, state.fix())
        except FileNotFoundError:
            check.sums_error = "missing"
            return check
        except StorageCorruptionError as exc:
            check.sums_error = str(exc)
            return check
        try:
            check.scan = sums.scan(handle.fileno(), check.size)
        finally:
            sums.close()
    return check


def compact(state: StoreState) -> list[str]:
    """See :meth:`megacontext.store.local.LocalStore.compact`."""
    state.check_open(write=True)
    removed: list[str] = []
    with state.lock:
        keep = {lv.entry.level: len(lv.sealed) for lv in state.levels}
        for path in sorted(state.root.iterdir()):
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
                    seq = segment_seq(seg)
                    # a sealed segment's checksum file only served readers whose snapshot had it
                    # open (compaction needs no readers): its sha256 covers it now
                    sealed_sums = seg.suffix == ".sum" and seq is not None and seq < keep[level]
                    if seq is None or seq > keep[level] or sealed_sums:
                        seg.unlink()
                        removed.append(str(seg))
        if state.replicas is not None:
            names = [e.name for lv in state.levels for e in lv.sealed]
            removed.extend(state.replicas.remove_strays(names))
    return removed


def rebalance(
    state: StoreState, reader: Reader, writer: Writer, roots: list[str]
) -> dict[str, int]:
    """See :meth:`megacontext.store.local.LocalStore.rebalance`."""
    state.check_open(write=True)
    rep = state.manifest.replication
    if rep is None or state.replicas is None:
        raise InvalidInputError(f"{state.root} has no replication configured")
    new = Replication(list(roots), rep.replicas, rep.write_quorum, rep.keep_local)
    ReplicaSet.check_config(new)
    target = ReplicaSet(new, state.manifest.tree_id)
    copied = removed = 0
    with state.lock:
        for lv in state.levels:
            for seq, entry in enumerate(lv.sealed):
                want = target.placement(entry.name)
                missing = [r for r in want if r not in entry.replicas]
                if missing:
                    data = bytes(reader.sealed_buffer(lv, seq)) if lv.segment_size else b""
                    for root_url in missing:
                        target.write(root_url, entry.name, data)
                        copied += 1
                entry.replicas = list(want)
        state.manifest.replication = new
        state.manifest_dirty = True
        writer.flush()
        state.replicas = target
        removed = len(target.remove_strays([e.name for lv in state.levels for e in lv.sealed]))
    return {"copied": copied, "removed": removed}
