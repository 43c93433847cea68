"""ingest / ask / generate / trace show from the command line, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tiny_world) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return tiny_world.base_dir, tiny_world.bundle_dir


def test_ingest_ask_generate_trace(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base_dir, bundle = setup
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The pass key is 4821. Remember it. " * 20)
    (docs / "b.md").write_text("def add(a, b):\n    return a + b\n" * 20)
    (docs / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    common = [
        "--tree",
        str(tmp_path / "mc"),
        "--base",
        str(base_dir),
        "--focus",
        str(bundle),
        "--w-max",
        "64",
    ]
    result = runner.invoke(app, ["ingest", str(docs), *common])
    assert result.exit_code == 0, result.output
    assert "from 2 file(s)" in result.output and "skipped 1 file" in result.output
    unwrapped = result.output.replace("\n", "")  # rich wraps long paths at any character
    assert "blob.bin" in unwrapped and "binary" in unwrapped
    result = runner.invoke(app, ["ask", "What is the pass key?", *common, "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", "Once", *common, "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    traces = sorted((tmp_path / "mc" / "traces").glob("*.jsonl"))
    assert traces
    shown = runner.invoke(app, ["trace", "show", str(traces[-1])])
    assert shown.exit_code == 0, shown.output
    assert "focus timeline" in shown.output and "steps" in shown.output
    assert "cache" in shown.output and "%" in shown.output  # the cache hit column


def test_bad_paths(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base_dir, bundle = setup
    result = runner.invoke(app, ["trace", "show", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0
    result = runner.invoke(
        app,
        [
            "ingest",
            str(tmp_path / "nope.txt"),
            "--tree",
            str(tmp_path / "mc"),
            "--base",
            str(base_dir),
            "--focus",
            str(bundle),
        ],
    )
    assert result.exit_code != 0


def test_a_session_remembers_its_base_focus_and_budget(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base_dir, bundle = setup
    docs = tmp_path / "a.txt"
    docs.write_text("The pass key is 4821. Remember it. " * 20)
    tree = ["--tree", str(tmp_path / "mc")]
    made = runner.invoke(
        app, ["ingest", str(docs), *tree, "--base", str(base_dir), "--focus", str(bundle),
              "--w-max", "64"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    # No --base, --focus or --w-max: the session's record supplies them.
    asked = runner.invoke(app, ["ask", "What is the pass key?", *tree, "--max-new-tokens", "3"])
    assert asked.exit_code == 0, asked.output
    again = runner.invoke(app, ["generate", "Once", *tree, "--max-new-tokens", "2", "--regist"])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--w-max", "0"], "--w-max must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ],
)
def test_bad_flags_are_named_before_any_model_loads(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(
        app, ["ask", "Q?", "--tree", str(tmp_path / "t"), "--base", str(tmp_path / "nope"), *args]
    )
    assert result.exit_code != 0
    assert message in str(result.exception)  # not the missing base: nothing was loaded yet
