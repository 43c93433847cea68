"""Lexical index: a planted rare word ranks its block first; nodes aggregate their blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megacontext.errors import InvalidInputError, StorageCorruptionError
from megacontext.store.lexical import LexicalIndex, query_terms

FILLER = [
    "the king went to the city and the people followed him",
    "and it came to pass that the river rose over the fields",
    "def parse(self, args): return self.parser.parse_args(args)",
    "the city walls were strong and the gates were shut at night",
]


def build(n_blocks: int = 200, plant_at: int = 137, K: int = 4) -> LexicalIndex:
    index = LexicalIndex(K=K)
    texts = [FILLER[i % len(FILLER)] for i in range(n_blocks)]
    texts[plant_at] = "the passkey is zanzibar and nobody else knows it"
    index.add_blocks(0, texts[:100])
    index.add_blocks(100, texts[100:])
    return index


def test_planted_rare_word_ranks_its_block_first() -> None:
    index = build()
    scores = index.block_scores("What is the passkey? zanzibar")
    assert next(iter(scores)) == 137
    assert scores[137] > 0
    assert max(v for k, v in scores.items() if k != 137) < scores[137]


def test_node_scores_aggregate_blocks_over_their_range() -> None:
    index = build(K=4)
    levels = np.array([3, 2, 2, 1, 0, 0])
    # K=4: a level-3 node spans 16 blocks, so block 137 lies in level-3 node 8 (blocks 128..143)
    # and level-2 node 34 (blocks 136..139); level-1 node 137 is the block itself; token 548 is
    # in block 137, token 4 in block 1.
    indices = np.array([8, 34, 33, 137, 548, 4])
    scores = index.lexical_scores("zanzibar", levels, indices)
    best = index.block_scores("zanzibar")[137]
    assert scores.tolist() == [best, best, 0.0, best, best, 0.0]


def test_empty_or_punctuation_query_scores_zero() -> None:
    index = build()
    assert index.block_scores("?!") == {}
    assert not index.lexical_scores("", np.array([1]), np.array([0])).any()
    assert query_terms('Say "Hi" hi, World') == ["say", "hi", "world"]


def test_out_of_order_add_is_refused_and_bad_file_is_reported(tmp_path: Path) -> None:
    index = build()
    with pytest.raises(InvalidInputError, match="next block to add is 200"):
        index.add_blocks(10, ["x"])
    bad = tmp_path / "lex.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageCorruptionError, match="rebuild"):
        LexicalIndex(bad)


def test_persists_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "lex.sqlite"
    index = LexicalIndex(path, K=4)
    index.add_blocks(0, ["alpha beta", "gamma delta"])
    index.close()
    again = LexicalIndex(path, K=4)
    assert again.num_blocks == 2
    assert list(again.block_scores("delta")) == [1]


# ----------------------------------------------------------------------------- PostgreSQL


def build_postgres(url: str, n_blocks: int = 200, plant_at: int = 137, K: int = 4):  # type: ignore[no-untyped-def]
    import uuid

    from megacontext.store.lexical import PostgresLexicalIndex

    index = PostgresLexicalIndex(url, tree_id=uuid.uuid4().hex, K=K)
    texts = [FILLER[i % len(FILLER)] for i in range(n_blocks)]
    texts[plant_at] = "the passkey is zanzibar and nobody else knows it"
    index.add_blocks(0, texts[:100])
    index.add_blocks(100, texts[100:])
    return index


@pytest.mark.parametrize(
    "query", ["What is the passkey? zanzibar", "the city gates at night", "river fields PARSER"]
)
def test_postgres_bm25_equals_sqlite_fts5(postgres_url: str, query: str) -> None:
    sqlite, postgres = build(), build_postgres(postgres_url)
    expected, got = sqlite.block_scores(query), postgres.block_scores(query)
    assert got and set(got) == set(expected)
    for block, score in expected.items():
        assert got[block] == pytest.approx(score, rel=1e-9)
    levels = np.array([3, 2, 2, 1, 0, 0])
    indices = np.array([0, 8, 9, 34, 137 * 4 + 2, 5])
    np.testing.assert_allclose(
        postgres.lexical_scores(query, levels, indices),
        sqlite.lexical_scores(query, levels, indices),
        rtol=1e-9,
    )
    assert list(postgres.block_scores(query, limit=3)) == list(expected)[:3]
    postgres.close()


def test_postgres_index_keeps_trees_apart_and_refuses_bad_input(postgres_url: str) -> None:
    from megacontext.store.lexical import PostgresLexicalIndex, open_lexical_index

    one, two = build_postgres(postgres_url, plant_at=3), build_postgres(postgres_url, plant_at=9)
    assert next(iter(one.block_scores("zanzibar"))) == 3
    assert next(iter(two.block_scores("zanzibar"))) == 9
    assert one.num_blocks == 200
    with pytest.raises(InvalidInputError, match="next block to add is 200"):
        one.add_blocks(150, ["late"])
    assert one.num_blocks == 200  # nothing stored by the refused call
    assert one.block_scores("?!") == {}
    with pytest.raises(InvalidInputError, match="PostgreSQL URL"):
        PostgresLexicalIndex("sqlite:///x.sqlite", tree_id="t")
    reopened = open_lexical_index("unused", K=4, metadata_url=postgres_url, tree_id=one.tree_id)
    assert isinstance(reopened, PostgresLexicalIndex) and reopened.num_blocks == 200
    assert isinstance(open_lexical_index(":memory:", K=4), LexicalIndex)
    for index in (one, two, reopened):
        index.close()
