"""``megacontext train focus``: one command from a base model to a measured focus bundle.

The stages, in order, each in its own directory under the run's ``out_dir``::

    corpus  the offline training corpus (built once, shared: ``corpus_dir``)
    gist    GistNet distilled against the base        (``train gist``; resumes from its checkpoint)
    lens    focus labels, the key head and LensNet    (``train lens``)
    bench   ``bench gist`` on the new bundle: the numbers of record
    card    the bundle's card (README.md) and plots; the bundle is ``out_dir/bundle``

A stage that finished is recorded in ``out_dir/stages.json`` (seconds, tokens/s) and skipped
when the command runs again, so a stopped run goes on where it stopped; once a stage runs, the
stages after it run again too. The recipes are the
packaged ``gist-<base>.yaml`` / ``lens-<base>.yaml`` where one is made for the base, else
``gist-default.yaml`` / ``lens-default.yaml``; ``--set gist.…`` / ``--set lens.…`` override them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megacontext.errors import InvalidInputError
from megacontext.files import write_text_atomic
from megacontext.models.catalog import DEFAULT
from megacontext.train.distributed import launch

if TYPE_CHECKING:
    from megacontext.train.gist import GistRunConfig
    from megacontext.train.lens import LensRunConfig

STAGES = ("corpus", "gist", "lens", "bench", "card")
# Shares of --budget-hours: GistNet's training, then LensNet's labelling (a base forward per
# gist in each sampled WC); the rest is the key head, LensNet's training and evaluation, bench.
GIST_SHARE = 0.6
LABEL_SHARE = 0.25
RECORD = "stages.json"


@dataclass
class FocusRunConfig:
    """A ``train focus`` run. ``gist`` and ``lens`` override the stages' recipes (the same keys
    as ``train gist`` / ``train lens`` configs)."""

    base: str = DEFAULT
    out_dir: str | None = None
    corpus_dir: str = "runs/corpus"
    device: str = "cpu"
    budget_hours: float | None = None
    quick_bench: bool = False
    # Processes training together in the GistNet and LensNet stages (torch.distributed DDP).
    nproc: int = 1
    gist: dict[str, Any] = field(default_factory=dict)
    lens: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise InvalidInputError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.nproc < 1:
            raise InvalidInputError(f"--nproc must be >= 1, got {self.nproc}")
        if self.budget_hours is not None and self.budget_hours <= 0:
            raise InvalidInputError(f"--budget-hours must be > 0, got {self.budget_hours}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InvalidInputError("--device cuda: no CUDA GPU is visible here; use cpu")

    @property
    def out(self) -> Path:
        return Path(self.out_dir or f"runs/focus-{recipe_name(self.base)}")


def recipe_name(base: str) -> str:
    """The name recipes and run directories use for a base: its catalog name (``smollm2`` →
    ``smollm2-135m-instruct``; ``default`` → the default base's), else its path's last part."""
    from megacontext.models.catalog import DEFAULT_BASE, TINY, real_base

    if base in (DEFAULT, TINY):
        base = DEFAULT_BASE
    entry = real_base(base)
    name = entry.name if entry is not None else (Path(base).name or "base")
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-") or "base"


def recipe(kind: str, base: str) -> tuple[str, dict[str, Any]]:
    """The packaged recipe of ``kind`` (``gist`` or ``lens``) made for ``base``, else the default
    one: ``(file name, settings)``."""
    from megacontext.train.config import packaged_config

    name = recipe_name(base)
    for candidate in (f"{kind}-{name}.yaml", f"{kind}-{name.split('-')[0]}.yaml"):
        try:
            return candidate, packaged_config(candidate)
        except InvalidInputError:
            continue
    return f"{kind}-default.yaml", packaged_config(f"{kind}-default.yaml")


def _merge(settings: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(settings.get(key), dict):
            settings[key] = _merge(dict(settings[key]), value)
        else:
            settings[key] = value
    return settings


class StageRecord:
    """``stages.json``: what each finished stage took and produced."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = (
            json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        )

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def finish(self, stage: str, **facts: Any) -> None:
        self.stages[stage] = facts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a run killed while writing must not lose the record it resumes from.
        write_text_atomic(self.path, json.dumps(self.stages, indent=2, default=float) + "\n")


def stage_configs(run: FocusRunConfig) -> tuple[str, GistRunConfig, str, LensRunConfig]:
    """The GistNet and LensNet stages' run configs — each base's recipe, the run's directories
    and its ``--set`` overrides — parsed and checked: ``(gist recipe, GistRunConfig, lens
    recipe, LensRunConfig)``."""
    from megacontext.train.gist import GistRunConfig
    from megacontext.train.lens import LensRunConfig
    from megacontext.train.lens.training import check_global_batch

    out = run.out
    gist_file, gist_settings = recipe("gist", run.base)
    lens_file, lens_settings = recipe("lens", run.base)
    shared = {"base": run.base, "device": run.device, "corpus_dir": run.corpus_dir}
    gist = _merge(_merge(gist_settings, {**shared, "out_dir": str(out / "gist")}), run.gist)
    lens = _merge(
        lens_settings,
        {**shared, "out_dir": str(out / "lens"), "gist_bundle": str(out / "gist" / "bundle")},
    )
    lens = _merge(lens, run.lens)
    gist_run, lens_run = GistRunConfig.from_dict(gist), LensRunConfig.from_dict(lens)
    check_global_batch(lens_run.lens.batch_size, run.nproc)
    if run.nproc > 1 and gist_run.gist.lora is not None:
        raise InvalidInputError(
            "--nproc trains GistNet alone; a recipe with gist.lora (LoRA) trains in one process"
        )
    return gist_file, gist_run, lens_file, lens_run


def _train(
    fn: Callable[..., dict[str, Any]], config: Any, nproc: int, log: Callable[[str], None]
) -> Any:
    """A training stage in this process, or on ``nproc`` processes (rank 0's result)."""
    if nproc > 1:
        log(f"training on {nproc} processes (torch.distributed DDP)")
        return launch(nproc, fn, config)
    return fn(config, log=log)


def run_focus(
    run: FocusRunConfig,
    measure: Callable[[Path], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns the stage record and the bundle's metrics.

    ``measure`` is the bench stage: it takes the new bundle's directory and returns the JSON
    document of ``megacontext bench gist`` on it (the caller runs the benchmark, which sits
    above training in the layers of DESIGN §4). Both training stages' settings are checked
    before the first stage runs: a typo in a LensNet setting fails now, not hours later.
    """
    from megacontext.train.gist import run_gist
    from megacontext.train.lens import run_lens

    out = run.out
    record = StageRecord(out / RECORD)
    gist_file, gist_run, lens_file, lens_run = stage_configs(run)
    started = time.perf_counter()
    budget_s = run.budget_hours * 3600 if run.budget_hours else None
    if budget_s is not None:
        gist_run.gist.time_budget_s = GIST_SHARE * budget_s
        lens_run.lens.label_budget_s = LABEL_SHARE * budget_s
    log(
        f"focus bundle for {run.base} in {out}: recipes {gist_file} and {lens_file}; "
        + ", ".join(f"{s} {'done' if record.done(s) else 'to do'}" for s in STAGES)
    )

    redo = False  # once a stage runs, every later one runs again (it read the old outputs)

    def begin(stage: str) -> bool:
        nonlocal redo
        if record.done(stage) and not redo:
            log(f"{stage}: done in an earlier run ({record.stages[stage]['seconds']:.0f} s)")
            return False
        redo = True
        spent = time.perf_counter() - started
        left = f"; {max(0.0, budget_s - spent) / 60:.0f} min of the budget left" if budget_s else ""
        log(f"{stage}: stage {STAGES.index(stage) + 1} of {len(STAGES)}{left}")
        return True

    if begin("corpus"):
        t0 = time.perf_counter()
        corpus = Path(run.corpus_dir)
        if not (corpus / "manifest.json").is_file():
            from megacontext.train.corpus import build_corpus

            build_corpus(corpus, ["stdlib", "pydoc", "kjv", "gutenberg"], seed=0, val_fraction=0.05)
        record.finish("corpus", seconds=time.perf_counter() - t0, corpus_dir=str(corpus))

    if begin("gist"):
        t0 = time.perf_counter()
        summary = _train(run_gist, gist_run, run.nproc, log)
        record.finish(
            "gist",
            seconds=time.perf_counter() - t0,
            tokens_per_s=summary["tokens_per_s"],
            recipe=gist_file,
            **{k: v for k, v in summary.items() if k.endswith("closure") or k.endswith("shuffled")},
        )

    if begin("lens"):
        t0 = time.perf_counter()
        metrics = _train(run_lens, lens_run, run.nproc, log)
        seconds = time.perf_counter() - t0
        record.finish(
            "lens",
            seconds=seconds,
            tokens_per_s=metrics.get("labelled_tokens", 0) / max(seconds, 1e-9),
            recipe=lens_file,
            **{k: v for k, v in metrics.items() if k.startswith(("lens_", "focus_gain_"))},
        )

    bench_json = out / "bench-gist.json"
    if begin("bench"):
        t0 = time.perf_counter()
        document = measure(out / "lens" / "bundle")
        bench_json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        record.finish(
            "bench",
            seconds=time.perf_counter() - t0,
            tokens_per_s=next(
                (r["value"] for r in document["results"] if r["name"] == "gist_tokens_per_s"),
                None,
            ),
            json=str(bench_json),
        )

    if begin("card"):
        from megacontext.train.focus_card import write_focus_card

        t0 = time.perf_counter()
        bundle = out / "bundle"
        if bundle.exists():
            shutil.rmtree(bundle)
        shutil.copytree(out / "lens" / "bundle", bundle)
        command = f"megacontext train focus --base {run.base}" + (
            f" --budget-hours {run.budget_hours:g}" if run.budget_hours else ""
        )
        card = write_focus_card(bundle, bench_json, [out / "gist", out / "lens"], command)
        record.finish("card", seconds=time.perf_counter() - t0, card=str(card))
    return {"out_dir": str(out), "bundle": str(out / "bundle"), "stages": record.stages}


__all__ = ["STAGES", "FocusRunConfig", "recipe", "recipe_name", "run_focus"]
