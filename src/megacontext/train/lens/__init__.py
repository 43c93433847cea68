"""LensNet training (DESIGN D7, D8): labels, training, evaluation, and whole runs.

* :mod:`~megacontext.train.lens.labels` — sampled working contexts and their counterfactual
  (evidence-path) labels;
* :mod:`~megacontext.train.lens.training` — the ranking + regression loss, LensNet's trainer,
  the key head's contrastive trainer;
* :mod:`~megacontext.train.lens.evaluation` — Spearman, top-1 and focus gain per slice;
* :mod:`~megacontext.train.lens.run` — ``megacontext train lens``.

LensNet's inputs are built by :class:`megacontext.focus.LensScorer`, the code sessions score with.
"""

from megacontext.train.lens.evaluation import LensReport, evaluate_lensnet, lens_scores
from megacontext.train.lens.labels import (
    MIN_LABELLED,
    RETRIEVAL_KINDS,
    LensSample,
    LensTrainConfig,
    counterfactual_labels,
    evidence_path,
    make_sample,
    make_samples,
    wc_nll,
)
from megacontext.train.lens.run import ABLATIONS, LensRunConfig, plot_lens_training, run_lens
from megacontext.train.lens.training import (
    label_scale,
    ranking_loss,
    refresh_keys,
    train_key_head,
    train_lensnet,
)

__all__ = [
    "ABLATIONS",
    "MIN_LABELLED",
    "RETRIEVAL_KINDS",
    "LensReport",
    "LensRunConfig",
    "LensSample",
    "LensTrainConfig",
    "counterfactual_labels",
    "evaluate_lensnet",
    "evidence_path",
    "label_scale",
    "lens_scores",
    "make_sample",
    "make_samples",
    "plot_lens_training",
    "ranking_loss",
    "refresh_keys",
    "run_lens",
    "train_key_head",
    "train_lensnet",
    "wc_nll",
]
