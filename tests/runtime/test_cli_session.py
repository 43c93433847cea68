"""ingest / ask / generate / trace show from the command line, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from megacontext.cli import app
from megacontext.models import load_base
from megacontext.models.bundle import save_bundle
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.models.tiny import make_tiny_model_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    base_dir = make_tiny_model_dir("default", root / "base")
    base = load_base(base_dir)
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=base.d_model, K=4, width=32, n_heads=2, key_dim=8))
    lens = LensNet(LensNetConfig(d_model=base.d_model, width=32, n_heads=2, n_layers=1))
    bundle = save_bundle(
        root / "focus", {"gistnet": gist, "lensnet": lens}, fingerprints=base.fingerprints
    )
    return base_dir, bundle


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
    assert "from 2 file(s)" in result.output and "skipped 1 binary" in result.output
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
