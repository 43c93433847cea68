"""GistNet training (DESIGN §7, issue 6 §4): gists the frozen base can read in place of tokens.

One training window, K-aligned, read left to right::

    [ prefix: n_blocks · K tokens ][ lead: R raw tokens ][ scored: H tokens ]

* **Teacher**: the frozen base reads the window as tokens.
* **Student**: the same base reads it with a random subset of the prefix blocks — usually most of
  them — replaced by GistNet gists. Many stacked gists in one context is what a real working
  context looks like, and a GistNet trained on one gist per window makes stacked gists *worse than
  no history* (DESIGN §12).
* **Loss**: KL(teacher ‖ student) on the predictions of the H scored tokens, plus optional CE on
  those tokens, a *spread* term that keeps gists of different blocks apart, a *reconstruction*
  term (``recon_weight``, ICAE's autoencoding objective): the base, reading one gist, predicts
  the gisted block's own tokens, and a *contrastive* one (``contrast_weight``): each block must
  be reconstructed better from its own gist than from another window's by a margin. The KL
  alone is satisfied first by a placeholder that carries nothing of its span (issue 16);
  reconstruction is lowered by content, but also by a base that learns to predict blocks
  without their gists (LoRA does, measured); the contrast only by content.
* **Level 2**: the prefix is one K²-token node. By default the teacher reads it as its K LOD1 gists
  (hierarchical distillation: no teacher context longer than the base's), and the student reads the
  node's LOD2 gist(s) made by GistNet from those K gists (G of them for G gists per block, made from
  the mean of each child's G, as the tree's gister makes them).

Evaluation (:func:`evaluate_gists`) reports, per level and with *every* prefix block gisted,
``NLL_full``, ``NLL_drop`` (prefix deleted), ``NLL_gist``, ``ΔNLL = NLL_gist − NLL_full`` and the
gap closure ``(NLL_drop − NLL_gist) / (NLL_drop − NLL_full)``, with a bootstrap 95% interval. At
level 2 the full reference is, by default, the one the teacher used (``lod2_teacher``): with
``gists`` the prefix read as its K LOD1 gists, since a level-2 window (K² + lead + H tokens) is
longer than a small base's context and its token-level "full" NLL is then *worse* than deleting
the prefix; the token-level NLL is reported beside it (``nll_full_tokens``).

Gap closure alone cannot tell a gist that carries its span from a good placeholder for the
splice (issue 16 found one GistNet at 0.355 whose gists of *other* spans closed 0.352). So every
report carries two content-free controls — each window read with another window's gists
(``shuffled_gap_closure``) and with one constant gist everywhere, the better of the mean gist
and the mean gist at the gists' norm (``constant_gap_closure``) — and the
**content gap closure** ``(NLL_constant − NLL_gist) / (NLL_constant − NLL_full)``: how much of
what the placeholder leaves the gists' content closes. ``own_minus_shuffled`` is their content's
share of the gap closure.

The base's weights never change (D1): only GistNet has an optimizer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import load_bundle, save_bundle
from megacontext.models.context import level1_inputs
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lora import LoraAdapter, LoraSettings
from megacontext.train.base import bf16_is_faster
from megacontext.train.checkpoint import load_payload, save_atomically
from megacontext.train.config import RunSettings, start_run
from megacontext.train.distributed import data_parallel, global_mean, global_min, rank_zero

CODE_SOURCES = frozenset({"stdlib"})
CHECKPOINT = "checkpoint.pt"  # in a run's out_dir: where `train gist` resumes from
# What may differ between a checkpoint's run and its continuation: how long the run goes (the
# learning-rate schedule then decays to the new end from where the run is) and how much the
# final evaluation reads. Anything else would make the continuation a different run.
EXTENDABLE = frozenset({"steps", "time_budget_s", "final_eval_windows"})


@dataclass
class GistTrainConfig:
    """Everything a GistNet training run needs besides the base model and the data."""

    seed: int = 0
    prefix_blocks: int = 8
    lead_tokens: int = 32
    horizon: int = 64
    min_gist_fraction: float = 0.5
    lod2_probability: float = 0.25
    lod2_teacher: Literal["gists", "tokens"] = "gists"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ce_weight: float = 0.0
    spread_weight: float = 0.0
    recon_weight: float = 0.0
    # The contrastive reconstruction term (contrast_loss): its weight, and the margin in nats
    # by which a block's own gist must reconstruct it better than another window's.
    contrast_weight: float = 0.0
    contrast_margin: float = 1.0
    # LoRA on the base's attention, trained with GistNet so that the base learns to read gists
    # (``{r, alpha, targets, dropout}``, see LoraSettings); None trains GistNet alone.
    lora: dict[str, Any] | None = None
    # bf16 autocast for the base's forwards: true, false, or "auto" (on where the device runs
    # bf16 natively: CUDA with bf16, or a CPU on which a timed forward is faster in bf16).
    autocast: bool | str = False
    checkpoint_interval: int = 0
    time_budget_s: float | None = None
    eval_interval: int = 200
    eval_windows: int = 64
    final_eval_windows: int = 256
    plateau_patience: int = 0
    plateau_tol: float = 1e-3
    gistnet: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_bundle(cls, training: Mapping[str, Any]) -> GistTrainConfig:
        """The settings a bundle's GistNet was trained with, from its manifest's ``training``:
        ``train gist`` records them as they are, ``train lens`` and ``train focus`` under
        ``gist``; the defaults when neither (a bundle from elsewhere)."""
        if "gist" in training:
            return cls(**training["gist"])
        if "prefix_blocks" in training:
            return cls(**training)
        return cls()

    def __post_init__(self) -> None:
        if not 0.0 < self.min_gist_fraction <= 1.0:
            raise InvalidInputError("min_gist_fraction must be in (0, 1]")
        if not 0.0 <= self.lod2_probability <= 1.0:
            raise InvalidInputError("lod2_probability must be in [0, 1]")
        if self.prefix_blocks < 1 or self.horizon < 1 or self.lead_tokens < 1:
            # With no lead token, the prefix-deleted reference (DROP) has nothing to predict
            # the first scored token from.
            raise InvalidInputError("prefix_blocks, horizon and lead_tokens must be >= 1")
        if self.contrast_weight and self.batch_size < 2:
            raise InvalidInputError(
                "contrast_weight needs batch_size >= 2: each block is contrasted with the gist "
                "of another window in the batch"
            )
        if self.lod2_teacher not in ("gists", "tokens"):
            raise InvalidInputError("lod2_teacher must be 'gists' or 'tokens'")
        if self.autocast not in (True, False, "auto"):
            raise InvalidInputError(f"autocast must be true, false or auto, got {self.autocast!r}")


# --------------------------------------------------------------------------- data


class WindowSampler:
    """Seeded windows from per-source token streams, mixed by a curriculum from prose to code.

    At training progress ``p`` (0 → 1) a prose source has weight 1 and a code source weight ``p``:
    GistNet first learns to summarise prose, then code joins the mixture.
    """

    def __init__(self, streams: Mapping[str, np.ndarray], seed: int = 0):
        self.streams = {k: np.asarray(v) for k, v in streams.items() if len(v)}
        if not self.streams:
            raise InvalidInputError("no token streams to sample windows from")
        self.seed = seed

    def weights(self, progress: float) -> dict[str, float]:
        return {name: (progress if name in CODE_SOURCES else 1.0) for name in self.streams}

    def sample(self, step: int, batch: int, length: int, progress: float) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        weights = self.weights(progress)
        names = [n for n in self.streams if len(self.streams[n]) > length and weights[n] > 0]
        if not names:
            names = [n for n in self.streams if len(self.streams[n]) > length]
        if not names:
            raise InvalidInputError(f"every token stream is shorter than a window ({length})")
        p = np.array([weights[n] or 1e-9 for n in names])
        rows = []
        for name in rng.choice(names, size=batch, p=p / p.sum()):
            stream = self.streams[str(name)]
            start = int(rng.integers(0, len(stream) - length))
            rows.append(stream[start : start + length])
        return np.stack(rows).astype(np.int64)


# --------------------------------------------------------------------------- contexts


def window_length(cfg: GistTrainConfig, K: int, level: int) -> int:
    prefix = cfg.prefix_blocks * K if level == 1 else K * K
    return prefix + cfg.lead_tokens + cfg.horizon


def _positions(batch: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)


def _scored_logits(base: BaseAdapter, seq: torch.Tensor, horizon: int) -> torch.Tensor:
    """Logits predicting the last ``horizon`` entries of ``seq`` (compact positions)."""
    positions = _positions(seq.shape[0], seq.shape[1], seq.device)
    out = base.forward(seq, positions, use_cache=False, logits_last=horizon + 1)
    return out.logits[:, :-1].float()


def reconstruction_nll(
    base: BaseAdapter, gists: torch.Tensor, ids: torch.Tensor, K: int, gisted: np.ndarray
) -> torch.Tensor:
    """``(B, n_gisted)`` mean NLL of each gisted block's K tokens, read by the base as
    ``[gist][its tokens]``.

    ``gists``: ``(B, n_gisted · G, d)``, in block order, the G gists of each prefix block where
    ``gisted`` is True; ``ids``: the windows ``(B, T)``. The first token is predicted from the
    gists alone, each later one from the gists and the tokens before it.
    """
    n = int(gisted.sum())
    b, d = gists.shape[0], gists.shape[-1]
    per_block = gists.shape[1] // n  # gists per block, in block order
    blocks = ids[:, : len(gisted) * K].reshape(b, len(gisted), K)
    targets = blocks[:, torch.as_tensor(np.flatnonzero(gisted), device=ids.device)].reshape(-1, K)
    prefix = gists.reshape(b * n, per_block, d)
    inputs = torch.cat([prefix, base.embed(targets[:, :-1]).to(gists.dtype)], 1)
    length = per_block + K - 1
    out = base.forward(inputs, _positions(b * n, length, ids.device), use_cache=False)
    logits = out.logits[:, per_block - 1 :].float()  # the predictions of the block's K tokens
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return nll.reshape(b, n, K).mean(dim=-1)


def reconstruction_loss(
    base: BaseAdapter, gists: torch.Tensor, ids: torch.Tensor, K: int, gisted: np.ndarray
) -> torch.Tensor:
    """Mean of :func:`reconstruction_nll` over the gisted blocks: ICAE's autoencoding loss."""
    return reconstruction_nll(base, gists, ids, K, gisted).mean()


def contrast_loss(
    base: BaseAdapter,
    gists: torch.Tensor,
    ids: torch.Tensor,
    K: int,
    gisted: np.ndarray,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A hinge on how much better each block is reconstructed from its own gist than from the
    gist of the same block slot in the next window: ``mean(relu(margin − (NLL_other −
    NLL_own)))``. A placeholder, or a base that learned to predict blocks without their gists
    (LoRA), gets no credit here: only content lowers it. Returns ``(loss, NLL_own)``."""
    own = reconstruction_nll(base, gists, ids, K, gisted)
    other = reconstruction_nll(base, gists.roll(1, dims=0), ids, K, gisted)
    return F.relu(margin - (other - own)).mean(), own


def block_sources(
    base: BaseAdapter, gistnet: GistNet, ids: torch.Tensor, blocks: np.ndarray
) -> torch.Tensor:
    """GistNet's level-1 inputs for the prefix blocks ``blocks`` (indices) of windows ``ids``,
    each block read alone as ingest reads it (:func:`~megacontext.models.context.level1_inputs`):
    ``(B, len(blocks), K, d)``. Only the blocks a step gists: with ``inputs: hidden`` every
    block costs a base forward."""
    K = gistnet.config.K
    chosen = torch.as_tensor(blocks, device=ids.device)
    picked = ids[:, : (int(blocks.max()) + 1) * K].reshape(ids.shape[0], -1, K)[:, chosen]
    inputs = level1_inputs(gistnet, base, picked.reshape(-1, K))
    return inputs.reshape(ids.shape[0], len(blocks), K, -1)


def lod1_student(
    gistnet: GistNet,
    embeds: torch.Tensor,
    sources: torch.Tensor,
    prefix_blocks: int,
    gisted: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student sequence with the ``gisted`` prefix blocks replaced by their gists, made by
    GistNet from ``sources``, the gisted blocks' inputs in order (:func:`block_sources`).

    Returns ``(sequence, gists)``; ``gists`` is ``(B, n_gisted · G, d)`` with G gists per
    block (``gists_per_block``).
    """
    b, _, d = embeds.shape
    K = gistnet.config.K
    gists, _ = gistnet(sources.reshape(-1, K, d), 1)
    gists = gists.reshape(b, -1, d).to(embeds.dtype)  # each block's G gists, in block order
    return splice_gists(embeds, gists, K, prefix_blocks, gisted), gists


def splice_gists(
    embeds: torch.Tensor, gists: torch.Tensor, K: int, prefix_blocks: int, gisted: np.ndarray
) -> torch.Tensor:
    """``embeds`` with its ``gisted`` prefix blocks replaced, in order, by ``gists``
    ``(B, n_gisted · G, d)``, G per block: whose gists they are is up to the caller (the
    evaluation's content-free controls splice another window's, or a constant)."""
    b, _, d = embeds.shape
    blocks = embeds[:, : prefix_blocks * K].reshape(b, prefix_blocks, K, d)
    per_block = gists.shape[1] // max(1, int(np.sum(gisted)))
    parts: list[torch.Tensor] = []
    g = 0
    for block in range(prefix_blocks):
        if gisted[block]:
            parts.append(gists[:, g : g + per_block].to(embeds.dtype))
            g += per_block
        else:
            parts.append(blocks[:, block])
    parts.append(embeds[:, prefix_blocks * K :])
    return torch.cat(parts, dim=1)


def lod2_student(
    gistnet: GistNet, embeds: torch.Tensor, sources: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefix = one K²-token node, whose LOD1 gists GistNet makes from ``sources``, its K
    blocks' inputs (:func:`block_sources`), and whose G LOD2 gists it makes from those (a
    child of G gists read as their mean, as the tree's gister reads it). Returns (student seq:
    the G LOD2 gists then the rest, hierarchical teacher seq: the K·G LOD1 gists then the rest,
    LOD1 gists ``(B, K·G, d)``)."""
    b, _, d = embeds.shape
    K, G = gistnet.config.K, gistnet.config.gists_per_block
    blocks = sources.reshape(b * K, K, d)
    lod1, _ = gistnet(blocks, 1)
    lod1 = lod1.reshape(b, K, G, d)
    lod2, _ = gistnet(lod1.mean(dim=2), 2)
    rest = embeds[:, K * K :]
    student = torch.cat([lod2.reshape(b, G, d).to(embeds.dtype), rest], dim=1)
    lod1 = lod1.reshape(b, K * G, d)
    teacher = torch.cat([lod1.detach().to(embeds.dtype), rest], dim=1)
    return student, teacher, lod1


class StudentStep(torch.nn.Module):
    """One step's student side as one module call: the gists of a window's prefix, spliced in.
    Distributed training wraps it in DDP, which wants every use of GistNet's parameters inside
    one forward (a LOD2 step calls GistNet twice; a LOD1 step leaves level-2 parameters unused).
    """

    def __init__(self, gistnet: GistNet):
        super().__init__()
        self.gistnet = gistnet

    def forward(
        self,
        embeds: torch.Tensor,
        sources: torch.Tensor,
        level: int,
        prefix_blocks: int,
        gisted: np.ndarray | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if level == 1:
            assert gisted is not None
            student, gists = lod1_student(self.gistnet, embeds, sources, prefix_blocks, gisted)
            return student, None, gists
        return lod2_student(self.gistnet, embeds, sources)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over scored positions of KL(teacher ‖ student)."""
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    return F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")


def spread_loss(gists: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between distinct gists of a batch (0 = all orthogonal)."""
    flat = F.normalize(gists.reshape(-1, gists.shape[-1]).float(), dim=-1)
    if flat.shape[0] < 2:
        return flat.new_zeros(())
    sim = flat @ flat.T
    off = sim - torch.diag(torch.diagonal(sim))
    return (off**2).sum() / (flat.shape[0] * (flat.shape[0] - 1))


# --------------------------------------------------------------------------- evaluation


@dataclass
class LevelReport:
    """Per-level quality of gists with every prefix block gisted."""

    level: int
    windows: int
    nll_full: float
    nll_drop: float
    nll_gist: float
    delta_nll: float
    gap_closure: float
    gap_closure_ci: tuple[float, float]
    reference: str = "tokens"  # what NLL_full read: the prefix as "tokens" or as LOD1 "gists"
    nll_full_tokens: float = float("nan")  # the prefix as tokens (equals nll_full at level 1)
    # Content-free controls: each window read with another window's gists (``shuffled``), and
    # one constant vector in every gist's place (``constant``): the better, by held-out NLL, of
    # the mean gist and the mean gist scaled to the gists' mean norm (``constant_kind``; a
    # mean of gists whose content parts differ is shorter than any of them, and a base never
    # saw so short a gist in training). A gist that carries its span's content beats both; a
    # good placeholder closes as much as they do.
    nll_shuffled: float = float("nan")
    nll_constant: float = float("nan")
    constant_kind: str = "mean"
    shuffled_gap_closure: float = float("nan")
    constant_gap_closure: float = float("nan")
    content_gap_closure: float = float(
        "nan"
    )  # (NLL_constant − NLL_gist) / (NLL_constant − NLL_full)
    content_gap_closure_ci: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def own_minus_shuffled(self) -> float:
        """Gap closure the window's own gists add over another window's: their content."""
        return self.gap_closure - self.shuffled_gap_closure


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-window mean NLL of ``targets`` (B, H) under ``logits`` (B, H, V)."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(targets.shape).mean(dim=1)


@torch.no_grad()
def evaluate_gists(
    base: BaseAdapter,
    gistnet: GistNet,
    windows: np.ndarray,
    cfg: GistTrainConfig,
    level: int,
    batch_size: int = 16,
    seed: int = 0,
    teacher: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> LevelReport:
    """FULL / DROP / GIST NLL of the scored tokens over held-out ``windows`` at one level.

    FULL and DROP are read by the plain base (``teacher``: e.g. with LoRA disabled); GIST by the
    base as it is (the student). At level 2, FULL reads what the training teacher read
    (``cfg.lod2_teacher``); the token-level FULL is kept in ``nll_full_tokens``.
    """
    gistnet.eval()
    K, H, G = gistnet.config.K, cfg.horizon, gistnet.config.gists_per_block
    prefix = cfg.prefix_blocks * K if level == 1 else K * K
    hierarchical = level == 2 and cfg.lod2_teacher == "gists"
    every = np.ones(cfg.prefix_blocks, bool)

    def read(embeds: torch.Tensor, gists: torch.Tensor) -> torch.Tensor:
        """The student sequence: the prefix read as ``gists`` (B, n, d)."""
        if level == 1:
            return splice_gists(embeds, gists, K, cfg.prefix_blocks, every)
        return torch.cat([gists.to(embeds.dtype), embeds[:, prefix:]], dim=1)

    tokens, drop, own, hier, made = [], [], [], [], []
    batches = range(0, len(windows), batch_size)
    for lo in batches:
        ids = torch.as_tensor(windows[lo : lo + batch_size], device=base.device)
        targets = ids[:, -H:]
        embeds = base.embed(ids)
        with teacher():
            tokens.append(_nll(_scored_logits(base, embeds, H), targets))
            drop.append(_nll(_scored_logits(base, embeds[:, prefix:], H), targets))
        sources = block_sources(base, gistnet, ids, np.arange(prefix // K))
        if level == 1:
            seq, gists = lod1_student(gistnet, embeds, sources, cfg.prefix_blocks, every)
        else:
            seq, lod1_seq, _ = lod2_student(gistnet, embeds, sources)
            gists = seq[:, :G]
            if hierarchical:
                with teacher():
                    hier.append(_nll(_scored_logits(base, lod1_seq, H), targets))
        own.append(_nll(_scored_logits(base, seq, H), targets))
        made.append(gists.float())
    # The controls, in a second pass once every window's gists are known: window i reads the
    # gists of window i + 1, then each constant candidate in every gist's place.
    all_gists = torch.cat(made)
    shuffled_gists = all_gists.roll(-1, dims=0)
    # One constant per gist slot of a block (G of them), repeated over the gisted blocks.
    slots = all_gists.reshape(all_gists.shape[0], -1, G, all_gists.shape[-1])
    mean_gist = slots.mean(dim=(0, 1))
    scale = slots.norm(dim=-1).mean(dim=(0, 1)) / mean_gist.norm(dim=-1).clamp_min(1e-12)
    blocks_gisted = all_gists.shape[1] // G
    constants = {
        "mean": mean_gist.repeat(blocks_gisted, 1),
        "mean_rescaled": (mean_gist * scale[:, None]).repeat(blocks_gisted, 1),
    }
    shuffled: list[torch.Tensor] = []
    constant: dict[str, list[torch.Tensor]] = {kind: [] for kind in constants}
    for lo in batches:
        ids = torch.as_tensor(windows[lo : lo + batch_size], device=base.device)
        targets, embeds = ids[:, -H:], base.embed(ids)
        chunk = shuffled_gists[lo : lo + batch_size]
        shuffled.append(_nll(_scored_logits(base, read(embeds, chunk), H), targets))
        for kind, vector in constants.items():
            flat = vector.expand_as(chunk)
            constant[kind].append(_nll(_scored_logits(base, read(embeds, flat), H), targets))
    best = min(constant, key=lambda kind: float(torch.cat(constant[kind]).mean()))
    t, d, g, sh, c = (
        torch.cat(x).cpu().numpy().astype(np.float64)
        for x in (tokens, drop, own, shuffled, constant[best])
    )
    f = torch.cat(hier).cpu().numpy().astype(np.float64) if hierarchical else t
    rng = np.random.default_rng(seed)
    boots, content_boots = [], []
    for _ in range(1000):
        idx = rng.integers(0, len(f), len(f))
        boots.append(_closure(f[idx], d[idx], g[idx]))
        content_boots.append(_closure(f[idx], c[idx], g[idx]))
    low, high = np.percentile(boots, [2.5, 97.5])
    content_low, content_high = np.percentile(content_boots, [2.5, 97.5])
    return LevelReport(
        level=level,
        windows=len(f),
        nll_full=float(f.mean()),
        nll_drop=float(d.mean()),
        nll_gist=float(g.mean()),
        delta_nll=float(g.mean() - f.mean()),
        gap_closure=_closure(f, d, g),
        gap_closure_ci=(float(low), float(high)),
        reference="gists" if hierarchical else "tokens",
        nll_full_tokens=float(t.mean()),
        nll_shuffled=float(sh.mean()),
        nll_constant=float(c.mean()),
        constant_kind=best,
        shuffled_gap_closure=_closure(f, d, sh),
        constant_gap_closure=_closure(f, d, c),
        content_gap_closure=_closure(f, c, g),  # the constant gist in place of the drop
        content_gap_closure_ci=(float(content_low), float(content_high)),
    )


def _closure(full: np.ndarray, drop: np.ndarray, gist: np.ndarray) -> float:
    gap = drop.mean() - full.mean()
    return float((drop.mean() - gist.mean()) / gap) if abs(gap) > 1e-12 else float("nan")


# --------------------------------------------------------------------------- training


@dataclass
class GistTrainResult:
    gistnet: GistNet
    history: list[dict[str, float]]
    evals: list[dict[str, Any]]
    reports: dict[int, LevelReport]
    seconds: float
    tokens: int


def lr_at(step: int, cfg: GistTrainConfig, seconds: float) -> float:
    """Linear warmup, then cosine decay to ``lr · min_lr_ratio`` by the end of steps or time."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.time_budget_s:
        progress = max(progress, seconds / cfg.time_budget_s)
    progress = min(1.0, progress)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def embedding_norm(base: BaseAdapter) -> float:
    """Median L2 norm of the base's input-embedding rows: the norm gists are scaled to."""
    weight = base.embed(torch.arange(base.vocab_size, device=base.device)).float()
    return float(weight.norm(dim=-1).median())


def make_gistnet(base: BaseAdapter, cfg: GistTrainConfig, K: int = 32) -> GistNet:
    torch.manual_seed(cfg.seed)
    options = {"K": K, **cfg.gistnet}
    config = GistNetConfig(d_model=base.d_model, target_norm=embedding_norm(base), **options)
    return GistNet(config).to(base.device)


def _use_bf16(base: BaseAdapter, cfg: GistTrainConfig, log: Callable[[str], None]) -> bool:
    """``cfg.autocast`` decided: "auto" times a forward of the base in both precisions on CPU
    (every process must agree, so bf16 only if it won in all of them)."""
    if cfg.autocast != "auto":
        return bool(cfg.autocast)
    if base.device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    ids = torch.arange(3, 131, device=base.device)[None] % base.vocab_size
    embeds, positions = base.embed(ids), torch.arange(ids.shape[1], device=base.device)[None]

    @torch.no_grad()
    def forward(bf16: bool) -> None:
        with torch.autocast(base.device.type, dtype=torch.bfloat16, enabled=bf16):
            base.forward(embeds, positions, use_cache=False)

    forward(False)  # warm up
    faster, timings = bf16_is_faster(forward, ids.shape[1])
    use = bool(global_min(int(faster)))
    rates = ", ".join(f"{k.split('_')[0]} {v:,.0f} tok/s" for k, v in timings.items())
    log(f"bf16 autocast {'on' if use else 'off'} (auto: a base forward ran {rates})")
    return use


def train_gistnet(  # noqa: C901, PLR0912, PLR0913, PLR0917, PLR0915  (the distillation loop; co-learning passes its own parameters and phases)
    base: BaseAdapter,
    train: WindowSampler,
    val_windows: Mapping[int, np.ndarray],
    cfg: GistTrainConfig,
    gistnet: GistNet | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    params: Sequence[torch.nn.Parameter] | None = None,
    teacher: Callable[[], AbstractContextManager[Any]] = nullcontext,
    desc: str = "gistnet",
    checkpoint: Path | None = None,
    lora: LoraAdapter | None = None,
) -> GistTrainResult:
    """Train GistNet against the frozen ``base``; ``val_windows`` maps level → held-out windows.

    ``params`` (default: GistNet's) are what the distillation loss updates — co-learning passes
    LoRA parameters, or both. ``teacher`` is entered around the teacher's forwards (co-learning
    disables LoRA there, so the teacher is always the plain base). With ``plateau_patience``,
    training stops once the held-out LOD1 NLL_gist has not improved by ``plateau_tol`` for that
    many evaluations.

    With ``checkpoint`` (a file path), GistNet, the optimizer and the run's state are saved
    there every ``checkpoint_interval`` steps, and a run that finds the file resumes from it:
    windows and gisted blocks are seeded by step, so the resumed run is the uninterrupted one.

    With ``lora`` (``train gist`` with ``gist.lora``), its adapters train with GistNet, the
    teacher is the plain base (adapters disabled), and the checkpoint carries them too.
    """
    gistnet = gistnet or make_gistnet(base, cfg)
    K = gistnet.config.K
    if checkpoint is not None and params is not None:
        raise InvalidInputError("co-learning phases are not checkpointed; pass no checkpoint")
    if lora is not None and params is not None:
        raise InvalidInputError("pass the LoRA adapter or the parameters to train, not both")
    resumed = _resume(checkpoint, cfg, gistnet, lora)
    colearning = params is not None or lora is not None
    step_module, share, world = _student_step(gistnet, cfg, colearning)
    if lora is not None:
        params, teacher = [*gistnet.parameters(), *lora.lora_parameters()], lora.disabled
    trainable = list(params) if params is not None else list(gistnet.parameters())
    decay = [p for p in trainable if p.dim() >= 2]
    other = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0}],
        lr=cfg.lr,
    )
    history: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    tokens, first_step, elapsed = 0, 0, 0.0
    best, stale = float("inf"), 0
    if resumed is not None:
        opt.load_state_dict(resumed["optimizer"])
        history, evals = resumed["history"], resumed["evals"]
        tokens, first_step, elapsed = resumed["tokens"], resumed["step"], resumed["seconds"]
        best, stale = resumed["best"], resumed["stale"]
        log(f"{desc}: resuming from {checkpoint} at step {first_step}")
        for key in sorted(EXTENDABLE):
            if resumed["config"].get(key) != getattr(cfg, key):
                log(f"{desc}: {key} {resumed['config'].get(key)} -> {getattr(cfg, key)}")
    use_bf16 = _use_bf16(base, cfg, log)
    started = time.perf_counter() - elapsed
    bar = tqdm(
        range(first_step, cfg.steps),
        initial=first_step,
        total=cfg.steps,
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
    )
    rank, _ = data_parallel()
    saved_step = first_step

    def save_checkpoint(next_step: int) -> None:
        nonlocal saved_step
        saved_step = next_step
        if checkpoint is None or not cfg.checkpoint_interval or rank != 0:
            return
        save_atomically(
            {
                "config": asdict(cfg),
                "gistnet": gistnet.state_dict(),
                **({"lora": lora.state_dict()} if lora is not None else {}),
                "optimizer": opt.state_dict(),
                "history": history,
                "evals": evals,
                "tokens": tokens,
                "step": next_step,
                "seconds": time.perf_counter() - started,
                "best": best,
                "stale": stale,
            },
            checkpoint,
        )

    for step in bar:
        seconds = time.perf_counter() - started
        if cfg.time_budget_s and seconds >= cfg.time_budget_s:
            log(f"time budget of {cfg.time_budget_s:.0f} s used at step {step}")
            break
        rng = np.random.default_rng([cfg.seed, step, 1])
        level = 2 if rng.random() < cfg.lod2_probability else 1
        length = window_length(cfg, K, level)
        # Every process samples the same global batch and takes its share of the rows.
        window = train.sample(step, cfg.batch_size, length, step / max(1, cfg.steps))
        ids = torch.as_tensor(window[share], device=base.device)
        lr = lr_at(step, cfg, seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        gistnet.train()
        embeds = base.embed(ids)
        precision = torch.autocast(base.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        with precision:
            loss, parts = _step_loss(
                base, gistnet, step_module, ids, embeds, level, rng, cfg, teacher
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        tokens += int(ids.numel()) * world
        if world > 1:  # the logged numbers are the global batch's, as in one process
            parts = {k: global_mean(v) for k, v in parts.items()}
        history.append(
            {
                "step": step,
                "level": level,
                "loss": global_mean(float(loss.detach())),
                "lr": lr,
                **parts,
            }
        )
        # With a time budget the run ends on the clock, not the step count: show what is left.
        budget_left = {}
        if cfg.time_budget_s:
            left = cfg.time_budget_s - (time.perf_counter() - started)
            budget_left = {"budget_left": f"{max(0.0, left) / 60:.1f} min"}
        bar.set_postfix(
            loss=f"{float(loss.detach()):.4f}",
            lvl=level,
            tok_s=f"{tokens / max(1e-9, time.perf_counter() - started):,.0f}",
            **budget_left,
        )
        if cfg.eval_interval and (step + 1) % cfg.eval_interval == 0:
            row: dict[str, Any] = {"step": step + 1}
            for lvl, windows in val_windows.items():
                report = evaluate_gists(
                    base, gistnet, windows[: cfg.eval_windows], cfg, lvl, teacher=teacher
                )
                row[f"lod{lvl}_gap_closure"] = report.gap_closure
                row[f"lod{lvl}_content_gap_closure"] = report.content_gap_closure
                row[f"lod{lvl}_own_minus_shuffled"] = report.own_minus_shuffled
                row[f"lod{lvl}_delta_nll"] = report.delta_nll
                row[f"lod{lvl}_nll_gist"] = report.nll_gist
            evals.append(row)
            log(json.dumps(row))
            if cfg.plateau_patience and 1 in val_windows:
                if row["lod1_nll_gist"] < best - cfg.plateau_tol:
                    best, stale = row["lod1_nll_gist"], 0
                else:
                    stale += 1
                if stale >= cfg.plateau_patience:
                    log(f"{desc}: held-out NLL plateaued at step {step + 1}; stopping the phase")
                    break
        due = cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0
        if due:
            save_checkpoint(step + 1)
    # The run's end is a checkpoint too, so that a longer budget continues from its last step.
    if history and history[-1]["step"] + 1 > saved_step:
        save_checkpoint(int(history[-1]["step"]) + 1)
    seconds = time.perf_counter() - started
    reports = {
        lvl: evaluate_gists(
            base, gistnet, windows[: cfg.final_eval_windows], cfg, lvl, teacher=teacher
        )
        for lvl, windows in val_windows.items()
    }
    gistnet.eval()
    return GistTrainResult(gistnet, history, evals, reports, seconds, tokens)


def start_from_bundle(
    gistnet: GistNet, path: str | Path, base: BaseAdapter, lora: LoraAdapter | None = None
) -> bool:
    """Load the GistNet of the bundle at ``path`` into ``gistnet``, and its LoRA adapters into
    ``lora``; refused when the bundle was made for another base, its GistNet has another shape,
    or its LoRA does not match ``lora`` (a GistNet trained with LoRA writes gists for the
    adapted base, so it continues only with those adapters). A bundle without LoRA may start a
    run that adds it (the adapters then start at zero). Returns whether LoRA was loaded."""
    bundle = load_bundle(path, fingerprints=base.fingerprints)
    donor = bundle.get("gistnet")
    assert isinstance(donor, GistNet)
    theirs, ours = asdict(donor.config), asdict(gistnet.config)
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ)
        raise InvalidInputError(
            f"init_from {path}: its GistNet has another shape ({shown}); set gist.gistnet "
            "to match it, or start from a fresh GistNet"
        )
    if bundle.lora is not None:
        settings = LoraSettings.from_mapping(bundle.lora[0])
        wanted = f"gist.lora={{r: {settings.r}, alpha: {settings.alpha}}}"
        if lora is None:
            raise InvalidInputError(
                f"init_from {path}: its GistNet was trained with LoRA adapters on the base; "
                f"continue it with them (--set '{wanted}')"
            )
        if settings != lora.config:
            raise InvalidInputError(
                f"init_from {path}: its LoRA is {settings.to_dict()}, this run's is "
                f"{lora.config.to_dict()}; set {wanted} to continue it"
            )
        lora.load_state_dict(bundle.lora[1])
    gistnet.load_state_dict(donor.state_dict())
    return bundle.lora is not None


def _resume(
    path: Path | None, cfg: GistTrainConfig, gistnet: GistNet, lora: LoraAdapter | None
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one (refused when another config wrote it), with
    its GistNet and LoRA weights loaded."""
    if path is None or not path.is_file():
        return None
    state = load_payload(path)
    saved = state.get("config", {})
    changed = sorted(k for k in asdict(cfg) if saved.get(k) != getattr(cfg, k))
    if set(changed) - EXTENDABLE:
        raise InvalidInputError(
            f"{path} is a checkpoint of a GistNet run with other settings "
            f"({', '.join(sorted(set(changed) - EXTENDABLE))} differ); use another out_dir, or "
            "delete the checkpoint to start over (only "
            f"{', '.join(sorted(EXTENDABLE))} may change between a run and its continuation)"
        )
    gistnet.load_state_dict(state["gistnet"])
    if lora is not None:
        lora.load_state_dict(state["lora"])
    return state


def _step_loss(  # noqa: PLR0913, PLR0917  (one training step's inputs)
    base: BaseAdapter,
    gistnet: GistNet,
    step_module: torch.nn.Module,
    ids: torch.Tensor,
    embeds: torch.Tensor,
    level: int,
    rng: np.random.Generator,
    cfg: GistTrainConfig,
    teacher: Callable[[], AbstractContextManager[Any]],
) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss and its logged parts: a random share of the prefix gisted at LOD1, the
    whole K²-token node at LOD2. ``step_module`` is GistNet's student step (DDP-wrapped when
    distributed); ``gistnet`` itself is only read for its level-1 inputs."""
    gisted: np.ndarray | None = None
    K = gistnet.config.K
    if level == 1:
        fewest = math.ceil(cfg.min_gist_fraction * cfg.prefix_blocks)
        n_gisted = int(rng.integers(fewest, cfg.prefix_blocks + 1))
        gisted = np.zeros(cfg.prefix_blocks, dtype=bool)
        gisted[rng.choice(cfg.prefix_blocks, size=max(1, n_gisted), replace=False)] = True
        sources = block_sources(base, gistnet, ids, np.flatnonzero(gisted))
        student, _, gists = step_module(embeds, sources, 1, cfg.prefix_blocks, gisted)
        with torch.no_grad(), teacher():
            teacher_logits = _scored_logits(base, embeds, cfg.horizon)
    else:
        sources = block_sources(base, gistnet, ids, np.arange(K))
        student, teacher_seq, gists = step_module(embeds, sources, 2, cfg.prefix_blocks, None)
        with torch.no_grad(), teacher():
            teacher_in = embeds if cfg.lod2_teacher == "tokens" else teacher_seq
            teacher_logits = _scored_logits(base, teacher_in, cfg.horizon)
    student_logits = _scored_logits(base, student, cfg.horizon)
    loss = kl_loss(student_logits, teacher_logits)
    parts = {"kl": float(loss.detach())}
    if cfg.ce_weight:
        ce = F.cross_entropy(student_logits.flatten(0, 1), ids[:, -cfg.horizon :].flatten())
        loss = loss + cfg.ce_weight * ce
        parts["ce"] = float(ce.detach())
    if cfg.spread_weight:
        spread = spread_loss(gists)
        loss = loss + cfg.spread_weight * spread
        parts["spread"] = float(spread.detach())
    if gisted is not None and cfg.contrast_weight:
        contrast, own = contrast_loss(base, gists, ids, K, gisted, cfg.contrast_margin)
        loss = loss + cfg.contrast_weight * contrast + cfg.recon_weight * own.mean()
        parts["contrast"] = float(contrast.detach())
        parts["recon"] = float(own.mean().detach())
    elif gisted is not None and cfg.recon_weight:
        recon = reconstruction_loss(base, gists, ids, K, gisted)
        loss = loss + cfg.recon_weight * recon
        parts["recon"] = float(recon.detach())
    return loss, parts


def _student_step(
    gistnet: GistNet, cfg: GistTrainConfig, colearning: bool
) -> tuple[torch.nn.Module, slice, int]:
    """The student module (wrapped in DDP when a process group is up), this process's share of
    each global batch's rows, and the number of processes."""
    rank, world = data_parallel()
    if world > 1 and colearning:
        raise InvalidInputError(
            "distributed training trains GistNet alone; co-learning (LoRA) runs in one process"
        )
    if cfg.batch_size % world:
        raise InvalidInputError(
            f"batch_size {cfg.batch_size} does not split over {world} processes; make it a "
            f"multiple of {world}"
        )
    module: torch.nn.Module = StudentStep(gistnet)
    if world > 1:  # gradients averaged over the processes, as for one global batch
        module = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    share = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    return module, share, world


def save_gist_run(
    result: GistTrainResult,
    base: BaseAdapter,
    cfg: GistTrainConfig,
    out_dir: str | Path,
    lora: LoraAdapter | None = None,
    started_from: str | None = None,
) -> Path:
    """Bundle the trained GistNet (and LoRA, when it trained with it) with its metrics, and plot
    the loss and gap-closure curves. ``started_from``: the bundle the net was initialised from
    (its training time and tokens are not counted here)."""
    out = Path(out_dir)
    metrics: dict[str, Any] = {"train_seconds": result.seconds, "train_tokens": result.tokens}
    if started_from:
        metrics["started_from"] = started_from
    for lvl, report in result.reports.items():
        metrics[f"lod{lvl}"] = asdict(report)
    modules: dict[str, Any] = {"gistnet": result.gistnet}
    if lora is not None:
        modules["lora"] = lora
    save_bundle(
        out / "bundle",
        modules,
        fingerprints=base.fingerprints,
        training=asdict(cfg),
        metrics=metrics,
    )
    (out / "history.json").write_text(
        json.dumps({"history": result.history, "evals": result.evals})
    )
    plot_gist_training(result, out / "gistnet_training.png")
    return out


def plot_gist_training(result: GistTrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for level in (1, 2):
        rows = [h for h in result.history if h["level"] == level]
        if rows:
            steps = np.array([r["step"] for r in rows])
            loss = np.array([r["kl"] for r in rows])
            window = max(1, len(loss) // 50)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax1.plot(steps[window - 1 :], smooth, label=f"LOD{level} KL")
    ax1.set_xlabel("step")
    ax1.set_ylabel("KL(teacher ‖ student)")
    ax1.set_yscale("log")
    ax1.legend()
    # Gap closure beside the content metrics: a GistNet that settles on a placeholder shows a
    # gap closure with flat content lines (issue 16).
    styles = {
        "gap_closure": ("o", "-", "gap closure"),
        "content_gap_closure": ("s", "--", "content gap closure"),
        "own_minus_shuffled": ("^", ":", "own − shuffled"),
    }
    for level in (1, 2):
        for metric, (marker, line, name) in styles.items():
            key = f"lod{level}_{metric}"
            points = [(e["step"], e[key]) for e in result.evals if key in e]
            if points:
                ax2.plot(
                    *zip(*points, strict=True),
                    marker=marker,
                    linestyle=line,
                    label=f"LOD{level} {name}",
                )
    ax2.axhline(0.8, color="grey", linestyle="--", linewidth=0.8, label="goal LOD1")
    ax2.set_xlabel("step")
    ax2.set_ylabel("held out")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- a whole run


@dataclass
class GistRunConfig(RunSettings):
    """A ``megacontext train gist`` run: which base and corpus, where to write, how to train."""

    out_dir: str = "runs/gistnet"
    val_windows: int = 256
    # A bundle whose GistNet this run starts from instead of a fresh one (same architecture):
    # continue a trained net in another window layout. A checkpoint in out_dir still wins.
    init_from: str | None = None
    gist: GistTrainConfig = field(default_factory=GistTrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GistRunConfig:
        from megacontext.train.config import dataclass_from_dict

        run: GistRunConfig = dataclass_from_dict(cls, dict(data), "gist run")
        return run


def run_gist(run: GistRunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the base, tokenize the corpus, train GistNet, evaluate, and write the run directory."""
    base, train_streams, val_streams = start_run(run, log)
    cfg = run.gist
    K = int(cfg.gistnet.get("K", 32))
    val_sampler = WindowSampler(val_streams, seed=cfg.seed + 1)
    # A level that is never trained (lod2_probability 0) is not evaluated either: at LOD2 every
    # held-out window is K² tokens longer, which on a real base costs more than the training.
    levels = (1, 2) if cfg.lod2_probability > 0 else (1,)
    val = {
        level: val_sampler.sample(0, run.val_windows, window_length(cfg, K, level), 1.0)
        for level in levels
    }
    gistnet = make_gistnet(base, cfg, K=K)
    lora = None
    if cfg.lora is not None:
        lora = LoraAdapter(base, LoraSettings.from_mapping(cfg.lora))
    try:
        if run.init_from:
            with_lora = start_from_bundle(gistnet, run.init_from, base, lora)
            log(
                f"GistNet starts from the one in {run.init_from}"
                + (" (and its LoRA)" if with_lora else "")
            )
        log(
            f"GistNet: {gistnet.num_parameters():,} parameters, pooling={gistnet.config.pooling}, "
            f"gist head {gistnet.config.gist_head}; evaluated at LOD"
            + ", LOD".join(map(str, levels))
            + (
                f"; LoRA r={lora.config.r} ({sum(p.numel() for p in lora.lora_parameters()):,} "
                "parameters) trains with it"
                if lora is not None
                else ""
            )
        )
        rank, _ = data_parallel()
        log = rank_zero(log)  # one process writes and speaks; the others train their share
        result = train_gistnet(
            base,
            WindowSampler(train_streams, seed=cfg.seed),
            val,
            cfg,
            gistnet,
            log,
            progress=not rank,
            checkpoint=Path(run.out_dir) / CHECKPOINT,
            lora=lora,
        )
        out = (
            save_gist_run(result, base, cfg, run.out_dir, lora, started_from=run.init_from)
            if rank == 0
            else Path(run.out_dir)
        )
    finally:
        if lora is not None:
            lora.detach()  # the loaded base is plain again for whoever holds it next
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "seconds": result.seconds,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
        "init_from": run.init_from,
    }
    for level, report in result.reports.items():
        summary[f"lod{level}_gap_closure"] = report.gap_closure
        summary[f"lod{level}_gap_closure_ci"] = report.gap_closure_ci
        summary[f"lod{level}_content_gap_closure"] = report.content_gap_closure
        summary[f"lod{level}_own_minus_shuffled"] = report.own_minus_shuffled
        summary[f"lod{level}_delta_nll"] = report.delta_nll
        summary[f"lod{level}_nll"] = {
            "full": report.nll_full,
            "drop": report.nll_drop,
            "gist": report.nll_gist,
            "shuffled": report.nll_shuffled,
            "constant": report.nll_constant,
        }
    if rank == 0:
        (Path(run.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
