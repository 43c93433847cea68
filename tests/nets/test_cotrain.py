"""Co-learning: both schedules run, frozen modules stay frozen, the base is untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from megacontext.errors import InvalidInputError
from megacontext.models import load_base
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.train.cotrain import CotrainConfig, CotrainRunConfig, cotrain, cotrain_ablation
from megacontext.train.gist import GistTrainConfig
from megacontext.train.lens import LensTrainConfig

K = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_base(make_tiny_model_dir("default", tmp_path_factory.mktemp("m") / "b"))


def streams(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    phrases = rng.integers(5, 300, size=(30, 8))
    return {"text": phrases[rng.integers(0, 30, size=1500)].reshape(-1)}


def tiny(**kw: object) -> CotrainConfig:
    options: dict[str, object] = {
        "cycles": 2,
        "lens_samples": 3,
        "val_lens_samples": 2,
        "lora_steps": 4,
        "lora": {"r": 2, "alpha": 4},
        "gist": GistTrainConfig(
            prefix_blocks=4,
            lead_tokens=4,
            horizon=8,
            steps=5,
            batch_size=2,
            eval_interval=0,
            final_eval_windows=4,
            lod2_probability=0.0,
            gistnet={"K": K, "width": 16, "n_layers": 1, "n_heads": 2, "key_dim": 4},
        ),
        "lens": LensTrainConfig(
            W_max=40,
            protected_recent=12,
            query_tokens=8,
            history_tokens=(120, 200),
            horizon=6,
            max_answer_tokens=4,
            perturb_edits=1,
            epochs=2,
            focus_steps=1,
            lensnet={"width": 16, "n_heads": 2, "n_layers": 1},
        ),
    }
    options.update(kw)
    return CotrainConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_schedules_run_and_leave_the_base_untouched(base, schedule: str) -> None:  # type: ignore[no-untyped-def]
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    result = cotrain(
        base, streams(1), streams(2), tiny(schedule=schedule), log=lambda _m: None, progress=False
    )
    phases = [p["phase"] for p in result.phases]
    if schedule == "alternating":
        assert phases == ["gistnet", "lensnet", "lora"] * 2
    else:
        assert phases == ["joint", "lensnet"] * 2
    assert np.isfinite(result.val_nll_gist) and np.isfinite(result.val_nll_focus)
    assert result.lora is not None
    result.lora.detach()
    after = base.model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value)


def test_frozen_module_keeps_its_cycle0_weights(base) -> None:  # type: ignore[no-untyped-def]
    phases_seen: list[str] = []
    result = cotrain(
        base,
        streams(1),
        streams(2),
        tiny(freeze=("gistnet", "lora")),
        log=phases_seen.append,
        progress=False,
    )
    phases = [(p["cycle"], p["phase"]) for p in result.phases]
    assert (0, "gistnet") in phases and (1, "gistnet") not in phases
    assert (0, "lora") in phases and (1, "lora") not in phases
    assert (1, "lensnet") in phases
    result.lora.detach()


def test_ablation_reports_deltas_per_module(base) -> None:  # type: ignore[no-untyped-def]
    report = cotrain_ablation(
        base,
        streams(1),
        streams(2),
        dataclasses.replace(tiny(), cycles=1, use_lora=False),
        seeds=(0,),
        log=lambda _m: None,
    )
    assert set(report) >= {"full", "freeze_gistnet", "freeze_lensnet"}
    assert "no_lora" not in report and "freeze_lora" not in report
    # With one cycle, "frozen at cycle-0 weights" changes nothing: the deltas must be exactly 0.
    assert report["freeze_gistnet"]["delta_nll_gist_mean"] == pytest.approx(0.0, abs=1e-9)


def test_ablation_with_lora_measures_lora_itself(base) -> None:  # type: ignore[no-untyped-def]
    report = cotrain_ablation(
        base,
        streams(1),
        streams(2),
        dataclasses.replace(tiny(), cycles=1),
        seeds=(0,),
        log=lambda _m: None,
    )
    assert {"freeze_lora", "no_lora"} <= set(report)
    # One cycle: freezing LoRA after cycle 0 is the full run, but dropping it is not.
    assert report["freeze_lora"]["delta_nll_gist_mean"] == pytest.approx(0.0, abs=1e-9)
    assert report["no_lora"]["delta_nll_gist_mean"] != pytest.approx(0.0, abs=1e-6)


def test_bad_configs() -> None:
    with pytest.raises(InvalidInputError, match="schedule"):
        CotrainConfig(schedule="random")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="cannot freeze"):
        CotrainConfig(freeze=("base",))
    with pytest.raises(InvalidInputError, match="unknown keys"):
        CotrainRunConfig.from_dict({"nonsense": 1})
