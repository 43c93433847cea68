"""Checkpoint bundles: round trip, fingerprint refusal, corruption detection, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megacontext.errors import FingerprintMismatchError, InvalidInputError, StorageCorruptionError
from megacontext.models.bundle import MANIFEST, WEIGHTS, load_bundle, read_manifest, save_bundle
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lensnet import LensNet, LensNetConfig

FP = {"base": "base-aaa", "tokenizer": "tok-bbb"}


def make(tmp_path: Path) -> tuple[Path, GistNet, LensNet]:
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=16, K=4, width=16, n_heads=2, pooling="cls", key_dim=4))
    lens = LensNet(LensNetConfig(d_model=16, width=16, n_heads=2, use_keys=False))
    path = save_bundle(
        tmp_path / "b", {"gistnet": gist, "lensnet": lens}, fingerprints=FP, metrics={"x": 1.5}
    )
    return path, gist, lens


def test_round_trip_restores_identical_modules(tmp_path: Path) -> None:
    path, gist, lens = make(tmp_path)
    bundle = load_bundle(path, fingerprints=FP)
    loaded = bundle.get("gistnet")
    assert isinstance(loaded, GistNet) and loaded.config == gist.config
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(loaded(x, 1)[0], gist.eval()(x, 1)[0], rtol=0, atol=0)
    assert bundle.get("lensnet").config == lens.config  # type: ignore[union-attr]
    assert bundle.metrics == {"x": 1.5}
    manifest = read_manifest(path)
    assert manifest["modules"]["gistnet"]["parameters"] == gist.num_parameters()


def test_mismatched_fingerprint_is_refused(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    with pytest.raises(FingerprintMismatchError, match="tokenizer fingerprint 'tok-bbb'"):
        load_bundle(path, fingerprints={"base": "base-aaa", "tokenizer": "other"})
    with pytest.raises(FingerprintMismatchError, match="base"):
        load_bundle(path, fingerprints={"base": "nope"})


def test_corrupt_weights_and_manifest_are_detected(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-5] ^= 0x01
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(StorageCorruptionError, match="sha256"):
        load_bundle(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(StorageCorruptionError, match="not valid JSON"):
        load_bundle(path)


def test_bad_bundles(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"manifest\.json is missing"):
        load_bundle(tmp_path)
    path, _, _ = make(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = 99
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match="format version 99"):
        load_bundle(path)
    with pytest.raises(InvalidInputError, match="unknown bundle module"):
        save_bundle(tmp_path / "c", {"mystery": torch.nn.Linear(2, 2)}, fingerprints=FP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        save_bundle(tmp_path / "file", {}, fingerprints=FP)


def test_default_focus_is_the_packaged_bundle_of_the_base_or_says_how_to_train_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from megacontext.models.bundle import PACKAGED_BUNDLES, resolve_focus
    from megacontext.models.errors import NoFocusBundleError

    monkeypatch.delenv("MEGACONTEXT_FOCUS_BUNDLE", raising=False)
    tiny = read_manifest(PACKAGED_BUNDLES / "tiny")["fingerprints"]
    assert resolve_focus("default", tiny, "tiny").name == "tiny"
    with pytest.raises(NoFocusBundleError) as refused:
        resolve_focus("default", FP, "my-base")
    # A base without a shipped bundle hears the one command that trains its own.
    assert "megacontext train focus --base my-base" in str(refused.value)
