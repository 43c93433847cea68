"""Run configuration: the shipped recipe validates; typos and inconsistencies are typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from megacontext.errors import InvalidInputError
from megacontext.train.config import config_from_dict, load_config, packaged_config


def test_default_recipe_loads_and_matches_the_issue_targets() -> None:
    cfg = load_config(None)
    assert cfg.data.vocab_size == 8192 and cfg.data.seq_len >= 512
    assert cfg.data.mixture["passkey"] > 0, "a base that never saw pass keys scores 0"
    assert cfg.train.max_position_offset > 0


def test_overrides_apply_with_dotted_keys() -> None:
    cfg = load_config(None, {"train.max_steps": 7, "model.n_layers": 2})
    assert cfg.train.max_steps == 7 and cfg.model.n_layers == 2


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"max_stepz": 3}}, "unknown key"),
        ({"optim": {}}, "unknown config section"),
        ({"model": {"d_model": 100, "n_heads": 3}}, "divisible"),
        ({"data": {"seq_len": 8192}, "train": {"max_position_offset": 10}}, "max_position"),
        ({"train": {"precision": "fp8"}}, "precision"),
        ({"train": {"device": "tpu"}}, "device"),
        ({"model": []}, "must be a mapping"),
        ({"data": {"mixture_phases": [{"from_step": 5}]}}, "needs from_step and mixture"),
        (
            {"data": {"mixture_phases": [{"from_step": 5, "mixture": {}, "seq_len": 9}]}},
            "needs from_step and mixture",
        ),
        ({"data": {"answer_weight": 0.5}}, "answer_weight"),
        (
            {"data": {"mixture_phases": [{"from_step": 0, "mixture": {"text": 1}}]}},
            "increasing from_step",
        ),
    ],
)
def test_bad_configs_are_rejected(data: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        config_from_dict(data)


def test_packaged_recipes_are_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing repo-relative: the recipes come with the package
    for name in ("default.yaml", "gist-default.yaml", "lens-default.yaml", "cotrain-default.yaml"):
        assert packaged_config(name), name
    with pytest.raises(InvalidInputError, match=r"no packaged config 'nope\.yaml'.*gist-default"):
        packaged_config("nope.yaml")


def test_every_packaged_gist_and_lens_recipe_is_a_valid_run() -> None:
    """A recipe per base (``gist-smollm2.yaml``, ``lens-smollm2.yaml``) must parse into its run
    config with every nested setting known, or ``train focus --base`` fails hours in."""
    from importlib import resources

    from megacontext.train.gist import GistRunConfig
    from megacontext.train.lens.run import LensRunConfig

    names = sorted(
        p.name for p in resources.files("megacontext.train").joinpath("configs").iterdir()
    )
    kinds = {"gist": GistRunConfig, "lens": LensRunConfig}
    parsed = 0
    for name in names:
        kind = name.split("-", 1)[0]
        if kind in kinds:
            run = kinds[kind].from_dict(packaged_config(name))
            assert run.base, name
            parsed += 1
    assert {"gist-smollm2.yaml", "lens-smollm2.yaml"} <= set(names) and parsed >= 4


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(InvalidInputError, match=r"section\.key=value"):
        load_config(None, {"max_steps": 3})


def test_set_values_are_read_as_yaml_and_exponents_as_numbers() -> None:
    from megacontext.train.config import parse_overrides

    values = parse_overrides(["a=3", "b=[0, 1]", "c=true", "d=1e-6", "e=2.5E3", "f=1e", "g.h=word"])
    assert values == {
        "a": 3, "b": [0, 1], "c": True, "d": 1e-6, "e": 2500.0, "f": "1e", "g.h": "word",
    }  # fmt: skip
