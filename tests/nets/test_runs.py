"""Whole runs: `train gist` then `train lens` from a corpus directory, on tiny models."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from megacontext.cli import app
from megacontext.models import load_base
from megacontext.models.bundle import load_bundle
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.train.gist import GistRunConfig
from megacontext.train.lens import LensRunConfig

runner = CliRunner()


def write_corpus(root: Path) -> Path:
    """A small corpus of real text in the `train corpus` layout (stdlib modules, prose-like)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [p for p in sorted(stdlib.glob("*.py")) if p.stat().st_size > 20_000][:6]
    root.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("train", docs[:4]), ("val", docs[4:])):
        with (root / f"{split}.jsonl").open("w") as fh:
            for i, path in enumerate(chosen):
                source = "stdlib" if i % 2 else "pydoc"
                fh.write(
                    json.dumps({"source": source, "name": path.name, "text": path.read_text()})
                    + "\n"
                )
    return root


TINY_GIST: dict[str, Any] = {
    "prefix_blocks": 4,
    "lead_tokens": 4,
    "horizon": 8,
    "batch_size": 2,
    "gistnet": {"K": 4, "width": 16, "n_layers": 1, "n_heads": 2, "key_dim": 4},
}
TINY_LENS: dict[str, Any] = {
    "W_max": 40,
    "protected_recent": 12,
    "query_tokens": 8,
    "history_tokens": [150, 250],
    "horizon": 6,
    "max_answer_tokens": 4,
    "epochs": 2,
    "focus_steps": 1,
    "lensnet": {"width": 16, "n_heads": 2, "n_layers": 1},
}


@pytest.mark.slow
def test_gist_then_lens_runs_write_bundles_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a GistNet that reads the base's hidden states (``gistnet.inputs: hidden``) and LoRA
    trained with it, the whole path runs: training, `bench gist` on the GistNet-only bundle
    (through the adapters), LensNet labelled through them, whose bundle carries them on."""
    base_dir = make_tiny_model_dir("default", tmp_path / "base")
    corpus = write_corpus(tmp_path / "corpus")
    gist_config = {
        "base": str(base_dir),
        "corpus_dir": str(corpus),
        "out_dir": str(tmp_path / "gist"),
        "val_windows": 8,
        "gist": {
            **TINY_GIST,
            "gistnet": {**TINY_GIST["gistnet"], "inputs": "hidden"},
            "lora": {"r": 2, "alpha": 4},
            "steps": 6,
            "eval_interval": 3,
            "eval_windows": 4,
            "final_eval_windows": 8,
        },
    }
    path = tmp_path / "gist.yaml"
    path.write_text(yaml.safe_dump(gist_config))
    result = runner.invoke(app, ["train", "gist", "--config", str(path), "--set", "gist.seed=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "gist" / "summary.json").read_text())
    assert {"lod1_gap_closure", "lod2_gap_closure", "tokens_per_s"} <= set(summary)
    assert (tmp_path / "gist" / "gistnet_training.png").stat().st_size > 0
    monkeypatch.setenv("MEGACONTEXT_FOCUS_BUNDLE", str(tmp_path / "gist" / "bundle"))
    monkeypatch.setenv("MEGACONTEXT_CORPUS", str(corpus))
    bench = tmp_path / "bench-gist.json"
    result = runner.invoke(
        app, ["bench", "gist", "--quick", "--base", str(base_dir), "--json", str(bench)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(bench.read_text())["results"]}
    measured = set(rows)
    assert {"lod1_content_gap_closure", "gist_tokens_per_s"} <= measured
    # Measured in the run's own window layout (its lead), read from the GistNet-only manifest.
    assert rows["lod1_gap_closure"]["extra"]["lead_tokens"] == TINY_GIST["lead_tokens"]
    # The layout with many gists before the scored tokens, beside the training layout.
    assert rows["lod1_gap_closure_many"]["extra"]["prefix_blocks"] == 16
    assert rows["lod1_gap_closure"]["extra"]["prefix_blocks"] < 16
    assert not any(name.startswith("lens_") for name in measured)  # no LensNet in this bundle
    monkeypatch.delenv("MEGACONTEXT_FOCUS_BUNDLE")
    lens_config = {
        "base": str(base_dir),
        "corpus_dir": str(corpus),
        "out_dir": str(tmp_path / "lens"),
        "gist_bundle": str(tmp_path / "gist" / "bundle"),
        "train_samples": 4,
        "val_samples": 4,
        "lens": {**TINY_LENS, "key_epochs": 2},
    }
    path = tmp_path / "lens.yaml"
    path.write_text(yaml.safe_dump(lens_config))
    result = runner.invoke(app, ["train", "lens", "--config", str(path)])
    assert result.exit_code == 0, result.output
    base = load_base(base_dir)
    bundle = load_bundle(tmp_path / "lens" / "bundle", fingerprints=base.fingerprints)
    assert {"gistnet", "lensnet", "lensnet_gists_only", "lensnet_keys_only"} <= set(bundle.modules)
    assert bundle.lora is not None and bundle.lora[0]["r"] == 2
    assert "lod1" in bundle.metrics and "focus_gain_text" in bundle.metrics
    phases = {"labelling", "key_head", "refresh_keys", "lensnet_training", "evaluation"}
    assert set(bundle.metrics["seconds"]) == phases
    assert all(v >= 0 for v in bundle.metrics["seconds"].values())
    assert (tmp_path / "lens" / "lensnet_training.png").stat().st_size > 0


@pytest.mark.slow
def test_cotrain_run_saves_lora_ablation_and_plot(tmp_path: Path) -> None:
    base_dir = make_tiny_model_dir("default", tmp_path / "base")
    corpus = write_corpus(tmp_path / "corpus")
    config = {
        "base": str(base_dir),
        "corpus_dir": str(corpus),
        "out_dir": str(tmp_path / "co"),
        "ablation_seeds": [0],
        "cotrain": {
            "cycles": 1,
            "lens_samples": 3,
            "val_lens_samples": 2,
            "lora_steps": 3,
            "lora": {"r": 2, "alpha": 4},
            "gist": {
                **TINY_GIST,
                "steps": 4,
                "eval_interval": 2,
                "eval_windows": 2,
                "final_eval_windows": 4,
                "lod2_probability": 0.0,
            },
            "lens": TINY_LENS,
        },
    }
    path = tmp_path / "co.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", "cotrain", "--config", str(path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "co" / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == ["gistnet", "lensnet", "lora"]
    assert "val_nll_gist" in summary["phases"][0]
    ablation = summary["ablation"]
    assert {"freeze_gistnet", "freeze_lensnet", "freeze_lora", "no_lora"} <= set(ablation)
    # The seed-0 full run is the main run, reused: freezing after the only cycle changes nothing.
    assert ablation["freeze_gistnet"]["delta_nll_gist_mean"] == pytest.approx(0.0, abs=1e-9)
    assert (tmp_path / "co" / "cotrain.png").stat().st_size > 0
    base = load_base(base_dir)
    bundle = load_bundle(tmp_path / "co" / "bundle", fingerprints=base.fingerprints)
    assert {"gistnet", "lensnet"} <= set(bundle.modules) and bundle.lora is not None


def test_run_configs_reject_unknown_keys() -> None:
    from megacontext.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown keys"):
        GistRunConfig.from_dict({"gist": {"stepz": 3}})
    with pytest.raises(InvalidInputError, match="unknown keys"):
        LensRunConfig.from_dict({"lenz": {}})


@pytest.mark.slow
def test_train_focus_makes_a_measured_bundle_and_resumes(tmp_path: Path) -> None:
    """`train focus` runs corpus → gist → lens → bench → card; run again, it skips what is done,
    and after a stage is forgotten it redoes that stage and every one after it."""
    base_dir = make_tiny_model_dir("default", tmp_path / "base")
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "focus"
    gist = {**TINY_GIST, "steps": 4, "eval_interval": 0, "final_eval_windows": 4}
    lens = {**TINY_LENS, "key_epochs": 1}
    args = [
        "train", "focus", "--base", str(base_dir), "--corpus", str(corpus), "--out", str(out),
        "--quick-bench", "--set", f"gist.gist={json.dumps(gist)}", "--set", "gist.val_windows=4",
        "--set", f"lens.lens={json.dumps(lens)}", "--set", "lens.train_samples=3",
        "--set", "lens.val_samples=3",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["corpus", "gist", "lens", "bench", "card"]
    assert stages["gist"]["tokens_per_s"] > 0 and stages["lens"]["tokens_per_s"] > 0
    bench = json.loads((out / "bench-gist.json").read_text())
    assert bench["suite"] == "gist" and bench["base"] == str(base_dir)
    assert any(r["name"] == "lod1_content_gap_closure" for r in bench["results"])
    card = (out / "bundle" / "README.md").read_text()
    assert "lod1_content_gap_closure" in card
    base = load_base(base_dir)
    bundle = load_bundle(out / "bundle", fingerprints=base.fingerprints)
    assert {"gistnet", "lensnet"} <= set(bundle.modules)

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("done in an earlier run") == 5
    forgotten = {k: v for k, v in stages.items() if k != "lens"}
    (out / "stages.json").write_text(json.dumps(forgotten))
    # The redone LensNet stage trains on two processes, labelling as much as a budget allows.
    two = ["--nproc", "2", "--set", "lens.lens.batch_size=2", "--set", "lens.train_samples=6",
           "--set", "lens.lens.label_budget_s=1e-6"]  # fmt: skip
    redo = runner.invoke(app, args + two)
    assert redo.exit_code == 0, redo.output
    assert "training on 2 processes" in redo.output
    assert load_bundle(out / "bundle").metrics["train_samples"] == 4  # MIN_LABELLED
    assert redo.output.count("done in an earlier run") == 2  # corpus and gist
    assert set(json.loads((out / "stages.json").read_text())) == set(stages)


def test_train_focus_refuses_bad_flags(tmp_path: Path) -> None:
    """Bad flags, and settings either stage would refuse, fail before any stage runs."""
    from megacontext.errors import InvalidInputError

    out = tmp_path / "focus"
    for flags, words in (
        (["--set", "steps=3"], "gist.KEY or lens.KEY"),
        (["--device", "tpu"], "cpu or cuda"),
        (["--budget-hours", "0"], "--budget-hours"),
        (["--set", "lens.lens.epochz=3"], "epochz"),  # a LensNet typo, caught before GistNet
        (["--nproc", "2"], "lens.batch_size 1 is smaller than --nproc 2"),
        (["--nproc", "2", "--set", "lens.lens.batch_size=2", "--set", "gist.gist.lora={r: 2}"],
         "gist.lora"),
    ):  # fmt: skip
        result = runner.invoke(app, ["train", "focus", "--out", str(out), *flags])
        assert isinstance(result.exception, InvalidInputError), flags
        assert words in str(result.exception), (flags, str(result.exception))
        assert not out.exists(), flags
