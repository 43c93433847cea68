"""EM-style co-learning of GistNet, LensNet and LoRA on the base (issue 6 §6, DESIGN §7).

One trainer, two schedules, over ``cycles``:

* ``alternating`` — per cycle: a **GistNet phase** (distillation, §4) → **relabel** the focus
  samples with the new gists → a **LensNet phase** on fresh labels → a **LoRA phase**: low-rank
  adapters on the base's attention projections learn to read the current gists better
  ("interface alignment, not knowledge"; the teacher is always the plain base, LoRA disabled).
* ``joint`` — per cycle: GistNet and LoRA take the distillation loss together, then relabel and a
  LensNet phase.

Every distillation phase stops early when its held-out NLL plateaus. Labels carry the GistNet
version they were made with, and a LensNet phase refuses stale ones.

The **ablation** (:func:`cotrain_ablation`) repeats the run with one module frozen at its cycle-0
weights (it is trained in cycle 0, then never again) and reports the change in the final
held-out losses against the full run, over several seeds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.lora import LoraAdapter, LoraSettings
from megacontext.train.config import RunSettings, start_run
from megacontext.train.gist import (
    GistTrainConfig,
    WindowSampler,
    evaluate_gists,
    make_gistnet,
    train_gistnet,
    window_length,
)
from megacontext.train.lens import (
    LensSample,
    LensTrainConfig,
    evaluate_lensnet,
    make_samples,
    refresh_keys,
    train_lensnet,
)

MODULE_NAMES = ("gistnet", "lensnet", "lora")


@dataclass
class CotrainConfig:
    """Schedule, phase sizes and ablation settings of a co-learning run."""

    schedule: Literal["alternating", "joint"] = "alternating"
    cycles: int = 3
    seed: int = 0
    lens_samples: int = 100
    val_lens_samples: int = 40
    use_lora: bool = True
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 4, "alpha": 8})
    lora_lr: float = 5e-4
    lora_steps: int = 200
    freeze: tuple[str, ...] = ()
    gist: GistTrainConfig = field(default_factory=GistTrainConfig)
    lens: LensTrainConfig = field(default_factory=LensTrainConfig)

    def __post_init__(self) -> None:
        if self.schedule not in ("alternating", "joint"):
            raise InvalidInputError(
                f"schedule must be 'alternating' or 'joint', got {self.schedule!r}"
            )
        unknown = set(self.freeze) - set(MODULE_NAMES)
        if unknown:
            raise InvalidInputError(f"cannot freeze {sorted(unknown)}; modules: {MODULE_NAMES}")
        if self.cycles < 1:
            raise InvalidInputError("cycles must be >= 1")


@dataclass
class CotrainResult:
    """Final held-out losses and the per-phase log of one co-learning run."""

    val_nll_gist: float  # held-out LOD1 NLL with every prefix block gisted (student)
    val_nll_focus: float  # held-out NLL after LensNet-driven focus (mean over slices)
    phases: list[dict[str, Any]]
    gistnet: Any
    lensnet: Any
    lora: LoraAdapter | None


def _trains(cfg: CotrainConfig, module: str, cycle: int) -> bool:
    return cycle == 0 or module not in cfg.freeze


def cotrain(
    base: BaseAdapter,
    train_streams: Mapping[str, np.ndarray],
    val_streams: Mapping[str, np.ndarray],
    cfg: CotrainConfig,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> CotrainResult:
    """Run the co-learning schedule; the base's own weights never change (D1)."""
    torch.manual_seed(cfg.seed)
    gist_cfg = dataclasses.replace(cfg.gist, seed=cfg.seed)
    lens_cfg = dataclasses.replace(cfg.lens, seed=cfg.seed)
    K = int(gist_cfg.gistnet.get("K", 32))
    gistnet = make_gistnet(base, gist_cfg, K=K)
    train_sampler = WindowSampler(train_streams, seed=cfg.seed)
    val_windows = WindowSampler(val_streams, seed=cfg.seed + 1).sample(
        0, gist_cfg.final_eval_windows, window_length(gist_cfg, K, 1), 1.0
    )
    text = np.concatenate([s for _, s in sorted(train_streams.items()) if len(s)])
    val_text = np.concatenate([s for _, s in sorted(val_streams.items()) if len(s)])
    lora = LoraAdapter(base, LoraSettings.from_mapping(cfg.lora)) if cfg.use_lora else None
    teacher = lora.disabled if lora is not None else None
    phases: list[dict[str, Any]] = []
    lens = None
    scale = 1.0
    for cycle in range(cfg.cycles):
        kwargs: dict[str, Any] = {"log": log, "progress": progress}
        if teacher is not None:
            kwargs["teacher"] = teacher
        gistnet.requires_grad_(_trains(cfg, "gistnet", cycle))
        gist_params = list(gistnet.parameters()) if _trains(cfg, "gistnet", cycle) else []
        lora_params = (
            lora.lora_parameters() if lora is not None and _trains(cfg, "lora", cycle) else []
        )
        if cfg.schedule == "joint":
            if gist_params or lora_params:
                result = train_gistnet(
                    base,
                    train_sampler,
                    {1: val_windows},
                    gist_cfg,
                    gistnet,
                    params=[*gist_params, *lora_params],
                    desc=f"joint c{cycle}",
                    **kwargs,
                )
                phases.append(_distillation_phase(cycle, "joint", result))
        elif gist_params:
            result = train_gistnet(
                base,
                train_sampler,
                {1: val_windows},
                gist_cfg,
                gistnet,
                params=gist_params,
                desc=f"gistnet c{cycle}",
                **kwargs,
            )
            phases.append(_distillation_phase(cycle, "gistnet", result))
        if _trains(cfg, "lensnet", cycle):
            # Relabel with the gists as they are now; the LensNet phase refuses anything else.
            samples = make_samples(
                base,
                gistnet,
                text,
                lens_cfg,
                cfg.lens_samples,
                cfg.seed + 100 * cycle,
                desc=f"relabel c{cycle}",
                progress=progress,
            )
            lens, scale, losses = train_lensnet(
                base,
                samples,
                lens_cfg,
                progress=progress,
                log=log,
                gist_version=gistnet.weights_version(),
            )
            phases.append(
                {"cycle": cycle, "phase": "lensnet", "samples": len(samples), "loss": losses[-1]}
            )
        if cfg.schedule == "alternating" and lora_params:
            gistnet.requires_grad_(False)  # the LoRA phase moves the base's adapters only
            lora_cfg = dataclasses.replace(gist_cfg, steps=cfg.lora_steps, lr=cfg.lora_lr)
            result = train_gistnet(
                base,
                train_sampler,
                {1: val_windows},
                lora_cfg,
                gistnet,
                params=lora_params,
                desc=f"lora c{cycle}",
                **kwargs,
            )
            phases.append(_distillation_phase(cycle, "lora", result))
        log(json.dumps(phases[-1]) if phases else f"cycle {cycle}: nothing trained")
    report = evaluate_gists(
        base, gistnet, val_windows, gist_cfg, 1, **({"teacher": teacher} if teacher else {})
    )
    val_samples = make_samples(
        base,
        gistnet,
        val_text,
        lens_cfg,
        cfg.val_lens_samples,
        cfg.seed + 7,
        desc="val",
        progress=progress,
    )
    for sample in val_samples:
        refresh_keys(sample, base, gistnet)
    focus = (
        _focus_nll(base, lens, val_samples, lens_cfg, scale) if lens is not None else float("nan")
    )
    return CotrainResult(report.nll_gist, focus, phases, gistnet, lens, lora)


def _focus_nll(
    base: BaseAdapter, lens: Any, samples: Sequence[LensSample], cfg: LensTrainConfig, scale: float
) -> float:
    slices = [[s for s in samples if s.retrieval], [s for s in samples if not s.retrieval]]
    values = [evaluate_lensnet(base, lens, part, cfg, scale).nll_lens for part in slices if part]
    return float(np.mean(values)) if values else float("nan")


def cotrain_ablation(
    base: BaseAdapter,
    train_streams: Mapping[str, np.ndarray],
    val_streams: Mapping[str, np.ndarray],
    cfg: CotrainConfig,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
    progress: bool = False,
    done: Mapping[int, CotrainResult] | None = None,
) -> dict[str, Any]:
    """Loss change from freezing each module at its cycle-0 weights, mean and std over seeds.

    ``done`` maps a seed to a full run of ``cfg`` already made with it (not repeated).

    With LoRA in the run, a ``no_lora`` variant (the same run without adapters) also measures
    whether LoRA helps at all, not only whether training it past cycle 0 does.
    """
    rows: dict[str, list[tuple[float, float]]] = {"full": []}
    modules = [m for m in MODULE_NAMES if m != "lora" or cfg.use_lora]
    for name in modules:
        rows[f"freeze_{name}"] = []
    if cfg.use_lora:
        rows["no_lora"] = []
    for seed in seeds:
        for variant in rows:
            if variant == "no_lora":
                run_cfg = dataclasses.replace(cfg, seed=seed, use_lora=False)
            else:
                freeze = () if variant == "full" else (variant.removeprefix("freeze_"),)
                run_cfg = dataclasses.replace(cfg, seed=seed, freeze=freeze)
            if variant == "full" and done is not None and seed in done:
                result = done[seed]
            else:
                result = cotrain(
                    base, train_streams, val_streams, run_cfg, log=log, progress=progress
                )
            if result.lora is not None:
                result.lora.detach()
            rows[variant].append((result.val_nll_gist, result.val_nll_focus))
            log(
                f"seed {seed} {variant}: nll_gist={result.val_nll_gist:.4f} "
                f"nll_focus={result.val_nll_focus:.4f}"
            )
    full = np.array(rows["full"])
    report: dict[str, Any] = {
        "seeds": list(seeds),
        "full": {"nll_gist": full[:, 0].mean(), "nll_focus": full[:, 1].mean()},
    }
    for variant, values in rows.items():
        if variant == "full":
            continue
        delta = np.array(values) - full
        report[variant] = {
            "delta_nll_gist_mean": float(delta[:, 0].mean()),
            "delta_nll_gist_std": float(delta[:, 0].std()),
            "delta_nll_focus_mean": float(delta[:, 1].mean()),
            "delta_nll_focus_std": float(delta[:, 1].std()),
        }
    return report


@dataclass
class CotrainRunConfig(RunSettings):
    """A ``megacontext train cotrain`` run."""

    out_dir: str = "runs/cotrain"
    ablation_seeds: tuple[int, ...] = ()
    cotrain: CotrainConfig = field(default_factory=CotrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CotrainRunConfig:
        from megacontext.train.config import dataclass_from_dict

        run: CotrainRunConfig = dataclass_from_dict(cls, dict(data), "cotrain run")
        return run


def run_cotrain(run: CotrainRunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Co-train, save a bundle (GistNet, LensNet, LoRA if used) and, optionally, the ablation."""
    from megacontext.models.bundle import save_bundle

    base, train_streams, val_streams = start_run(run, log)
    result = cotrain(base, train_streams, val_streams, run.cotrain, log=log)
    out = Path(run.out_dir)
    modules: dict[str, Any] = {"gistnet": result.gistnet}
    if result.lensnet is not None:
        modules["lensnet"] = result.lensnet
    if result.lora is not None:
        modules["lora"] = result.lora
    summary: dict[str, Any] = {
        "val_nll_gist": result.val_nll_gist,
        "val_nll_focus": result.val_nll_focus,
        "phases": result.phases,
    }
    save_bundle(
        out / "bundle",
        modules,
        fingerprints=base.fingerprints,
        training={"cotrain": asdict(run.cotrain)},
        metrics=summary,
    )
    if result.lora is not None:
        result.lora.detach()
    if run.ablation_seeds:
        summary["ablation"] = cotrain_ablation(
            base,
            train_streams,
            val_streams,
            run.cotrain,
            run.ablation_seeds,
            log=log,
            done={run.cotrain.seed: result},
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    plot_cotrain(summary, out / "cotrain.png")
    return summary


def _distillation_phase(cycle: int, phase: str, result: Any) -> dict[str, Any]:
    """The log row of a distillation phase, with the held-out NLL it ended on (if it evaluated)."""
    row: dict[str, Any] = {"cycle": cycle, "phase": phase, "steps": len(result.history)}
    if result.evals and "lod1_nll_gist" in result.evals[-1]:
        row["val_nll_gist"] = float(result.evals[-1]["lod1_nll_gist"])
    return row


def plot_cotrain(summary: Mapping[str, Any], path: Path) -> None:
    """Held-out NLL after each phase of the run, and the ablation's loss changes (when run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ablation = summary.get("ablation") or {}
    variants = [v for v in ablation if v not in ("seeds", "full")]
    phases = [p for p in summary.get("phases", []) if "val_nll_gist" in p or "loss" in p]
    show_phases = any("val_nll_gist" in p for p in phases) or not variants
    panels = int(show_phases) + int(bool(variants))
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 0.5, 4), squeeze=False)
    ax_iter = iter(axes[0])
    if show_phases:
        left = next(ax_iter)
        steps = np.arange(len(phases))
        left.plot(steps, [p.get("val_nll_gist", np.nan) for p in phases], marker="o")
        left.set_xticks(steps, [f"c{p['cycle']} {p['phase']}" for p in phases], rotation=45)
        left.set_ylabel("held-out NLL with gists (nats)")
        twin = left.twinx()
        twin.plot(steps, [p.get("loss", np.nan) for p in phases], marker="s", color="tab:orange")
        twin.set_ylabel("LensNet training loss (squares)")
        left.set_title("co-learning phases")
    if variants:
        ax = next(ax_iter)
        x = np.arange(len(variants))
        for offset, key, name in ((-0.2, "gist", "NLL with gists"), (0.2, "focus", "focus NLL")):
            mean = [ablation[v][f"delta_nll_{key}_mean"] for v in variants]
            std = [ablation[v][f"delta_nll_{key}_std"] for v in variants]
            ax.bar(x + offset, mean, 0.4, yerr=std, capsize=3, label=name)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(x, variants, fontsize=8)
        ax.set_ylabel("change vs full run (nats; + = worse)")
        ax.set_title(f"ablation: mean ± std over seeds {ablation.get('seeds')}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
