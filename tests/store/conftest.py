"""Shared helpers of the storage tests: a deterministic gister, a reference token stream, and
ways to end a writer the way a crash or a power loss would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from megacontext.store import LocalStore
from megacontext.store.checksums import SLOT, SLOTS, read_marker
from megacontext.store.segment import HEADER_BYTES

DIM = 4
K = 4


class MeanGister:
    """Deterministic, cheap gister: level 1 = (mean, min, max, first) of ids; above = mean."""

    dim = DIM

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        x = inputs.astype(np.float32)
        if level == 1:
            return np.stack([x.mean(1), x.min(1), x.max(1), x[:, 0]], axis=1)
        return x.mean(axis=1)


def stream(start: int, stop: int) -> npt.NDArray[np.uint32]:
    """Token ids of positions [start, stop) of an endless reference stream."""
    positions = np.arange(start, stop, dtype=np.uint64)
    return ((positions * np.uint64(2654435761)) % np.uint64(50_000)).astype(np.uint32)


@pytest.fixture
def gister() -> MeanGister:
    return MeanGister()


def crash(store: LocalStore) -> None:
    """End a writer as a killed process would: nothing more is flushed or committed (what was
    written stays in the OS page cache, so in the files), the lock goes with the process."""
    store._close_files()
    store._release_lock()
    store._state.closed = True


def lose_unflushed(path: Path, rng: np.random.Generator) -> None:
    """After :func:`crash`, do what a power loss may do to each level's open segment: cut the
    segment file anywhere past its last flush, and lose checksum slots of blocks written after
    it (the slots of the block holding the flush point are left: one of them is protected)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for level in manifest["levels"]:  # sealed segments were fsynced before the commit
        sealed = len(level["segments"])
        sums_path = path / f"L{level['level']}" / f"{sealed:08d}.sum"
        segment = sums_path.with_suffix(".seg")
        if not segment.exists() or not sums_path.exists():
            continue
        fd = os.open(sums_path, os.O_RDWR)
        try:
            durable, _ = read_marker(fd)
            head = os.pread(fd, 64, 0)
            record_bytes = int.from_bytes(head[8:12], "little")
            block = int.from_bytes(head[12:16], "little")
            size = segment.stat().st_size
            floor = HEADER_BYTES + durable * record_bytes
            if size > floor:
                os.truncate(segment, int(rng.integers(floor, size + 1)))
            blocks = (os.fstat(fd).st_size - SLOTS) // (2 * SLOT)
            for b in range(durable // block + 1, blocks):
                if rng.random() < 0.5:
                    os.pwrite(fd, bytes(2 * SLOT), SLOTS + 2 * SLOT * b)
        finally:
            os.close(fd)
