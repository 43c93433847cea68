"""LensNet's inputs, built in one place for training, serving and evaluation (D7, D17).

For one working context over one tree, LensNet reads per entry: its vector (a token embedding or
a stored gist), its level, numeric features (``log_span``, ``log_age``, ``is_tail``) and two
retrieval priors computed at ingest from the node's raw tokens — the BM25 score of its blocks
against the query text (``lexical``) and the similarity of its key with the query's key
(``key_sim``) — plus the query's token embeddings. :class:`LensScorer` builds exactly that from a
:class:`FocusQuery`; label generation, the trainers, sessions and the evaluation all call it, so
what LensNet was trained on is what it scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from megacontext.core import MegaContextTree, WorkingContext
from megacontext.focus.access import AccessFilter, redact, redaction_vector
from megacontext.models.context import entry_vectors, level1_inputs
from megacontext.models.lensnet import FEATURES

if TYPE_CHECKING:
    from megacontext.models.adapter import BaseAdapter
    from megacontext.models.gistnet import GistNet
    from megacontext.models.lensnet import LensNet
    from megacontext.store.lexical import AnyLexicalIndex


@dataclass(frozen=True)
class FocusQuery:
    """What focus is for: the query's tokens, their text (for BM25) and their key (D7).

    Build one with :meth:`FocusQuery.of`.
    """

    ids: np.ndarray  # int64 token ids
    text: str
    key: np.ndarray  # float32 (key_dim,); zeros when the query is shorter than a block

    @classmethod
    def of(cls, base: BaseAdapter, gistnet: GistNet, ids: np.ndarray) -> FocusQuery:
        ids = np.asarray(ids, dtype=np.int64)
        return cls(ids, base.decode(ids.tolist()), query_key(base, gistnet, ids))


@torch.no_grad()
def query_key(base: BaseAdapter, gistnet: GistNet, ids: np.ndarray) -> np.ndarray:
    """The query's key: GistNet's key head on its last K tokens, as if they were a LOD1 block.

    A query shorter than one block has no key (zeros), so ``key_sim`` is 0 for every entry.
    """
    K = gistnet.config.K
    if len(ids) < K:
        return np.zeros(gistnet.config.key_dim, dtype=np.float32)
    block = torch.as_tensor(np.asarray(ids[-K:]), device=base.device)[None]
    return gistnet(level1_inputs(gistnet, base, block).float(), 1)[1][0].float().cpu().numpy()


def entry_keys(tree: MegaContextTree, wc: WorkingContext) -> np.ndarray:
    """Each entry's key: its own for a gist, its LOD1 block's for a raw token (0 in the tail)."""
    key_dim = tree.key_backend.dim if tree.key_backend is not None else 0
    out = np.zeros((wc.size, key_dim), dtype=np.float32)
    levels, indices = wc.levels, wc.indices
    for level in np.unique(levels):
        where = np.flatnonzero(levels == level)
        nodes = indices[where] if level > 0 else indices[where] // wc.K
        lookup_level = int(level) if level > 0 else 1
        ok = nodes < tree.count(lookup_level)
        if not ok.any():
            continue
        lo, hi = int(nodes[ok].min()), int(nodes[ok].max()) + 1
        out[where[ok]] = tree.keys(lookup_level, lo, hi)[nodes[ok] - lo]
    return out


class LensInputs(NamedTuple):
    """LensNet's arguments for one working context, each with a batch dimension of 1."""

    entries: torch.Tensor  # (1, W, d) float32
    levels: torch.Tensor  # (1, W) int64
    features: torch.Tensor  # (1, W, len(FEATURES)) float32
    query: torch.Tensor  # (1, Q, d) float32


class LensScorer:
    """Builds LensNet's inputs for working contexts over one tree and its lexical index.

    Args:
        base: The frozen base (token embeddings).
        tree: The tree the working contexts cover (tokens, gists, keys).
        lexical: Its BM25 index over LOD1 blocks.
    """

    def __init__(self, base: BaseAdapter, tree: MegaContextTree, lexical: AnyLexicalIndex):
        self.base = base
        self.tree = tree
        self.lexical = lexical
        # What the principal may not see (megacontext.focus.access): redacted in LensNet's
        # inputs too, so that restricted text cannot steer focus.
        self.access: AccessFilter | None = None
        self._redaction: torch.Tensor | None = None

    def features(self, wc: WorkingContext, query: FocusQuery) -> np.ndarray:
        """``(W, len(FEATURES))`` numeric features of the entries of ``wc``."""
        K, n = wc.K, wc.num_tokens
        _, ends = wc.spans()
        levels = wc.levels
        feats = np.zeros((wc.size, len(FEATURES)), dtype=np.float32)
        feats[:, FEATURES.index("log_span")] = levels * math.log2(K) / 16.0
        feats[:, FEATURES.index("log_age")] = np.log2(1.0 + (n - ends)) / max(
            1.0, math.log2(1.0 + n)
        )
        feats[:, FEATURES.index("is_tail")] = (
            (ends > n - n % K).astype(np.float32) if n % K else 0.0
        )
        lexical = self.lexical.lexical_scores(query.text, levels, wc.indices)
        if lexical.max() > 0:
            lexical = lexical / lexical.max()
        feats[:, FEATURES.index("lexical")] = lexical
        feats[:, FEATURES.index("key_sim")] = entry_keys(self.tree, wc) @ query.key
        if self.access is not None:
            hidden = self.access.mask(wc)
            feats[hidden, FEATURES.index("lexical")] = 0.0
            feats[hidden, FEATURES.index("key_sim")] = 0.0
        return feats

    @torch.no_grad()
    def inputs(self, wc: WorkingContext, query: FocusQuery) -> LensInputs:
        """Everything LensNet reads for ``wc`` and ``query``."""
        device = self.base.device
        entries = entry_vectors(wc, self.tree, self.base).float()
        if self.access is not None:
            if self._redaction is None:
                self._redaction = redaction_vector(self.base)
            entries = redact(entries, self.access.mask(wc), self._redaction)
        entries = entries[None]
        asked = self.base.embed(torch.as_tensor(query.ids, device=device)).float()[None]
        levels = torch.tensor(wc.levels, device=device)[None]  # a copy: wc.levels is read-only
        feats = torch.as_tensor(self.features(wc, query), device=device)[None]
        return LensInputs(entries, levels, feats, asked)

    @torch.no_grad()
    def scores(self, lensnet: LensNet, wc: WorkingContext, query: FocusQuery) -> np.ndarray:
        """LensNet's signed score per entry of ``wc`` (+ expand, − collapse)."""
        if not wc.size:
            return np.zeros(0)
        return lensnet(*self.inputs(wc, query))[0].float().cpu().numpy()


__all__ = ["FocusQuery", "LensInputs", "LensScorer", "entry_keys", "query_key"]
