"""Typed errors of the storage engine.

All derive from :class:`megacontext.errors.MegaContextError`; corruption is reported with
:class:`~megacontext.errors.StorageCorruptionError` and binding problems with
:class:`~megacontext.errors.FingerprintMismatchError` (both re-exported here).
"""

from __future__ import annotations

from megacontext.errors import (
    FingerprintMismatchError,
    InvalidInputError,
    MegaContextError,
    StorageCorruptionError,
)


class StoreError(MegaContextError):
    """The store could not complete an operation (I/O, locking, space)."""


class StoreLockedError(StoreError):
    """Another writer holds the store's exclusive lock."""


class StorePermissionError(StoreError):
    """The store's directory (or a file in it) is not writable, or not readable."""


class DiskFullError(StoreError):
    """The device ran out of space; the records of the failed append were not stored."""


class NotAStoreError(InvalidInputError):
    """The path is not a MegaContext store (a regular file, or a directory without a manifest)."""


class ReplicaError(StoreError):
    """Too few replicas could be written (below the write quorum) or read."""


__all__ = [
    "DiskFullError",
    "FingerprintMismatchError",
    "InvalidInputError",
    "NotAStoreError",
    "ReplicaError",
    "StorageCorruptionError",
    "StoreError",
    "StoreLockedError",
    "StorePermissionError",
]
