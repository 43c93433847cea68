"""The service's trees: one session directory per tree, in its tenant's own namespace.

``ROOT/tenants/{tenant}/trees/{tree}`` is a session directory like any other (the CLI can open
it). A tenant never names a path: a tree name is checked, and another tenant's trees are simply
not in its namespace, so they cannot be read, listed or learnt of (404, never 403). The base and
the focus bundle are loaded once and shared by every session.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError, MegaContextError
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.opening import is_session
from megacontext.runtime.session import Session
from megacontext.server.keys import Principal
from megacontext.server.metrics import TreeStats
from megacontext.server.usage import tree_bytes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class NotFoundError(MegaContextError):
    """A tree (or source) that does not exist in the caller's namespace (HTTP 404)."""


class ConflictError(MegaContextError):
    """Another request is writing the tree (HTTP 409 with Retry-After: retry shortly)."""


class TreeExistsError(MegaContextError):
    """A tree of that name exists (HTTP 409, ``already_exists``: retrying will not help)."""


def check_name(name: str) -> str:
    if not _NAME.match(name) or name in {".", ".."}:
        raise InvalidInputError(
            f"tree name {name!r} is not valid: 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def tree_stats(path: Path) -> TreeStats | None:
    """What the tree at ``path`` holds, read from its stores alone (read-only, no lock, no
    model), or ``None`` when it went away meanwhile (deleted while a scrape listed it)."""
    from megacontext.runtime.opening import metadata_reader
    from megacontext.store.errors import NotAStoreError
    from megacontext.store.local import LocalStore
    from megacontext.store.metadata import COMPLETE

    try:
        store = LocalStore.open(path / "tree", readonly=True)
    except (NotAStoreError, FileNotFoundError):
        return None
    with store:
        levels = 0
        while store.count(levels + 1) > 0:  # gist levels holding a node, as the tree counts
            levels += 1
        db = metadata_reader(store)
        try:
            sources = len(db.ingests_of(store.manifest.tree_id, COMPLETE)) if db else 0
        finally:
            if db is not None:
                db.close()
        return TreeStats(tree_bytes(path), store.count(0), sources, levels)


class Trees:
    """Trees per tenant under ``root``, opened with one shared base and focus bundle."""

    def __init__(
        self,
        root: Path,
        base: Any,
        bundle: Any,
        config: SessionConfig,
        metadata_url: str | None = None,
    ):
        self.root, self.base, self.bundle, self.config = root, base, bundle, config
        self.metadata_url = metadata_url  # where new trees keep metadata (default: SQLite files)

    def path(self, tenant: str, name: str) -> Path:
        return self.root / "tenants" / tenant / "trees" / check_name(name)

    def names(self, tenant: str) -> list[str]:
        home = self.root / "tenants" / tenant / "trees"
        return sorted(p.name for p in home.iterdir() if is_session(p)) if home.is_dir() else []

    def create(self, tenant: str, name: str) -> Path:
        path = self.path(tenant, name)
        if path.exists():
            raise TreeExistsError(f"tree {name!r} already exists; choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._open(path, readonly=False, create=True):
            pass
        return path

    def delete(self, tenant: str, name: str, before: Callable[[Path], None] | None = None) -> None:
        """Delete the tree; ``before(path)`` runs first, while no writer can change it."""
        path = self.found(tenant, name)
        with self._open(path, readonly=False):  # no other writer may be at work
            if before is not None:
                before(path)
        shutil.rmtree(path)

    def all(self) -> Iterator[tuple[str, str, Path]]:
        """Every tenant's trees: ``(tenant, name, path)``."""
        tenants = self.root / "tenants"
        for home in sorted(tenants.iterdir()) if tenants.is_dir() else []:
            for name in self.names(home.name):
                yield home.name, name, home / "trees" / name

    def found(self, tenant: str, name: str) -> Path:
        path = self.path(tenant, name)
        if not is_session(path):
            raise NotFoundError(f"no tree named {name!r}")
        return path

    @contextmanager
    def reader(self, tenant: str, name: str, caller: Principal | None = None) -> Iterator[Session]:
        """The tree opened read-only, as ``caller`` sees it (:meth:`_as`)."""
        with self._open(self.found(tenant, name), readonly=True) as session:
            yield _as(session, caller)

    @contextmanager
    def writer(self, tenant: str, name: str, caller: Principal | None = None) -> Iterator[Session]:
        """The tree opened for writing, as ``caller`` sees it (:meth:`_as`)."""
        with self._open(self.found(tenant, name), readonly=False) as session:
            yield _as(session, caller)

    @contextmanager
    def _open(self, path: Path, *, readonly: bool, create: bool = False) -> Iterator[Session]:
        from megacontext.store.errors import StoreLockedError

        try:
            session = open_session(
                path,
                base=self.base,
                focus=self.bundle,
                config=self.config,
                metadata_url=self.metadata_url if create else None,
                readonly=readonly,
                create=create,
            )
        except StoreLockedError:
            raise ConflictError(
                f"tree {path.name!r} is being written by another request; retry shortly"
            ) from None
        with session:
            yield session


def _as(session: Session, caller: Principal | None) -> Session:
    """``session`` acting for ``caller``: its audit trail names the caller's key, and a key
    holding access labels sees only the sources they allow (megacontext.focus.access)."""
    if caller is not None:
        session.actor = caller.name
        if caller.labels is not None:
            session.restrict(caller.labels)
    return session


__all__ = [
    "ConflictError",
    "NotFoundError",
    "TreeExistsError",
    "Trees",
    "check_name",
    "tree_stats",
]
