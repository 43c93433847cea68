"""Training LensNet and GistNet's key head from labelled samples (D7, D8).

* **Loss.** Pairwise ranking (logistic, over label-ordered pairs within a sample, weighted by
  the label gap) plus regression to ``tanh(label / scale)``, on legal entries only.
* **Keys.** GistNet's key head is trained contrastively from the same labels: the query key should
  pick out the key of the gist whose expansion helps most (InfoNCE over a sample's gists).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.core import MegaContextTree, MemoryBackend
from megacontext.errors import StaleLabelError
from megacontext.focus import FocusQuery
from megacontext.models.adapter import BaseAdapter
from megacontext.models.context import GistNetGister
from megacontext.models.gistnet import GistNet
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.train.lens.labels import LensSample, LensTrainConfig


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logistic loss over pairs whose labels differ: the higher label should score higher.

    Each pair weighs by its label gap. In a working context of ~100 candidates, nearly all pairs
    differ by noise (a few thousandths of a nat); with equal weights those pairs drown the few
    that matter, such as the needle's block against everything else.
    """
    diff_label = labels[:, None] - labels[None, :]
    pairs = diff_label > 1e-6
    if not pairs.any():
        return scores.new_zeros(())
    diff_score = scores[:, None] - scores[None, :]
    weights = diff_label[pairs]
    return (weights * F.softplus(-diff_score[pairs])).sum() / weights.sum()


def label_scale(samples: Sequence[LensSample], percentile: float = 99.0) -> float:
    """Scale mapping labels into the scorer's range (``tanh(label / scale)``): a high percentile
    of |label|, so that only the few labels that matter reach the saturated end."""
    values = np.concatenate(
        [np.abs(s.labels[np.isfinite(s.labels)]) for s in samples] or [np.ones(1)]
    )
    return float(max(np.percentile(values, percentile), 1e-6)) if values.size else 1.0


def train_lensnet(
    base: BaseAdapter,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    lens_config: LensNetConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    gist_version: str | None = None,
) -> tuple[LensNet, float, list[float]]:
    """Train a LensNet on labelled samples; returns (model, label scale, loss per epoch).

    With ``gist_version`` (the GistNet in use), labels made with other gists are refused: they
    describe a tree this LensNet will never see.
    """
    if gist_version is not None:
        stale = sum(1 for s in samples if s.gist_version != gist_version)
        if stale:
            raise StaleLabelError(
                f"{stale} of {len(samples)} samples were labelled with GistNet weights "
                f"{ {s.gist_version for s in samples} - {gist_version} }, not the current "
                f"{gist_version}; relabel them with the current GistNet first"
            )
    torch.manual_seed(cfg.seed)
    config = lens_config or LensNetConfig(d_model=base.d_model, **cfg.lensnet)
    lens = LensNet(config).to(base.device)
    opt = torch.optim.AdamW(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scale = label_scale(samples)
    prepared = [
        (s.scorer(base).inputs(s.wc, s.query), torch.as_tensor(s.labels, dtype=torch.float32))
        for s in samples
    ]
    losses = []
    order = list(range(len(prepared)))
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.epochs), desc="lensnet", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        rng.shuffle(order)
        total = 0.0
        lens.train()
        for i in order:
            inputs, labels = prepared[i]
            legal = torch.isfinite(labels)
            if not legal.any():
                continue
            scores = lens(*inputs)[0]
            y = labels[legal].to(scores.device)
            loss = cfg.rank_weight * ranking_loss(scores[legal], y)
            loss = loss + cfg.regression_weight * F.mse_loss(scores[legal], torch.tanh(y / scale))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order)))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    lens.eval()
    return lens, scale, losses


def train_key_head(
    base: BaseAdapter,
    gistnet: GistNet,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    progress: bool = True,
) -> list[float]:
    """Contrastive training of GistNet's key head only (gists stay exactly as they were).

    For each sample with a clearly best expansion, the query key must pick that gist's key among
    the sample's gists (InfoNCE). Node and query features come from GistNet's frozen trunk.
    """
    head = gistnet.key_head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.key_lr)
    batches = []
    for s in samples:
        gists = np.flatnonzero(s.wc.levels > 0)
        gains = s.expand_gain[gists]
        if len(gists) < 2 or not np.isfinite(gains).any() or np.nanmax(gains) <= 0:
            continue
        with torch.no_grad():
            nodes = torch.stack(
                [
                    _pooled_node(base, gistnet, s.tree, int(s.wc.levels[p]), int(s.wc.indices[p]))
                    for p in gists
                ]
            )
            block = base.embed(
                torch.as_tensor(s.query.ids[-gistnet.config.K :], device=base.device)
            )[None]
            query = gistnet.pooled(block.float(), 1)[0]
        batches.append((nodes, query, int(np.nanargmax(gains))))
    losses = []
    for _ in tqdm(range(cfg.key_epochs), desc="keys", disable=not progress, dynamic_ncols=True):
        total = 0.0
        for nodes, query, target in batches:
            keys = F.normalize(head(nodes), dim=-1)
            q = F.normalize(head(query[None]), dim=-1)
            logits = (keys @ q.T).squeeze(-1) / cfg.key_temperature
            loss = F.cross_entropy(logits[None], torch.tensor([target], device=logits.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(batches)))
    return losses


def _pooled_node(
    base: BaseAdapter, gistnet: GistNet, tree: MegaContextTree, level: int, index: int
) -> torch.Tensor:
    K = gistnet.config.K
    if level == 1:
        ids = torch.as_tensor(
            tree.tokens(index * K, (index + 1) * K).astype(np.int64), device=base.device
        )
        x = base.embed(ids)[None].float()
    else:
        x = torch.tensor(
            np.asarray(tree.gists(level - 1, index * K, (index + 1) * K), dtype=np.float32),
            device=base.device,
        )[None]
    return gistnet.pooled(x, level)[0]


def refresh_keys(sample: LensSample, base: BaseAdapter, gistnet: GistNet) -> None:
    """Recompute a sample's stored keys and query key after the key head changed."""
    key_backend = MemoryBackend(gistnet.config.key_dim, np.float32)
    sample.tree = MegaContextTree(
        sample.tree.backend, GistNetGister(gistnet, base), K=sample.tree.K, key_backend=key_backend
    )
    sample.query = FocusQuery.of(base, gistnet, sample.query.ids)


__all__ = [
    "label_scale",
    "ranking_loss",
    "refresh_keys",
    "train_key_head",
    "train_lensnet",
]
