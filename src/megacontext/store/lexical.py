"""The lexical index (DESIGN §5, D7): BM25 over the detokenized text of every LOD1 block.

One row per complete LOD1 block, ranked with SQLite FTS5's ``bm25()`` (the embedded default,
:class:`LexicalIndex`), or with the same BM25 computed in SQL by PostgreSQL where the tree's
metadata lives there (:class:`PostgresLexicalIndex`; :func:`open_lexical_index` picks by URL). A
level-ℓ node's score is the best score among the blocks it covers, so a coarse gist that holds
the block a query needs scores as high as that block. Scores are ``−bm25``: higher is better,
0 means no query term occurs.

It is the lexical half of LensNet's retrieval evidence, and what the RAG-BM25 baseline and the
knowledge workflows search.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
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


class _NodeScores(ABC):
    """Node scores from block scores; subclasses rank blocks."""

    K: int

    @abstractmethod
    def block_scores(self, query: str, limit: int | None = None) -> dict[int, float]:
        """``{block index: score}`` of blocks containing any query term, best first."""

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


class LexicalIndex(_NodeScores):
    """BM25 over LOD1 blocks in SQLite FTS5 (a file, or ``":memory:"``)."""

    def __init__(self, path: str | Path = ":memory:", K: int = 32, *, readonly: bool = False):
        """``readonly``: read beside a writer (a missing file reads as an empty index)."""
        self.K = int(K)
        self.path = str(path)
        try:
            if readonly and self.path != ":memory:" and Path(self.path).is_file():
                self._db = sqlite3.connect(
                    f"{Path(self.path).resolve().as_uri()}?mode=ro",
                    uri=True,
                    check_same_thread=False,
                )
                return
            self._db = sqlite3.connect(
                ":memory:" if readonly else self.path, check_same_thread=False
            )
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

    def truncate(self, blocks: int) -> None:
        """Keep only the first ``blocks`` blocks (the history was cut back)."""
        self._db.execute("DELETE FROM blocks WHERE rowid > ?", (int(blocks),))
        self._db.commit()

    def vacuum(self) -> None:
        """Rewrite the file without free pages: deleted blocks' text leaves the disk file.
        FTS5 first merges its segments, so no old segment still holds a deleted row's terms."""
        self._db.execute("INSERT INTO blocks(blocks) VALUES ('optimize')")
        self._db.commit()
        self._db.execute("VACUUM")

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

    def close(self) -> None:
        self._db.close()


# ----------------------------------------------------------------------------- PostgreSQL

# FTS5's bm25() constants and IDF floor: the PostgreSQL index reproduces its scores.
BM25_K1 = 1.2
BM25_B = 0.75
IDF_FLOOR = 1e-6
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits, as FTS5's unicode61


def unicode61_tokens(text: str) -> list[str]:
    """Tokens as FTS5's default ``unicode61`` tokenizer makes them: runs of letters and digits,
    case-folded, diacritics removed (so both backends count the same terms and lengths)."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in folded if not unicodedata.combining(c))
    return _TOKEN.findall(stripped)


class PostgresLexicalIndex(_NodeScores):
    """BM25 over the LOD1 blocks of one tree, in the PostgreSQL database of its metadata.

    Blocks and their term counts live in ``mc_lexical_blocks`` and ``mc_lexical_terms`` (keyed by
    tree id, so one database serves many trees); queries compute FTS5's BM25 in SQL (k1 1.2,
    b 0.75, IDF floored at 1e-6), so a block scores as it would in :class:`LexicalIndex`. One
    difference: a query word joined by underscores (``parse_args``) is a phrase for FTS5 and two
    terms here.
    """

    def __init__(self, url: str, tree_id: str, K: int = 32):
        import sqlalchemy as sa

        from megacontext.store.errors import StoreError

        self.K = int(K)
        self.tree_id = str(tree_id)
        try:
            self._engine = sa.create_engine(url, future=True)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise InvalidInputError(
                f"bad lexical index URL {url!r} ({exc}); use postgresql+psycopg://USER@HOST/DB"
            ) from None
        if self._engine.dialect.name != "postgresql":
            raise InvalidInputError(
                f"PostgresLexicalIndex needs a PostgreSQL URL, got {self._engine.dialect.name}; "
                "SQLite trees use LexicalIndex"
            )
        meta = sa.MetaData()
        self._blocks = sa.Table(
            "mc_lexical_blocks",
            meta,
            sa.Column("tree_id", sa.String, primary_key=True),
            sa.Column("block", sa.BigInteger, primary_key=True),
            sa.Column("length", sa.Integer, nullable=False),
        )
        self._terms = sa.Table(
            "mc_lexical_terms",
            meta,
            sa.Column("tree_id", sa.String, primary_key=True),
            sa.Column("term", sa.Text, primary_key=True),
            sa.Column("block", sa.BigInteger, primary_key=True),
            sa.Column("tf", sa.Integer, nullable=False),
        )
        try:
            meta.create_all(self._engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(
                f"cannot reach the lexical index database {url!r}: {exc.orig}"
            ) from None

    @property
    def num_blocks(self) -> int:
        import sqlalchemy as sa

        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(self._blocks.c.block) + 1, 0)).where(
                    self._blocks.c.tree_id == self.tree_id
                )
            ).scalar_one()
        return int(value)

    def add_blocks(self, first_block: int, texts: Sequence[str]) -> None:
        """Index the text of blocks ``first_block, first_block + 1, …``, appended in order."""
        if first_block != self.num_blocks:
            raise InvalidInputError(
                f"lexical index holds {self.num_blocks} blocks; the next block to add is "
                f"{self.num_blocks}, not {first_block}"
            )
        if not texts:
            return
        blocks, terms = [], []
        for i, text in enumerate(texts):
            tokens = unicode61_tokens(text)
            block = first_block + i
            blocks.append({"tree_id": self.tree_id, "block": block, "length": len(tokens)})
            terms += [
                {"tree_id": self.tree_id, "term": term, "block": block, "tf": tf}
                for term, tf in Counter(tokens).items()
            ]
        with self._engine.begin() as conn:  # one transaction: all blocks or none
            conn.execute(self._blocks.insert(), blocks)
            if terms:
                conn.execute(self._terms.insert(), terms)

    def vacuum(self) -> None:
        """PostgreSQL keeps deleted rows' versions until its own VACUUM reclaims them; this
        asks for one on the index's tables (space reused, not zeroed: see docs/audit.md)."""
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in (self._terms, self._blocks):
                conn.exec_driver_sql(f"VACUUM {table.name}")

    def truncate(self, blocks: int) -> None:
        """Keep only the first ``blocks`` blocks (the history was cut back)."""
        with self._engine.begin() as conn:
            for table in (self._terms, self._blocks):
                conn.execute(
                    table.delete().where(
                        table.c.tree_id == self.tree_id, table.c.block >= int(blocks)
                    )
                )

    def block_scores(self, query: str, limit: int | None = None) -> dict[int, float]:
        """``{block index: score}`` of blocks containing any query term, best first."""
        import sqlalchemy as sa

        terms = list(dict.fromkeys(unicode61_tokens(query)))[:64]
        if not terms:
            return {}
        sql = sa.text(
            """
            WITH stats AS (
                SELECT count(*) AS n, avg(length) AS avgdl
                FROM mc_lexical_blocks WHERE tree_id = :tree
            ),
            hits AS (
                SELECT term, block, tf FROM mc_lexical_terms
                WHERE tree_id = :tree AND term = ANY(:terms)
            ),
            idf AS (
                SELECT h.term, greatest(
                    ln((s.n - count(*) + 0.5) / (count(*) + 0.5)), :floor
                ) AS idf
                FROM hits h CROSS JOIN stats s GROUP BY h.term, s.n
            )
            SELECT h.block, sum(
                i.idf * h.tf * (:k1 + 1)
                / (h.tf + :k1 * (1 - :b + :b * b.length / s.avgdl))
            ) AS score
            FROM hits h
            JOIN idf i ON i.term = h.term
            JOIN mc_lexical_blocks b ON b.tree_id = :tree AND b.block = h.block
            CROSS JOIN stats s
            GROUP BY h.block
            ORDER BY score DESC, h.block
            """
            + (" LIMIT :limit" if limit is not None else "")
        )
        params: dict[str, object] = {
            "tree": self.tree_id,
            "terms": terms,
            "floor": IDF_FLOOR,
            "k1": BM25_K1,
            "b": BM25_B,
        }
        if limit is not None:
            params["limit"] = int(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(sql, params).all()
        return {int(block): float(score) for block, score in rows}

    def close(self) -> None:
        self._engine.dispose()


AnyLexicalIndex = LexicalIndex | PostgresLexicalIndex


def open_lexical_index(
    path: str | Path,
    K: int,
    metadata_url: str | None = None,
    tree_id: str | None = None,
    *,
    readonly: bool = False,
) -> AnyLexicalIndex:
    """The lexical index of a tree: in its PostgreSQL metadata database when it has one
    (``metadata_url`` and ``tree_id``), else the SQLite FTS5 file ``path`` (``readonly``: read
    beside a writer; a PostgreSQL index is only ever read by a reader's queries)."""
    if metadata_url and metadata_url.startswith("postgresql"):
        if not tree_id:
            raise InvalidInputError("a PostgreSQL lexical index needs the tree's id")
        return PostgresLexicalIndex(metadata_url, tree_id, K=K)
    return LexicalIndex(path, K=K, readonly=readonly)
