"""A whole ``megacontext train lens`` run: label, train keys and LensNet (with ablations),
evaluate per slice, and write one focus bundle with its plots and metrics.

Under torch.distributed (``train lens --nproc N``, through
:func:`megacontext.train.distributed.launch`) every process labels the same samples (seeded) and
trains its share of each global batch; rank 0 alone logs and writes the run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.errors import InvalidInputError
from megacontext.models.gistnet import GistNet
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.train.config import RunSettings, start_run
from megacontext.train.distributed import data_parallel, global_min, rank_zero
from megacontext.train.lens.evaluation import evaluate_lensnet
from megacontext.train.lens.labels import LensTrainConfig, make_samples
from megacontext.train.lens.training import refresh_keys, train_key_head, train_lensnet

ABLATIONS: dict[str, dict[str, bool]] = {
    "all": {"use_gists": True, "use_lexical": True, "use_keys": True},
    "gists_only": {"use_gists": True, "use_lexical": False, "use_keys": False},
    "lexical_only": {"use_gists": False, "use_lexical": True, "use_keys": False},
    "keys_only": {"use_gists": False, "use_lexical": False, "use_keys": True},
}


@dataclass
class LensRunConfig(RunSettings):
    """A ``megacontext train lens`` run: base, GistNet bundle, corpus, sizes, output."""

    gist_bundle: str = "runs/gistnet/bundle"
    out_dir: str = "runs/lensnet"
    train_samples: int = 400
    val_samples: int = 100
    ablations: bool = True
    lens: LensTrainConfig = field(default_factory=LensTrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensRunConfig:
        from megacontext.train.config import dataclass_from_dict

        run: LensRunConfig = dataclass_from_dict(cls, dict(data), "lens run")
        return run


def _prose_stream(streams: dict[str, np.ndarray]) -> np.ndarray:
    prose = [s for name, s in sorted(streams.items()) if name != "stdlib" and len(s)]
    return np.concatenate(prose or [s for s in streams.values() if len(s)])


def run_lens(run: LensRunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Label, train keys and LensNet (plus ablations), evaluate per slice, write the run."""
    from megacontext.models.bundle import load_bundle

    log = rank_zero(log)  # one process writes and speaks; the others train their share
    base, train_streams, val_streams = start_run(run, log)
    gist_bundle = load_bundle(run.gist_bundle, fingerprints=base.fingerprints)
    gistnet = gist_bundle.get("gistnet")
    if not isinstance(gistnet, GistNet):
        raise InvalidInputError(f"{run.gist_bundle} holds no GistNet; train one first")
    # A GistNet trained with LoRA (`gist.lora`) is read through its adapters, as sessions read
    # it: the labels are then the runtime's, and the bundle written here carries them on.
    lora = gist_bundle.attach_lora(base)
    try:
        return _label_and_train(run, base, gist_bundle, lora, train_streams, val_streams, log)
    finally:
        if lora is not None:
            lora.detach()


class _Laps:
    """Seconds per phase of a run: ``lap(name)`` adds the time since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._clock
        self._clock = now


def _label_and_train(
    run: LensRunConfig,
    base: Any,
    gist_bundle: Any,
    lora: Any,
    train_streams: dict[str, np.ndarray],
    val_streams: dict[str, np.ndarray],
    log: Callable[[str], None],
) -> dict[str, Any]:
    from megacontext.models.bundle import save_bundle

    rank, _ = data_parallel()
    gistnet = gist_bundle.get("gistnet")
    cfg = run.lens
    special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
    train_text = _prose_stream(train_streams)
    val_text = _prose_stream(val_streams)
    progress = not rank
    total = run.train_samples + run.val_samples
    lap = _Laps()  # where the run's time goes (labelling, on a real base)
    budget = cfg.label_budget_s

    def share(count: int) -> float | None:
        return None if budget is None else budget * count / max(total, 1)

    train = make_samples(
        base,
        gistnet,
        train_text,
        cfg,
        run.train_samples,
        cfg.seed,
        special,
        desc="labelling train",
        progress=progress,
        budget_s=share(run.train_samples),
        subsample=True,
    )
    val = make_samples(
        base,
        gistnet,
        val_text,
        cfg,
        run.val_samples,
        cfg.seed + 1,
        special,
        desc="labelling val",
        progress=progress,
        budget_s=share(run.val_samples),
    )
    if budget is not None:
        # Processes label at their own speed; they must train on one set.
        train, val = train[: global_min(len(train))], val[: global_min(len(val))]
        log(
            f"labelled {len(train)} of {run.train_samples} train and {len(val)} of "
            f"{run.val_samples} val samples in the {budget:.0f} s labelling budget"
        )
    lap("labelling")
    key_losses = train_key_head(base, gistnet, train, cfg, progress=progress)
    lap("key_head")
    for sample in [*train, *val]:
        refresh_keys(sample, base, gistnet)
    lap("refresh_keys")
    slices = {
        "text": [s for s in val if not s.retrieval],
        "retrieval": [s for s in val if s.retrieval],
    }
    metrics: dict[str, Any] = {
        "key_losses": key_losses,
        "train_samples": len(train),
        "val_samples": len(val),
        "labelled_tokens": sum(s.tree.num_tokens for s in [*train, *val]),
    }
    models: dict[str, LensNet] = {}
    curves: dict[str, list[float]] = {}
    for name, switches in ABLATIONS.items():
        if name != "all" and not run.ablations:
            continue
        config = LensNetConfig(d_model=base.d_model, **{**cfg.lensnet, **switches})
        lens, scale, losses = train_lensnet(base, train, cfg, config, progress, log)
        lap("lensnet_training")
        models[name], curves[name] = lens, losses
        metrics[f"label_scale_{name}"] = scale
        for slice_name, samples in slices.items():
            if not samples:
                continue
            report = evaluate_lensnet(base, lens, samples, cfg, scale)
            suffix = "" if name == "all" else f"_{name}"
            metrics[f"lens_spearman_{slice_name}{suffix}"] = report.spearman
            metrics[f"lens_top1_{slice_name}{suffix}"] = report.top1
            metrics[f"focus_gain_{slice_name}{suffix}"] = report.focus_gain
            metrics[f"nll_{slice_name}{suffix}"] = {
                "recency": report.nll_recency,
                "lensnet": report.nll_lens,
                "oracle": report.nll_oracle,
            }
            log(f"{name} / {slice_name}: {report}")
        lap("evaluation")
    metrics["seconds"] = {name: round(value, 1) for name, value in lap.seconds.items()}
    log("seconds: " + ", ".join(f"{name} {value:.0f}" for name, value in lap.seconds.items()))
    if rank:
        return metrics
    out = Path(run.out_dir)
    # One bundle with everything the runtime and the benchmark need: GistNet (with its trained
    # key head), LensNet, and the ablation LensNets; training configs and metrics of both runs.
    modules: dict[str, torch.nn.Module] = {"gistnet": gistnet, "lensnet": models["all"]}
    modules.update({f"lensnet_{name}": m for name, m in models.items() if name != "all"})
    if lora is not None:
        modules["lora"] = lora
    save_bundle(
        out / "bundle",
        modules,
        fingerprints=base.fingerprints,
        training={
            "gist": gist_bundle.training,
            "lens": asdict(cfg),
            "run": {k: v for k, v in asdict(run).items() if k != "lens"},
        },
        metrics={**gist_bundle.metrics, **metrics},
    )
    (out / "summary.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    (out / "history.json").write_text(json.dumps({"key_losses": key_losses, "lens_losses": curves}))
    plot_lens_training(curves, metrics, out / "lensnet_training.png")
    return metrics


def plot_lens_training(curves: dict[str, list[float]], metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, losses in curves.items():
        ax1.plot(range(1, len(losses) + 1), losses, label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    names = list(curves)
    for offset, slice_name in enumerate(("text", "retrieval")):
        values = [
            metrics.get(f"focus_gain_{slice_name}{'' if n == 'all' else '_' + n}", float("nan"))
            for n in names
        ]
        ax2.bar(np.arange(len(names)) + 0.4 * offset, values, width=0.4, label=slice_name)
    ax2.set_xticks(np.arange(len(names)) + 0.2, names)
    ax2.set_ylabel("focus gain (held out)")
    ax2.axhline(0, color="black", linewidth=0.6)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["ABLATIONS", "LensRunConfig", "plot_lens_training", "run_lens"]
