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


class UnknownModelError(ModelLoadError, InvalidInputError):
    """A model name that is neither a known base (``megacontext models list``) nor a path."""


class NotAGGUFError(ModelLoadError, InvalidInputError):
    """A file given as a GGUF model does not start with the GGUF magic bytes."""


class CorruptModelFileError(ModelLoadError):
    """A model file is truncated or damaged (a GGUF whose tensors run past its end, a sha256
    that differs from the pinned one)."""


class UnsupportedQuantizationError(ModelLoadError, InvalidInputError):
    """A GGUF stores tensors in a quantization type that cannot be dequantized here."""


class NoFocusBundleError(InvalidInputError):
    """No focus bundle (GistNet, LensNet) exists where one was asked for, or for this base."""


class UnsupportedPositionPolicyError(InvalidInputError):
    """A position policy (DESIGN D6) was requested that this base model cannot honour."""


__all__ = [
    "CorruptModelFileError",
    "MissingModelFilesError",
    "ModelLoadError",
    "NoFocusBundleError",
    "NotACausalLMError",
    "NotAGGUFError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "UnsupportedPositionPolicyError",
    "UnsupportedQuantizationError",
]
