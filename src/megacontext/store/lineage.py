"""Lineage: a Merkle tree over the history, one hash per gist, recorded when the gist is made.

A LOD1 node's hash is the SHA-256 of its K token ids (little-endian uint32); a node of level
``l >= 2`` hashes the concatenated hashes of its K children. The hashes are kept in the metadata
database (table ``lineage`` of :mod:`megacontext.store.metadata`), written by the session as
nodes complete and cut back with the history.

They prove what a gist was computed from. :meth:`Lineage.verify` recomputes every hash from the
tokens in the store and names the nodes whose recorded hash differs: tokens changed under a gist,
or a lineage row edited. Together with provenance (which sources each token range came from),
this lists the sources a gist was computed from (``megacontext audit lineage``), and after a
removal it shows that no remaining gist was computed from the removed source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from megacontext.core import MegaContextTree
from megacontext.store.errors import InvalidInputError
from megacontext.store.metadata import MetadataDB, lineage_table

HASH_PAGE = 4096  # nodes hashed and written per batch
_TOKEN_BYTES = np.dtype("<u4")


@dataclass(frozen=True)
class LineageMismatch:
    level: int
    index: int
    problem: str  # "changed" (recorded != recomputed) or "missing" (no recorded hash)


def block_hashes(tokens: np.ndarray, K: int) -> list[bytes]:
    """The level-1 hashes of complete blocks of ``tokens`` (a multiple of K of them)."""
    rows = np.ascontiguousarray(tokens, dtype=_TOKEN_BYTES).reshape(-1, K)
    return [hashlib.sha256(row.tobytes()).digest() for row in rows]


def parent_hashes(children: list[bytes], K: int) -> list[bytes]:
    """The hashes of the parents of ``children`` (a multiple of K of them, in order)."""
    return [
        hashlib.sha256(b"".join(children[i : i + K])).digest()
        for i in range(0, len(children) - len(children) % K, K)
    ]


class Lineage:
    """The lineage hashes of one tree in a metadata database."""

    def __init__(self, db: MetadataDB, tree_id: str, K: int):
        self.db, self.tree_id, self.K = db, tree_id, K

    def recorded(self, level: int) -> int:
        """How many nodes of ``level`` have a recorded hash (the first ones, in order)."""
        with self.db.engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.max(lineage_table.c.idx)).where(
                    lineage_table.c.tree_id == self.tree_id, lineage_table.c.level == level
                )
            ).scalar()
        return 0 if found is None else int(found) + 1

    def extend(self, tree: MegaContextTree) -> int:
        """Record the hashes of the nodes the tree completed since the last call (all of them
        for a tree recorded before lineage existed). Returns how many were written."""
        written = 0
        for level in range(1, tree.num_levels + 1):
            have, want = self.recorded(level), tree.count(level)
            for lo in range(have, want, HASH_PAGE):
                hi = min(want, lo + HASH_PAGE)
                self._write(level, lo, self._compute(tree, level, lo, hi))
                written += hi - lo
        return written

    def truncate(self, num_tokens: int) -> None:
        """Forget the hashes of nodes the history no longer holds whole."""
        with self.db.engine.begin() as conn:
            level, width = 1, self.K
            while True:
                keep = num_tokens // width
                done = conn.execute(
                    lineage_table.delete().where(
                        lineage_table.c.tree_id == self.tree_id,
                        lineage_table.c.level == level,
                        lineage_table.c.idx >= keep,
                    )
                )
                if done.rowcount == 0 and keep == 0:
                    break
                level, width = level + 1, width * self.K

    def hash_of(self, level: int, index: int) -> str | None:
        with self.db.engine.connect() as conn:
            found = conn.execute(
                sa.select(lineage_table.c.hash).where(
                    lineage_table.c.tree_id == self.tree_id,
                    lineage_table.c.level == level,
                    lineage_table.c.idx == index,
                )
            ).scalar()
        return None if found is None else str(found)

    def verify(self, tree: MegaContextTree, limit: int = 20) -> tuple[int, list[LineageMismatch]]:
        """Recompute every node's hash from the store's tokens and compare with the recorded
        ones. Returns the nodes checked and the first ``limit`` mismatches, lowest level
        first."""
        checked, bad = 0, []
        for level in range(1, tree.num_levels + 1):
            count = tree.count(level)
            for lo in range(0, count, HASH_PAGE):
                hi = min(count, lo + HASH_PAGE)
                computed = self._compute(tree, level, lo, hi)
                recorded = self._read(level, lo, hi)
                for offset, digest in enumerate(computed):
                    index = lo + offset
                    stored = recorded.get(index)
                    if stored is None:
                        bad.append(LineageMismatch(level, index, "missing"))
                    elif stored != digest.hex():
                        bad.append(LineageMismatch(level, index, "changed"))
                    if len(bad) >= limit:
                        return checked + offset + 1, bad
                checked += hi - lo
        return checked, bad

    # -- internals ------------------------------------------------------------------------

    def _compute(self, tree: MegaContextTree, level: int, lo: int, hi: int) -> list[bytes]:
        """The hashes of nodes [lo, hi) of ``level``, from the tokens (level 1) or from the
        recorded hashes of their children (higher levels: each level is checked on its own)."""
        if level < 1:
            raise InvalidInputError(f"lineage hashes start at level 1, got {level}")
        K = self.K
        if level == 1:
            return block_hashes(tree.tokens(lo * K, hi * K), K)
        children = self._read(level - 1, lo * K, hi * K)
        missing = [i for i in range(lo * K, hi * K) if i not in children]
        if missing:  # recompute the children from below (a tree recorded before lineage)
            below = self._compute(tree, level - 1, lo * K, hi * K)
            return parent_hashes(below, K)
        return parent_hashes([bytes.fromhex(children[i]) for i in range(lo * K, hi * K)], K)

    def _read(self, level: int, lo: int, hi: int) -> dict[int, str]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(lineage_table.c.idx, lineage_table.c.hash).where(
                    lineage_table.c.tree_id == self.tree_id,
                    lineage_table.c.level == level,
                    lineage_table.c.idx >= lo,
                    lineage_table.c.idx < hi,
                )
            ).all()
        return {int(r.idx): str(r.hash) for r in rows}

    def _write(self, level: int, first: int, hashes: Iterable[bytes]) -> None:
        rows = [
            {"tree_id": self.tree_id, "level": level, "idx": first + i, "hash": h.hex()}
            for i, h in enumerate(hashes)
        ]
        if rows:
            with self.db.engine.begin() as conn:
                conn.execute(lineage_table.insert(), rows)


__all__ = ["Lineage", "LineageMismatch", "block_hashes", "parent_hashes"]
