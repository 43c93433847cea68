"""MegaContextTree: cascade gisting of exactly the complete nodes, lookups, bad input."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.core import GistBatch, MeanPoolGister, MegaContextTree, MemoryBackend
from megacontext.core.tree import as_token_ids
from megacontext.errors import InvalidInputError, InvariantError


class RangeGister:
    """Gist = [first token position, last token position] of the node; records every call.

    Tokens are their own positions, so each gist names exactly which node it summarises, and a
    gister that saw padding or a partial node would produce a detectably wrong range.
    """

    dim = 2

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        self.calls.append((level, len(inputs)))
        x = np.asarray(inputs, dtype=np.float64)
        if level == 1:
            assert np.all(np.diff(x, axis=1) == 1), "level-1 inputs must be K consecutive tokens"
            return np.stack([x[:, 0], x[:, -1]], axis=1)
        assert np.all(x[:, 1:, 0] == x[:, :-1, 1] + 1), "children must be consecutive siblings"
        return np.stack([x[:, 0, 0], x[:, -1, 1]], axis=1)


def make_tree(K: int, gister: RangeGister | None = None) -> tuple[MegaContextTree, RangeGister]:
    g = gister or RangeGister()
    return MegaContextTree(MemoryBackend(dim=2, gist_dtype=np.float64, chunk_bytes=256), g, K=K), g


@settings(max_examples=200)
@given(
    K=st.integers(2, 6),
    chunks=st.lists(st.integers(0, 300), min_size=1, max_size=12),
)
def test_tree_gists_exactly_complete_nodes_once(K: int, chunks: list[int]) -> None:
    tree, gister = make_tree(K)
    n = 0
    for size in chunks:
        result = tree.append(np.arange(n, n + size, dtype=np.uint32))
        n += size
        assert result.tokens == size
    assert tree.num_tokens == n
    level = 1
    total_gisted = 0
    while (n // K**level) > 0:
        count = n // K**level
        assert tree.count(level) == count
        gists = tree.gists(level, 0, count)
        expect_first = np.arange(count) * K**level
        assert np.array_equal(gists[:, 0], expect_first)
        assert np.array_equal(gists[:, 1], expect_first + K**level - 1)
        total_gisted += count
        level += 1
    assert tree.count(level) == 0
    assert tree.num_levels == level - 1
    # Each complete node gisted exactly once: calls add up to the node count, one call per level
    # per append at most (batched, D5).
    assert sum(c for _, c in gister.calls) == total_gisted
    assert len(gister.calls) <= len(chunks) * max(1, level)
    assert np.array_equal(tree.tail(), np.arange(n - n % K, n, dtype=np.uint32))


def test_lookup_children_parent() -> None:
    tree, _ = make_tree(4)
    tree.append(np.arange(70))
    assert int(tree.node(0, 5)) == 5
    assert tree.node(2, 3).tolist() == [48.0, 63.0]
    assert tree.children(2, 1) == (1, range(4, 8))
    assert tree.parent(1, 5) == tree.parent(1, 4)
    parent = tree.parent(1, 5)
    assert parent is not None and (parent.level, parent.index) == (2, 1)
    assert tree.parent(2, 3) is not None  # level-3 node 0 covers 0..63, complete at 70 tokens
    assert tree.parent(1, 16) is None  # tokens 64..67: its parent (tokens 64..79) is incomplete
    assert tree.covered_tokens(2, 1) == (16, 32)
    with pytest.raises(InvalidInputError, match="does not exist"):
        tree.node(1, 17)
    with pytest.raises(InvalidInputError, match="no children"):
        tree.children(0, 3)
    with pytest.raises(InvalidInputError, match="levels >= 1"):
        tree.gists(0, 0, 1)
    with pytest.raises(InvalidInputError, match="outside level"):
        tree.tokens(60, 80)


def test_batching_limit_gives_same_gists() -> None:
    g1, g2 = MeanPoolGister.random(50, 8, seed=1), MeanPoolGister.random(50, 8, seed=1)
    ids = np.random.default_rng(0).integers(0, 50, size=5000)
    a = MegaContextTree(MemoryBackend(8, np.float32), g1, K=8)
    b = MegaContextTree(MemoryBackend(8, np.float32), g2, K=8, gist_batch_size=3)
    a.append(ids)
    for i in range(0, 5000, 777):
        b.append(ids[i : i + 777])
    for level in (1, 2, 3):
        np.testing.assert_allclose(
            a.gists(level, 0, a.count(level)), b.gists(level, 0, b.count(level)), rtol=1e-6
        )


def test_reopen_catches_up_missing_gists() -> None:
    backend = MemoryBackend(dim=2, gist_dtype=np.float64)
    backend.append(0, np.arange(40, dtype=np.uint32))  # tokens stored, gists never written
    tree = MegaContextTree(backend, RangeGister(), K=4)
    assert tree.count(1) == 10 and tree.count(2) == 2


def test_backend_with_too_many_gists_is_an_invariant_error() -> None:
    backend = MemoryBackend(dim=2, gist_dtype=np.float64)
    backend.append(0, np.arange(4, dtype=np.uint32))
    backend.append(1, np.zeros((2, 2)))
    with pytest.raises(InvariantError, match="only 1 nodes are complete"):
        MegaContextTree(backend, RangeGister(), K=4)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([1, -2, 3], "must be >= 0"),
        (np.array([1.0, 2.0]), "must be integers"),
        ([1.5, 2], "must be integers"),
        (np.array([[1, 2]]), "1-D"),
        ("hello", "tokenize text first"),
        (b"hello", "tokenize text first"),
        (12, "tokenize text first"),
        ([True, False], "must be integers"),
        ([2**32], "outside the uint32 range"),
        ([[1, 2], [3]], "flat sequence|must be integers"),
    ],
)
def test_bad_token_ids(ids: object, match: str) -> None:
    tree, _ = make_tree(4)
    tree.append([0, 1, 2])
    with pytest.raises(InvalidInputError, match=match):
        tree.append(ids)
    assert tree.num_tokens == 3  # nothing already stored is lost or changed
    assert tree.tokens(0, 3).tolist() == [0, 1, 2]


def test_vocab_size_is_enforced() -> None:
    tree = MegaContextTree(MemoryBackend(8), MeanPoolGister.random(10, 8), K=4, vocab_size=10)
    with pytest.raises(
        InvalidInputError, match=r"id 10 at position 1 is outside the vocabulary \(size 10\)"
    ):
        tree.append([3, 10])
    assert tree.num_tokens == 0


def test_bad_construction() -> None:
    with pytest.raises(InvalidInputError, match="gister writes 8-dim"):
        MegaContextTree(MemoryBackend(4), MeanPoolGister.random(10, 8), K=4)
    with pytest.raises(InvalidInputError, match="block size"):
        MegaContextTree(MemoryBackend(8), MeanPoolGister.random(10, 8), K=1)
    with pytest.raises(InvalidInputError, match="gist dtype"):
        MemoryBackend(8, gist_dtype=np.int32)
    with pytest.raises(InvalidInputError, match="dimension"):
        MemoryBackend(0)


def test_gister_with_wrong_output_shape_is_caught() -> None:
    class Broken:
        dim = 2

        def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
            return np.zeros((1, 2))

    tree = MegaContextTree(MemoryBackend(2), Broken(), K=2)
    with pytest.raises(InvariantError, match="gister returned shape"):
        tree.append(np.arange(8))


def test_as_token_ids_accepts_numpy_integer_types() -> None:
    for dtype in (np.int8, np.uint16, np.int64, np.uint32):
        out = as_token_ids(np.array([1, 2], dtype=dtype))
        assert out.dtype == np.uint32 and out.tolist() == [1, 2]
    assert as_token_ids([]).size == 0


class KeyedGister(RangeGister):
    """RangeGister that also returns a key: the node's first position, repeated."""

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> GistBatch:  # type: ignore[override]
        gists = super().__call__(level, inputs)
        return GistBatch(gists, np.repeat(gists[:, :1], 3, axis=1))


def test_keys_are_stored_beside_gists_and_caught_up_on_open() -> None:
    backend, keys = MemoryBackend(2, np.float64), MemoryBackend(3, np.float64)
    tree = MegaContextTree(backend, KeyedGister(), K=4, key_backend=keys)
    tree.append(np.arange(70))
    assert keys.count(1) == tree.count(1) == 17 and keys.count(2) == tree.count(2) == 4
    np.testing.assert_array_equal(tree.keys(2, 0, 4)[:, 0], [0, 16, 32, 48])
    # A writer that stored gists but died before their keys: reopening recomputes only the keys.
    fresh_keys = MemoryBackend(3, np.float64)
    gister = KeyedGister()
    reopened = MegaContextTree(backend, gister, K=4, key_backend=fresh_keys)
    assert fresh_keys.count(1) == 17 and fresh_keys.count(2) == 4 and backend.count(1) == 17
    np.testing.assert_array_equal(reopened.keys(1, 0, 17), tree.keys(1, 0, 17))


def test_key_store_errors() -> None:
    tree, _ = make_tree(4)
    tree.append(np.arange(8))
    with pytest.raises(InvalidInputError, match="stores no keys"):
        tree.keys(1, 0, 1)
    keyless = MegaContextTree(
        MemoryBackend(2, np.float64), RangeGister(), K=4, key_backend=MemoryBackend(3)
    )
    with pytest.raises(InvalidInputError, match="returns no keys"):
        keyless.append(np.arange(4))
    assert keyless.backend.count(1) == 0  # nothing half-written
