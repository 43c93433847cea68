"""GGUF files as bases: conversion into the cache, the cache's integrity, and bad files.

A tiny Llama-layout GGUF written by :func:`megacontext.models.tiny.write_tiny_gguf` stands in for
a downloaded model here (the real ones are tested in ``test_real_bases``); conversion takes a
second instead of twenty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megacontext.models import gguf as gguf_cache
from megacontext.models import load_base
from megacontext.models.errors import (
    CorruptModelFileError,
    MissingModelFilesError,
    NotAGGUFError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from megacontext.models.tiny import write_tiny_gguf


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache for this test."""
    monkeypatch.setenv("MEGACONTEXT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def entries(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.is_dir() else []


def reference_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own load of the GGUF (dequantized in memory, nothing cached)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("quantization", [None, "Q8_0", "Q4_0"])
def test_a_gguf_converts_once_and_reads_as_transformers_reads_it(
    home: Path, tmp_path: Path, quantization: str | None
) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", quantization=quantization)
    first = load_base(path, progress=False)
    assert "convert_s" in first.load_seconds
    again = load_base(path, progress=False)
    assert "convert_s" not in again.load_seconds  # read from the cache
    assert entries(home) == [f"gguf-{gguf_cache.sha256_file(path)[:16]}"]
    ids = torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = again.forward(again.embed(ids), torch.arange(24)[None], use_cache=False).logits
    assert torch.equal(ours, reference_logits(path, ids))
    assert again.decode(again.encode("hello world", add_bos=False)) == "hello world"


def test_a_directory_and_gguf_file_name_load_the_same_model(home: Path, tiny_gguf: Path) -> None:
    by_path = load_base(tiny_gguf, progress=False)
    by_dir = load_base(tiny_gguf.parent, gguf_file=tiny_gguf.name, progress=False)
    assert by_path.fingerprint == by_dir.fingerprint


def test_the_same_bytes_under_another_name_share_one_cache_entry(
    home: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    load_base(tiny_gguf, progress=False)
    assert "convert_s" not in load_base(copy, progress=False).load_seconds
    assert len(entries(home)) == 1


@pytest.mark.parametrize(
    "damage",
    ["flip a weight byte", "truncate the weights", "delete the marker", "delete the tokenizer"],
)
def test_a_damaged_cache_entry_is_rebuilt_never_loaded(
    home: Path, tiny_gguf: Path, damage: str
) -> None:
    reference = load_base(tiny_gguf, progress=False).fingerprint
    (entry,) = home.iterdir()
    weights = entry / "model.safetensors"
    if damage == "flip a weight byte":
        data = bytearray(weights.read_bytes())
        data[-100] ^= 0x40
        weights.write_bytes(bytes(data))
    elif damage == "truncate the weights":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "delete the marker":
        (entry / gguf_cache.MARKER).unlink()
    else:
        (entry / "tokenizer.json").unlink()
    assert gguf_cache.cache_problem(entry, gguf_cache.sha256_file(tiny_gguf)) is not None
    rebuilt = load_base(tiny_gguf, progress=False)
    assert "convert_s" in rebuilt.load_seconds
    assert rebuilt.fingerprint == reference
    assert gguf_cache.cache_problem(entry, gguf_cache.sha256_file(tiny_gguf)) is None


def test_an_interrupted_conversion_leaves_no_half_directory(
    home: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C while the marker is being written

    monkeypatch.setattr(gguf_cache, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        load_base(tiny_gguf, progress=False)
    assert entries(home) == []  # neither the entry nor its temporary directory
    monkeypatch.undo()
    monkeypatch.setenv("MEGACONTEXT_HOME", str(home.parent))
    assert "convert_s" in load_base(tiny_gguf, progress=False).load_seconds


def test_the_marker_records_every_file(home: Path, tiny_gguf: Path) -> None:
    load_base(tiny_gguf, progress=False)
    (entry,) = home.iterdir()
    marker = json.loads((entry / gguf_cache.MARKER).read_text())
    assert marker["gguf_sha256"] == gguf_cache.sha256_file(tiny_gguf)
    assert marker["architecture"] == "llama"
    on_disk = {p.name for p in entry.iterdir()} - {gguf_cache.MARKER}
    assert set(marker["files"]) == on_disk
    for name, info in marker["files"].items():
        assert info["sha256"] == gguf_cache.sha256_file(entry / name)


def test_a_file_that_is_not_gguf_is_refused_by_name(home: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(NotAGGUFError, match="not a GGUF") as caught:
        load_base(text)
    assert str(text) in str(caught.value)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 64)
    with pytest.raises(NotAGGUFError, match=r"\.gguf file, or a Hugging Face model directory"):
        load_base(other)
    assert entries(home) == []


@pytest.mark.parametrize("keep", [40, 0.5, -64])
def test_a_truncated_gguf_is_refused(
    home: Path, tiny_gguf: Path, tmp_path: Path, keep: float
) -> None:
    data = tiny_gguf.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep % len(data))
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(data[:cut])
    with pytest.raises(CorruptModelFileError, match=r"truncated|damaged"):
        load_base(broken, progress=False)
    assert not [name for name in entries(home) if name.startswith("gguf-")]


def test_an_architecture_without_a_quirks_row_is_named(home: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "x.gguf", architecture="falcon")
    with pytest.raises(UnsupportedArchitectureError, match=r"'falcon'.*quirks"):
        load_base(path, progress=False)
    unknown = write_tiny_gguf(tmp_path / "y.gguf", architecture="rwkv9")
    with pytest.raises(UnsupportedArchitectureError, match="transformers cannot read"):
        load_base(unknown, progress=False)


def test_a_quantization_that_cannot_be_dequantized_is_named(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf

    path = write_tiny_gguf(tmp_path / "q.gguf", quantization="Q8_0")
    traits = {k: v for k, v in gguf.quants._type_traits.items() if k.name != "Q8_0"}
    monkeypatch.setattr(gguf.quants, "_type_traits", traits)  # as an older gguf would be
    with pytest.raises(UnsupportedQuantizationError, match="Q8_0"):
        load_base(path, progress=False)


def test_a_missing_gguf_is_a_missing_file(home: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingModelFilesError, match="no model directory or file"):
        load_base(tmp_path / "absent.gguf")
    with pytest.raises(MissingModelFilesError, match="no GGUF file"):
        load_base(tmp_path, gguf_file="absent.gguf")
