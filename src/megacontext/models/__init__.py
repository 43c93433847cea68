"""Base models behind one adapter (DESIGN §6): loading, quirks, fingerprints, portability.

``megacontext.models`` imports torch and transformers; it sits above ``megacontext.core`` and
below ``train``/``runtime``. The entry point is :func:`load_base`::

    from megacontext.models import load_base
    base = load_base("smollm2")            # a real base by name, a .gguf, an HF directory, ...
    logits, hidden, cache = base.forward(base.embed(ids), positions, None)
"""

from __future__ import annotations

from megacontext.models.adapter import BaseAdapter, ForwardOutput
from megacontext.models.errors import (
    MissingModelFilesError,
    ModelLoadError,
    NotACausalLMError,
    UnsupportedArchitectureError,
    UnsupportedPositionPolicyError,
)
from megacontext.models.loading import TINY_BASE_DIR, load_base
from megacontext.models.quirks import POSITION_POLICIES, QUIRKS, FamilyQuirks, PositionPolicy

__all__ = [
    "POSITION_POLICIES",
    "QUIRKS",
    "TINY_BASE_DIR",
    "BaseAdapter",
    "FamilyQuirks",
    "ForwardOutput",
    "MissingModelFilesError",
    "ModelLoadError",
    "NotACausalLMError",
    "PositionPolicy",
    "UnsupportedArchitectureError",
    "UnsupportedPositionPolicyError",
    "load_base",
]
