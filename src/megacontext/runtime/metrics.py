"""Prometheus metrics of sessions: ingest, gists, focus and the base's forwards (issue 19).

Every metric a session moves is defined here, once, in the process's default registry; the
service adds its own (``megacontext.server.metrics``) and serves them all at ``/metrics``. Names
are ``megacontext_*`` in base units (seconds, bytes, ratios in [0, 1]); labels are bounded: a
gist's level, an edit's kind. Nothing here names a tree: per-tree series are the service's and
opt-in. The docs' metric catalogue is generated from :data:`CATALOGUE`.

Recording costs a few counter increments per refocus step and per forward; a session records
whether or not anything scrapes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from megacontext.focus.engine import StepTelemetry

_RATIO = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INGEST_TOKENS = Counter("megacontext_ingest_tokens", "Tokens appended to trees by ingests.")
INGEST_SECONDS = Counter(
    "megacontext_ingest_seconds",
    "Seconds spent appending ingested tokens (gisting and indexing included); "
    "rate(tokens) / rate(seconds) is the ingest throughput.",
)
GISTS = Counter("megacontext_gists_computed", "Gists GistNet computed, by level.", ["level"])
GIST_NORM_MEAN = Gauge(
    "megacontext_gist_norm_mean",
    "Mean L2 norm of the gists of the latest ingest (its latest 4,096), by level.",
    ["level"],
)
GIST_NORM_VARIANCE = Gauge(
    "megacontext_gist_norm_variance",
    "Variance of the L2 norms of the gists of the latest ingest, by level "
    "(a GistNet or base change shows here first).",
    ["level"],
)
REFOCUS_STEPS = Counter("megacontext_refocus_steps", "Refocus steps (score, plan, apply).")
FOCUS_EDITS = Counter(
    "megacontext_focus_edits", "Edits refocus steps applied to working contexts, by kind.", ["kind"]
)
FOCUS_EDITS_REFUSED = Counter(
    "megacontext_focus_edits_refused",
    "Manual focus edits (expand, pin) refused because nothing legal could pay for them.",
)
BUDGET_VIOLATIONS = Counter(
    "megacontext_focus_budget_violations",
    "Refocus steps after which a working context held more than W_max entries (must stay 0).",
)
UTILIZATION = Histogram(
    "megacontext_working_context_utilization_ratio",
    "Entries in use over W_max, after each refocus step.",
    buckets=_RATIO,
)
SWAP_RATE = Histogram(
    "megacontext_focus_swap_rate_ratio",
    "A session's edits per entry and step so far, after each refocus step (thrash shows here).",
    buckets=_RATIO,
)
RESIDENCY = Histogram(
    "megacontext_focus_residency_steps",
    "Mean steps an entry has stayed in the working context, after each refocus step.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LENS_ENTROPY = Histogram(
    "megacontext_lens_score_entropy_ratio",
    "Entropy of softmax(LensNet scores) over the working context, over its maximum log(n): "
    "near 1, LensNet cannot tell entries apart; near 0, it points at one.",
    buckets=_RATIO,
)
FORWARD_SECONDS = Histogram(
    "megacontext_base_forward_seconds",
    "Seconds per forward of the base (a decoded token, or a prefill or recompute).",
    buckets=_LATENCY,
)
DECODE_TOKENS = Counter(
    "megacontext_decode_tokens", "Tokens the base chose (one per forward while decoding)."
)
PREFILL_TOKENS = Counter(
    "megacontext_prefill_tokens", "Entries the base read into an empty KV cache."
)
KV_RECOMPUTE_TOKENS = Counter(
    "megacontext_kv_recompute_tokens",
    "Entries the base read again because a focus edit changed the working context before them.",
)
PAGE_CACHE_HITS = Counter("megacontext_page_cache_hits", "Tree page-cache hits.")
PAGE_CACHE_MISSES = Counter("megacontext_page_cache_misses", "Tree page-cache misses.")

CATALOGUE: tuple[MetricWrapperBase, ...] = (
    INGEST_TOKENS,
    INGEST_SECONDS,
    GISTS,
    GIST_NORM_MEAN,
    GIST_NORM_VARIANCE,
    REFOCUS_STEPS,
    FOCUS_EDITS,
    FOCUS_EDITS_REFUSED,
    BUDGET_VIOLATIONS,
    UTILIZATION,
    SWAP_RATE,
    RESIDENCY,
    LENS_ENTROPY,
    FORWARD_SECONDS,
    DECODE_TOKENS,
    PREFILL_TOKENS,
    KV_RECOMPUTE_TOKENS,
    PAGE_CACHE_HITS,
    PAGE_CACHE_MISSES,
)


# The gists whose norms an ingest reports, per level: its latest ones, at most this many (a
# 10M-token ingest computes 300k LOD1 gists; reading them all back would cost more than it tells).
GIST_SAMPLE = 4096


def record_ingest(tokens: int, seconds: float, gists: dict[int, tuple[int, np.ndarray]]) -> None:
    """An ingest appended ``tokens`` in ``seconds``; ``gists``: per level, how many gists it
    computed and the latest of them (at most :data:`GIST_SAMPLE`)."""
    INGEST_TOKENS.inc(tokens)
    INGEST_SECONDS.inc(seconds)
    for level, (computed, vectors) in gists.items():
        if not computed:
            continue
        GISTS.labels(level=str(level)).inc(computed)
        norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
        GIST_NORM_MEAN.labels(level=str(level)).set(float(norms.mean()))
        GIST_NORM_VARIANCE.labels(level=str(level)).set(float(norms.var()))


def record_refocus(step: StepTelemetry, W_max: int, scores: np.ndarray | None) -> None:
    """One refocus step: its edits, the context's state after it, LensNet's scores."""
    REFOCUS_STEPS.inc()
    FOCUS_EDITS.labels(kind="expand").inc(step.expands)
    FOCUS_EDITS.labels(kind="collapse").inc(step.collapses)
    if step.entries > W_max:
        BUDGET_VIOLATIONS.inc()
    UTILIZATION.observe(step.utilization)
    SWAP_RATE.observe(step.swap_rate)
    RESIDENCY.observe(step.mean_residency)
    if scores is not None and len(scores) > 1:
        LENS_ENTROPY.observe(score_entropy(scores))


def score_entropy(scores: np.ndarray) -> float:
    """Entropy of ``softmax(scores)`` over its maximum, ``log(len(scores))``: in [0, 1]."""
    z = np.asarray(scores, dtype=np.float64)
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    entropy = -float(np.sum(p * np.log(np.where(p > 0, p, 1.0))))
    return min(1.0, max(0.0, entropy / math.log(len(z))))


def record_forward(seconds: float, entries: int, cache_before: int) -> None:
    """One base forward of ``entries`` new entries onto a KV cache of ``cache_before``; each
    forward chooses one token. Onto an empty cache it is a prefill; onto a filled one, more
    than one entry means entries an edit made stale were read again."""
    FORWARD_SECONDS.observe(seconds)
    DECODE_TOKENS.inc()
    if cache_before == 0:
        PREFILL_TOKENS.inc(entries)
    elif entries > 1:
        KV_RECOMPUTE_TOKENS.inc(entries - 1)


def record_page_cache(hits: int, misses: int) -> None:
    """Page-cache hits and misses since the previous call for the same tree."""
    PAGE_CACHE_HITS.inc(max(0, hits))
    PAGE_CACHE_MISSES.inc(max(0, misses))


__all__ = [
    "CATALOGUE",
    "record_forward",
    "record_ingest",
    "record_page_cache",
    "record_refocus",
    "score_entropy",
]
