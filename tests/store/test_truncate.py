"""``LocalStore.truncate``: cut a level back (and the gists above it), crash-safely."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.errors import InvalidInputError
from megacontext.store import LocalStore, StorePermissionError, truncation

from .conftest import DIM, K, MeanGister, crash, stream

TOKENS = 150


def build(path: Path) -> LocalStore:
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=32, block_bytes=16)
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(0, TOKENS))
    tree.flush()
    return store


def assert_tree_of(store: LocalStore, tokens: int) -> None:
    reference = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    reference.append(stream(0, tokens))
    for level in range(reference.num_levels + 1):
        n = reference.count(level)
        assert store.count(level) == n, f"level {level}"
        assert np.array_equal(store.read(level, 0, n), reference.backend.read(level, 0, n))


@pytest.mark.parametrize("keep", [0, 3, 50, 64, 128, 140, 149, TOKENS])
def test_truncate_cuts_the_gists_above_and_the_tree_grows_again(tmp_path: Path, keep: int) -> None:
    store = build(tmp_path / "t")
    cuts = store.truncate(0, keep)
    assert [(c.level, c.old, c.new) for c in cuts][:1] == (
        [(0, TOKENS, keep)] if keep < 150 else []
    )
    expected = [keep]
    while expected[-1] >= K:
        expected.append(expected[-1] // K)
    for level, n in enumerate(expected):
        assert store.count(level) == n
    assert all(store.count(level) == 0 for level in range(len(expected), store.num_levels))
    assert store.verify() == []
    assert np.array_equal(store.read(0, 0, keep), stream(0, keep))
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(keep, 300))
    assert_tree_of(store, 300)
    tree.close()
    with LocalStore.open(tmp_path / "t", readonly=True) as reader:
        assert reader.verify() == []
        assert_tree_of(reader, 300)


def test_truncate_a_gist_level_only_cuts_it_and_above(tmp_path: Path) -> None:
    store = build(tmp_path / "t")
    cuts = store.truncate(1, 20)
    assert [(c.level, c.new) for c in cuts] == [(1, 20), (2, 5), (3, 1)]
    assert store.count(0) == TOKENS and store.verify() == []
    MegaContextTree(store, MeanGister(), K=K).close()  # catch-up re-gists the cut nodes
    with LocalStore.open(tmp_path / "t", readonly=True) as reader:
        assert_tree_of(reader, TOKENS)


def test_a_key_store_is_cut_one_level_at_a_time(tmp_path: Path) -> None:
    keys = LocalStore.create(tmp_path / "k", dim=3, K=K, segment_records=8, role="keys")
    keys.append(0, np.zeros(0, np.uint32))
    keys.append(1, np.ones((40, 3), np.float32))
    keys.append(2, np.ones((10, 3), np.float32))
    assert [(c.level, c.new) for c in keys.truncate(1, 13)] == [(1, 13)]
    assert keys.count(1) == 13 and keys.count(2) == 10 and keys.verify() == []
    keys.close()


def test_tree_truncate_over_a_local_store(tmp_path: Path) -> None:
    store = build(tmp_path / "t")
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.truncate(70)
    assert_tree_of(store, 70)
    tree.close()
    assert LocalStore.verify_path(tmp_path / "t") == []


def test_an_interrupted_truncation_is_finished_by_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build(tmp_path / "t")

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # after the manifest committed the cut, before any file moved

    monkeypatch.setattr(truncation, "apply_limit", killed)
    with pytest.raises(KeyboardInterrupt):
        store.truncate(0, 50)
    monkeypatch.undo()
    crash(store)
    assert (tmp_path / "t" / "L0" / "00000001.seg.cut").exists()  # the kept part, prepared
    with LocalStore.open(tmp_path / "t", readonly=True) as reader:  # readers see the cut
        assert reader.count(0) == 50
        assert np.array_equal(reader.read(0, 0, 50), stream(0, 50))
        assert "limit" in {p.kind for p in reader.verify()}
    store = LocalStore.open(tmp_path / "t")
    assert_tree_of(store, 50)
    assert store.verify() == [] and not list((tmp_path / "t").rglob("*.cut"))
    store.close()


def test_a_truncation_interrupted_before_its_commit_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build(tmp_path / "t")
    real = store._writer.flush

    def flush(*args: object, **kwargs: object) -> None:
        if store._state.levels[0].entry.limit is not None:
            raise KeyboardInterrupt  # the commit never happens
        real()

    monkeypatch.setattr(store._writer, "flush", flush)
    with pytest.raises(KeyboardInterrupt):
        store.truncate(0, 50)
    crash(store)
    store = LocalStore.open(tmp_path / "t")
    assert_tree_of(store, TOKENS)
    assert store.verify() == []
    stray = sorted(str(Path(p).relative_to(tmp_path / "t")) for p in store.compact())
    assert [p for p in stray if p.endswith(".cut")] == [  # level 1 is cut inside a segment too
        "L0/00000001.seg.cut",
        "L0/00000001.sum.cut",
        "L1/00000000.seg.cut",
        "L1/00000000.sum.cut",
    ]
    store.close()


def test_truncate_errors(tmp_path: Path) -> None:
    build(tmp_path / "t").close()
    with (
        LocalStore.open(tmp_path / "t", readonly=True) as reader,
        pytest.raises(StorePermissionError, match="read-only"),
    ):
        reader.truncate(0, 5)
    with LocalStore.open(tmp_path / "t") as store:
        with pytest.raises(InvalidInputError, match="holds 150"):
            store.truncate(0, 151)
        with pytest.raises(InvalidInputError, match="non-negative"):
            store.truncate(0, -1)
        assert store.truncate(0, TOKENS) == []


def test_a_key_store_is_cut_back_to_a_repaired_tree(tmp_path: Path) -> None:
    """The reproduction at the store level: 100 bytes cut off the tree's gist segment. The tree
    store drops the damaged gists when it opens; the caller cuts its key store back with
    ``truncate`` and the tree recomputes both."""
    from megacontext.core.tree import GistBatch

    class Keyed(MeanGister):
        def __call__(self, level: int, inputs: np.ndarray) -> GistBatch:  # type: ignore[override]
            gists = super().__call__(level, inputs)
            return GistBatch(gists, gists[:, :3] * 0.5)

    def open_tree(create: bool) -> MegaContextTree:
        if create:
            gists = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=64)
            keys = LocalStore.create(tmp_path / "k", dim=3, K=K, segment_records=64, role="keys")
        else:
            gists, keys = LocalStore.open(tmp_path / "t"), LocalStore.open(tmp_path / "k")
            for level in range(1, keys.num_levels):
                if keys.count(level) > gists.count(level):
                    keys.truncate(level, gists.count(level))
        return MegaContextTree(gists, Keyed(), K=K, key_backend=keys)

    tree = open_tree(create=True)
    tree.append(stream(0, 200))
    tree.close()
    segment = tmp_path / "t" / "L1" / "00000000.seg"
    os.truncate(segment, segment.stat().st_size - 100)
    assert "open-short" in {p.kind for p in LocalStore.verify_path(tmp_path / "t")}
    tree = open_tree(create=False)
    reference = MegaContextTree(MemoryBackend(DIM), Keyed(), K=K, key_backend=MemoryBackend(3))
    reference.append(stream(0, 200))
    for level in (1, 2, 3):
        n = reference.count(level)
        assert np.array_equal(tree.gists(level, 0, n), reference.gists(level, 0, n))
        assert np.array_equal(tree.keys(level, 0, n), reference.keys(level, 0, n))
    tree.close()
    assert LocalStore.verify_path(tmp_path / "t") == [] == LocalStore.verify_path(tmp_path / "k")
