"""The card of a focus bundle (GistNet + LensNet): what it is, how it was trained, every metric.

The card is ``README.md`` inside the bundle directory. It is written from the bundle's manifest
(training configs and the held-out metrics of the training runs) and, when given, the JSON of
``megacontext bench gist`` run on the bundle, whose results are the numbers of record (issue 6 §9).
Every goal is printed beside its measurement, met or not.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError
from megacontext.models.bundle import read_manifest

# Goals of issue 6 §9, and issue 16's for gists that carry content; a missed goal stays a goal.
GOALS: dict[str, float] = {
    "lod1_gap_closure": 0.8,
    "lod2_gap_closure": 0.5,
    "lod1_content_gap_closure": 0.75,
    "lod1_own_minus_shuffled": 0.5,
    "lens_spearman_retrieval": 0.5,
    "lens_top1_retrieval": 0.9,
    "focus_gain_retrieval": 0.8,
    "lens_spearman_text": 0.3,
    "focus_gain_text": 0.3,
}

PLOTS = ("gistnet_training.png", "lensnet_training.png")
TINY_RECIPE = "make focus-models"  # how the tiny base's bundle is made (docs/training.md)

# Training-run metrics reported on the card when no benchmark JSON is given (or beside it).
_TRAINING_METRICS = (
    "lens_spearman_retrieval",
    "lens_top1_retrieval",
    "focus_gain_retrieval",
    "lens_spearman_text",
    "lens_top1_text",
    "focus_gain_text",
    "focus_gain_retrieval_gists_only",
    "focus_gain_retrieval_lexical_only",
    "focus_gain_retrieval_keys_only",
    "focus_gain_text_gists_only",
    "focus_gain_text_lexical_only",
    "focus_gain_text_keys_only",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def _verdict(name: str, value: Any) -> str:
    goal = GOALS.get(name)
    if goal is None:
        return ""
    if not isinstance(value, int | float) or math.isnan(float(value)):
        return f"≥ {goal} — not measured"
    return f"≥ {goal} — {'met' if value >= goal else '**missed**'}"


def _read_bench(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read benchmark results {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("suite") != "gist":
        raise InvalidInputError(
            f"{path} is not the output of `megacontext bench gist --json PATH` "
            f"(suite {document.get('suite') if isinstance(document, dict) else None!r})"
        )
    return document


def focus_card(
    manifest: Mapping[str, Any],
    bench: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
    made_by: str = TINY_RECIPE,
) -> str:
    """The card (Markdown) of a focus bundle from its manifest, optional ``bench gist`` JSON,
    the file names of the training plots beside it and the command that made it. The base is
    named as the benchmark named it (else "the default base")."""
    modules = manifest.get("modules", {})
    metrics = manifest.get("metrics", {})
    training = manifest.get("training", {})
    gist_cfg = training.get("gist", {})
    lens_cfg = training.get("lens", {})
    fingerprints = manifest.get("fingerprints", {})
    base = str((bench or {}).get("base") or "default")
    base = "the default base" if base in ("default", "tiny") else f"`{base}`"
    lines = [
        f"# MegaContext focus bundle for {base}",
        "",
        "GistNet (gists the frozen base reads in place of 32 tokens or 32 child gists, plus",
        "retrieval keys) and LensNet (one focus score per working-context entry), trained for",
        f"{base} by `{made_by}`. The bundle loads only with the base and tokenizer it was",
        "trained for:",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in sorted(fingerprints.items()):
        lines.append(f"| {key} fingerprint | `{value[:16]}…` |")
    lines.append(f"| created | {manifest.get('created', '?')} |")
    lines += [
        "",
        "## Modules",
        "",
        "| module | version | parameters | config |",
        "|---|---|---|---|",
    ]
    for name, described in modules.items():
        config = ", ".join(
            f"{k}={v}"
            for k, v in described.get("config", {}).items()
            if k not in ("d_model", "target_norm")
        )
        lines.append(
            f"| `{name}` | {described.get('version')} | {described.get('parameters', 0):,} | "
            f"{config} |"
        )
    lines += ["", "## Training", ""]
    if gist_cfg:
        lines.append(
            f"- **GistNet**: distillation from the frozen base (KL over the next "
            f"{gist_cfg.get('horizon')} tokens), windows of {gist_cfg.get('prefix_blocks')} "
            f"prefix blocks with at least {gist_cfg.get('min_gist_fraction')} of them gisted, "
            f"LOD2 in {gist_cfg.get('lod2_probability')} of steps (teacher: "
            f"{gist_cfg.get('lod2_teacher')}); batch {gist_cfg.get('batch_size')}, lr "
            f"{gist_cfg.get('lr')}; {float(metrics.get('train_seconds', math.nan)) / 60:.1f} "
            f"min, {int(metrics.get('train_tokens', 0)):,} tokens."
        )
    if lens_cfg:
        lines.append(
            f"- **LensNet and keys**: counterfactual labels (every legal single edit scored by "
            f"the base) on {metrics.get('train_samples', '?')} training working contexts "
            f"(W_max {lens_cfg.get('W_max')}, histories {lens_cfg.get('history_tokens')} tokens, "
            f"{lens_cfg.get('retrieval_fraction')} retrieval tasks "
            f"{lens_cfg.get('task_kinds')}); {lens_cfg.get('epochs')} epochs of ranking + "
            f"regression; key head {lens_cfg.get('key_epochs')} epochs of InfoNCE; the "
            f"ablation LensNets are trained the same way with inputs switched off."
        )
    lines += ["", *[f"![{plot}]({plot})" for plot in plots], ""]
    lines += ["## Results", ""]
    if bench is not None:
        lines += [
            f"From `{bench.get('command', 'megacontext bench gist')}` on {bench.get('date')} "
            f"({bench.get('machine')}), held-out data:",
            "",
            "| result | value | unit | goal | note |",
            "|---|---|---|---|---|",
        ]
        for row in bench.get("results", []):
            value = row.get("value")
            # The goal column is the card's own (GOALS); goal text in a benchmark note is dropped.
            note = re.sub(r";?\s*goal >= [0-9.]+", "", row.get("note", "")).strip("; ")
            if "baseline" in row:
                note = (
                    f"{row['baseline']['name']} = {_fmt(row['baseline']['value'])}, ratio "
                    f"{_fmt(row.get('ratio'))}"
                )
            lines.append(
                f"| `{row['name']}` | {_fmt(value)} | {row.get('unit', '')} | "
                f"{_verdict(row['name'], value)} | {note} |"
            )
        lines.append("")
    lines += [
        "Held-out metrics of the training runs (`megacontext train gist`, `megacontext train "
        "lens`):",
        "",
        "| metric | value | goal |",
        "|---|---|---|",
    ]
    for level in (1, 2):
        report = metrics.get(f"lod{level}")
        if isinstance(report, Mapping):
            lines += _gist_rows(level, report)
    for name in _TRAINING_METRICS:
        if name in metrics:
            lines.append(f"| `{name}` | {_fmt(metrics[name])} | {_verdict(name, metrics[name])} |")
    lines += [
        "",
        f"Reproduce: `{made_by}` (GistNet, then LensNet, then `megacontext bench gist` and this "
        "card).",
        "",
    ]
    return "\n".join(lines)


def write_focus_card(
    bundle_dir: str | Path,
    bench_json: str | Path | None = None,
    plots_from: Sequence[str | Path] = (),
    made_by: str = TINY_RECIPE,
) -> Path:
    """Write ``README.md`` into ``bundle_dir``; copy training plots found in ``plots_from``."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    bench = _read_bench(Path(bench_json)) if bench_json is not None else None
    for folder in plots_from:
        for plot in PLOTS:
            source = Path(folder) / plot
            if source.is_file():
                shutil.copyfile(source, root / plot)
    card = root / "README.md"
    present = [plot for plot in PLOTS if (root / plot).is_file()]
    card.write_text(focus_card(manifest, bench, present, made_by), encoding="utf-8")
    return card


def _gist_rows(level: int, report: Mapping[str, Any]) -> list[str]:
    """The card's rows for one level's gist report (with the content-free controls, when the
    bundle was measured with them)."""
    name = f"lod{level}_gap_closure"
    low, high = report.get("gap_closure_ci", (math.nan, math.nan))
    rows = [
        f"| `{name}` ({report.get('windows')} windows; NLL full "
        f"{_fmt(report.get('nll_full'))} ({report.get('reference', 'tokens')}), drop "
        f"{_fmt(report.get('nll_drop'))}, gist {_fmt(report.get('nll_gist'))}) | "
        f"{_fmt(report.get('gap_closure'))} [{_fmt(low)}, {_fmt(high)}] | "
        f"{_verdict(name, report.get('gap_closure'))} |"
    ]
    if "content_gap_closure" in report:
        content, value = f"lod{level}_content_gap_closure", report["content_gap_closure"]
        low, high = report.get("content_gap_closure_ci", (math.nan, math.nan))
        rows.append(
            f"| `{content}` (NLL with another window's gists {_fmt(report.get('nll_shuffled'))}, "
            f"with the mean gist {_fmt(report.get('nll_constant'))}) | {_fmt(value)} "
            f"[{_fmt(low)}, {_fmt(high)}] | {_verdict(content, value)} |"
        )
        own = f"lod{level}_own_minus_shuffled"
        mine = report.get("gap_closure", math.nan) - report.get("shuffled_gap_closure", math.nan)
        rows.append(f"| `{own}` | {_fmt(mine)} | {_verdict(own, mine)} |")
    return rows
