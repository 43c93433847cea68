"""MegaContext: effectively unbounded memory for language models at constant compute.

The public API is small and re-exported here. Heavy layers (torch, transformers) are imported
lazily, so ``import megacontext.core`` stays numpy-only.
"""

from __future__ import annotations

from megacontext._version import __version__
from megacontext.errors import (
    BudgetError,
    FingerprintMismatchError,
    IllegalEditError,
    InvalidInputError,
    InvariantError,
    MegaContextError,
    StaleLabelError,
    StalePlanError,
    StorageCorruptionError,
)

_LAZY = {
    "open": ("megacontext.runtime.opening", "open_session"),
    "Session": ("megacontext.runtime.session", "Session"),
    "SessionConfig": ("megacontext.runtime.config", "SessionConfig"),
    "load_base": ("megacontext.models.loading", "load_base"),
}


def __getattr__(name: str) -> object:
    """Import the torch-backed parts of the public API only when they are used."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'megacontext' has no attribute {name!r}")


__all__ = [
    "BudgetError",
    "FingerprintMismatchError",
    "IllegalEditError",
    "InvalidInputError",
    "InvariantError",
    "MegaContextError",
    "Session",
    "SessionConfig",
    "StaleLabelError",
    "StalePlanError",
    "StorageCorruptionError",
    "__version__",
    "load_base",
    "open",
]
