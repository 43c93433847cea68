"""``megacontext bench gist``: the shipped GistNet and LensNet on held-out data (issue 6 §9).

Results (goals in parentheses):

* ``lod1_gap_closure`` (≥ 0.8), ``lod2_gap_closure`` (≥ 0.5), ``lod1_delta_nll``,
  ``lod2_delta_nll`` — every prefix block gisted (many gists in context; LOD2 only for a
  GistNet trained at LOD2, ``lod2_probability`` > 0); beside each level the
  content-free controls (``…_shuffled_gap_closure``: another window's gists;
  ``…_constant_gap_closure``: one constant gist everywhere, the better of the mean gist and
  the mean gist at the gists' norm), ``…_content_gap_closure`` (≥ 0.75 at
  LOD1: the gap the constant gist leaves, closed by the gists' content) and
  ``…_own_minus_shuffled`` (≥ 0.5 at LOD1); ``…_far`` repeats LOD1 with 32 raw tokens between
  the gists and the scored tokens, ``…_many`` with 16 gisted blocks (512 tokens) before them
  (a working context holds hundreds of gists, the training layout a few);
* retrieval tasks: ``lens_spearman_retrieval`` (≥ 0.5), ``lens_top1_retrieval`` (≥ 0.9),
  ``focus_gain_retrieval`` (≥ 0.8); natural text: ``lens_spearman_text`` (≥ 0.3),
  ``focus_gain_text`` (≥ 0.3);
* ablations: ``focus_gain_retrieval_gists_only``, ``…_lexical_only``, ``…_keys_only``;
* ``gist_tokens_per_s``: tokens gisted per second at ingest (a tree append with GistNet), with
  the base's prefill tokens/s in the same run as its baseline.

The weights come from the focus bundle shipped for the base (``megacontext/models/bundles/``,
or ``$MEGACONTEXT_FOCUS_BUNDLE``; a bundle without LensNet, as ``train gist`` writes, gets the
GistNet and ingest results only); the held-out data from the corpus validation split
(``$MEGACONTEXT_CORPUS``, default ``runs/corpus``, built when missing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.bench import BenchOptions, Progress, Result, median
from megacontext.train.focus_card import GOALS

FAR_LEAD = 32  # raw tokens between the gisted prefix and the scored tokens in the `_far` layout
MANY_BLOCKS = 16  # gisted blocks before the scored tokens in the `_many` layout


def _goal_note(name: str) -> str:
    return f"goal >= {GOALS[name]}" if name in GOALS else ""


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base
    from megacontext.train.streams import corpus_streams

    torch.manual_seed(0)
    base = load_base(options.base_name())
    bundle_dir = resolve_focus("default", base.fingerprints, base.source)
    bundle = load_bundle(bundle_dir, fingerprints=base.fingerprints)
    corpus = Path(os.environ.get("MEGACONTEXT_CORPUS", "runs/corpus"))
    if not (corpus / "manifest.json").is_file():
        from megacontext.train.corpus import build_corpus

        progress(f"building the corpus in {corpus}")
        build_corpus(corpus, ["stdlib", "pydoc", "kjv", "gutenberg"], seed=0, val_fraction=0.05)
    val = corpus_streams(corpus, base, "val", progress=False)
    # A bundle trained with LoRA is measured through its adapters, as sessions run it; the
    # references (FULL, DROP) are read by the plain base, as in training.
    lora = bundle.attach_lora(base)
    try:
        teacher = lora.disabled if lora is not None else nullcontext
        results = gist_results(base, bundle, val, quick, progress, teacher)
        if "lensnet" in bundle.modules:
            results += lens_results(base, bundle, val, quick, progress)
        else:  # a GistNet-only bundle (`train gist` writes one): its gists, without focus
            progress(f"{bundle_dir} has no LensNet: the focus results are skipped")
        return results + ingest_results(base, bundle, val, quick, progress)
    finally:
        if lora is not None:
            lora.detach()


def gist_results(
    base: Any,
    bundle: Any,
    val: dict[str, np.ndarray],
    quick: bool,
    progress: Progress,
    teacher: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> list[Result]:
    """Gap closure and ΔNLL per level on held-out windows, in the training layout; ``teacher``
    reads the references (the plain base when LoRA is attached)."""
    from megacontext.train.gist import GistTrainConfig, WindowSampler, evaluate_gists, window_length

    gistnet = bundle.get("gistnet")
    gist_cfg = GistTrainConfig.of_bundle(bundle.training)
    K = gistnet.config.K
    results: list[Result] = []
    windows = 32 if quick else 256
    sampler = WindowSampler(val, seed=12345)
    # The window layout of training ([prefix][lead][scored]); ``_far`` repeats LOD1 with the
    # prefix FAR_LEAD tokens away from the scored ones, where a small base gains little from it.
    layouts = [(1, "", gist_cfg)]
    if gist_cfg.lod2_probability > 0:
        layouts.append((2, "", gist_cfg))
    else:  # as `train gist` does: on a real base a LOD2 window costs more than the training
        progress("this GistNet was never trained at LOD2 (lod2_probability 0): LOD2 skipped")
    if gist_cfg.lead_tokens != FAR_LEAD:
        layouts.append((1, "_far", replace(gist_cfg, lead_tokens=FAR_LEAD)))
    if gist_cfg.prefix_blocks < MANY_BLOCKS:
        layouts.append((1, "_many", replace(gist_cfg, prefix_blocks=MANY_BLOCKS)))
    for level, suffix, cfg in layouts:
        progress(f"gap closure at LOD{level}{suffix}")
        report = evaluate_gists(
            base,
            gistnet,
            sampler.sample(level, windows, window_length(cfg, K, level), 1.0),
            cfg,
            level,
            teacher=teacher,
        )
        nlls = {
            "nll_full": report.nll_full,
            "nll_drop": report.nll_drop,
            "nll_gist": report.nll_gist,
            "nll_full_tokens": report.nll_full_tokens,
            "reference": report.reference,
            "lead_tokens": cfg.lead_tokens,
            "prefix_blocks": cfg.prefix_blocks,
            "windows": report.windows,
            "ci95": list(report.gap_closure_ci),
            "nll_shuffled": report.nll_shuffled,
            "nll_constant": report.nll_constant,
        }
        results.append(
            Result(
                f"lod{level}_gap_closure{suffix}",
                report.gap_closure,
                "fraction",
                note=(
                    f"95% CI {report.gap_closure_ci[0]:.3f}–{report.gap_closure_ci[1]:.3f}; "
                    f"full = prefix as {report.reference}; {cfg.prefix_blocks} blocks gisted, "
                    f"lead {cfg.lead_tokens} tokens; "
                    + _goal_note(f"lod{level}_gap_closure{suffix}")
                ),
                extra=nlls,
            )
        )
        results.append(Result(f"lod{level}_delta_nll{suffix}", report.delta_nll, "nats"))
        # The content-free controls: what a placeholder closes, and what the content adds.
        low, high = report.content_gap_closure_ci
        results += [
            Result(
                f"lod{level}_content_gap_closure{suffix}",
                report.content_gap_closure,
                "fraction",
                note=f"against the constant gist ({report.constant_kind}); "
                f"95% CI {low:.3f}–{high:.3f}; "
                + _goal_note(f"lod{level}_content_gap_closure{suffix}"),
            ),
            Result(
                f"lod{level}_own_minus_shuffled{suffix}",
                report.own_minus_shuffled,
                "fraction",
                note="gap closure of own gists minus another window's; "
                + _goal_note(f"lod{level}_own_minus_shuffled{suffix}"),
            ),
            Result(
                f"lod{level}_shuffled_gap_closure{suffix}", report.shuffled_gap_closure, "fraction"
            ),
            Result(
                f"lod{level}_constant_gap_closure{suffix}", report.constant_gap_closure, "fraction"
            ),
        ]
    return results


def lens_results(
    base: Any, bundle: Any, val: dict[str, np.ndarray], quick: bool, progress: Progress
) -> list[Result]:
    """LensNet's focus gain, Spearman and top-1 on held-out samples, and the ablations'."""
    from megacontext.train.lens import (
        ABLATIONS,
        LensRunConfig,
        evaluate_lensnet,
        make_samples,
        refresh_keys,
    )

    gistnet = bundle.get("gistnet")
    results: list[Result] = []
    lens_training = bundle.training.get("lens")
    run_cfg = LensRunConfig.from_dict({"lens": lens_training or {}})
    lens_cfg = run_cfg.lens
    text = np.concatenate([s for name, s in sorted(val.items()) if name != "stdlib"])
    progress("labelling held-out focus samples")
    samples = make_samples(base, gistnet, text, lens_cfg, 16 if quick else 100, 999, progress=False)
    for sample in samples:
        refresh_keys(sample, base, gistnet)
    scale = float(bundle.metrics.get("label_scale_all", 1.0))
    slices = {
        "retrieval": [s for s in samples if s.retrieval],
        "text": [s for s in samples if not s.retrieval],
    }
    for name in ABLATIONS:
        module = "lensnet" if name == "all" else f"lensnet_{name}"
        if module not in bundle.modules:
            continue
        lens = bundle.get(module)
        for slice_name, part in slices.items():
            if name != "all" and slice_name != "retrieval":
                continue
            progress(f"LensNet ({name}) on {slice_name}")
            report = evaluate_lensnet(base, lens, part, lens_cfg, scale)
            suffix = "" if name == "all" else f"_{name}"
            results.append(
                Result(
                    f"focus_gain_{slice_name}{suffix}",
                    report.focus_gain,
                    "fraction",
                    note=_goal_note(f"focus_gain_{slice_name}{suffix}"),
                )
            )
            if name == "all":
                results.append(
                    Result(
                        f"lens_spearman_{slice_name}",
                        report.spearman,
                        "rho",
                        note=_goal_note(f"lens_spearman_{slice_name}"),
                    )
                )
                if slice_name == "retrieval":
                    results.append(
                        Result(
                            "lens_top1_retrieval",
                            report.top1,
                            "fraction",
                            note=_goal_note("lens_top1_retrieval"),
                        )
                    )
    return results


def ingest_results(
    base: Any, bundle: Any, val: dict[str, np.ndarray], quick: bool, progress: Progress
) -> list[Result]:
    """Tokens gisted per second at ingest, against the base's prefill in the same run."""
    from megacontext.core import MegaContextTree, MemoryBackend
    from megacontext.models.context import GistNetGister

    gistnet = bundle.get("gistnet")
    K = gistnet.config.K
    results: list[Result] = []
    progress("ingest gisting throughput vs base prefill")
    stream = next(iter(val.values()))[: (8192 if quick else 65536)].astype(np.int64)
    gister = GistNetGister(gistnet, base)
    gist_times, prefill_times = [], []
    for _ in range(3):
        backend = MemoryBackend(base.d_model * gister.gists_per_node, np.float16)
        tree = MegaContextTree(backend, gister, K=K)
        start = time.perf_counter()
        tree.append(stream)
        gist_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, len(stream) - 511, 512):
                ids = torch.as_tensor(stream[lo : lo + 512])[None]
                base.forward(base.embed(ids), torch.arange(512)[None], use_cache=False)
        prefill_times.append(time.perf_counter() - start)
    prefill_tokens = (len(stream) // 512) * 512
    results.append(
        Result(
            "gist_tokens_per_s",
            len(stream) / median(gist_times),
            "tokens/s",
            baseline_name="base_prefill_tokens_per_s",
            baseline_value=prefill_tokens / median(prefill_times),
        )
    )
    return results
