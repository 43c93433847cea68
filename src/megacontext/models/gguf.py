"""GGUF files as base models: checked, dequantized once, cached as a safetensors directory.

Most people hold local models as GGUF files (llama.cpp, Ollama's blobs, LM Studio), and the real
bases MegaContext ships install as GGUF files from the package registry. transformers can read a
GGUF and dequantize it, but that takes 20 s or more for a 135M-parameter model on two cores and
the result cannot be saved directly ("quantized with gguf and is not serializable"). So a GGUF is
converted once: its state dict is copied into a fresh model of the same config and saved, with its
tokenizer (chat template included), into a cache directory keyed by the file's sha256::

    $MODEL_CACHE/gguf-<first 16 hex of sha256>/
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json  ...
        megacontext-cache.json     written last: the GGUF's sha256, every file's size and sha256

A conversion is built in a temporary directory beside its target and renamed into place, so a
killed conversion leaves no half directory behind. Every load checks the marker and each file's
sha256 (about 0.3 s for 540 MB); an entry that fails is deleted and converted again, never loaded.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.files import sha256_file, write_text_atomic
from megacontext.models.errors import (
    CorruptModelFileError,
    MissingModelFilesError,
    ModelLoadError,
    NotAGGUFError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from megacontext.paths import model_cache

GGUF_MAGIC = b"GGUF"
MARKER = "megacontext-cache.json"
CACHE_FORMAT = 1
# Tensor types stored as plain floats; every other type must be one gguf can dequantize.
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
# GGUF architectures with a row in the quirks table (the families MegaContext has checked).
# transformers reads more (falcon, bloom, t5, mamba, ...): those would convert, then be refused.
KNOWN_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "gpt2"})


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF file holds, read from its header without loading the weights."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int]
    parameters: int
    has_chat_template: bool


def _field_text(reader: Any, key: str) -> str:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return ""
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes (before hashing it).

    Raises:
        MissingModelFilesError: No such file.
        NotAGGUFError: Another kind of file.
    """
    if not path.is_file():
        raise MissingModelFilesError(f"no GGUF file at {path}")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise NotAGGUFError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
            "pass a .gguf file, or a Hugging Face model directory (config.json, *.safetensors)"
        )


def inspect_gguf(path: str | os.PathLike[str]) -> GGUFSummary:
    """Check that ``path`` is a whole GGUF that transformers can convert, and summarise it.

    Raises:
        MissingModelFilesError: No such file.
        NotAGGUFError: The file does not start with the GGUF magic bytes.
        CorruptModelFileError: The header or a tensor runs past the end of the file (truncated).
        UnsupportedArchitectureError: transformers cannot read this architecture from GGUF.
        UnsupportedQuantizationError: A tensor type cannot be dequantized.
    """
    import gguf
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    file = Path(path)
    check_gguf_magic(file)
    size = file.stat().st_size
    try:
        reader = gguf.GGUFReader(file)
    except (ValueError, IndexError, OSError) as exc:
        raise CorruptModelFileError(
            f"{file} is a damaged or truncated GGUF ({size:,} bytes; reading it failed: {exc}); "
            "download or copy it again"
        ) from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise CorruptModelFileError(
                f"{file} is truncated: tensor {tensor.name!r} ends at byte {end:,} but the file "
                f"has {size:,}; download or copy it again"
            )
    architecture = _field_text(reader, "general.architecture")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{file} holds a {architecture or 'unnamed'!r} model, which transformers cannot read "
            f"from GGUF (it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert "
            "the original checkpoint to a Hugging Face directory and pass that instead"
        )
    if architecture not in KNOWN_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{file} holds a {architecture!r} model; transformers can read it, but MegaContext "
            f"has no quirks-table row for that family yet (it has: "
            f"{', '.join(sorted(KNOWN_ARCHITECTURES))}); see docs/models.md, 'Adding a family'"
        )
    dequantizable = _FLOAT_TYPES | {t.name for t in getattr(gguf.quants, "_type_traits", {})}
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    unsupported = sorted(set(types) - dequantizable)
    if unsupported:
        raise UnsupportedQuantizationError(
            f"{file} stores tensors as {', '.join(unsupported)}, which the installed gguf "
            f"package ({importlib.metadata.version('gguf')}) cannot dequantize; use a GGUF "
            "quantized as Q4_0, Q4_K_M, Q8_0 or F16"
        )
    return GGUFSummary(
        path=file,
        architecture=architecture,
        name=_field_text(reader, "general.name"),
        tensor_types=types,
        parameters=int(sum(int(np.prod(t.shape)) for t in reader.tensors)),
        has_chat_template="tokenizer.chat_template" in reader.fields,
    )


# ----------------------------------------------------------------------------- the cache


def cache_dir_for(sha256: str, root: Path | None = None) -> Path:
    """The cache directory of the GGUF whose sha256 is ``sha256``."""
    return (root or model_cache()) / f"gguf-{sha256[:16]}"


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def cache_problem(path: Path, sha256: str, *, quick: bool = False) -> str | None:  # noqa: PLR0911  (one return per problem it names)
    """Why the cache entry at ``path`` cannot be loaded, or ``None`` when it is whole.

    Checks the marker (written last), that it was made from the GGUF with this ``sha256``, and
    every file's size and sha256 against what the marker recorded (``quick``: sizes only, for
    listings; loading always checks the hashes).
    """
    if not path.is_dir():
        return "missing"
    marker = _marker(path)
    if marker is None:
        return f"{MARKER} is missing or unreadable (an interrupted conversion?)"
    if marker.get("format") != CACHE_FORMAT or marker.get("gguf_sha256") != sha256:
        return "it was made from another GGUF or by another cache format"
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return f"{MARKER} lists no files"
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != info.get("size"):
            return f"{name} has {file.stat().st_size:,} bytes, not {info.get('size'):,}"
        if not quick and sha256_file(file) != info.get("sha256"):
            return f"{name} does not match its recorded sha256 (damaged on disk)"
    return None


def cached_model(
    parts: Sequence[Path],
    *,
    sha256: str | None,
    label: str,
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """The cached safetensors directory of a GGUF given as ``parts`` (concatenated in order),
    converting it first when the cache has no whole entry.

    Args:
        parts: The GGUF file, or its parts in order.
        sha256: The expected sha256 of the whole GGUF (pinned for catalog models); ``None``
            hashes the file to find its cache entry.
        label: How to call the model in messages.
        progress: Show a progress bar while converting.

    Returns:
        The directory and timings (``sha256_s``, ``convert_s`` when it converted).

    Raises:
        CorruptModelFileError: The assembled file's sha256 differs from the pinned one.
        See :func:`inspect_gguf` for the checks a new file goes through.
    """
    timings: dict[str, float] = {}
    if sha256 is None:
        if len(parts) != 1:
            raise ModelLoadError("a GGUF in several parts needs its pinned sha256")
        check_gguf_magic(parts[0])  # before hashing a file that may be anything
        started = time.perf_counter()
        sha256 = sha256_file(parts[0])
        timings["sha256_s"] = time.perf_counter() - started
    target = cache_dir_for(sha256)
    problem = cache_problem(target, sha256)
    if problem is None:
        return target, timings
    if problem != "missing":
        # Derived data: a damaged entry is rebuilt, never trusted.
        _remove(target)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _assembled(parts, target.parent) as gguf_file:
        if "sha256_s" not in timings:  # a pinned sha256: check the installed bytes against it
            actual = sha256_file(gguf_file)
            if actual != sha256:
                raise CorruptModelFileError(
                    f"the GGUF of {label} has sha256 {actual}, not the pinned {sha256}: the "
                    "installed files are damaged or another version; reinstall them "
                    "(`megacontext models fetch` reinstalls a catalog model)"
                )
        summary = inspect_gguf(gguf_file)
        convert_gguf(gguf_file, target, sha256=sha256, summary=summary, progress=progress)
    timings["convert_s"] = time.perf_counter() - started
    return target, timings


@contextmanager
def _assembled(parts: Sequence[Path], scratch: Path) -> Iterator[Path]:
    """One GGUF file from ``parts``: the file itself, or a temporary concatenation."""
    if len(parts) == 1:
        yield parts[0]
        return
    fd, name = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """Delete a cache entry: renamed aside first, so nothing can load it while it goes."""
    doomed = path.with_name(f".remove-{path.name}-{os.getpid()}-{time.time_ns()}")
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def convert_gguf(
    gguf_file: Path,
    target: Path,
    *,
    sha256: str,
    summary: GGUFSummary,
    progress: bool = True,
) -> Path:
    """Dequantize ``gguf_file`` into a Hugging Face directory at ``target`` (atomically).

    The model is built by transformers from the GGUF, its state dict copied into a fresh model of
    the same config (without the GGUF quantization config, which cannot be saved), and saved as
    fp32 safetensors with the tokenizer. Another process converting the same file at the same
    time is harmless: the first rename wins and the other copy is discarded.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    stages = ("tokenizer", "dequantize", "save", "checksums")
    bar = tqdm(
        total=len(stages),
        desc=f"converting {gguf_file.name}",
        disable=not progress,
        dynamic_ncols=True,
        unit="stage",
    )
    work = Path(tempfile.mkdtemp(prefix=f".convert-{target.name}-", dir=target.parent))
    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        folder, name = str(gguf_file.parent), gguf_file.name
        bar.set_postfix_str("reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update()
        bar.set_postfix_str(f"dequantizing {summary.parameters / 1e6:.0f}M parameters")
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = summary.name or gguf_file.stem
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise ModelLoadError(
                f"converting {gguf_file} left weights unset ({missing[:4]}) or unused "
                f"({unexpected[:4]}); this architecture's GGUF layout is not supported"
            )
        del quantized
        bar.update()
        bar.set_postfix_str("writing safetensors")
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        bar.update()
        bar.set_postfix_str("checksums")
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(work.iterdir())
            if p.is_file()
        }
        write_text_atomic(
            work / MARKER,
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "gguf_sha256": sha256,
                    "gguf_name": gguf_file.name,
                    "architecture": summary.architecture,
                    "model_name": summary.name,
                    "tensor_types": summary.tensor_types,
                    "parameters": summary.parameters,
                    "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": files,
                },
                indent=2,
            )
            + "\n",
        )
        bar.update()
        work.chmod(0o755)  # mkdtemp makes it private; a model cache is readable like a package
        for file in work.iterdir():
            file.chmod(0o644)
        try:
            work.rename(target)
        except OSError:
            if cache_problem(target, sha256) is not None:
                raise
            # Another process finished the same conversion first: keep theirs.
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return target


def _tied_keys(model: Any) -> set[str]:
    """State-dict keys a model ties to another (e.g. ``lm_head.weight``), not stored twice."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if isinstance(tied, dict | list | tuple | set) else set()


__all__ = [
    "GGUF_MAGIC",
    "MARKER",
    "GGUFSummary",
    "cache_dir_for",
    "cache_problem",
    "cached_model",
    "check_gguf_magic",
    "convert_gguf",
    "inspect_gguf",
]
