"""The focus bundle card: every metric beside its goal, plots copied, bad benchmark files named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megacontext.errors import InvalidInputError
from megacontext.models.bundle import load_bundle, save_bundle
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.train.focus_card import write_focus_card

FP = {"base": "base-aaa", "tokenizer": "tok-bbb"}


def bundle(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=16, K=4, width=16, n_heads=2, key_dim=4))
    lens = LensNet(LensNetConfig(d_model=16, width=16, n_heads=2))
    metrics = {
        "train_seconds": 120.0,
        "train_tokens": 5000,
        "lod1": {
            "windows": 8,
            "nll_full": 4.0,
            "nll_drop": 4.5,
            "nll_gist": 4.1,
            "gap_closure": 0.8,
            "gap_closure_ci": [0.7, 0.9],
            "reference": "tokens",
        },
        "focus_gain_text": 0.12,
        "train_samples": 40,
    }
    training = {"gist": {"horizon": 16, "prefix_blocks": 4}, "lens": {"W_max": 64, "epochs": 3}}
    return save_bundle(
        tmp_path / "bundle",
        {"gistnet": gist, "lensnet": lens},
        fingerprints=FP,
        training=training,
        metrics=metrics,
    )


def bench_document(**values: float) -> dict[str, object]:
    results: list[dict[str, object]] = [
        {"name": name, "value": value, "unit": "fraction"} for name, value in values.items()
    ]
    results.append(
        {
            "name": "gist_tokens_per_s",
            "value": 9000.0,
            "unit": "tokens/s",
            "baseline": {"name": "base_prefill_tokens_per_s", "value": 3000.0},
            "ratio": 3.0,
        }
    )
    return {"suite": "gist", "date": "2026-11-29", "machine": "test", "results": results}


def test_card_reports_every_metric_against_its_goal(tmp_path: Path) -> None:
    root = bundle(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "gistnet_training.png").write_bytes(b"\x89PNG fake")
    bench = tmp_path / "gist.json"
    bench.write_text(
        json.dumps(bench_document(lod1_gap_closure=0.85, focus_gain_retrieval=0.4)), "utf-8"
    )
    card = write_focus_card(root, bench, [run]).read_text("utf-8")
    rows = {
        line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| `")
    }
    assert "met" in rows["`lod1_gap_closure`"] and "missed" not in rows["`lod1_gap_closure`"]
    assert "**missed**" in rows["`focus_gain_retrieval`"]
    assert "ratio 3.000" in rows["`gist_tokens_per_s`"]
    # Training-run metrics are on the card too, each with its goal.
    assert "**missed**" in rows["`focus_gain_text`"]
    assert any(key.startswith("`lod1_gap_closure` (8 windows") for key in rows)
    # The plot found in the run directory is copied and linked; the missing one is not linked.
    assert (root / "gistnet_training.png").read_bytes() == b"\x89PNG fake"
    assert "](gistnet_training.png)" in card and "lensnet_training.png" not in card
    # The card never touches what the bundle loads.
    assert load_bundle(root, fingerprints=FP).metrics["train_samples"] == 40
    assert card.startswith("# MegaContext focus bundle for the default base")
    assert "Reproduce: `make focus-models`" in card


def test_card_names_the_base_and_the_command_that_made_it(tmp_path: Path) -> None:
    root = bundle(tmp_path)
    bench = tmp_path / "gist.json"
    bench.write_text(json.dumps({**bench_document(), "base": "smollm2"}), "utf-8")
    command = "megacontext train focus --base smollm2 --budget-hours 1"
    card = write_focus_card(root, bench, made_by=command).read_text("utf-8")
    assert card.startswith("# MegaContext focus bundle for `smollm2`")
    assert f"by `{command}`" in card and f"Reproduce: `{command}`" in card
    assert "make focus-models" not in card


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read benchmark results"),
        (json.dumps({"suite": "longctx", "results": []}), "not the output of `megacontext bench"),
        (json.dumps([1, 2]), "not the output of `megacontext bench"),
    ],
)
def test_bad_benchmark_files_are_named(tmp_path: Path, content: str, message: str) -> None:
    root = bundle(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(content, "utf-8")
    with pytest.raises(InvalidInputError, match=message):
        write_focus_card(root, bad)
    assert not (root / "README.md").exists()


def test_card_needs_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a MegaContext bundle"):
        write_focus_card(tmp_path)
