"""Inspection and maintenance of an open store: info, verify, repair, compact, rebalance.

These operations are rare, whole-store passes rather than part of the append or read path, so
they live apart from both and use them: repair and rebalance fetch bytes through the
:class:`~megacontext.store.reader.Reader` and commit through the
:class:`~megacontext.store.writer.Writer`; neither of those depends on this module. Each
function takes the parts it needs explicitly; :class:`~megacontext.store.local.LocalStore`
exposes them as methods.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megacontext.core.tree import GistBatch
from megacontext.store.errors import InvalidInputError, NotAStoreError, StorageCorruptionError
from megacontext.store.manifest import (
    BACKUP,
    MANIFEST,
    Replication,
    SegmentEntry,
    read_manifest,
    write_manifest,
)
from megacontext.store.reader import Reader, replace_local
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import HEADER_BYTES, file_sha256, segment_name
from megacontext.store.state import LevelState, StoreState
from megacontext.store.writer import Writer

if TYPE_CHECKING:
    from megacontext.core.tree import Gister


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


def verify(state: StoreState) -> list[Problem]:  # noqa: C901  (one check per kind of damage, in the order a reader meets them)
    """See :meth:`megacontext.store.local.LocalStore.verify`."""
    root, replicas = state.root, state.replicas
    problems: list[Problem] = []
    _verify_manifest_copies(root, problems)
    for lv in state.levels:
        for seq, entry in enumerate(lv.sealed):
            path = root / entry.name
            keep_local = state.manifest.replication is None or state.manifest.replication.keep_local
            if path.exists() or keep_local:
                status = _check_local(state, path, entry, lv, seq)
                if status:
                    problems.append(Problem("error", str(path), status))
            if replicas is not None:
                for root_url, copy in replicas.check(entry.name, entry.sha256).items():
                    if copy != "ok":
                        url = replicas.url(root_url, entry.name)
                        problems.append(Problem("error", url, f"replica {copy}"))
        tail = root / segment_name(lv.entry.level, len(lv.sealed))
        if tail.exists() and tail.stat().st_size >= HEADER_BYTES:
            try:
                state.check_header(tail.read_bytes()[:HEADER_BYTES], lv, len(lv.sealed), tail)
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
        zip(state.levels, state.levels[1:], strict=False) if state.manifest.role == "tree" else []
    )
    for lower, upper in pairs:
        if upper.count > lower.count // state.K:
            problems.append(
                Problem(
                    "error",
                    str(root / f"L{upper.entry.level}"),
                    f"{upper.count} gists but only {lower.count // state.K} complete nodes",
                )
            )
    return problems


def _verify_manifest_copies(root: Path, problems: list[Problem]) -> None:
    for name in (MANIFEST, BACKUP):  # a backup that lags behind is expected, not a problem
        try:
            read_manifest(root, name)
        except (StorageCorruptionError, NotAStoreError) as exc:
            problems.append(Problem("error", str(root / name), str(exc)))


def _check_local(
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


def repair(
    state: StoreState, reader: Reader, writer: Writer, gister: Gister | None = None
) -> RepairReport:
    """See :meth:`megacontext.store.local.LocalStore.repair`."""
    state.check_open(write=True)
    root, replicas = state.root, state.replicas
    report = RepairReport()
    writer.flush()
    with state.lock:
        for name in (MANIFEST, BACKUP):
            try:
                read_manifest(root, name)
            except (StorageCorruptionError, NotAStoreError):
                state.manifest.generation -= 1  # write_manifest bumps it back
                write_manifest(root, state.manifest, backup=True)
                report.repaired.append(str(root / name))
        keep_local = state.manifest.replication is None or state.manifest.replication.keep_local
        for lv in state.levels:
            for seq, entry in enumerate(lv.sealed):
                path = root / entry.name
                local_bad = (path.exists() or keep_local) and bool(
                    _check_local(state, path, entry, lv, seq)
                )
                states = replicas.check(entry.name, entry.sha256) if replicas else {}
                bad_roots = [r for r, s in states.items() if s != "ok"]
                if not local_bad and not bad_roots:
                    continue
                good: bytes | None = None
                if not local_bad and path.exists():
                    good = path.read_bytes()
                elif len(bad_roots) < len(states):
                    assert replicas is not None  # states is empty without replicas
                    good, _ = replicas.fetch(entry.name, entry.sha256, lv.segment_size)
                if good is None and gister is not None and lv.entry.level >= 1:
                    good = _regist_segment(state, reader, lv, seq, gister)
                    local_bad = True
                if good is None:
                    report.unrecoverable.append(str(path))
                    continue
                if local_bad:
                    reader.forget(lv.entry.level, seq)
                    replace_local(path, good)
                    report.repaired.append(str(path))
                for root_url in bad_roots:
                    assert replicas is not None
                    replicas.write(root_url, entry.name, good)
                    report.repaired.append(replicas.url(root_url, entry.name))
    writer.flush()  # commits a changed sha256 (re-gisted segments)
    return report


def _regist_segment(
    state: StoreState, reader: Reader, lv: LevelState, seq: int, gister: Gister
) -> bytes | None:
    """Recompute sealed gist segment ``seq`` of ``lv`` from its children, or ``None``."""
    K, dim, level, cap = state.K, state.dim, lv.entry.level, lv.capacity
    if state.manifest.role != "tree":  # a key store's children live in the gist store
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
    data = state.header(lv, seq).pack() + gists.tobytes()
    entry = lv.sealed[seq]
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:  # a non-deterministic gister: record the new contents
        entry.sha256 = digest
        state.manifest_dirty = True
    return data


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
                    seq = int(seg.stem) if seg.stem.isdigit() and seg.suffix == ".seg" else -1
                    if seq > keep[level] or seq < 0:
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
