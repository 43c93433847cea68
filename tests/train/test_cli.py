"""``megacontext train`` commands: help teaches, commands work, bad input is a typed error."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from megacontext.cli.train import app
from megacontext.errors import InvalidInputError
from megacontext.train.tokenizer import load_tokenizer

runner = CliRunner()


def test_help_lists_commands_with_examples() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("corpus", "tokenizer", "base", "export", "eval"):
        assert command in result.output
    assert "megacontext train base --config" in result.output


def test_tokenizer_command_trains_on_a_corpus(corpus_dir: Path, tmp_path: Path) -> None:
    args = ["tokenizer", "--corpus", str(corpus_dir), "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--vocab-size", "300"])
    assert result.exit_code == 0, result.output
    assert load_tokenizer(tmp_path).get_vocab_size() == 300


def test_unknown_source_and_bad_override_are_typed_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["corpus", "--out", str(tmp_path), "--sources", "wiki"])
    assert isinstance(result.exception, InvalidInputError)
    config = Path(__file__).parents[2] / "src/megacontext/train/configs/default.yaml"
    result = runner.invoke(app, ["base", "--config", str(config), "--set", "train.max_steps"])
    assert isinstance(result.exception, InvalidInputError)
    assert "section.key=value" in str(result.exception)
