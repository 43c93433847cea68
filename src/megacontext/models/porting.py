"""``port-model``: inspect a model, pick its quirks and policies, run the portability checks.

Input may be

* a local model directory with weights: the checks run on the real checkpoint;
* a hub id: downloaded where the network allows (else, when a shipped config names that hub id,
  its config is used as below);
* a config without weights (``config.json``, a directory holding only one, or an adapter-config
  YAML with an ``hf_config`` section, or the name of a shipped config such as
  ``qwen2.5-0.5b``): the checks run on a random-init model of that config, scaled down in depth
  and width (a full-size random init of a 0.5B-47B model does not fit the time of a check run),
  and the report lists every field that was scaled down.

Output: an adapter config (YAML) and a compatibility report (JSON plus a readable summary).
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megacontext.models.adapter import BaseAdapter
from megacontext.models.catalog import real_base
from megacontext.models.errors import MissingModelFilesError, ModelLoadError
from megacontext.models.loading import (
    check_model_dir,
    has_weights,
    load_base,
    read_config,
    resolve_model,
    resolve_model_dir,
)
from megacontext.models.portability import CheckResult, run_checks
from megacontext.models.quirks import FamilyQuirks, quirks_for_config, rope_type_of
from megacontext.models.tiny import make_config, make_tiny_model_dir, scale_down

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class PortReport:
    """The result of porting one model: adapter config + compatibility report."""

    name: str
    adapter_config: dict[str, Any]
    checks: list[CheckResult]
    checked_on: str
    scaled_down: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "checked_on": self.checked_on,
            "scaled_down": {k: list(v) for k, v in self.scaled_down.items()},
            "adapter_config": self.adapter_config,
            "checks": [c.to_json() for c in self.checks],
        }

    def summary(self) -> str:
        """A readable multi-line summary (what the CLI prints and writes as ``.md``)."""
        cfg = self.adapter_config
        lines = [
            f"# port-model report: {self.name}",
            "",
            f"- verdict: **{'PASS' if self.passed else 'FAIL'}**",
            f"- family: {cfg['family']} (model_type {cfg['model_type']}, "
            f"{cfg['position_kind']} positions"
            + (f", rope_type {cfg['rope_type']}" if cfg.get("rope_type") else "")
            + ")",
            f"- position policies: {', '.join(cfg['position_policies'])} "
            f"(default {cfg['default_policy']})",
            f"- BOS prepended: {cfg['prepend_bos']}; tied embeddings: {cfg['tied_embeddings']}",
            f"- checked on: {self.checked_on}",
        ]
        if self.scaled_down:
            changes = ", ".join(f"{k} {a}→{b}" for k, (a, b) in self.scaled_down.items())
            lines.append(f"- scaled down for the random-init check: {changes}")
        lines += ["", "| check | result | measured | tolerance | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            verdict = "skipped" if c.skipped else ("pass" if c.passed else "FAIL")
            measured = "" if c.measured is None else f"{c.measured:.3g}"
            tol = "" if c.tolerance is None else f"{c.tolerance:.3g}"
            lines.append(f"| {c.name} | {verdict} | {measured} | {tol} | {c.detail} |")
        notes = cfg.get("quirks") or []
        if notes:
            lines += ["", "Quirks:", *[f"- {n}" for n in notes]]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- shipped configs
def shipped_configs() -> dict[str, Path]:
    """Name → path of every adapter config shipped in ``megacontext/models/configs``."""
    return {p.stem: p for p in sorted(SHIPPED_CONFIG_DIR.glob("*.yaml"))}


def load_adapter_config(name_or_path: str | Path) -> dict[str, Any]:
    """Read an adapter config YAML by shipped name or path."""
    path = shipped_configs().get(str(name_or_path)) or Path(name_or_path)
    if not path.is_file():
        names = ", ".join(shipped_configs())
        raise MissingModelFilesError(f"no adapter config {name_or_path!r} (shipped: {names})")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "family" not in data:
        raise ModelLoadError(f"{path} is not an adapter config (no 'family' field)")
    return data


def _shipped_for_hub_id(hub_id: str) -> dict[str, Any] | None:
    for path in shipped_configs().values():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("hub_id") == hub_id:
            return data
    return None


# ----------------------------------------------------------------------------- adapter config
def adapter_config(
    config: Any,
    quirks: FamilyQuirks,
    *,
    name: str,
    hub_id: str | None,
    source: str,
    hf_config: dict[str, Any] | None,
    policies: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The adapter config document for a model (what ``port-model`` writes as YAML)."""
    policies = policies or quirks.policies
    tied = bool(getattr(config, "tie_word_embeddings", False))
    doc: dict[str, Any] = {
        "name": name,
        "hub_id": hub_id,
        "source": source,
        "family": quirks.family,
        "model_type": config.model_type,
        "architectures": list(getattr(config, "architectures", None) or []),
        "position_kind": quirks.position_kind,
        "rope_type": rope_type_of(config) if quirks.position_kind == "rope" else None,
        "position_policies": list(policies),
        "default_policy": policies[0],
        "prepend_bos": quirks.prepend_bos,
        "tied_embeddings": tied,
        "lora_targets": list(quirks.lora_targets),
        "d_model": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "num_layers": int(config.num_hidden_layers),
        "moe": (
            {
                "experts": int(config.num_local_experts),
                "top_k": int(config.num_experts_per_tok),
            }
            if hasattr(config, "num_local_experts")
            else None
        ),
        "quirks": list(quirks.notes),
    }
    if hf_config is not None:
        doc["hf_config"] = hf_config
    return doc


def _summarise_checks(checks: list[CheckResult]) -> dict[str, Any]:
    return {
        c.name: {
            "passed": c.passed,
            "skipped": c.skipped,
            "measured": c.measured,
            "tolerance": c.tolerance,
        }
        for c in checks
    }


# ----------------------------------------------------------------------------- porting
def _port_checkpoint(
    base: BaseAdapter, path: Path, name: str, hub_id: str | None, progress: Any
) -> PortReport:
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    checks = run_checks(base, progress=progress)
    doc = adapter_config(
        base.config,
        base.quirks,
        name=name,
        hub_id=hub_id,
        source=f"checkpoint at {base.source}",
        hf_config=raw,
        policies=base.position_policies,
    )
    doc["fingerprint"] = base.fingerprint
    doc["portability"] = {
        "passed": all(c.passed for c in checks),
        "checked_on": "the checkpoint itself",
        "checks": _summarise_checks(checks),
    }
    return PortReport(name, doc, checks, "the checkpoint itself")


def _port_config_only(
    hf_config: dict[str, Any],
    name: str,
    hub_id: str | None,
    source: str,
    progress: Any,
) -> PortReport:
    if "model_type" not in hf_config:
        raise ModelLoadError(f"config for {name!r} has no 'model_type'")
    config = make_config(hf_config)
    quirks = quirks_for_config(config)
    tiny, changes = scale_down(hf_config)
    with tempfile.TemporaryDirectory(prefix="megacontext-port-") as tmp:
        base = load_base(make_tiny_model_dir(tiny, Path(tmp) / "model", seed=0))
        checks = run_checks(base, progress=progress)
    checked_on = (
        "a random-init model of the same config, scaled down in depth and width (no weights "
        "available here; a full-size random init would not fit the time of a check run)"
    )
    doc = adapter_config(
        config, quirks, name=name, hub_id=hub_id, source=source, hf_config=hf_config
    )
    doc["fingerprint"] = None
    doc["portability"] = {
        "passed": all(c.passed for c in checks),
        "checked_on": checked_on,
        "scaled_down": {k: list(v) for k, v in changes.items()},
        "checks": _summarise_checks(checks),
    }
    return PortReport(name, doc, checks, checked_on, changes)


def port_model(  # noqa: PLR0911  (one return per kind of input it accepts)
    target: str | Path,
    *,
    name: str | None = None,
    hub_id: str | None = None,
    source: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> PortReport:
    """Inspect ``target``, run the portability checks, and build the adapter config + report.

    Args:
        target: A real base by name (``smollm2``, ``gemma3-270m``, ``tiny``), a ``.gguf``
            file, a model directory, a hub id, a ``config.json`` / config-only directory, an
            adapter-config YAML with ``hf_config``, or a shipped config name.
        name: Name for the adapter config (default: derived from ``target``).
        hub_id: Hub id to record in the adapter config.
        source: Where the config values come from (recorded in the adapter config).
        progress: Called with a short message before each check.

    Raises:
        MissingModelFilesError, UnsupportedArchitectureError, NotACausalLMError: bad input.
    """
    text = str(target)
    shipped = shipped_configs()
    path = Path(text).expanduser()
    if text in shipped and not path.exists():
        path = shipped[text]
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        doc = load_adapter_config(path)
        if "hf_config" not in doc:
            raise MissingModelFilesError(f"{path} has no 'hf_config' section to check")
        return _port_config_only(
            doc["hf_config"],
            name or doc.get("name", path.stem),
            hub_id or doc.get("hub_id"),
            source or doc.get("source", str(path)),
            progress,
        )
    if path.is_file() and path.suffix == ".json":
        raw = json.loads(path.read_text(encoding="utf-8"))
        return _port_config_only(
            raw, name or path.parent.name, hub_id, source or str(path), progress
        )
    if path.is_dir():
        read_config(path)  # typed errors for missing config / unsupported architecture first
        if not has_weights(path):
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
            label = source or f"{path / 'config.json'} (config only, no weights)"
            return _port_config_only(raw, name or path.name, hub_id, label, progress)
        check_model_dir(path)  # names a missing tokenizer
        return _port_checkpoint(load_base(path), path, name or path.name, hub_id, progress)
    if real_base(text) is not None or text == "tiny" or path.is_file():
        # A real base by name, the tiny base, or a GGUF file: checked on its real weights.
        resolved = resolve_model(text)
        base = load_base(text)
        return _port_checkpoint(base, resolved.path, name or resolved.name, hub_id, progress)
    # A hub id: the real checkpoint where the network allows, else a shipped config of it.
    try:
        local = resolve_model_dir(text)
    except MissingModelFilesError:
        known = _shipped_for_hub_id(text)
        if known is None:
            raise
        reason = "the hub is unreachable from here, so the shipped config of this hub id is used"
        report = _port_config_only(
            known["hf_config"], name or known["name"], text, known.get("source", text), progress
        )
        report.checked_on = f"{report.checked_on}; {reason}"
        report.adapter_config["portability"]["checked_on"] = report.checked_on
        return report
    label = name or text.split("/")[-1].lower()
    return _port_checkpoint(load_base(local), local, label, hub_id or text, progress)


def write_outputs(report: PortReport, out_dir: Path, json_path: Path | None = None) -> list[Path]:
    """Write ``NAME.yaml`` (adapter config), ``NAME.report.json`` and ``NAME.report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).date().isoformat()
    cfg = report.adapter_config
    header = [
        f"# MegaContext adapter config for {report.name}",
        f"# Written by `megacontext port-model` on {stamp}.",
        f"# Source of the config values: {cfg.get('source')}",
        f"# Portability checks ran on: {report.checked_on}",
    ]
    yaml_path = out_dir / f"{report.name}.yaml"
    yaml_path.write_text(
        "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False, width=100),
        encoding="utf-8",
    )
    document = json.dumps(report.to_json(), indent=2, default=str) + "\n"
    report_json = out_dir / f"{report.name}.report.json"
    report_json.write_text(document, encoding="utf-8")
    report_md = out_dir / f"{report.name}.report.md"
    report_md.write_text(report.summary(), encoding="utf-8")
    written = [yaml_path, report_json, report_md]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(document, encoding="utf-8")
        written.append(json_path)
    return written


__all__ = [
    "SHIPPED_CONFIG_DIR",
    "PortReport",
    "adapter_config",
    "load_adapter_config",
    "port_model",
    "shipped_configs",
    "write_outputs",
]
