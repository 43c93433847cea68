"""From tree and working context to what the base model reads, and GistNet as the tree's gister.

* :func:`level1_inputs` is what GistNet reads of a level-1 node: the base's token embeddings,
  or its hidden states of the block (``GistNetConfig.inputs``) — one home for ingest, the query
  key, and training.
* :class:`GistNetGister` gists a :class:`~megacontext.core.MegaContextTree` with a trained
  GistNet: level-1 nodes from :func:`level1_inputs`, higher levels from child gists, one
  batched forward per call (D5), returning gists and keys (D7).
* :func:`input_vectors` turns working-context entries into what the base reads (token
  embeddings for raw tokens, stored gists for gists: ``G`` vectors for a node that stores
  ``G``), :func:`entry_vectors` into one vector per entry (what LensNet reads), and
  :func:`materialize` adds positions under a policy (D6), ready for :meth:`BaseAdapter.forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from megacontext.core import GistBatch, MegaContextTree, WorkingContext, wc_positions
from megacontext.core.positions import PositionPolicy
from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.gistnet import GistNet


def level1_inputs(gistnet: GistNet, base: BaseAdapter, ids: torch.Tensor) -> torch.Tensor:
    """GistNet's ``(n, K, d_model)`` inputs for ``n`` level-1 blocks of token ids ``(n, K)``.

    ``inputs: embeddings`` — the base's input embeddings; ``inputs: hidden`` — the base's
    hidden states of each block read alone from position 0 (no gradient: the base is frozen):
    the final ones, or after decoder layer ``input_layer``, scaled to unit RMS per position
    (the residual stream's scale varies by layer and position).
    """
    config = gistnet.config
    embeds = base.embed(ids)
    if config.inputs == "embeddings":
        return embeds
    with torch.no_grad():
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        if not config.input_layer:
            return base.hidden_states(embeds, positions)
        hidden = base.hidden_states(embeds, positions, config.input_layer).float()
        return hidden * torch.rsqrt(hidden.pow(2).mean(dim=-1, keepdim=True) + 1e-6)


class GistNetGister:
    """The tree's gister backed by GistNet, reading level-1 blocks as :func:`level1_inputs`
    makes them (the base's embeddings or hidden states)."""

    def __init__(
        self,
        gistnet: GistNet,
        base: BaseAdapter,
        batch_size: int = 4096,
        features: dict[int, list[np.ndarray]] | None = None,
    ):
        if gistnet.config.d_model != base.d_model:
            raise InvalidInputError(
                f"GistNet writes {gistnet.config.d_model}-dim gists but the base reads "
                f"{base.d_model}-dim embeddings; use a GistNet trained for this base"
            )
        self.gistnet = gistnet.eval()
        self.base = base
        self.batch_size = batch_size
        # When given, the pooled trunk features of every node gisted, appended per level in the
        # tree's order (LensNet training derives refreshed keys from them).
        self.features = features

    @property
    def dim(self) -> int:
        return self.gistnet.config.d_model

    @property
    def gists_per_node(self) -> int:
        """Vectors per node: GistNet's ``gists_per_block``."""
        return self.gistnet.config.gists_per_block

    @property
    def key_dim(self) -> int:
        return self.gistnet.config.key_dim

    @torch.no_grad()
    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> GistBatch:
        gists, keys = [], []
        device = self.base.device
        for lo in range(0, len(inputs), self.batch_size):
            chunk = inputs[lo : lo + self.batch_size]
            if level == 1:
                ids = torch.as_tensor(chunk.astype(np.int64), device=device)
                x = level1_inputs(self.gistnet, self.base, ids)
            else:
                x = torch.tensor(np.asarray(chunk, dtype=np.float32), device=device)
                if x.ndim == 4:  # (n, K, G, d): a child of several gists reads as their mean
                    x = x.mean(dim=2)
            pooled = self.gistnet.pooled(x.float(), level)
            if self.features is not None:
                self.features.setdefault(level, []).append(pooled.float().cpu().numpy())
            gist, key = self.gistnet.heads(pooled, level)
            gists.append(gist.float().cpu().numpy())
            keys.append(key.float().cpu().numpy())
        return GistBatch(np.concatenate(gists), np.concatenate(keys))


@dataclass
class Materialized:
    """Base-model inputs for one working context (batch of one)."""

    embeds: torch.Tensor  # (1, W, d)
    position_ids: torch.Tensor  # (1, W)
    mu: torch.Tensor | None  # (1, W) exact centres for the global/gaussian policies
    sigma: torch.Tensor | None  # (1, W) widths for the gaussian policy


def input_vectors(
    wc: WorkingContext, tree: MegaContextTree, base: BaseAdapter, start: int = 0
) -> torch.Tensor:
    """``(length − start, d)`` vectors the base reads from input position ``start`` on (an
    entry's first position): token embeddings and stored gists (every vector of a node), in WC
    order (decoding with a KV cache needs only the uncached suffix)."""
    offsets = wc.offsets()
    first = int(np.searchsorted(offsets, start))
    if not 0 <= start <= wc.length or (first < wc.size and offsets[first] != start):
        raise InvalidInputError(
            f"start must be the first position of an entry in [0, {wc.length}], got {start}"
        )
    return _vectors(wc, tree, base, first, per_position=True)


def entry_vectors(
    wc: WorkingContext, tree: MegaContextTree, base: BaseAdapter, start: int = 0
) -> torch.Tensor:
    """``(W − start, d)`` vectors, one per entry from entry ``start`` on (what LensNet reads):
    token embeddings and stored gists, the mean of a node's vectors when it stores several.
    The same as :func:`input_vectors` when a node stores one."""
    if not 0 <= start <= wc.size:
        raise InvalidInputError(f"start must be in [0, {wc.size}], got {start}")
    return _vectors(wc, tree, base, start, per_position=False)


def _vectors(
    wc: WorkingContext, tree: MegaContextTree, base: BaseAdapter, start: int, per_position: bool
) -> torch.Tensor:
    if wc.gists_per_node != tree.gists_per_node:
        raise InvalidInputError(
            f"the working context takes {wc.gists_per_node} position(s) per gist but the tree "
            f"stores {tree.gists_per_node} vector(s) per node; assemble it with "
            "gists_per_node=tree.gists_per_node"
        )
    levels, indices = wc.levels[start:], wc.indices[start:]
    G = wc.gists_per_node if per_position else 1
    at = np.arange(len(levels)) if G == 1 else wc.offsets()[start:] - wc.position_of(start)
    total = len(levels) if G == 1 else wc.length - wc.position_of(start)
    out = torch.empty(total, base.d_model, dtype=base.dtype, device=base.device)
    raw = np.flatnonzero(levels == 0)
    if raw.size:
        ids = torch.as_tensor(tree_tokens_at(tree, indices[raw]), device=base.device)
        out[torch.as_tensor(at[raw], device=base.device)] = base.embed(ids).to(out.dtype)
    for level in np.unique(levels[levels > 0]):
        where = np.flatnonzero(levels == level)
        rows = indices[where]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = np.asarray(tree.gists(int(level), lo, hi)[rows - lo], dtype=np.float32)
        if block.ndim == 3 and G == 1:  # one vector per entry: the mean of the node's
            block = block.mean(axis=1)
        slots = (at[where][:, None] + np.arange(G)).reshape(-1)
        out[torch.as_tensor(slots, device=base.device)] = torch.tensor(
            block.reshape(-1, base.d_model), device=base.device
        ).to(out.dtype)
    return out


def tree_tokens_at(
    tree: MegaContextTree, positions: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Token ids at sorted positions, read in one contiguous range."""
    lo, hi = int(positions.min()), int(positions.max()) + 1
    return tree.tokens(lo, hi)[positions - lo].astype(np.int64)


def materialize(
    wc: WorkingContext,
    tree: MegaContextTree,
    base: BaseAdapter,
    policy: PositionPolicy = "compact",
    offset: int = 0,
) -> Materialized:
    """Inputs for ``base.forward`` reading the working context under a position policy."""
    if wc.num_tokens != tree.num_tokens:
        raise InvalidInputError(
            f"the working context covers {wc.num_tokens} tokens but the tree holds "
            f"{tree.num_tokens}; extend the WC after appending to the tree"
        )
    policy = base.check_policy(policy)
    positions = wc_positions(wc, policy, offset)
    device = base.device
    mu = sigma = None
    if policy != "compact" and base.quirks.position_kind == "rope":
        mu = torch.as_tensor(positions.mu, device=device)[None]
        if policy == "gaussian":
            sigma = torch.as_tensor(positions.sigma, device=device)[None]
    return Materialized(
        embeds=input_vectors(wc, tree, base)[None],
        position_ids=torch.as_tensor(positions.position_ids, device=device)[None],
        mu=mu,
        sigma=sigma,
    )
