"""Every kind of damage verify reports, repair fixes: one table, one test per row.

The tree: 150 tokens, 32 records per segment, checksum blocks of 4 tokens / 2 gists:
L0 = four sealed segments [0, 128) and an open one [128, 150); L1 = one sealed [0, 32) and an
open one [32, 37); L2 = 9 gists, L3 = 2, both open.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.errors import StorageCorruptionError
from megacontext.store import LocalStore

from .conftest import DIM, K, MeanGister, stream

TOKENS = 150


def flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x08
    path.write_bytes(bytes(data))


def cut(path: Path, nbytes: int) -> None:
    os.chmod(path, 0o644)
    os.truncate(path, path.stat().st_size - nbytes)


@dataclass(frozen=True)
class Damage:
    name: str
    do: Callable[[Path], None]
    kinds: list[str]  # what verify reports (errors)
    tokens: int  # tokens the store keeps after repair
    lost: bool = False  # tokens reported lost (repair exits non-zero); their gists go too
    dropped: bool = False  # derived records dropped (recomputed by the tree)


def seg(level: int, seq: int, suffix: str = "seg") -> str:
    return f"L{level}/{seq:08d}.{suffix}"


TABLE = [
    Damage(
        "bit in the open token segment",
        lambda p: flip(p / seg(0, 4), 64 + 4 * 13),  # token 141, block [140, 144)
        ["open-checksum"],
        140,
        lost=True,
    ),
    Damage(
        "bit in the open gist segment",
        lambda p: flip(p / seg(1, 1), 64 + 8 * 1 + 3),  # gist 33, block [32, 34)
        ["open-checksum"],
        TOKENS,
        dropped=True,
    ),
    Damage(
        "bit in a sealed token segment",
        lambda p: flip(p / seg(0, 1), 64 + 5),
        ["sealed"],
        32,
        lost=True,
    ),
    Damage(
        "bit in a sealed gist segment",
        lambda p: flip(p / seg(1, 0), 64 + 40),
        ["sealed"],
        TOKENS,
        dropped=True,
    ),
    Damage("bit in a sealed segment's header", lambda p: flip(p / seg(0, 2), 20), ["sealed"], 150),
    Damage("bit in the open segment's header", lambda p: flip(p / seg(0, 4), 26), ["header"], 150),
    Damage(
        "bit in a checksum file's header",
        lambda p: flip(p / seg(0, 4, "sum"), 9),
        ["sums-header"],
        TOKENS,
    ),
    Damage(
        "bytes cut off the open token segment",
        lambda p: cut(p / seg(0, 4), 10),  # 19.5 of 22 tokens left: block [144, 148) is short
        ["open-short"],
        144,
        lost=True,
    ),
    Damage(
        "100 bytes cut off the open gist segment (the user's reproduction)",
        lambda p: cut(p / seg(1, 1), 100),
        ["header", "open-short"],
        TOKENS,
        dropped=True,
    ),
    Damage(
        "bytes cut off the open token segment down into its header",
        lambda p: cut(p / seg(0, 4), 100),  # 52 of 152 bytes left
        ["header", "open-short"],
        128,
        lost=True,
    ),
    Damage(
        "a sealed token segment cut short",
        lambda p: cut(p / seg(0, 2), 7),
        ["sealed"],
        64,
        lost=True,
    ),
    Damage(
        "a sealed gist segment file deleted",
        lambda p: (p / seg(1, 0)).unlink(),
        ["sealed"],
        TOKENS,
        dropped=True,
    ),
    Damage(
        "the open token segment file deleted",
        lambda p: (p / seg(0, 4)).unlink(),
        ["open-missing"],
        128,
        lost=True,
    ),
    Damage(
        "the open segment's checksum file deleted",
        lambda p: (p / seg(0, 4, "sum")).unlink(),
        ["sums-missing"],
        TOKENS,
    ),
    Damage("the manifest corrupted", lambda p: flip(p / "manifest.json", 50), ["manifest"], 150),
    Damage(
        "the manifest backup corrupted",
        lambda p: flip(p / "manifest.backup.json", 50),
        ["manifest"],
        TOKENS,
    ),
]


def build(path: Path) -> None:
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=32, block_bytes=16)
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(0, TOKENS))
    tree.close()


@pytest.mark.parametrize("damage", TABLE, ids=[d.name for d in TABLE])
def test_verify_reports_repair_fixes(tmp_path: Path, damage: Damage) -> None:
    path = tmp_path / "t"
    build(path)
    damage.do(path)

    problems = LocalStore.verify_path(path)
    assert sorted({p.kind for p in problems if p.severity == "error"}) == sorted(damage.kinds)
    assert {p.kind for p in problems if p.severity == "warning"} <= {"invariant", "torn"}

    report = LocalStore.repair_path(path)
    assert not report.unrecoverable
    assert report.ok == (not damage.lost)
    assert bool(report.lost) == damage.lost
    assert bool(report.dropped) == (damage.dropped or damage.lost)
    if damage.lost:
        assert report.lost[0].startswith(f"level 0 records [{damage.tokens}, {TOKENS}) lost")
        if "nothing is left" not in report.lost[0]:
            assert any(Path(report.salvage).rglob("*.seg"))  # the bytes were kept
    assert report.repaired or report.lost or report.dropped or report.unverified

    assert LocalStore.verify_path(path) == []  # warnings included
    tree = MegaContextTree(LocalStore.open(path), MeanGister(), K=K)  # re-gists what was dropped
    reference = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    reference.append(stream(0, damage.tokens))
    assert tree.num_tokens == damage.tokens
    for level in range(reference.num_levels + 1):
        n = reference.count(level)
        assert tree.count(level) == n, f"level {level}"
        assert np.array_equal(tree.backend.read(level, 0, n), reference.backend.read(level, 0, n))
    tree.append(stream(damage.tokens, TOKENS + 40))  # and it grows again
    tree.close()
    assert LocalStore.verify_path(path) == []


def test_both_manifests_corrupt_is_reported_as_unrecoverable(tmp_path: Path) -> None:
    path = tmp_path / "t"
    build(path)
    flip(path / "manifest.json", 50)
    flip(path / "manifest.backup.json", 50)
    problems = LocalStore.verify_path(path)
    assert [p.kind for p in problems] == ["manifest", "manifest"]
    report = LocalStore.repair_path(path)
    assert not report.ok
    assert len(report.unrecoverable) == 1 and "restore the directory" in report.unrecoverable[0]
    with pytest.raises(StorageCorruptionError, match="manifest"):
        LocalStore.open(path)


def test_repair_drops_nothing_a_replica_can_restore(tmp_path: Path) -> None:
    from megacontext.store import Replication

    path = tmp_path / "t"
    roots = [f"file://{tmp_path}/r{i}" for i in range(2)]
    store = LocalStore.create(
        path,
        dim=DIM,
        K=K,
        segment_records=32,
        replication=Replication(roots, replicas=2, write_quorum=2),
    )
    store.append(0, stream(0, TOKENS))
    store.close()
    original = (path / seg(0, 1)).read_bytes()
    flip(path / seg(0, 1), 64 + 5)
    report = LocalStore.repair_path(path)
    assert report.ok and not report.lost and report.repaired == [str(path / seg(0, 1))]
    assert (path / seg(0, 1)).read_bytes() == original


def test_a_gister_restores_a_sealed_gist_segment_instead_of_dropping_it(tmp_path: Path) -> None:
    path = tmp_path / "t"
    build(path)
    original = (path / seg(1, 0)).read_bytes()
    flip(path / seg(1, 0), 64 + 40)
    report = LocalStore.repair_path(path, gister=MeanGister())
    assert report.ok and not report.dropped and report.repaired == [str(path / seg(1, 0))]
    assert (path / seg(1, 0)).read_bytes() == original
