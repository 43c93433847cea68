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
