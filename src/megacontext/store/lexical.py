"""The lexical index (DESIGN §5, D7): BM25 over the detokenized text of every LOD1 block.

One row per complete LOD1 block, ranked with SQLite FTS5's ``bm25()`` (the embedded default). A
level-ℓ node's score is the best score among the blocks it covers, so a coarse gist that holds
the block a query needs scores as high as that block. Scores are ``−bm25``: higher is better,
0 means no query term occurs.

It is the lexical half of LensNet's retrieval evidence, and what the RAG-BM25 baseline and the
knowledge workflows search.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from megacontext.errors import InvalidInputError, StorageCorruptionError

_TERM = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str, max_terms: int = 64) -> list[str]:
    """Distinct word terms of a query, in order (FTS5's unicode61 tokenizer splits the same way)."""
    seen: dict[str, None] = {}
    for term in _TERM.findall(query.lower()):
        seen.setdefault(term, None)
    return list(seen)[:max_terms]


class LexicalIndex:
    """BM25 over LOD1 blocks in SQLite FTS5 (a file, or ``":memory:"``)."""

    def __init__(self, path: str | Path = ":memory:", K: int = 32):
        self.K = int(K)
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS blocks USING fts5(body, tokenize='unicode61')"
            )
        except sqlite3.DatabaseError as exc:
            raise StorageCorruptionError(
                f"lexical index {self.path} cannot be opened ({exc}); delete it and rebuild it "
                "from the tree (it is derived data)"
            ) from None
        self._db.commit()

    @property
    def num_blocks(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM blocks").fetchone()
        return int(row[0])

    def add_blocks(self, first_block: int, texts: Sequence[str]) -> None:
        """Index the text of blocks ``first_block, first_block + 1, …``, appended in order."""
        if first_block != self.num_blocks:
            raise InvalidInputError(
                f"lexical index holds {self.num_blocks} blocks; the next block to add is "
                f"{self.num_blocks}, not {first_block}"
            )
        # rowid = block index + 1 (FTS5 rowids start at 1).
        self._db.executemany(
            "INSERT INTO blocks(rowid, body) VALUES (?, ?)",
            [(first_block + i + 1, text) for i, text in enumerate(texts)],
        )
        self._db.commit()

    def block_scores(self, query: str, limit: int | None = None) -> dict[int, float]:
        """``{block index: score}`` of blocks containing any query term, best first."""
        terms = query_terms(query)
        if not terms:
            return {}
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        sql = "SELECT rowid, -bm25(blocks) FROM blocks WHERE blocks MATCH ? ORDER BY bm25(blocks)"
        params: tuple[object, ...] = (match,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (match, int(limit))
        return {int(rowid) - 1: float(score) for rowid, score in self._db.execute(sql, params)}

    def lexical_scores(
        self,
        query: str,
        levels: npt.NDArray[np.int64],
        indices: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float64]:
        """Score of each node ``(levels[i], indices[i])``: the best of the blocks it covers.

        A raw token (level 0) gets its block's score.
        """
        levels = np.asarray(levels, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        out = np.zeros(levels.shape, dtype=np.float64)
        scores = self.block_scores(query)
        if not scores:
            return out
        blocks = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
        values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
        order = np.argsort(blocks)
        blocks, values = blocks[order], values[order]
        # Node (ℓ, i) covers LOD1 blocks [i·K^(ℓ−1), (i+1)·K^(ℓ−1)); a token at position p is in
        # block p // K.
        width = np.where(levels >= 1, self.K ** np.maximum(levels - 1, 0), 1)
        first = np.where(levels >= 1, indices * width, indices // self.K)
        stop = first + width
        lo = np.searchsorted(blocks, first, side="left")
        hi = np.searchsorted(blocks, stop, side="left")
        has = hi > lo
        if has.any():
            out[has] = [values[a:b].max() for a, b in zip(lo[has], hi[has], strict=True)]
        return out

    def close(self) -> None:
        self._db.close()
