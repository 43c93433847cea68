"""Storage engine: durable segmented tree store, replicas, page cache, metadata (DESIGN §5).

- :class:`LocalStore` — the embedded durable backend of the MegaContext tree.
- :class:`Replication` — copy sealed segments to fsspec roots (sharding, replication, repair).
- :mod:`megacontext.store.metadata` — sources and provenance in SQL (SQLite or PostgreSQL).
- :mod:`megacontext.store.cache` — bounded page cache and an asyncio read API.
"""

from __future__ import annotations

from megacontext.store.errors import (
    DiskFullError,
    NotAStoreError,
    ReplicaError,
    StoreError,
    StoreLockedError,
    StorePermissionError,
)
from megacontext.store.local import (
    Cut,
    LocalStore,
    MigrationReport,
    Problem,
    RepairReport,
    StoreStats,
    recover_manifest,
)
from megacontext.store.manifest import Fingerprints, Replication

__all__ = [
    "Cut",
    "DiskFullError",
    "Fingerprints",
    "LocalStore",
    "MigrationReport",
    "NotAStoreError",
    "Problem",
    "RepairReport",
    "ReplicaError",
    "Replication",
    "StoreError",
    "StoreLockedError",
    "StorePermissionError",
    "StoreStats",
    "recover_manifest",
]
