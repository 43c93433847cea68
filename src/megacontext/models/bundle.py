"""Checkpoint bundles: trained modules in one safetensors file plus a JSON manifest (DESIGN §6).

```
bundle/
  manifest.json         format, per module {version, config, parameters}, fingerprints of the
                        base model and tokenizer the modules were trained for, training config,
                        metrics, sha256 of the weights file
  weights.safetensors   every module's tensors, keys prefixed "<module>."
```

Loading checks the weights' sha256 (:class:`StorageCorruptionError` on mismatch) and refuses a
bundle trained for another base model or tokenizer (:class:`FingerprintMismatchError`, D13).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from megacontext.errors import (
    FingerprintMismatchError,
    InvalidInputError,
    StorageCorruptionError,
)
from megacontext.files import sha256_file
from megacontext.models.errors import NoFocusBundleError
from megacontext.models.gistnet import GISTNET_VERSION, GistNet, GistNetConfig
from megacontext.models.lensnet import LENSNET_VERSION, LensNet, LensNetConfig
from megacontext.models.lora import LORA_VERSION

FOCUS_BUNDLE_ENV = "MEGACONTEXT_FOCUS_BUNDLE"
# Focus bundles shipped in the package, one directory per base (named after the base); "default"
# focus means the one among them that was trained for the base in use.
PACKAGED_BUNDLES = Path(__file__).resolve().parent / "bundles"
DEFAULT_FOCUS = "default"  # the focus bundle shipped for the base in use
FOCUS_BUILD_HINT = "make focus-models"  # the tiny base's recipe (docs/training.md)

BUNDLE_FORMAT = "megacontext-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"

# name → (config class, module class, version)
MODULES: dict[str, tuple[type[Any], type[nn.Module], str]] = {
    "gistnet": (GistNetConfig, GistNet, GISTNET_VERSION),
    "lensnet": (LensNetConfig, LensNet, LENSNET_VERSION),
    # LensNets trained with inputs switched off, shipped for the ablation benchmark.
    "lensnet_gists_only": (LensNetConfig, LensNet, LENSNET_VERSION),
    "lensnet_lexical_only": (LensNetConfig, LensNet, LENSNET_VERSION),
    "lensnet_keys_only": (LensNetConfig, LensNet, LENSNET_VERSION),
}
# Optional LoRA weights for the base: stored like a module, attached on request (not built here,
# since attaching needs the base model).
LORA = "lora"


@dataclass
class Bundle:
    """A loaded bundle: modules by name, plus everything the manifest recorded."""

    modules: dict[str, nn.Module]
    fingerprints: dict[str, str]
    lora: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the directory it was loaded from

    def attach_lora(self, base: Any) -> Any:
        """Attach the bundle's LoRA weights to ``base``; returns the adapter (or None)."""
        if self.lora is None:
            return None
        from megacontext.models.lora import LoraAdapter, LoraSettings

        config, state = self.lora
        adapter = LoraAdapter(base, LoraSettings.from_mapping(config))
        adapter.load_state_dict(state)
        return adapter

    def get(self, name: str) -> nn.Module:
        if name not in self.modules:
            raise InvalidInputError(
                f"this bundle has no {name!r} module; it holds {sorted(self.modules)}"
            )
        return self.modules[name]


def packaged_bundle_for(fingerprints: Mapping[str, str]) -> Path | None:
    """The packaged bundle trained for a base with these fingerprints, if one ships."""
    if not PACKAGED_BUNDLES.is_dir():
        return None
    for candidate in sorted(PACKAGED_BUNDLES.iterdir()):
        try:
            made_for = read_manifest(candidate).get("fingerprints", {})
        except (InvalidInputError, StorageCorruptionError):
            continue
        if all(made_for.get(k) == v for k, v in fingerprints.items()):
            return candidate
    return None


def resolve_focus(focus: str | Path, fingerprints: Mapping[str, str], base_name: str) -> Path:
    """The bundle directory that ``focus`` names for a base — the one place that decides it.

    ``"default"``: ``$MEGACONTEXT_FOCUS_BUNDLE`` when set, else the packaged bundle trained for
    this base (matched by fingerprint). Anything else is a bundle directory.

    Raises:
        NoFocusBundleError: No bundle there, or none ships for this base; the message says how
            to train one.
    """
    if str(focus) != DEFAULT_FOCUS:
        path = Path(focus).expanduser()
        if not (path / MANIFEST).is_file():
            raise NoFocusBundleError(
                f"no focus bundle at {path} (no {MANIFEST}); pass a bundle directory "
                f"(`{FOCUS_BUILD_HINT}` builds the tiny base's), or 'default' for the one "
                "shipped for the base"
            )
        return path
    override = os.environ.get(FOCUS_BUNDLE_ENV, "").strip()
    if override:
        return resolve_focus(override, fingerprints, base_name)
    found = packaged_bundle_for(fingerprints)
    if found is None:
        shipped = (
            sorted(p.name for p in PACKAGED_BUNDLES.iterdir()) if PACKAGED_BUNDLES.is_dir() else []
        )
        raise NoFocusBundleError(
            f"no focus bundle (GistNet, LensNet) ships for the base {base_name!r} (shipped: "
            f"{', '.join(shipped) or 'none'}); train one with `megacontext train focus --base "
            f"{base_name}` (`{FOCUS_BUILD_HINT}` for the tiny base), or pass --focus DIR"
        )
    return found


def save_bundle(
    path: str | Path,
    modules: Mapping[str, nn.Module],
    *,
    fingerprints: Mapping[str, str],
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``modules`` (names from :data:`MODULES`) as a bundle directory; returns its path.

    The manifest is written last, through a temporary file and a rename, so a crash never leaves
    a manifest that describes weights which are not there.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"bundle path {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {}
    for name, module in modules.items():
        if name not in MODULES and name != LORA:
            raise InvalidInputError(
                f"unknown bundle module {name!r}; known: {sorted([*MODULES, LORA])}"
            )
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            raise InvalidInputError(f"module {name!r} has no config to record")
        for key, tensor in module.state_dict().items():
            tensors[f"{name}.{key}"] = tensor.detach().cpu().contiguous()
        described[name] = {
            "version": MODULES[name][2] if name in MODULES else LORA_VERSION,
            "config": config.to_dict(),
            "parameters": sum(p.numel() for p in module.parameters()),
        }
    weights = root / WEIGHTS
    save_file(tensors, str(weights))
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "modules": described,
        "fingerprints": dict(fingerprints),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "weights_sha256": sha256_file(weights),
    }
    temp = root / (MANIFEST + ".tmp")
    temp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, root / MANIFEST)
    return root


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle directory, validated for format and version."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise InvalidInputError(
            f"{path} is not a MegaContext bundle: {MANIFEST} is missing "
            "(train one with `megacontext train gist` or point at the right directory)"
        )
    try:
        manifest: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StorageCorruptionError(f"{file} is not valid JSON ({exc})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise InvalidInputError(f"{file} is not a MegaContext bundle manifest")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise InvalidInputError(
            f"{file} has bundle format version {manifest.get('format_version')}; this "
            f"MegaContext reads version {BUNDLE_FORMAT_VERSION}"
        )
    return manifest


def check_fingerprints(found: Mapping[str, str], expected: Mapping[str, str], what: str) -> None:
    """Raise :class:`FingerprintMismatchError` if any expected fingerprint differs or is absent."""
    for key, value in expected.items():
        if found.get(key) != value:
            raise FingerprintMismatchError(
                f"{what} was made for {key} fingerprint {found.get(key)!r}, but the current "
                f"{key} has fingerprint {value!r}; use the {key} it was made for, or retrain "
                "it for this one"
            )


def load_bundle(
    path: str | Path,
    *,
    fingerprints: Mapping[str, str] | None = None,
    device: str | torch.device = "cpu",
) -> Bundle:
    """Load a bundle; with ``fingerprints``, refuse one made for a different base or tokenizer."""
    root = Path(path)
    manifest = read_manifest(root)
    if fingerprints is not None:
        check_fingerprints(manifest.get("fingerprints", {}), fingerprints, f"bundle {root}")
    weights = root / WEIGHTS
    if not weights.is_file():
        raise StorageCorruptionError(f"bundle {root} lacks {WEIGHTS}; the bundle is incomplete")
    if sha256_file(weights) != manifest.get("weights_sha256"):
        raise StorageCorruptionError(
            f"{weights} does not match the sha256 in its manifest: the file is corrupt or was "
            "replaced; restore it from a good copy or retrain"
        )
    tensors = load_file(str(weights), device=str(device))
    modules: dict[str, nn.Module] = {}
    lora: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
    for name, described in manifest["modules"].items():
        if name == LORA:
            prefix = f"{LORA}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            lora = (dict(described["config"]), state)
            continue
        if name not in MODULES:
            raise InvalidInputError(f"bundle {root} holds unknown module {name!r}")
        config_cls, module_cls, version = MODULES[name]
        if described.get("version") != version:
            raise InvalidInputError(
                f"bundle {root} holds {name} version {described.get('version')!r}; this "
                f"MegaContext builds {version!r}"
            )
        module = module_cls(config_cls(**described["config"]))
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
        modules[name] = module.to(device).eval()
    return Bundle(
        modules=modules,
        lora=lora,
        fingerprints=dict(manifest.get("fingerprints", {})),
        training=dict(manifest.get("training", {})),
        metrics=dict(manifest.get("metrics", {})),
        manifest=manifest,
        path=root,
    )
