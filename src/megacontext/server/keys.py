"""API keys of the service: tenants, scopes, and only a hash of each secret on disk.

A key reads ``mck_{id}_{secret}``. The id finds the row; the secret is checked against its
Argon2id hash (argon2-cffi, the OWASP-recommended password hash). Argon2 is slow on purpose
(tens of milliseconds), so a key that verified is remembered in memory by the SHA-256 of the
whole key for a short while; a revocation clears that memory at once in the process that
revoked it, and within ``CACHE_SECONDS`` in any other.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from megacontext.errors import InvalidInputError, MegaContextError

SCOPES = ("read", "write", "admin")
CACHE_SECONDS = 60.0
_KEY = re.compile(r"^mck_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class AuthError(MegaContextError):
    """A request without a valid key: missing, malformed, unknown, revoked (HTTP 401)."""


class ScopeError(MegaContextError):
    """A valid key whose scopes do not allow the call (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a tenant, through one key with its scopes."""

    tenant: str
    key_id: str
    scopes: frozenset[str]
    # The access labels the key holds (megacontext.focus.access); None: it sees every source.
    labels: frozenset[str] | None = None

    @property
    def name(self) -> str:
        """Who the audit trail and annotations record: ``tenant/key id``."""
        return f"{self.tenant}/{self.key_id}"

    def require(self, scope: str) -> None:
        """Raise :class:`ScopeError` unless the key has ``scope`` (``admin`` implies all)."""
        if scope not in self.scopes and "admin" not in self.scopes:
            raise ScopeError(
                f"this key's scopes ({', '.join(sorted(self.scopes))}) do not allow this call; "
                f"it needs the {scope!r} scope"
            )


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed (never its secret)."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str
    created_at: float
    revoked_at: float | None
    labels: tuple[str, ...] | None = None  # None: every source


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidInputError(
            f"tenant {tenant!r} is not a valid name: use 1-63 lowercase letters, digits, - or _"
        )
    return tenant


def check_scopes(scopes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    wanted = [s.strip() for s in scopes.split(",")] if isinstance(scopes, str) else list(scopes)
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidInputError(
            f"unknown scopes {unknown or wanted}; choose from {', '.join(SCOPES)} (comma-separated)"
        )
    return tuple(sorted(set(wanted)))


class KeyStore:
    """The key table (SQLite, ``keys.sqlite`` in the service's root)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hasher = PasswordHasher()
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[Principal, float]] = {}
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
                "scopes TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL, "
                "created_at REAL NOT NULL, revoked_at REAL, labels TEXT)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(keys)")}
            if "labels" not in columns:  # a key table from before access labels
                db.execute("ALTER TABLE keys ADD COLUMN labels TEXT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def create(
        self,
        tenant: str,
        scopes: str | list[str],
        name: str = "",
        labels: list[str] | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key for ``tenant``: returns the key (shown once, never stored) and its info.
        ``labels``: the access labels it holds (``None``: it sees every source; ``[]``: only
        unlabelled ones)."""
        check_tenant(tenant)
        granted = check_scopes(scopes)
        held = None if labels is None else tuple(sorted({x.strip() for x in labels if x.strip()}))
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        now = time.time()
        stored = None if held is None else ",".join(held)
        with self._connect() as db:
            db.execute(
                "INSERT INTO keys (id, tenant, scopes, name, hash, created_at, revoked_at, labels) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                (key_id, tenant, ",".join(granted), name, self._hasher.hash(secret), now, stored),
            )
        info = KeyInfo(key_id, tenant, granted, name, now, None, held)
        return f"mck_{key_id}_{secret}", info

    def revoke(self, key_id: str) -> None:
        with self._connect() as db:
            done = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            ).rowcount
        if not done:
            raise InvalidInputError(f"no active key with id {key_id!r}; `keys list` shows them")
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v[0].key_id != key_id}

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        query = "SELECT id, tenant, scopes, name, created_at, revoked_at, labels FROM keys"
        args: tuple[str, ...] = ()
        if tenant is not None:
            query, args = query + " WHERE tenant = ?", (tenant,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at", args).fetchall()
        return [
            KeyInfo(r[0], r[1], tuple(r[2].split(",")), r[3], r[4], r[5], _labels(r[6]))
            for r in rows
        ]

    def verify(self, key: str | None) -> Principal:
        """The principal of a key, or :class:`AuthError` saying what is wrong with it."""
        if not key:
            raise AuthError("no API key: send `Authorization: Bearer mck_...`")
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            known = self._verified.get(digest)
        if known is not None and now - known[1] < CACHE_SECONDS:
            return known[0]
        found = _KEY.match(key)
        if not found:
            raise AuthError("malformed API key: keys look like mck_<12 hex>_<secret>")
        key_id, secret = found.groups()
        with self._connect() as db:
            row = db.execute(
                "SELECT tenant, scopes, hash, revoked_at, labels FROM keys WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            raise AuthError("unknown API key")
        tenant, scopes, hashed, revoked, labels = row
        if revoked is not None:
            raise AuthError("this API key was revoked; ask for a new one")
        try:
            self._hasher.verify(hashed, secret)
        except (VerificationError, InvalidHashError):
            raise AuthError("invalid API key") from None
        held = _labels(labels)
        principal = Principal(
            tenant, key_id, frozenset(scopes.split(",")), None if held is None else frozenset(held)
        )
        with self._lock:
            self._verified[digest] = (principal, now)
        return principal


def _labels(stored: str | None) -> tuple[str, ...] | None:
    if stored is None:
        return None
    return tuple(x for x in stored.split(",") if x)


__all__ = [
    "SCOPES",
    "AuthError",
    "KeyInfo",
    "KeyStore",
    "Principal",
    "ScopeError",
    "check_scopes",
    "check_tenant",
]
