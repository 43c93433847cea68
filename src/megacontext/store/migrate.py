"""Migration of a store from format v1 to v2, done by its next writer (DESIGN §5).

Format v2 adds a checksum file to every open segment (:mod:`megacontext.store.checksums`);
everything else is v1's layout. Migrating a v1 store therefore:

1. gives each level a checksum block size (``block_records``, from the manifest's
   ``block_bytes``);
2. after the writer's usual recovery (torn tails cut, full segments sealed), gives every open
   segment a checksum file covering its records as they are — v1 had no checksum for them, so
   they are checksummed, not verified — and rewrites its header's version field to 2 (checksum
   file first, each fsynced, so a crash in between is migrated again at the next open);
3. commits the manifest with ``format_version`` 2.

Sealed segments are left as they are, v1 header included: they are covered by the sha256 in the
manifest, their bytes never change (readers may have them mapped, replicas hold copies), and a
segment's header version says which format wrote it. A read-only open of a v1 store reads it as
v1 and migrates nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from megacontext.store.checksums import SumFile, block_records
from megacontext.store.segment import (
    FORMAT_VERSION,
    fsync_dir,
    numpy_dtype,
    os_error,
    write_all,
)
from megacontext.store.state import StoreState


@dataclass
class MigrationReport:
    """What :func:`migrate` did: versions, and per level its records and what was checksummed."""

    path: str
    from_version: int
    to_version: int
    levels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def migrated(self) -> bool:
        return self.from_version != self.to_version

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "migrated": self.migrated,
            "levels": self.levels,
        }

    def summary(self) -> str:
        if not self.migrated:
            return f"{self.path} is already at storage format v{self.to_version}; nothing to do"
        checksummed = sum(lv["checksummed_records"] for lv in self.levels)
        sealed = sum(lv["sealed_segments"] for lv in self.levels)
        return (
            f"migrated {self.path} from storage format v{self.from_version} to "
            f"v{self.to_version}: {len(self.levels)} level(s), {checksummed} open-segment "
            f"record(s) checksummed, {sealed} sealed segment(s) kept as they are (their sha256 "
            "already covers them)"
        )


def prepare(state: StoreState) -> int:
    """Before the levels are opened: give every level of a v1 manifest its checksum block size.
    Returns the manifest's format version as found."""
    manifest = state.manifest
    found = manifest.format_version
    for entry in manifest.levels:
        if not entry.block_records:
            record_bytes = numpy_dtype(entry.dtype).itemsize * entry.width
            entry.block_records = block_records(manifest.block_bytes, record_bytes, entry.capacity)
            state.manifest_dirty = True
    return found


def upgrade_open_segments(state: StoreState) -> dict[int, int]:
    """Give every healthy v1 open segment a checksum file and a v2 header (step 2 of the module
    docstring). Returns ``{level: records checksummed}``."""
    done: dict[int, int] = {}
    for lv in state.levels:
        if lv.fd is None or lv.version != 1 or lv.damage:
            continue
        seq = len(lv.sealed)
        spath = state.sums_path(lv, seq)
        sums = SumFile.create(spath, state.sums_layout(lv, seq))
        sums.rebuild(lv.fd, lv.open_count)  # fsynced
        fsync_dir(spath.parent)
        write_all(lv.fd, state.header(lv, seq, FORMAT_VERSION).pack(), 0, lv.open_path)
        try:
            os.fsync(lv.fd)
        except OSError as exc:
            raise os_error(exc, lv.open_path, "migrating") from exc
        lv.sums, lv.version, lv.open_view = sums, FORMAT_VERSION, None
        done[lv.entry.level] = lv.open_count
    return done


def finish(state: StoreState, found: int, upgraded: dict[int, int]) -> MigrationReport | None:
    """Set the manifest's format version (committed by the next flush) and report, when the
    store was at an older version."""
    if found >= FORMAT_VERSION and not upgraded:
        return None
    state.manifest.format_version = FORMAT_VERSION
    state.manifest_dirty = True
    report = MigrationReport(str(state.root), found, FORMAT_VERSION)
    for lv in state.levels:
        report.levels.append(
            {
                "level": lv.entry.level,
                "records": lv.count,
                "sealed_segments": len(lv.sealed),
                "checksummed_records": upgraded.get(lv.entry.level, 0),
                "block_records": lv.entry.block_records,
            }
        )
    return report
