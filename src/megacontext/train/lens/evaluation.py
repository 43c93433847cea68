"""LensNet quality on held-out samples, natural text and retrieval tasks apart (D8).

Spearman(score, −ΔNLL) over expand candidates, top-1 agreement with the oracle's best expansion,
and **focus gain** — at equal budget, the fraction of the NLL gap between the recency-only WC and
oracle-driven focus that LensNet-driven focus closes (both through the same engine step,
``focus_steps`` refocus steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megacontext.core import AllocatorConfig, WorkingContext
from megacontext.focus import FocusEngine
from megacontext.models.adapter import BaseAdapter
from megacontext.models.lensnet import LensNet
from megacontext.train.lens.labels import (
    LensSample,
    LensTrainConfig,
    counterfactual_labels,
    wc_nll,
)


@dataclass
class LensReport:
    """LensNet quality on one slice of held-out samples (natural text or retrieval tasks)."""

    samples: int
    spearman: float
    top1: float
    focus_gain: float
    nll_recency: float
    nll_lens: float
    nll_oracle: float


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def lens_scores(
    base: BaseAdapter, lens: LensNet, sample: LensSample, wc: WorkingContext
) -> np.ndarray:
    return sample.scorer(base).scores(lens, wc, sample.query)


def _focus(
    base: BaseAdapter,
    sample: LensSample,
    scorer: Callable[[WorkingContext], np.ndarray],
    cfg: LensTrainConfig,
) -> float:
    wc = sample.recency.copy()
    engine = FocusEngine(
        AllocatorConfig(
            max_edits=cfg.focus_max_edits,
            min_gain=0.0,
            expand_threshold=0.0,
            collapse_threshold=1.0,
        )
    )
    engine.run(wc, scorer, cfg.focus_steps)
    return wc_nll(base, sample.tree, wc, sample.scored)


def evaluate_lensnet(
    base: BaseAdapter,
    lens: LensNet,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    scale: float,
) -> LensReport:
    """Spearman, top-1 and focus gain of ``lens`` on ``samples`` (one slice)."""
    spearmans, top1 = [], []
    rec, lns, orc = [], [], []
    for s in samples:
        scores = lens_scores(base, lens, s, s.wc)
        gists = np.flatnonzero(np.isfinite(s.expand_gain))
        if len(gists) >= 2:
            spearmans.append(_spearman(scores[gists], s.expand_gain[gists]))
            top1.append(
                float(gists[np.argmax(scores[gists])] == gists[np.argmax(s.expand_gain[gists])])
            )

        def oracle(wc: WorkingContext, s: LensSample = s) -> np.ndarray:
            labels, _, _ = counterfactual_labels(
                base, s, wc, batch=cfg.label_batch, descent=cfg.descent_labels
            )
            return np.nan_to_num(np.tanh(labels / scale), nan=0.0)

        def lensnet(wc: WorkingContext, s: LensSample = s) -> np.ndarray:
            return lens_scores(base, lens, s, wc)

        cache = s.reference_nll
        if "recency" not in cache:
            cache["recency"] = wc_nll(base, s.tree, s.recency, s.scored)
        oracle_key = (
            f"oracle/{scale!r}/{cfg.focus_steps}/{cfg.focus_max_edits}/{cfg.descent_labels}"
        )
        if oracle_key not in cache:
            cache[oracle_key] = _focus(base, s, oracle, cfg)
        rec.append(cache["recency"])
        lns.append(_focus(base, s, lensnet, cfg))
        orc.append(cache[oracle_key])
    gap = float(np.mean(rec) - np.mean(orc))
    return LensReport(
        samples=len(samples),
        spearman=float(np.nanmean(spearmans)) if spearmans else float("nan"),
        top1=float(np.mean(top1)) if top1 else float("nan"),
        focus_gain=float((np.mean(rec) - np.mean(lns)) / gap) if abs(gap) > 1e-9 else float("nan"),
        nll_recency=float(np.mean(rec)),
        nll_lens=float(np.mean(lns)),
        nll_oracle=float(np.mean(orc)),
    )


__all__ = ["LensReport", "evaluate_lensnet", "lens_scores"]
