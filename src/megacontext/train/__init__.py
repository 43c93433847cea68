"""Training: corpora, tokenizer, synthetic long-context tasks and from-scratch base models.

Layering (DESIGN §4): ``train`` sits above ``models``/``store``/``core`` and may import torch,
transformers and tokenizers. Submodules:

* :mod:`megacontext.train.corpus` — offline license-clean corpora, dedup, split, manifest;
* :mod:`megacontext.train.tokenizer` — byte-level BPE (``tokenizers``), HF-loadable;
* :mod:`megacontext.train.tasks` — seeded passkey / key-value / copy / variable-tracking tasks;
* :mod:`megacontext.train.config` — typed run configuration (YAML);
* :mod:`megacontext.train.base` — ``train_base``: the from-scratch trainer and exporter;
* :mod:`megacontext.train.metrics` — bits per byte, unigram baseline, passkey accuracy, MFU.

Heavy modules are imported lazily: ``import megacontext.train`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megacontext.train.base import TrainResult, export_run, train_base
    from megacontext.train.config import BaseRunConfig, load_config

__all__ = ["BaseRunConfig", "TrainResult", "export_run", "load_config", "train_base"]

_LAZY = {
    "BaseRunConfig": "megacontext.train.config",
    "load_config": "megacontext.train.config",
    "TrainResult": "megacontext.train.base",
    "export_run": "megacontext.train.base",
    "train_base": "megacontext.train.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'megacontext.train' has no attribute {name!r}")
