"""``Idempotency-Key`` on POST: a retried request gets the first response and changes nothing.

The first request with a key (per tenant and API key) reserves it, runs, and stores its status
and body; a replay within ``TTL_S`` (24 h) with the same method, path and body gets the stored
response with ``Idempotent-Replayed: true``. The same key with another body is refused (422); a
replay while the first is still running gets 409 (retry). A request that failed with a 5xx, or
whose answer was streamed, is not stored: it may be retried for real.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from megacontext.errors import InvalidInputError, MegaContextError

TTL_S = 24 * 3600.0
RUNNING_S = 600.0  # a reservation older than this is taken for a crashed request


class IdempotencyConflictError(MegaContextError):
    """The first request with this key is still running (HTTP 409: retry)."""


class IdempotencyMismatchError(InvalidInputError):
    """The key was used before for another request (HTTP 422)."""


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes
    content_type: str


class IdempotencyStore:
    """Reservations and stored responses (SQLite in the service's root)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS idempotency (scope TEXT, key TEXT, fingerprint TEXT, "
                "created REAL, status INTEGER, body BLOB, content_type TEXT, "
                "PRIMARY KEY (scope, key))"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def begin(self, scope: str, key: str, fingerprint: str) -> Stored | None:
        """The stored response of a replay, or ``None`` after reserving the key for this one."""
        if not key or len(key) > 255:
            raise InvalidInputError("Idempotency-Key must be 1-255 characters")
        now = time.time()
        with self._connect() as db:
            db.execute("DELETE FROM idempotency WHERE created < ?", (now - TTL_S,))
            row = db.execute(
                "SELECT fingerprint, created, status, body, content_type FROM idempotency "
                "WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO idempotency VALUES (?, ?, ?, ?, NULL, NULL, NULL)",
                    (scope, key, fingerprint, now),
                )
                return None
            seen, created, status, body, content_type = row
            if seen != fingerprint:
                raise IdempotencyMismatchError(
                    f"Idempotency-Key {key!r} was used for another request in the last 24 h; "
                    "use a new key for a new request"
                )
            if status is None:
                if now - created < RUNNING_S:
                    raise IdempotencyConflictError(
                        f"the first request with Idempotency-Key {key!r} is still running; "
                        "retry shortly"
                    )
                db.execute(
                    "UPDATE idempotency SET created = ? WHERE scope = ? AND key = ?",
                    (now, scope, key),
                )
                return None
            return Stored(int(status), bytes(body), str(content_type))

    def finish(self, scope: str, key: str, stored: Stored) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE idempotency SET status = ?, body = ?, content_type = ? "
                "WHERE scope = ? AND key = ?",
                (stored.status, stored.body, stored.content_type, scope, key),
            )

    def abandon(self, scope: str, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM idempotency WHERE scope = ? AND key = ?", (scope, key))


__all__ = [
    "IdempotencyConflictError",
    "IdempotencyMismatchError",
    "IdempotencyStore",
    "Stored",
]
