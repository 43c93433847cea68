"""Span arithmetic of the MegaContext tree (DESIGN §2, decision D2).

A level-``ℓ`` node with index ``i`` covers the tokens ``[i·K^ℓ, (i+1)·K^ℓ)``. Level 0 nodes are
single tokens. Every legality question (is this aligned, who is the parent, which children) is
answered by integer arithmetic on ``(level, index)``, never by comparing span unions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from megacontext.errors import InvalidInputError

DEFAULT_K = 32

IntArray = npt.NDArray[np.int64]


def check_block_size(K: int) -> int:
    """Validate a block size ``K`` (at least 2) and return it as an ``int``."""
    if isinstance(K, bool) or not isinstance(K, int | np.integer) or int(K) < 2:
        raise InvalidInputError(f"block size K must be an integer >= 2, got {K!r}")
    return int(K)


def span_tokens(level: int, K: int) -> int:
    """Number of tokens a level-``level`` node covers: ``K**level``."""
    if level < 0:
        raise InvalidInputError(f"level must be >= 0, got {level}")
    width: int = int(K) ** int(level)
    return width


def node_start(level: int, index: int, K: int) -> int:
    """First token position covered by node ``(level, index)``."""
    return int(index) * span_tokens(level, K)


def node_end(level: int, index: int, K: int) -> int:
    """One past the last token position covered by node ``(level, index)``."""
    return (int(index) + 1) * span_tokens(level, K)


def parent_index(index: int, K: int) -> int:
    """Index of the parent (one level up) of the node with this index."""
    return int(index) // int(K)


def children_indices(index: int, K: int) -> range:
    """Indices (one level down) of the K children of the node with this index."""
    return range(int(index) * int(K), (int(index) + 1) * int(K))


def is_aligned(position: int, level: int, K: int) -> bool:
    """Whether a token position is the start of some level-``level`` node."""
    return int(position) % span_tokens(level, K) == 0


def complete_nodes(num_tokens: int, level: int, K: int) -> int:
    """How many level-``level`` nodes are complete in a history of ``num_tokens`` tokens."""
    return int(num_tokens) // span_tokens(level, K)


def node_exists(level: int, index: int, K: int, num_tokens: int) -> bool:
    """Whether node ``(level, index)`` is complete (and so exists) in a history of this length."""
    return index >= 0 and node_end(level, index, K) <= num_tokens


def levels_needed(num_tokens: int, K: int) -> int:
    """Number of gist levels that hold at least one complete node (0 when no block is complete)."""
    levels = 0
    span = K
    while span <= num_tokens:
        levels += 1
        span *= K
    return levels


def coarsest_size(num_tokens: int, K: int, gists_per_node: int = 1) -> int:
    """Positions of the coarsest legal tiling of ``[0, num_tokens)``: the base-K digit sum, with
    the digits above the lowest weighted by ``gists_per_node`` (what a gist costs, D3).

    Aligned nodes tile a prefix minimally by taking, from the left, the largest complete node that
    starts at the current position; the count at each level is one base-K digit of the length.
    """
    n = int(num_tokens)
    total = n % K
    n //= K
    while n:
        total += gists_per_node * (n % K)
        n //= K
    return total


def check_gists_per_node(gists_per_node: int) -> int:
    """Validate how many vectors a gist node holds (at least 1) and return it as an ``int``."""
    if (
        isinstance(gists_per_node, bool)
        or not isinstance(gists_per_node, int | np.integer)
        or int(gists_per_node) < 1
    ):
        raise InvalidInputError(f"gists_per_node must be an integer >= 1, got {gists_per_node!r}")
    return int(gists_per_node)


def entry_costs(levels: IntArray, gists_per_node: int) -> IntArray:
    """Positions each entry takes in the base's input: 1 for a token, ``gists_per_node`` for a
    gist (a node stores that many vectors)."""
    return np.where(levels > 0, np.int64(gists_per_node), np.int64(1))


@dataclass(frozen=True, slots=True)
class Node:
    """A tree node named by arithmetic: level 0 is a token, level ≥ 1 a gist."""

    level: int
    index: int

    def start(self, K: int) -> int:
        return node_start(self.level, self.index, K)

    def end(self, K: int) -> int:
        return node_end(self.level, self.index, K)

    def parent(self, K: int) -> Node:
        return Node(self.level + 1, parent_index(self.index, K))


def spans_of(levels: IntArray, indices: IntArray, K: int) -> tuple[IntArray, IntArray]:
    """Vectorised ``(start, end)`` token positions of nodes given as parallel arrays."""
    widths = np.power(np.int64(K), levels.astype(np.int64))
    starts = indices.astype(np.int64) * widths
    return starts, starts + widths


def coarsest_tiling(num_tokens: int, K: int, start: int = 0) -> tuple[IntArray, IntArray]:
    """Coarsest aligned tiling of ``[start, num_tokens)`` as ``(levels, indices)`` arrays.

    ``start`` must be a multiple of K (or 0). Walking from the left, each step takes the largest
    node that starts at the current position and fits before ``num_tokens``.
    """
    if start < 0 or start > num_tokens:
        raise InvalidInputError(f"tiling start {start} outside [0, {num_tokens}]")
    levels: list[int] = []
    indices: list[int] = []
    pos = int(start)
    while pos < num_tokens:
        level = 0
        width = 1
        while pos % (width * K) == 0 and pos + width * K <= num_tokens:
            width *= K
            level += 1
        levels.append(level)
        indices.append(pos // width)
        pos += width
    return np.asarray(levels, dtype=np.int64), np.asarray(indices, dtype=np.int64)
