"""Typed run configurations, loadable from YAML, and what every training run shares.

One place defines each default. A base-model YAML file has three optional sections, ``model``,
``data`` and ``train``, whose keys are the fields below; unknown keys are an error (typos must
not pass silently). The recipes shipped with the package (``default.yaml`` for the tiny base,
``gist-default.yaml``, ``lens-default.yaml``, ``cotrain-*.yaml``) are read with
:func:`packaged_config` through ``importlib.resources``, so they are found from an installed
wheel and any working directory. :class:`RunSettings` and :func:`start_run` are the fields and
the start-up (threads, base, corpus streams) that ``train gist``, ``train lens`` and
``train cotrain`` share.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megacontext.errors import InvalidInputError
from megacontext.models.catalog import DEFAULT

CONFIGS = "configs"  # the packaged recipes, a directory of megacontext.train


def packaged_config(name: str) -> dict[str, Any]:
    """The packaged recipe ``name`` (e.g. ``"gist-default.yaml"``) as a mapping.

    Raises:
        InvalidInputError: No such recipe in the installed package (never an empty config).
    """
    from importlib import resources

    resource = resources.files("megacontext.train").joinpath(CONFIGS, name)
    if not resource.is_file():
        shipped = sorted(
            p.name for p in resources.files("megacontext.train").joinpath(CONFIGS).iterdir()
        )
        raise InvalidInputError(
            f"no packaged config {name!r} (shipped: {', '.join(shipped)}); reinstall megacontext "
            "or pass --config PATH"
        )
    return _mapping(yaml.safe_load(resource.read_text(encoding="utf-8")), f"packaged {name}")


def read_config(path: str | Path | None, packaged: str) -> dict[str, Any]:
    """A run's settings: the YAML file at ``path``, else the packaged recipe ``packaged``."""
    if path is None:
        return packaged_config(packaged)
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(
            f"config file {file} not found; leave --config out to use the packaged {packaged}"
        )
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"config file {file} is not valid YAML: {exc}") from None
    return _mapping(data, str(file))


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"config {where} must hold a mapping of settings")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set`` items (``key=value`` or ``section.key=value``) as ``{dotted key: value}``; the
    values are read as YAML (``3``, ``[0, 1]``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set {item!r} must look like key=value or section.key=value")
        parsed = yaml.safe_load(value)
        # YAML 1.1 reads "1e-6" (exponent, no dot) as a string; on a command line it is a number.
        if isinstance(parsed, str) and _EXPONENT.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key.strip()] = parsed
    return out


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key of ``overrides`` in the nested mapping ``data``."""
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInputError(f"--set {dotted}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


@dataclass
class ModelConfig:
    """Llama-architecture shape. ``vocab_size`` comes from the tokenizer."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int = 704
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    tie_embeddings: bool = True


@dataclass
class DataConfig:
    """Corpus, tokenizer and training mixture.

    ``mixture`` weights the row kinds (``text`` and the task kinds of
    :mod:`megacontext.train.tasks`). Task samples are ``min_task_len`` to ``max_task_len`` tokens
    long (default: a whole row), and their answer tokens weigh ``answer_weight`` in the loss (see
    :class:`~megacontext.train.tasks.MixtureSampler`). ``mixture_phases`` is an optional
    curriculum: a list of ``{from_step: N, mixture: {...}}`` entries, each replacing the mixture
    from step N on; an entry may also set ``max_task_len`` and ``answer_weight`` for its phase.
    """

    corpus_dir: str = "runs/corpus"
    sources: list[str] = field(default_factory=lambda: ["stdlib", "pydoc", "kjv", "gutenberg"])
    corpus_seed: int = 0
    val_fraction: float = 0.05
    tokenizer_dir: str | None = None
    vocab_size: int = 8192
    seq_len: int = 512
    mixture: dict[str, float] = field(
        default_factory=lambda: {
            "text": 0.5,
            "passkey": 0.25,
            "kv": 0.1,
            "copy": 0.075,
            "vartrack": 0.075,
        }
    )
    min_task_len: int = 64
    max_task_len: int | None = None
    answer_weight: float = 1.0
    mixture_phases: list[dict[str, Any]] = field(default_factory=list)


PHASE_KEYS = frozenset({"from_step", "mixture", "max_task_len", "answer_weight"})


@dataclass
class TrainConfig:
    """Optimisation, evaluation and bookkeeping."""

    out_dir: str = "runs/base"
    seed: int = 0
    batch_size: int = 4
    max_steps: int = 1000
    time_budget_s: float | None = None
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    max_position_offset: int = 0
    eval_interval: int = 200
    eval_windows: int = 32
    eval_passkey_prompts: int = 20
    final_eval_windows: int = 256
    ckpt_interval: int = 200
    log_interval: int = 10
    passkey_prompts: int = 100
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None


@dataclass
class BaseRunConfig:
    """A whole run: model shape, data and training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` on inconsistent values."""
        m, d, t = self.model, self.data, self.train
        if m.d_model % m.n_heads or m.n_heads % m.n_kv_heads:
            raise InvalidInputError(
                f"d_model ({m.d_model}) must be divisible by n_heads ({m.n_heads}), and n_heads by "
                f"n_kv_heads ({m.n_kv_heads})"
            )
        if d.seq_len < 16 or d.seq_len + t.max_position_offset > m.max_position_embeddings:
            raise InvalidInputError(
                f"seq_len ({d.seq_len}) + max_position_offset ({t.max_position_offset}) must be "
                f"≥ 16 and ≤ max_position_embeddings ({m.max_position_embeddings})"
            )
        if t.max_steps < 1 or t.batch_size < 1 or t.warmup_steps < 0:
            raise InvalidInputError("max_steps and batch_size must be ≥ 1, warmup_steps ≥ 0")
        last = 0
        if d.answer_weight < 1.0:
            raise InvalidInputError(f"data.answer_weight must be ≥ 1, got {d.answer_weight}")
        for phase in d.mixture_phases:
            if not {"from_step", "mixture"} <= set(phase) <= PHASE_KEYS or not isinstance(
                phase["mixture"], dict
            ):
                raise InvalidInputError(
                    f"each data.mixture_phases entry needs from_step and mixture (and may set "
                    f"max_task_len, answer_weight), got {phase}"
                )
            if int(phase["from_step"]) <= last:
                raise InvalidInputError(
                    "data.mixture_phases must have increasing from_step values, all > 0"
                )
            last = int(phase["from_step"])
        if t.precision not in ("auto", "fp32", "bf16"):
            raise InvalidInputError(f"precision must be auto, fp32 or bf16, got {t.precision!r}")
        if t.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, got {t.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON serialisable)."""
        return asdict(self)


def _section(cls: type[Any], data: Any, name: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidInputError(f"config section {name!r} must be a mapping, got {type(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidInputError(
            f"unknown key(s) {unknown} in config section {name!r}; valid keys: {sorted(names)}"
        )
    return cls(**data)


def config_from_dict(data: dict[str, Any]) -> BaseRunConfig:
    """Build a validated :class:`BaseRunConfig` from a nested dict."""
    unknown = sorted(set(data) - {"model", "data", "train"})
    if unknown:
        raise InvalidInputError(f"unknown config section(s) {unknown}; use model, data and train")
    cfg = BaseRunConfig(
        model=_section(ModelConfig, data.get("model"), "model"),
        data=_section(DataConfig, data.get("data"), "data"),
        train=_section(TrainConfig, data.get("train"), "train"),
    )
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BaseRunConfig:
    """A base-model run's config: the YAML file at ``path`` (else the packaged ``default.yaml``)
    with ``overrides`` (``{"section.key": value}``, from ``--set``) applied."""
    for dotted in overrides or {}:
        if "." not in dotted:
            raise InvalidInputError(f"override {dotted!r} must look like section.key=value")
    return config_from_dict(apply_overrides(read_config(path, "default.yaml"), overrides or {}))


def dataclass_from_dict(cls: type[Any], data: Any, name: str) -> Any:
    """Build the dataclass ``cls`` from a (YAML) mapping, recursing into nested config sections.

    Unknown keys are refused with the valid ones named; lists become tuples where the field's
    default is a tuple; a field whose default is itself a config dataclass is built the same way.
    """
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidInputError(f"config section {name!r} must be a mapping, got {type(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(
            f"unknown keys {unknown} in config section {name!r}; valid keys: {sorted(fields)}"
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        f = fields[key]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            value = dataclass_from_dict(type(default), value, f"{name}.{key}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


@dataclass
class RunSettings:
    """What every focus-model run (``train gist``, ``train lens``, ``train cotrain``) takes."""

    base: str = DEFAULT
    dtype: str = "float32"
    device: str = "cpu"
    corpus_dir: str = "runs/corpus"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidInputError(f"device must be cpu or cuda, got {self.device!r}")


def start_run(run: RunSettings, log: Any = print) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The start of every focus-model run: thread count, the frozen base, and the corpus's train
    and validation token streams in its tokenizer. Returns ``(base, train, val)``."""
    import torch

    from megacontext.models.loading import load_base
    from megacontext.train.streams import corpus_streams

    if run.threads:
        torch.set_num_threads(run.threads)
    base = load_base(run.base, dtype=run.dtype, device=run.device)
    log(
        f"base {base.source}: d_model={base.d_model}, vocab={base.vocab_size}, "
        f"fingerprint {base.fingerprint[:12]}"
    )
    return (
        base,
        corpus_streams(run.corpus_dir, base, "train"),
        corpus_streams(run.corpus_dir, base, "val"),
    )
