"""Training LensNet and GistNet's key head from labelled samples (D7, D8).

* **Loss.** Pairwise ranking (logistic, over label-ordered pairs within a sample, weighted by
  the label gap) plus regression to ``tanh(label / scale)``, on legal entries only.
* **Keys.** GistNet's key head is trained contrastively from the same labels: the query key should
  pick out the key of the gist whose expansion helps most (InfoNCE over a sample's gists).
* **Batches.** One optimizer step takes the mean loss over ``batch_size`` samples (the global
  batch). Under torch.distributed (``train lens --nproc N``) every process walks the same seeded
  order and takes every N-th sample of each batch; DDP averages the gradients, so a run follows
  the single-process run with the same global batch (``tests/nets/test_lens_ddp.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.core import MegaContextTree, MemoryBackend
from megacontext.errors import InvalidInputError, StaleLabelError
from megacontext.focus import FocusQuery
from megacontext.focus.scorer import LensInputs
from megacontext.models.adapter import BaseAdapter
from megacontext.models.context import GistNetGister, level1_inputs
from megacontext.models.gistnet import GistNet
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.train.distributed import data_parallel, global_sum
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

    Each epoch walks the samples in a seeded shuffled order, ``cfg.batch_size`` per optimizer
    step: the step's loss is the mean over the batch's samples that have a legal entry (a batch
    without any takes no step); gradients are clipped, then applied. An epoch's loss is the sum
    of the per-sample losses over the number of samples. Under torch.distributed the processes
    share each batch (see the module's docstring) and the reported losses are the global ones.

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
    step = _data_parallel(_LensStep(lens, cfg, scale), cfg.batch_size)
    prepared = [
        (s.scorer(base).inputs(s.wc, s.query), torch.as_tensor(s.labels, dtype=torch.float32))
        for s in samples
    ]
    # Whether a sample has a legal entry is known from its labels alone, so every process skips
    # the same samples and agrees on each batch's size without talking.
    usable = [bool(torch.isfinite(labels).any()) for _, labels in prepared]
    losses = []
    order = list(range(len(prepared)))
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.epochs), desc="lensnet", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        rng.shuffle(order)  # the same order in every process: one seed
        total = 0.0
        lens.train()
        for start in range(0, len(order), cfg.batch_size):
            batch = [prepared[i] for i in order[start : start + cfg.batch_size] if usable[i]]
            if not batch:
                continue  # no legal entry anywhere in the batch: no step, as with one sample
            loss, values = _batch_loss(step, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients arrive averaged over the processes
            torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
            opt.step()
            total += sum(values)
        losses.append(global_sum(total) / max(1, len(order)))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    lens.eval()
    return lens, scale, losses


class _LensStep(torch.nn.Module):
    """LensNet's loss on a list of samples, weighted, in one module call: DDP wants every use of
    the parameters between two gradient reductions inside one forward."""

    def __init__(self, lens: LensNet, cfg: LensTrainConfig, scale: float):
        super().__init__()
        self.lens = lens
        self.cfg = cfg
        self.scale = scale

    def forward(
        self, share: list[tuple[LensInputs, torch.Tensor]], weight: float
    ) -> tuple[torch.Tensor, list[float]]:
        """``weight`` times the summed loss of ``share``, and each sample's loss."""
        cfg, parts = self.cfg, []
        for inputs, labels in share:
            legal = torch.isfinite(labels)
            scores = self.lens(*inputs)[0]
            y = labels[legal].to(scores.device)
            loss = cfg.rank_weight * ranking_loss(scores[legal], y)
            loss = loss + cfg.regression_weight * F.mse_loss(
                scores[legal], torch.tanh(y / self.scale)
            )
            parts.append(loss)
        return weight * torch.stack(parts).sum(), [float(p.detach()) for p in parts]


def check_global_batch(batch_size: int, world: int) -> None:
    """Refuse a global batch smaller than the number of processes: some process would have an
    empty share in every step, and only slow the others down."""
    if batch_size < world:
        raise InvalidInputError(
            f"lens.batch_size {batch_size} is smaller than --nproc {world}: every process needs "
            f"a share of each batch; set lens.batch_size to at least {world} "
            f"(e.g. --set lens.batch_size={world})"
        )


def _data_parallel(module: torch.nn.Module, batch_size: int) -> torch.nn.Module:
    """``module`` wrapped in DDP when a process group is up (gradients averaged over the
    processes at each backward), else itself."""
    _, world = data_parallel()
    if world == 1:
        return module
    check_global_batch(batch_size, world)
    # LensNet and the key head use every parameter in every forward: no unused-parameter search.
    return torch.nn.parallel.DistributedDataParallel(module)


def _batch_loss(step: torch.nn.Module, batch: Sequence[Any]) -> tuple[torch.Tensor, list[float]]:
    """This process's loss on its share of a global ``batch`` (every world-th item, from its
    rank), scaled so that after DDP averages the gradients over the processes the step is the
    single-process step on the mean loss of the whole batch; and its share's per-item losses.

    A process whose share is empty (a batch shorter than the world) still has to join the
    gradient reduction every other process waits in: it runs the batch's first item at weight 0,
    which adds exact zeros.
    """
    rank, world = data_parallel()
    share = list(batch[rank::world])
    if not share:
        loss, _ = step(list(batch[:1]), 0.0)
        return loss, []
    # DDP divides the summed gradients by world: world / len(batch) makes that 1 / len(batch).
    return step(share, world / len(batch))


def key_target(sample: LensSample, gists: np.ndarray, mode: str) -> int | None:
    """Which of the working context's gists (``gists``: their WC positions) the query's key
    should pick, as an index into ``gists``; None when the sample teaches nothing.

    ``gain``: the gist whose expansion lowered the answer's NLL most (None if none helped).
    ``evidence``: on a retrieval sample, the gist covering the most evidence tokens (ties: the
    first); where no gist covers any (the evidence is raw), as ``gain``.
    """
    if mode == "evidence" and sample.evidence and len(gists):
        K = sample.wc.K
        spans = np.int64(K) ** sample.wc.levels[gists].astype(np.int64)
        lo = sample.wc.indices[gists].astype(np.int64) * spans
        hi = lo + spans
        covered = np.zeros(len(gists), np.int64)
        for start, end in sample.evidence:
            covered += np.clip(np.minimum(hi, end) - np.maximum(lo, start), 0, None)
        if covered.max() > 0:
            return int(np.argmax(covered))
    gains = sample.expand_gain[gists]
    if not np.isfinite(gains).any() or np.nanmax(gains) <= 0:
        return None
    return int(np.nanargmax(gains))


def train_key_head(
    base: BaseAdapter,
    gistnet: GistNet,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    progress: bool = True,
) -> list[float]:
    """Contrastive training of GistNet's key head only (gists stay exactly as they were).

    For each sample with a target (:func:`key_target`: the best expansion, or with
    ``key_targets: evidence`` the gist over a retrieval sample's evidence), the query key must
    pick that gist's key among the sample's gists (InfoNCE). Node and query features come from
    GistNet's frozen trunk. Samples go in their given order, ``cfg.batch_size`` per step (the
    mean loss of the batch), and under torch.distributed the processes share each batch, as in
    :func:`train_lensnet`.
    """
    head = gistnet.key_head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.key_lr)
    examples = []
    for s in samples:
        gists = np.flatnonzero(s.wc.levels > 0)
        target = key_target(s, gists, cfg.key_targets)
        if len(gists) < 2 or target is None:
            continue
        with torch.no_grad():
            nodes = gistnet.key_input(
                torch.stack(
                    [
                        _pooled_node(base, s, int(s.wc.levels[p]), int(s.wc.indices[p]))
                        for p in gists
                    ]
                )
            )
            block = torch.as_tensor(s.query.ids[-gistnet.config.K :], device=base.device)
            pooled = gistnet.pooled(level1_inputs(gistnet, base, block[None]).float(), 1)
            query = gistnet.key_input(pooled)[0]
        examples.append((nodes, query, target))
    step = _data_parallel(_KeyStep(head, cfg.key_temperature), cfg.batch_size)
    losses = []
    for _ in tqdm(range(cfg.key_epochs), desc="keys", disable=not progress, dynamic_ncols=True):
        total = 0.0
        # Samples in their given order, cfg.batch_size of them per step (the global batch).
        for start in range(0, len(examples), cfg.batch_size):
            loss, values = _batch_loss(step, examples[start : start + cfg.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP the gradients arrive averaged over the processes
            opt.step()
            total += sum(values)
        losses.append(global_sum(total) / max(1, len(examples)))
    return losses


class _KeyStep(torch.nn.Module):
    """The key head's InfoNCE loss on a list of samples, weighted, in one module call (for DDP,
    as :class:`_LensStep`)."""

    def __init__(self, head: torch.nn.Module, temperature: float):
        super().__init__()
        self.head = head
        self.temperature = temperature

    def forward(
        self, share: list[tuple[torch.Tensor, torch.Tensor, int]], weight: float
    ) -> tuple[torch.Tensor, list[float]]:
        """``weight`` times the summed loss of ``share``, and each sample's loss."""
        parts = []
        for nodes, query, target in share:
            keys = F.normalize(self.head(nodes), dim=-1)
            q = F.normalize(self.head(query[None]), dim=-1)
            logits = (keys @ q.T).squeeze(-1) / self.temperature
            target_t = torch.tensor([target], device=logits.device)
            parts.append(F.cross_entropy(logits[None], target_t))
        return weight * torch.stack(parts).sum(), [float(p.detach()) for p in parts]


def _pooled_node(base: BaseAdapter, sample: LensSample, level: int, index: int) -> torch.Tensor:
    """GistNet's pooled trunk features of one node, as the sample kept them when its tree was
    built (:attr:`LensSample.key_features`)."""
    return torch.as_tensor(sample.key_features[level][index], device=base.device)


@torch.no_grad()
def refresh_keys(sample: LensSample, base: BaseAdapter, gistnet: GistNet) -> None:
    """Recompute a sample's stored keys and query key after the key head changed.

    The keys of the nodes whose pooled features the sample kept (all, for a sample from
    :func:`make_sample`) come from the key head alone; the tree gists any others again.
    """
    key_backend = MemoryBackend(gistnet.config.key_dim, np.float32)
    for level in sorted(sample.key_features):
        pooled = torch.as_tensor(sample.key_features[level], device=base.device)
        key_backend.append(level, gistnet.keys_of(pooled).float().cpu().numpy())
    sample.tree = MegaContextTree(
        sample.tree.backend, GistNetGister(gistnet, base), K=sample.tree.K, key_backend=key_backend
    )
    sample.query = FocusQuery.of(base, gistnet, sample.query.ids)


__all__ = [
    "check_global_batch",
    "label_scale",
    "ranking_loss",
    "refresh_keys",
    "train_key_head",
    "train_lensnet",
]
