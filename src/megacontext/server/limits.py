"""Rate limits and token budgets of the service.

**Rate limits**: a token bucket per API key and route class (``read``: listing and info;
``write``: creating, ingesting, generating, removing; ``ask``: questions and completions). A
request takes one token; an empty bucket answers 429 with ``Retry-After`` (seconds until a token
is back). Every response carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (the IETF draft's fields) for its class.

**Budgets**: ``max_request_tokens`` bounds the tokens one request may add or generate (a text to
ingest, ``max_new_tokens``; 400, since retrying will not help); ``tokens_per_day`` bounds what a
tenant's requests process in a UTC day (tokens ingested, positions the base reads, tokens
generated), counted from the same usage events that are metered, so no path escapes it (429
``budget_exceeded`` with ``Retry-After`` until midnight UTC).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from megacontext.errors import InvalidInputError, MegaContextError

ROUTE_CLASSES = ("read", "write", "ask")


class RateLimitedError(MegaContextError):
    """Too many requests for this key and route class (HTTP 429)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceededError(RateLimitedError):
    """A request over the per-request token budget, or a tenant over its daily one (429)."""


@dataclass(frozen=True)
class Limits:
    """The service's limits (``None``: unlimited). Per minute per key, per route class."""

    per_minute: dict[str, int] = field(
        default_factory=lambda: {"read": 600, "write": 120, "ask": 120}
    )
    max_request_tokens: int | None = 1_000_000
    tokens_per_day: int | None = None


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per (key, route class), refilled continuously."""

    def __init__(self, per_minute: dict[str, int]):
        self.per_minute = dict(per_minute)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, route_class: str) -> dict[str, str]:
        """Take one request from the bucket; the RateLimit-* headers, or RateLimitedError."""
        limit = self.per_minute.get(route_class)
        if limit is None:
            return {}
        rate = limit / 60.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault((key_id, route_class), _Bucket(limit, now))
            bucket.tokens = min(limit, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / rate
                raise RateLimitedError(
                    f"rate limit: {limit} {route_class} requests per minute for this key; "
                    f"retry in {math.ceil(wait)} s",
                    wait,
                )
            bucket.tokens -= 1
            remaining = int(bucket.tokens)
            reset = (limit - bucket.tokens) / rate
        return {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(math.ceil(reset)),
        }


class DailyBudget:
    """Tokens processed per tenant per UTC day (SQLite beside the keys)."""

    def __init__(self, path: str | Path, per_day: int | None):
        self.path, self.per_day = Path(path), per_day
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS usage (tenant TEXT, day TEXT, tokens INTEGER, "
                "PRIMARY KEY (tenant, day))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @staticmethod
    def _day() -> str:
        return time.strftime("%Y-%m-%d", time.gmtime())

    def used(self, tenant: str) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT tokens FROM usage WHERE tenant = ? AND day = ?", (tenant, self._day())
            ).fetchone()
        return int(row[0]) if row else 0

    def check(self, tenant: str) -> None:
        """Raise :class:`BudgetExceededError` when the tenant has spent today's budget."""
        if self.per_day is None:
            return
        used = self.used(tenant)
        if used >= self.per_day:
            midnight = (time.time() // 86400 + 1) * 86400
            raise BudgetExceededError(
                f"the tenant's daily budget of {self.per_day:,} tokens is spent ({used:,} used "
                "today, UTC); it resets at midnight UTC",
                midnight - time.time(),
            )

    def add(self, tenant: str, tokens: int) -> None:
        if tokens <= 0 or self.per_day is None:  # nothing to hold: no write per request
            return
        with self._connect() as db:
            db.execute(
                "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (tenant, day) "
                "DO UPDATE SET tokens = tokens + excluded.tokens",
                (tenant, self._day(), tokens),
            )


class RequestTooLargeError(InvalidInputError):
    """One request over the per-request token budget (HTTP 400: retrying will not help)."""


def check_request_tokens(tokens: int, limit: int | None, what: str) -> None:
    """Refuse one request that would process more than ``limit`` tokens."""
    if limit is not None and tokens > limit:
        raise RequestTooLargeError(
            f"{what} is {tokens:,} tokens; one request may process at most {limit:,} "
            "(split it into several requests)"
        )


__all__ = [
    "ROUTE_CLASSES",
    "BudgetExceededError",
    "DailyBudget",
    "Limits",
    "RateLimitedError",
    "RateLimiter",
    "RequestTooLargeError",
    "check_request_tokens",
]
