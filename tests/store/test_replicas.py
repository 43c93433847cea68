"""Sharding and replication of sealed segments over fsspec roots (file:// and memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from megacontext.core.tree import MegaContextTree
from megacontext.store import LocalStore, ReplicaError, Replication
from megacontext.store.errors import InvalidInputError

from .conftest import DIM, K, MeanGister, stream


def _tree(path: Path, replication: Replication, tokens: int = 200) -> LocalStore:
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=16, replication=replication)
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(0, tokens))
    tree.flush()
    return store


def _copies(store: LocalStore, name: str) -> dict[str, bytes | None]:
    assert store.replicas is not None
    return {root: store.replicas.read(root, name) for root in store.replicas.roots}


def _sealed(store: LocalStore) -> list[str]:
    return [e.name for lv in store.manifest.levels for e in lv.segments]


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_r3_lose_one_corrupt_another_reads_stay_correct_and_repair_restores(
    tmp_path: Path, scheme: str
) -> None:
    if scheme == "file":
        roots = [f"file://{tmp_path}/root{i}" for i in range(3)]
    else:
        roots = [f"memory://mc-{uuid.uuid4().hex}/root{i}" for i in range(3)]
    config = Replication(roots=roots, replicas=3, write_quorum=2, keep_local=False)
    store = _tree(tmp_path / "t", config)
    names = _sealed(store)
    assert names and not any((tmp_path / "t" / n).exists() for n in names)  # only on the roots
    good = {n: _copies(store, n)[roots[0]] for n in names}
    store.close()

    rng = np.random.default_rng(3)
    for name in names:  # per segment: delete one copy and flip a bit in another
        lost, bad = rng.choice(3, size=2, replace=False)
        fs, path = fsspec.core.url_to_fs(f"{roots[lost]}/{store.manifest.tree_id}/{name}")
        fs.rm_file(path)
        fs, path = fsspec.core.url_to_fs(f"{roots[bad]}/{store.manifest.tree_id}/{name}")
        data = bytearray(fs.cat_file(path))
        data[int(rng.integers(0, len(data)))] ^= 0x04
        fs.pipe_file(path, bytes(data))

    reader = LocalStore.open(tmp_path / "t", readonly=True)
    assert any(p.severity == "error" for p in reader.verify())
    assert np.array_equal(reader.read(0, 0, 200), stream(0, 200))  # every read correct
    tree = MegaContextTree(reader, MeanGister(), K=K)
    for level in range(1, tree.num_levels + 1):
        assert tree.count(level) == 200 // K**level
    assert reader.stats.replica_reads > 0
    reader.close()

    store = LocalStore.open(tmp_path / "t")
    report = store.repair()
    assert len(report.repaired) == 2 * len(names) and not report.unrecoverable
    for name in names:
        copies = _copies(store, name)
        assert list(copies.values()) == [good[name]] * 3  # all three byte-identical
    assert store.verify() == []
    store.close()


def test_read_repair_fixes_the_copies_it_passes(tmp_path: Path) -> None:
    roots = [f"file://{tmp_path}/r{i}" for i in range(3)]
    store = _tree(tmp_path / "t", Replication(roots, replicas=3, write_quorum=3, keep_local=True))
    name = _sealed(store)[0]
    store.close()
    (tmp_path / "t" / name).unlink()  # the local copy
    assert store.replicas is not None
    first = store.replicas.placement(name)[0]
    fs, path = fsspec.core.url_to_fs(f"{first}/{store.manifest.tree_id}/{name}")
    fs.rm_file(path)  # and the first replica tried
    store = LocalStore.open(tmp_path / "t")
    assert np.array_equal(store.read(0, 0, 16), stream(0, 16))
    assert store.stats.read_repairs == 2  # the replica and the local copy
    assert (tmp_path / "t" / name).exists()
    assert store.verify() == []
    store.close()


def test_placement_is_deterministic_and_spread(tmp_path: Path) -> None:
    roots = [f"memory://mc-{uuid.uuid4().hex}/s{i}" for i in range(5)]
    store = _tree(tmp_path / "t", Replication(roots, replicas=2, write_quorum=2), tokens=600)
    assert store.replicas is not None
    per_root = dict.fromkeys(roots, 0)
    for lv in store.manifest.levels:
        for entry in lv.segments:
            assert entry.replicas == store.replicas.placement(entry.name)
            assert len(set(entry.replicas)) == 2
            for root in entry.replicas:
                per_root[root] += 1
    assert all(count > 0 for count in per_root.values())  # every shard holds some segments
    again = LocalStore.open(tmp_path / "t", readonly=True)
    assert again.replicas is not None
    assert [again.replicas.placement(n) for n in _sealed(store)] == [
        store.replicas.placement(n) for n in _sealed(store)
    ]
    again.close()
    store.close()


def test_adding_a_root_moves_only_what_its_placement_changes(tmp_path: Path) -> None:
    base = f"memory://mc-{uuid.uuid4().hex}"
    roots = [f"{base}/s{i}" for i in range(4)]
    store = _tree(tmp_path / "t", Replication(roots, replicas=2, write_quorum=2), tokens=600)
    names = _sealed(store)
    before = {n: list(store.manifest.levels[0].segments[0].replicas) for n in names[:1]}
    assert before
    old = {
        n: set(e.replicas) for lv in store.manifest.levels for e in lv.segments for n in [e.name]
    }
    new_root = f"{base}/s4"
    moved = store.rebalance([*roots, new_root])
    assert store.replicas is not None
    expected = sum(new_root in store.replicas.placement(n) for n in names)
    assert 0 < moved["copied"] == expected < len(names)
    assert moved["removed"] == expected  # each copy to the new root retires one old copy
    for n in names:
        placed = store.replicas.placement(n)
        assert {r for r, s in store.replicas.check(n, _sha(store, n)).items() if s == "ok"} == set(
            placed
        )
        assert len(set(placed) - old[n]) <= 1
    store.close()
    reopened = LocalStore.open(tmp_path / "t")
    assert reopened.verify() == [] and np.array_equal(reopened.read(0, 0, 600), stream(0, 600))
    reopened.close()


def _sha(store: LocalStore, name: str) -> str:
    return next(e.sha256 for lv in store.manifest.levels for e in lv.segments if e.name == name)


def test_write_quorum(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a root directory should be")
    roots = [f"file://{tmp_path}/a", f"file://{tmp_path}/b", f"file://{blocker}"]
    store = _tree(tmp_path / "t", Replication(roots, replicas=3, write_quorum=2), tokens=40)
    for lv in store.manifest.levels:
        for entry in lv.segments:
            assert len(entry.replicas) == 2 and f"file://{blocker}" not in entry.replicas
    assert any("missing" in p.message for p in store.verify())
    store.close()
    strict = LocalStore.create(
        tmp_path / "u",
        dim=DIM,
        K=K,
        segment_records=16,
        replication=Replication(roots, replicas=3, write_quorum=3),
    )
    with pytest.raises(ReplicaError, match="write quorum is 3"):
        strict.append(0, stream(0, 16))
    assert strict.count(0) == 16  # stored locally; sealed once the roots work again
    strict.close()


@pytest.mark.parametrize(
    ("roots", "replicas", "quorum"),
    [
        ([], 1, 1),
        (["memory://a"], 2, 1),
        (["memory://a"], 1, 2),
        (["memory://a", "memory://a/"], 1, 1),
    ],
)
def test_bad_replication_settings(
    tmp_path: Path, roots: list[str], replicas: int, quorum: int
) -> None:
    with pytest.raises(InvalidInputError):
        LocalStore.create(tmp_path / "t", dim=DIM, replication=Replication(roots, replicas, quorum))
