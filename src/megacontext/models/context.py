"""From tree and working context to what the base model reads, and GistNet as the tree's gister.

* :func:`level1_inputs` is what GistNet reads of a level-1 node: the base's token embeddings,
  or its hidden states of the block (``GistNetConfig.inputs``) — one home for ingest, the query
  key, and training.
* :class:`GistNetGister` gists a :class:`~megacontext.core.MegaContextTree` with a trained
  GistNet: level-1 nodes from :func:`level1_inputs`, higher levels from child gists, one
  batched forward per call (D5), returning gists and keys (D7).
* :func:`materialize` turns working-context entries into input vectors (token embeddings for raw
  tokens, stored gists for gists) and positions under a policy (D6), ready for
  :meth:`BaseAdapter.forward`.
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
        if gistnet.config.gists_per_block > 1:
            raise InvalidInputError(
                f"this GistNet writes {gistnet.config.gists_per_block} gists per block, but the "
                "MegaContext tree stores one per node: it is a training experiment "
                "(`train gist`, `bench gist`), not a bundle sessions can use"
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


def entry_vectors(
    wc: WorkingContext, tree: MegaContextTree, base: BaseAdapter, start: int = 0
) -> torch.Tensor:
    """``(W − start, d)`` vectors of the entries from ``start`` on: token embeddings and stored
    gists, in WC order (decoding with a KV cache needs only the uncached suffix)."""
    if not 0 <= start <= wc.size:
        raise InvalidInputError(f"start must be in [0, {wc.size}], got {start}")
    levels, indices = wc.levels[start:], wc.indices[start:]
    out = torch.empty(len(levels), base.d_model, dtype=base.dtype, device=base.device)
    raw = np.flatnonzero(levels == 0)
    if raw.size:
        ids = torch.as_tensor(tree_tokens_at(tree, indices[raw]), device=base.device)
        out[torch.as_tensor(raw, device=base.device)] = base.embed(ids).to(out.dtype)
    for level in np.unique(levels[levels > 0]):
        where = np.flatnonzero(levels == level)
        rows = indices[where]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = tree.gists(int(level), lo, hi)[rows - lo]
        out[torch.as_tensor(where, device=base.device)] = torch.tensor(
            np.asarray(block, dtype=np.float32), device=base.device
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
        embeds=entry_vectors(wc, tree, base)[None],
        position_ids=torch.as_tensor(positions.position_ids, device=device)[None],
        mu=mu,
        sigma=sigma,
    )
