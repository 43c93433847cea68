"""``megacontext train gist`` and ``megacontext train lens``: the focus models for a base.

Registered on the ``train`` command group in ``megacontext.cli``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from megacontext.errors import InvalidInputError

console = Console()


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidInputError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping of settings")
    return data


def _apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set {item!r} must look like key=value or section.key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return data


def _summary_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
        elif isinstance(value, int | str):
            table.add_row(key, str(value))
        else:
            table.add_row(key, json.dumps(value, default=float))
    return table


def gist(
    config: Annotated[Path, typer.Option("--config", help="YAML run config.")] = Path(
        "src/megacontext/train/configs/gist-default.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set gist.steps=200 (repeatable)."),
    ] = None,
) -> None:
    """Train GistNet against a frozen base: gists the base can read in place of their tokens.

    Distils the base's full-context predictions into gists, with many gists in each context (as in
    a real working context), for levels 1 and 2. Writes a bundle (safetensors + manifest), a loss
    and gap-closure plot and summary.json; prints gap closure and ΔNLL per level on held-out text.

    Example: megacontext train gist --config src/megacontext/train/configs/gist-default.yaml
    --set gist.steps=300 --set out_dir=runs/gist-quick
    """
    from megacontext.train.gist import GistRunConfig, run_gist

    run = GistRunConfig.from_dict(_apply_overrides(_load_yaml(config), overrides or []))
    summary = run_gist(run, log=console.print)
    console.print(_summary_table(f"GistNet run → {run.out_dir}", summary))


def lens(
    config: Annotated[Path, typer.Option("--config", help="YAML run config.")] = Path(
        "src/megacontext/train/configs/lens-default.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set train_samples=50 (repeatable)."),
    ] = None,
) -> None:
    """Train LensNet (and GistNet's key head) from counterfactual focus labels.

    Labels every legal single expand/collapse of sampled working contexts by the change in the
    base's NLL, on natural text and on retrieval tasks (passkey, key/value, variable tracking);
    trains the key head contrastively, then LensNet and its ablations (gists only, lexical only,
    keys only). Reports Spearman, top-1 and focus gain separately for text and retrieval.

    Example: megacontext train lens --set gist_bundle=runs/gistnet/bundle --set train_samples=100
    """
    from megacontext.train.lens import LensRunConfig, run_lens

    run = LensRunConfig.from_dict(_apply_overrides(_load_yaml(config), overrides or []))
    metrics = run_lens(run, log=console.print)
    console.print(_summary_table(f"LensNet run → {run.out_dir}", metrics))


def cotrain(
    config: Annotated[Path, typer.Option("--config", help="YAML run config.")] = Path(
        "src/megacontext/train/configs/cotrain-default.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set cotrain.cycles=2 (repeatable)."),
    ] = None,
) -> None:
    """EM-style co-learning of GistNet, LensNet and LoRA on the base's attention projections.

    Schedules: `alternating` (GistNet phase → relabel → LensNet phase → LoRA phase, per cycle) or
    `joint` (GistNet and LoRA together, then relabel and LensNet). Phases stop early on held-out
    plateaus; stale labels are refused. With `ablation_seeds`, every module is also frozen at its
    cycle-0 weights in turn, and the run is repeated without LoRA; the loss changes (mean and
    spread over the seeds) go to summary.json and cotrain.png in out_dir.

    Example: megacontext train cotrain --set cotrain.schedule=joint --set ablation_seeds=[0,1,2]

    The measured ablation (about an hour on 2 cores):
    megacontext train cotrain --config src/megacontext/train/configs/cotrain-ablation.yaml
    """
    from megacontext.train.cotrain import CotrainRunConfig, run_cotrain

    run = CotrainRunConfig.from_dict(_apply_overrides(_load_yaml(config), overrides or []))
    summary = run_cotrain(run, log=console.print)
    console.print(_summary_table(f"co-learning run → {run.out_dir}", summary))


def card(
    bundle: Annotated[
        Path, typer.Argument(help="The focus bundle directory to write README.md in.")
    ],
    bench: Annotated[
        Path | None,
        typer.Option(
            "--bench", help="JSON of `megacontext bench gist --json PATH` on this bundle."
        ),
    ] = None,
    plots: Annotated[
        list[Path] | None,
        typer.Option("--plots", help="A training run directory to copy the PNG plots from."),
    ] = None,
) -> None:
    """Write the card (README.md) of a focus bundle: modules, training, every metric and goal.

    The card is built from the bundle's manifest (training configs, held-out metrics of the
    training runs) and, with --bench, the benchmark results of record; each goal of the bundle's
    metrics is printed beside its measurement, met or missed.

    Example: megacontext train card src/megacontext/models/bundles/tiny --bench results/gist.json
    --plots runs/gistnet-default --plots runs/lensnet-default
    """
    from megacontext.train.focus_card import write_focus_card

    path = write_focus_card(bundle, bench, plots or [])
    console.print(f"wrote {path}")
