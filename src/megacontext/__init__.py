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
    StalePlanError,
    StorageCorruptionError,
)

__all__ = [
    "BudgetError",
    "FingerprintMismatchError",
    "IllegalEditError",
    "InvalidInputError",
    "InvariantError",
    "MegaContextError",
    "StalePlanError",
    "StorageCorruptionError",
    "__version__",
]
