"""``port-model``: checkpoints, config-only inputs, shipped configs, bad inputs, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from megacontext.cli import models as models_cli
from megacontext.errors import MegaContextError
from megacontext.models import (
    MissingModelFilesError,
    NotACausalLMError,
    UnsupportedArchitectureError,
)
from megacontext.models.porting import (
    load_adapter_config,
    port_model,
    shipped_configs,
    write_outputs,
)
from megacontext.models.quirks import quirks_for_config
from megacontext.models.tiny import TINY_CONFIGS, build_tiny_tokenizer, make_config

EXPECTED_SHIPPED = {
    "qwen2.5-0.5b": "qwen2",
    "qwen2.5-1.5b": "qwen2",
    "qwen2.5-3b": "qwen2",
    "qwen2.5-7b": "qwen2",
    "qwen3-0.6b": "qwen3",
    "qwen3-1.7b": "qwen3",
    "qwen3-4b": "qwen3",
    "qwen3-8b": "qwen3",
    "llama-3.2-1b": "llama",
    "llama-3.2-3b": "llama",
    "llama-3.1-8b": "llama",
    "llama-3-8b": "llama",
    "mixtral-8x7b": "mixtral",
}


@pytest.fixture()
def cli() -> typer.Typer:
    """The commands as the lead registers them in megacontext.cli."""
    root = typer.Typer()
    root.command("port-model")(models_cli.port_model)
    root.add_typer(models_cli.app, name="models")
    return root


def test_port_a_checkpoint(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    report = port_model(tiny_dirs["qwen2"], name="tiny-qwen2")
    assert report.passed, report.summary()
    assert report.checked_on == "the checkpoint itself" and not report.scaled_down
    cfg = report.adapter_config
    assert cfg["family"] == "qwen2" and cfg["position_policies"] == [
        "compact",
        "global",
        "gaussian",
    ]
    assert cfg["prepend_bos"] is False and cfg["tied_embeddings"] is True
    assert len(cfg["fingerprint"]) == 64
    written = write_outputs(report, tmp_path / "out", tmp_path / "r.json")
    saved = yaml.safe_load(written[0].read_text())
    assert saved["portability"]["passed"] is True
    assert json.loads((tmp_path / "r.json").read_text())["name"] == "tiny-qwen2"
    assert "| kv_crop[bfloat16] | pass" in written[2].read_text()


def test_port_gpt2_is_compact_only(tiny_dirs: dict[str, Path]) -> None:
    report = port_model(tiny_dirs["gpt2"])
    assert report.passed
    assert report.adapter_config["position_policies"] == ["compact"]
    skipped = {c.name for c in report.checks if c.skipped}
    assert "rope_relativity[float32]" in skipped and "gaussian[bfloat16]" in skipped


def test_port_config_only_runs_on_scaled_down_random_init(tmp_path: Path) -> None:
    full = dict(TINY_CONFIGS["mixtral"], hidden_size=256, num_hidden_layers=6)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(full))
    report = port_model(tmp_path / "cfg")
    assert report.passed
    assert "random-init" in report.checked_on and "scaled down" in report.checked_on
    assert report.scaled_down["hidden_size"] == (256, 64)
    assert report.scaled_down["num_hidden_layers"] == (6, 2)
    assert report.adapter_config["d_model"] == 256  # the config describes the full model
    assert report.adapter_config["moe"] == {"experts": 4, "top_k": 2}


def test_shipped_configs_cover_the_issue(tmp_path: Path) -> None:
    shipped = shipped_configs()
    assert set(EXPECTED_SHIPPED) <= set(shipped)
    for name, family in EXPECTED_SHIPPED.items():
        doc = load_adapter_config(name)
        assert doc["family"] == family
        assert doc["hub_id"] and "huggingface.co" in doc["source"]
        assert doc["portability"]["passed"] is True
        assert "random-init" in doc["portability"]["checked_on"]
        assert doc["portability"]["scaled_down"]["num_hidden_layers"][1] == 2
        assert quirks_for_config(make_config(doc["hf_config"])).family == family
    assert load_adapter_config("llama-3.1-8b")["rope_type"] == "llama3"
    assert load_adapter_config("mixtral-8x7b")["moe"] == {"experts": 8, "top_k": 2}


def test_rerun_a_shipped_config_by_name() -> None:
    report = port_model("qwen3-0.6b")
    assert report.passed and report.name == "qwen3-0.6b"
    assert report.adapter_config["hub_id"] == "Qwen/Qwen3-0.6B"


def test_hub_id_offline_falls_back_to_shipped_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    report = port_model("meta-llama/Llama-3.2-1B")
    assert report.passed and "hub is unreachable" in report.checked_on
    with pytest.raises(MissingModelFilesError, match="offline"):
        port_model("someone/not-shipped-model")


# ----------------------------------------------------------------------------- bad input
def test_not_a_causal_lm(tmp_path: Path) -> None:
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    )
    with pytest.raises(NotACausalLMError, match="BertForMaskedLM"):
        port_model(tmp_path / "enc")


def test_unsupported_architecture(tmp_path: Path) -> None:
    (tmp_path / "neox").mkdir()
    (tmp_path / "neox" / "config.json").write_text(
        json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]})
    )
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox"):
        port_model(tmp_path / "neox")


def test_missing_files(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MissingModelFilesError, match=r"config\.json"):
        port_model(tmp_path)  # an empty directory
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_dirs["llama"], no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(MissingModelFilesError, match="tokenizer"):
        port_model(no_tok)
    with pytest.raises(MissingModelFilesError, match="no model directory"):
        port_model(tmp_path / "does" / "not" / "exist")


# ----------------------------------------------------------------------------- CLI
def test_cli_port_model_writes_config_and_report(
    cli: typer.Typer, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "port-model",
            str(tiny_dirs["llama3"]),
            "--out",
            str(tmp_path),
            "--name",
            "t",
            "--json",
            str(tmp_path / "report.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    # It ends with the command that makes the ported base's focus bundle.
    printed = " ".join(result.output.split())
    assert f"megacontext train focus --base {tiny_dirs['llama3']}" in printed
    assert (tmp_path / "t.yaml").is_file() and (tmp_path / "t.report.md").is_file()
    document = json.loads((tmp_path / "report.json").read_text())
    assert document["adapter_config"]["rope_type"] == "llama3"


def test_cli_bad_input_raises_typed_error(cli: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5Model"]})
    )
    result = CliRunner().invoke(cli, ["port-model", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert isinstance(result.exception, MegaContextError)  # main() prints it and exits 2


def test_cli_models_list_and_info(cli: typer.Typer, tiny_dirs: dict[str, Path]) -> None:
    listed = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert listed.exit_code == 0
    document = json.loads(listed.output)
    assert {row["name"] for row in document["adapter_configs"]} >= set(EXPECTED_SHIPPED)
    bases = {row["name"]: row for row in document["bases"]}
    assert set(bases) == {"tiny", "smollm2-135m-instruct", "gemma3-270m"}
    assert bases["smollm2-135m-instruct"]["context"] == 8192
    assert bases["smollm2-135m-instruct"]["license"] == "Apache-2.0"
    assert "smollm2" in bases["smollm2-135m-instruct"]["aliases"]
    assert "default" in bases["tiny"]["aliases"]  # until a real base ships with a focus bundle
    info = CliRunner().invoke(cli, ["models", "info", str(tiny_dirs["qwen3"]), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["family"] == "qwen3"


def test_tokenizer_builder_is_deterministic() -> None:
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
