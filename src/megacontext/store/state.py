"""What the parts of an open :class:`~megacontext.store.local.LocalStore` share (DESIGN §5).

A store is split the LevelDB way: :mod:`~megacontext.store.writer` appends and seals,
:mod:`~megacontext.store.reader` reads and read-repairs, :mod:`~megacontext.store.admin`
inspects and maintains, and :mod:`~megacontext.store.local` opens, locks and closes. They all
work on one :class:`StoreState`, owned by the ``LocalStore`` and handed to each part, so every
piece of shared state has a single home here; state only one part uses stays in that part.

:class:`LevelState` is the in-memory state of one level. Its open-segment fields belong to the
writer, except ``open_view``: the reader maps the open segment lazily, and the writer drops the
map whenever the open segment is cut, replaced or sealed.

The header rules live here too, because the writer (new segments, recovery) and admin (verify,
re-gisting) both check segment files against the manifest; so do the paths and layouts of
segment and checksum files.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megacontext.store.checksums import SumFile, SumsLayout, block_records
from megacontext.store.errors import StorageCorruptionError, StoreError, StorePermissionError
from megacontext.store.manifest import LevelEntry, Manifest, SegmentEntry
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import (
    FORMAT_VERSION,
    HEADER_BYTES,
    SegmentHeader,
    numpy_dtype,
    segment_name,
    sums_name,
)


@dataclass
class LevelState:
    """In-memory state of one level: its manifest entry plus the open segment."""

    entry: LevelEntry
    dtype: np.dtype[np.generic]
    record_bytes: int
    fd: int | None = None  # open segment, when it exists
    open_count: int = 0
    dirty: bool = False
    # The open segment's checksum file (format v2; ``None`` for a v1 open segment, whose
    # records are unchecked until sealed) and its header's format version.
    sums: SumFile | None = None
    version: int = FORMAT_VERSION
    # Why the open segment cannot be appended to or read (a bad header, a lost checksum file,
    # records the durable marker says were flushed that fail their checksum); "" when healthy.
    # ``megacontext store repair`` clears it.
    damage: str = ""
    # A reader's snapshot may cap the count below what the files hold, so that no gist is seen
    # without its children (levels are snapshotted one after the other while a writer runs).
    visible: int | None = None
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

    @classmethod
    def of(cls, entry: LevelEntry) -> LevelState:
        dtype = numpy_dtype(entry.dtype)
        return cls(entry, dtype, dtype.itemsize * entry.width)

    @property
    def sealed(self) -> list[SegmentEntry]:
        return self.entry.segments

    @property
    def capacity(self) -> int:
        return self.entry.capacity

    @property
    def stored(self) -> int:
        """Records in the files (a reader's :attr:`count` may show fewer)."""
        return len(self.entry.segments) * self.entry.capacity + self.open_count

    @property
    def count(self) -> int:
        return self.stored if self.visible is None else min(self.stored, self.visible)

    @property
    def segment_size(self) -> int:
        """Bytes of a full (sealed) segment file of this level."""
        return HEADER_BYTES + self.capacity * self.record_bytes


class StoreState:
    """The manifest, levels, replicas, lock and open/closed flag of one open store.

    ``lock`` serialises appends, flushes, slow reads and maintenance; the reader's fast path
    reads sealed maps without it (see :meth:`megacontext.store.reader.Reader.read`).
    ``manifest_dirty`` says the in-memory manifest has changes the next flush must commit.
    """

    def __init__(self, root: Path, readonly: bool):
        self.root = root
        self.readonly = readonly
        self.lock = threading.RLock()
        self.closed = False
        self.manifest: Manifest
        self.manifest_dirty = False
        self.replicas: ReplicaSet | None = None
        self.levels: list[LevelState] = []
        # Sealed segments whose sha256 is known good in this process: the writer adds the ones
        # it hashed while sealing, the reader the ones it checked on first read.
        self.verified: set[tuple[int, int]] = set()
        # What opening did to finish a crash or drop damaged derived records (for callers).
        self.recovered: list[str] = []

    @property
    def K(self) -> int:
        return self.manifest.K

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return numpy_dtype(self.manifest.gist_dtype)

    def count(self, level: int) -> int:
        return self.levels[level].count if 0 <= level < len(self.levels) else 0

    def derivable(self, level: int) -> bool:
        """Whether ``level``'s records can be recomputed: gists (from the level below) in a
        tree; everything in a key store (from the tree). Tokens cannot."""
        return self.manifest.role == "keys" or level >= 1

    def fix(self) -> str:
        """What to tell a user who met damage."""
        return (
            f"run `megacontext store verify {self.root}` then "
            f"`megacontext store repair {self.root}`"
        )

    def segment_path(self, level: LevelState, seq: int) -> Path:
        return self.root / segment_name(level.entry.level, seq)

    def sums_path(self, level: LevelState, seq: int) -> Path:
        return self.root / sums_name(level.entry.level, seq)

    def sums_layout(self, level: LevelState, seq: int) -> SumsLayout:
        """The checksum file segment ``seq`` of ``level`` must have (format v2)."""
        return SumsLayout(
            level=level.entry.level,
            record_bytes=level.record_bytes,
            # a v1 manifest has none yet: the block size its migration gives it
            block_records=level.entry.block_records
            or block_records(self.manifest.block_bytes, level.record_bytes, level.capacity),
            capacity=level.capacity,
            first_index=seq * level.capacity,
            tree_fingerprint=self.manifest.tree_fingerprint,
        )

    def check_open(self, write: bool) -> None:
        if self.closed:
            raise StoreError(f"the store at {self.root} is closed; open it again")
        if write and self.readonly:
            raise StorePermissionError(
                f"the store at {self.root} was opened read-only; open it without readonly=True "
                "to write"
            )

    # -- segment headers -------------------------------------------------------------------------

    def header(self, level: LevelState, seq: int, version: int = FORMAT_VERSION) -> SegmentHeader:
        """The header segment ``seq`` of ``level`` must carry, according to the manifest."""
        return SegmentHeader(
            level=level.entry.level,
            dtype=level.entry.dtype,
            width=level.entry.width,
            K=self.manifest.K,
            capacity=level.capacity,
            first_index=seq * level.capacity,
            tree_fingerprint=self.manifest.tree_fingerprint,
            version=version,
        )

    def check_header(self, data: bytes, level: LevelState, seq: int, path: Path) -> SegmentHeader:
        """Decode a segment header and check it against the manifest. Its format version may be
        1 or 2: segments sealed under v1 keep their v1 header (sealed bytes never change)."""
        fix = self.fix()
        header = SegmentHeader.unpack(data, path, fix)
        expected = self.header(level, seq, header.version)
        if header != expected:
            raise StorageCorruptionError(
                f"{path}: header {header} does not match the manifest (expected {expected}); {fix}"
            )
        return header

    def header_ok(self, path: Path, level: LevelState, seq: int) -> bool:
        try:
            self.check_header(path.read_bytes()[:HEADER_BYTES], level, seq, path)
        except (StorageCorruptionError, OSError):
            return False
        return True
