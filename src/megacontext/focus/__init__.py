"""Focus: LensNet's scorer and the engine step, one implementation for every caller (D17).

``megacontext.focus`` sits above ``models`` and below ``train``, ``runtime`` and ``eval``: what
LensNet is trained on is built by the same code that builds what it scores at run time.

* :class:`~megacontext.focus.scorer.LensScorer` builds LensNet's inputs for a working context
  over a tree — entry vectors, features (level, span, age, tail), the lexical (BM25) evidence and
  the key·query evidence of D7 — for a :class:`~megacontext.focus.scorer.FocusQuery`.
* :class:`~megacontext.focus.engine.FocusEngine` runs one focus step: plan (the allocator),
  apply (atomically), tell the KV cache where the context changed, and record what it did.
* :class:`~megacontext.focus.prior.FocusPrior` blends LensNet's score with the lexical and key
  evidence, with weights per token range (a partition's sources).
"""

from megacontext.focus.engine import FocusEngine, FocusStep, StepTelemetry
from megacontext.focus.prior import LENS_ONLY, FocusPrior, PriorWeights
from megacontext.focus.scorer import FocusQuery, LensInputs, LensScorer, entry_keys, query_key

__all__ = [
    "LENS_ONLY",
    "FocusEngine",
    "FocusPrior",
    "FocusQuery",
    "FocusStep",
    "LensInputs",
    "LensScorer",
    "PriorWeights",
    "StepTelemetry",
    "entry_keys",
    "query_key",
]
