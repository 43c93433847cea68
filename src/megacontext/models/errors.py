"""Typed errors of the base-model layer.

All derive from :class:`megacontext.errors.MegaContextError`, so callers can catch one type; each
message names what is wrong and what to do about it.
"""

from __future__ import annotations

from megacontext.errors import InvalidInputError, MegaContextError


class ModelLoadError(MegaContextError):
    """A base model could not be loaded."""


class MissingModelFilesError(ModelLoadError, FileNotFoundError):
    """A model directory (or hub snapshot) lacks a file the adapter needs, or cannot be reached."""


class UnsupportedArchitectureError(ModelLoadError, InvalidInputError):
    """The model's architecture is not in the quirks table, so no adapter behaviour is defined."""


class NotACausalLMError(UnsupportedArchitectureError):
    """The model is not a causal (decoder-only, next-token) language model."""


class UnsupportedPositionPolicyError(InvalidInputError):
    """A position policy (DESIGN D6) was requested that this base model cannot honour."""


__all__ = [
    "MissingModelFilesError",
    "ModelLoadError",
    "NotACausalLMError",
    "UnsupportedArchitectureError",
    "UnsupportedPositionPolicyError",
]
