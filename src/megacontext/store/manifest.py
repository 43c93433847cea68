"""The manifest: the source of truth of a store (DESIGN §5).

``manifest.json`` holds the format version, the tree's identity and binding fingerprints (D13),
K, the gist width and dtype, and per level the list of *sealed* segments with their sha256 and
replicas. The open (unsealed) segment of a level is the one after its last sealed segment; its
record count is what its checksum file covers (format v2), or its length on disk rounded down to
whole records (format v1). A level may carry a ``limit``: a truncation was committed and its
file operations may be unfinished; the next writer finishes them (see
:mod:`megacontext.store.truncation`).

The JSON carries a ``checksum`` (sha256 of the canonical JSON of every other field), so a flipped
bit is detected. Every update replaces ``manifest.json`` atomically; ``manifest.backup.json`` is
brought up to date when a writer opens or closes the store (and at creation), so
``megacontext store repair`` can recover a corrupt primary from it. A backup that lags behind
loses nothing: segments sealed after it are found (full segment files after the last sealed one)
and sealed again at the next open, and gist levels it lacks are recomputed from the tokens.
:func:`recover_manifest` rewrites a corrupt copy from the other one, for a store that no longer
opens.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megacontext.store.errors import NotAStoreError, StorageCorruptionError
from megacontext.store.segment import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    atomic_write,
    os_error,
)

MANIFEST = "manifest.json"
BACKUP = "manifest.backup.json"
FORMAT = "megacontext-tree"


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """What a tree is bound to (D13): base model, tokenizer and GistNet fingerprints.

    An empty string means "not recorded" and matches anything.
    """

    base: str = ""
    tokenizer: str = ""
    gistnet: str = ""

    def mismatches(self, other: Fingerprints) -> list[str]:
        """Names of the fields where both sides are recorded and differ."""
        out = []
        for name in ("base", "tokenizer", "gistnet"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine and theirs and mine != theirs:
                out.append(name)
        return out


@dataclass(slots=True)
class SegmentEntry:
    """One sealed segment: full (``count == capacity``), immutable, checked by sha256."""

    name: str
    first_index: int
    count: int
    sha256: str
    sealed: bool = True
    replicas: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LevelEntry:
    """One level: record layout, records per segment, and its sealed segments in order."""

    level: int
    dtype: str
    width: int
    capacity: int
    segments: list[SegmentEntry] = field(default_factory=list)
    block_records: int = 0  # records per checksum block of an open segment (0: format v1)
    limit: int | None = None  # records kept by a committed truncation still being applied


@dataclass(slots=True)
class Replication:
    """Where sealed segments are copied: fsspec roots, copies per segment, write quorum."""

    roots: list[str]
    replicas: int
    write_quorum: int
    keep_local: bool = True


@dataclass(slots=True)
class Manifest:
    tree_id: str
    K: int
    dim: int
    gist_dtype: str
    fingerprints: Fingerprints
    levels: list[LevelEntry] = field(default_factory=list)
    replication: Replication | None = None
    metadata_url: str | None = None
    segment_bytes: int = 16 << 20
    segment_records: int | None = None
    role: str = "tree"  # "keys": a key store (D7), whose level 0 is unused
    generation: int = 0
    format_version: int = FORMAT_VERSION
    block_bytes: int = 64 << 10  # target bytes per checksum block of an open segment (v2)

    @property
    def tree_fingerprint(self) -> bytes:
        """The 16 bytes written into every segment header of this tree."""
        return hashlib.sha256(self.tree_id.encode()).digest()[:16]

    # -- (de)serialisation ---------------------------------------------------------------------

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT, **asdict(self)}
        body["checksum"] = _checksum(body)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> Manifest:
        fix = f"run `megacontext store repair {path.parent}`"
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageCorruptionError(
                f"{path}: manifest is not valid JSON ({exc}); {fix}"
            ) from None
        if not isinstance(body, dict) or "checksum" not in body:
            raise StorageCorruptionError(f"{path}: manifest has no checksum; {fix}")
        checksum = body.pop("checksum")
        if _checksum(body) != checksum:
            raise StorageCorruptionError(f"{path}: manifest fails its sha256 checksum; {fix}")
        if body.pop("format", None) != FORMAT:
            raise NotAStoreError(f"{path} is not a MegaContext tree manifest")
        if body.get("format_version") not in READABLE_VERSIONS:
            raise StorageCorruptionError(
                f"{path}: manifest format version {body.get('format_version')} is not supported "
                f"(this version reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade "
                "megacontext"
            )
        try:
            levels = [
                LevelEntry(
                    **{k: v for k, v in lv.items() if k != "segments"},
                    segments=[SegmentEntry(**s) for s in lv["segments"]],
                )
                for lv in body.pop("levels")
            ]
            rep = body.pop("replication")
            return cls(
                **{k: v for k, v in body.items() if k != "fingerprints"},
                fingerprints=Fingerprints(**body["fingerprints"]),
                levels=levels,
                replication=Replication(**rep) if rep else None,
            )
        except (KeyError, TypeError) as exc:
            raise StorageCorruptionError(f"{path}: manifest is malformed ({exc}); {fix}") from None


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def write_manifest(root: Path, manifest: Manifest, backup: bool = False) -> None:
    """Bump the generation and replace ``manifest.json`` atomically (and the backup if asked)."""
    manifest.generation += 1
    data = manifest.to_json()
    atomic_write(root / MANIFEST, data)
    if backup:
        atomic_write(root / BACKUP, data)


def sync_backup(root: Path) -> None:
    """Make ``manifest.backup.json`` a copy of ``manifest.json`` (when it is not one already)."""
    primary = (root / MANIFEST).read_bytes()
    backup = root / BACKUP
    if not backup.exists() or backup.read_bytes() != primary:
        atomic_write(backup, primary)


def read_manifest(root: Path, name: str = MANIFEST) -> Manifest:
    """Load and check one manifest copy of the store at ``root``."""
    path = root / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotAStoreError(
            f"{root} has no {name}: it is not a MegaContext store (create one with "
            "LocalStore.create)"
        ) from None
    except OSError as exc:
        raise os_error(exc, path, "reading") from exc
    return Manifest.from_json(data, path)


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
