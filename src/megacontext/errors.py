"""The one error hierarchy of MegaContext (DESIGN §4).

Every error raised on purpose by the package derives from :class:`MegaContextError`, so callers can
catch one type. Messages say what was wrong and what to do about it.

This module imports nothing from the package, so every layer (``core`` included) can use it.
"""

from __future__ import annotations


class MegaContextError(Exception):
    """Root of every error MegaContext raises on purpose."""


class InvalidInputError(MegaContextError, ValueError):
    """An argument was malformed: wrong type, out of range, or inconsistent with the target."""


class IllegalEditError(InvalidInputError):
    """An expand or collapse names an absent span or breaks a legality rule (D2)."""


class StalePlanError(InvalidInputError):
    """An edit plan was computed for a different version of the working context."""


class StaleLabelError(InvalidInputError):
    """Training labels were computed with a different GistNet than the one in use."""


class BudgetError(MegaContextError):
    """An operation would exceed the working-context budget ``W_max``, or cannot fit at all."""


class InvariantError(MegaContextError):
    """A structural invariant (coverage, contiguity, alignment, budget, ...) does not hold."""


class StorageCorruptionError(MegaContextError):
    """Stored bytes fail a checksum or structural check."""


class FingerprintMismatchError(MegaContextError):
    """A tree or checkpoint is bound to a different base model, tokenizer or GistNet (D13)."""


__all__ = [
    "BudgetError",
    "FingerprintMismatchError",
    "IllegalEditError",
    "InvalidInputError",
    "InvariantError",
    "MegaContextError",
    "StaleLabelError",
    "StalePlanError",
    "StorageCorruptionError",
]
