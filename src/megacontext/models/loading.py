"""Loading a base model: local directories, the packaged default, and hub ids.

``load_base`` checks a model directory before handing it to transformers, so that a wrong input
fails with an error that names what is missing (config, weights, tokenizer), or why the model
is unsuitable (not a causal LM, a family outside the quirks table).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megacontext.models.adapter import BaseAdapter
from megacontext.models.errors import (
    MissingModelFilesError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from megacontext.models.quirks import FamilyQuirks, quirks_for_config

TINY_BASE_DIR = Path(__file__).resolve().parent / "tiny_base"
# Points "default" at another model (tests use a tiny model of the tiny base's architecture).
DEFAULT_BASE_ENV = "MEGACONTEXT_DEFAULT_BASE"
TINY_BASE_BUILD_COMMAND = "make tiny-base"

_WEIGHT_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``torch.bfloat16`` or a name such as ``"bf16"`` / ``"float32"``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ModelLoadError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}"
        ) from None


def read_config(path: Path) -> tuple[Any, FamilyQuirks]:
    """Read and check ``config.json`` of a model directory.

    Returns:
        The transformers config and the family quirks it selects.

    Raises:
        MissingModelFilesError: No ``config.json``.
        UnsupportedArchitectureError: transformers does not know the model type, or the quirks
            table has no row for it (``NotACausalLMError`` when it is not a causal LM).
    """
    from transformers import AutoConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise MissingModelFilesError(
            f"{path} has no config.json; a Hugging Face model directory holds config.json, the "
            "weights (*.safetensors) and the tokenizer (tokenizer.json)"
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from None
    if "model_type" not in raw:
        raise UnsupportedArchitectureError(f"{config_file} has no 'model_type' field")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(
            f"transformers cannot build a config for model_type {raw['model_type']!r} in "
            f"{config_file}: {exc}"
        ) from None
    return config, quirks_for_config(config)


def check_model_dir(path: Path) -> tuple[Any, FamilyQuirks]:
    """Check that ``path`` is a complete, supported causal-LM directory.

    Raises:
        MissingModelFilesError: config, weights or tokenizer files are absent (named).
        UnsupportedArchitectureError: see :func:`read_config`.
    """
    if not path.is_dir():
        raise MissingModelFilesError(f"{path} is not a directory")
    config, quirks = read_config(path)
    if not has_weights(path):
        raise MissingModelFilesError(
            f"{path} has no weights: expected model.safetensors (or sharded *.safetensors with "
            "model.safetensors.index.json, or pytorch_model.bin). For a config without weights, "
            "use `megacontext port-model` which checks a random-init model of that config"
        )
    if not any(all((path / name).is_file() for name in names) for names in _TOKENIZER_SETS):
        raise MissingModelFilesError(
            f"{path} has no tokenizer: expected tokenizer.json, tokenizer.model, or vocab.json "
            "with merges.txt"
        )
    return config, quirks


def has_weights(path: Path) -> bool:
    """Whether a model directory holds weight files (safetensors or a PyTorch checkpoint)."""
    return any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS)


def stored_dtype_of(path: Path) -> torch.dtype | None:
    """The dtype the checkpoint stores its weights in (from config.json), if stated."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    name = raw.get("dtype") or raw.get("torch_dtype")
    return _DTYPES.get(str(name).lower()) if name else None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a base model's Hugging Face directory is, and how it got there.

    Attributes:
        path: The model directory (config, safetensors weights, tokenizer).
        name: The canonical name for people and records (``tiny``, ``smollm2-135m-instruct``,
            or the path/hub id given).
        timings: Seconds spent hashing (``sha256_s``) or converting a GGUF (``convert_s``).
    """

    path: Path
    name: str
    timings: dict[str, float] = field(default_factory=dict)


def resolve_model(  # noqa: PLR0911  (one return per kind of input it accepts)
    name_or_path: str | Path, *, gguf_file: str | None = None, progress: bool = True
) -> ResolvedModel:
    """Map a model name, a ``.gguf`` file, a local directory or a hub id to a model directory.

    Names: ``"default"`` (:data:`~megacontext.models.catalog.DEFAULT_BASE`, or the directory in
    ``$MEGACONTEXT_DEFAULT_BASE``), ``"tiny"`` (the packaged 5.3M model), and every real base of
    :mod:`megacontext.models.catalog` by name or alias. A GGUF (a ``.gguf`` path, or a directory
    plus ``gguf_file``) is converted once into the model cache (:mod:`megacontext.models.gguf`).

    Raises:
        UnknownModelError: Not a known name, not an existing path, not a hub id.
        MissingModelFilesError: The tiny base is not built, a real base's package is not
            installed, or a hub id cannot be fetched.
        NotAGGUFError, CorruptModelFileError, UnsupportedArchitectureError,
        UnsupportedQuantizationError: from checking a GGUF.
    """
    from megacontext.models import catalog
    from megacontext.models.gguf import cached_model, check_gguf_magic

    text = str(name_or_path).strip()
    if gguf_file is not None:
        file = Path(text).expanduser() / gguf_file
        path, timings = cached_model([file], sha256=None, label=str(file), progress=progress)
        return ResolvedModel(path, str(file), timings)
    if text == catalog.DEFAULT:
        override = os.environ.get(DEFAULT_BASE_ENV, "").strip()
        if override:
            return resolve_model(override, progress=progress)
        text = catalog.DEFAULT_BASE
    if text == catalog.TINY:
        if not (TINY_BASE_DIR / "config.json").is_file():
            raise MissingModelFilesError(
                f"the packaged tiny base is missing ({TINY_BASE_DIR} has no config.json); "
                f"build it with `{TINY_BASE_BUILD_COMMAND}` (docs/training.md) or pass the "
                "path of another model directory"
            )
        return ResolvedModel(TINY_BASE_DIR, catalog.TINY)
    entry = catalog.real_base(text)
    if entry is not None:
        path, timings = cached_model(
            entry.part_paths(), sha256=entry.sha256, label=entry.name, progress=progress
        )
        return ResolvedModel(path, entry.name, timings)
    path = Path(text).expanduser()
    if path.is_file():
        if path.name == "config.json":
            return ResolvedModel(path.parent, str(path.parent))
        check_gguf_magic(path)
        resolved, timings = cached_model([path], sha256=None, label=str(path), progress=progress)
        return ResolvedModel(resolved, str(path), timings)
    if path.exists():
        return ResolvedModel(path, str(path))
    if text.startswith((".", "/", "~")):
        raise MissingModelFilesError(f"no model directory or file at {path}")
    if not _HUB_ID.match(text):
        raise catalog.unknown_model(text)
    return ResolvedModel(_download(text), text)


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """The local model directory of a name, path or hub id (see :func:`resolve_model`)."""
    return resolve_model(name_or_path).path


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise MissingModelFilesError(f"{repo_id!r} is not a local directory") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    if hub_offline():
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except (OSError, ValueError):  # the hub's errors: not cached, offline, a malformed id
            raise MissingModelFilesError(
                f"{repo_id!r} is not a local directory and the Hugging Face hub is offline "
                "(HF_HUB_OFFLINE is set) with no cached copy; download it where the network "
                "allows (`hf download REPO --local-dir DIR`) and pass DIR"
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # HTTP, connection, not found, a malformed id
        raise MissingModelFilesError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}); check the id and the network, or pass a local model directory"
        ) from None


_LOAD_LOCK = threading.Lock()


def load_base(
    name_or_path: str | Path,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    gguf_file: str | None = None,
    progress: bool = True,
) -> BaseAdapter:
    """Load a frozen base model behind the adapter interface.

    Args:
        name_or_path: ``"default"``, ``"tiny"``, a real base by name (``"smollm2"``,
            ``"gemma3-270m"``; ``megacontext models list``), a ``.gguf`` file, a local Hugging
            Face model directory, or a hub id such as ``"Qwen/Qwen2.5-0.5B"`` (only where the
            network allows; ``HF_HUB_OFFLINE=1`` is respected).
        dtype: Compute dtype (``torch.float32``, ``"bf16"``, ...).
        device: Where to put the weights.
        gguf_file: With a directory as ``name_or_path``: the GGUF file in it to load.
        progress: Show a progress bar when a GGUF is converted (once per file).

    Returns:
        A :class:`BaseAdapter` in eval mode with frozen weights; ``adapter.load_seconds`` says
        where the load's time went (``convert_s`` only when a GGUF was converted).

    Example:
        >>> base = load_base("smollm2")                                  # doctest: +SKIP
        >>> out = base.forward(base.embed(ids), torch.arange(ids.shape[1]))  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    resolved = resolve_model(name_or_path, gguf_file=gguf_file, progress=progress)
    path = resolved.path
    check_model_dir(path)
    torch_dtype = parse_dtype(dtype)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    loading = time.perf_counter()
    try:
        # transformers builds the model on the meta device through process-wide patches, so
        # two loads at once in two threads corrupt each other: one load at a time.
        with _LOAD_LOCK:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch_dtype, attn_implementation="sdpa"
            )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"transformers could not load {path}: {exc}") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.to(device)
    adapter = BaseAdapter(
        model, tokenizer, source=resolved.name, stored_dtype=stored_dtype_of(path)
    )
    adapter.load_seconds = {
        **resolved.timings,
        "load_s": time.perf_counter() - loading,
        "total_s": time.perf_counter() - started,
    }
    return adapter


__all__ = [
    "DEFAULT_BASE_ENV",
    "TINY_BASE_DIR",
    "ResolvedModel",
    "check_model_dir",
    "has_weights",
    "load_base",
    "parse_dtype",
    "read_config",
    "resolve_model",
    "resolve_model_dir",
]
