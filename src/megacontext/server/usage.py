"""Usage metering: every billable thing the service does becomes an event sent to a sink.

Events (JSON objects): ``{"event": "ingest" | "ask" | "generate", "tenant", "key_id", "tree",
"time", ...}`` with ``tokens`` (ingest: tokens appended; generate: tokens generated),
``prompt_tokens`` and ``completion_tokens`` (ask: positions the base read, tokens decoded) and
``gists`` (gists computed by an ingest or a generation). Sinks: :class:`JsonlSink` (one line per
event, appended and flushed) and :class:`WebhookSink` (POSTs each event as JSON from a
background thread, retrying with backoff; events it could not deliver are counted in
``failures`` and appended to a dead-letter JSONL file when one is given).

Storage is metered in byte-hours by :class:`StorageMeter`: ``{"event": "storage", "start",
"end", "bytes", "hours", "byte_hours", ...}`` per tree and metered interval, ``byte_hours``
being the mean of the tree's sizes at the interval's two ends times its length. A ledger in
SQLite holds, per tree, the time up to which it is metered; each interval is claimed in one
transaction, so several serving processes over one root never bill an hour twice.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from megacontext.server.metrics import USAGE_FAILURES


class UsageSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends each event as one JSON line to ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    def close(self) -> None:
        pass


class WebhookSink:
    """POSTs each event to ``url`` from a background thread, with retries."""

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        dead_letter: str | Path | None = None,
    ):
        import httpx

        self.url, self.retries, self.backoff_s = url, retries, backoff_s
        self.dead_letter = JsonlSink(dead_letter) if dead_letter is not None else None
        self.failures = 0
        self._http = httpx.Client(timeout=timeout_s)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="usage-webhook")
        self._thread.start()

    def emit(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def close(self) -> None:
        """Deliver what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._http.close()

    def _run(self) -> None:
        import httpx

        while (event := self._queue.get()) is not None:
            for attempt in range(self.retries + 1):
                try:
                    response = self._http.post(self.url, json=event)
                    if response.status_code < 500 and response.status_code != 429:
                        break
                except httpx.HTTPError:
                    pass
                if attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
            else:
                self.failures += 1
                USAGE_FAILURES.inc()
                if self.dead_letter is not None:
                    self.dead_letter.emit(event)


def tree_bytes(path: Path) -> int:
    """Bytes the files under ``path`` hold (links not followed; a file gone meanwhile: 0).

    SQLite's ``-shm`` files are left out: a shared-memory index that appears while readers
    have a database open and that SQLite rebuilds at will, scratch rather than stored data
    (counting it would bill a tree more while it is being asked)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith("-shm"):
                continue
            with suppress(FileNotFoundError):  # removed while we walked (a compaction)
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class StorageMeter:
    """Meters every tree's storage in byte-hours into ``sink``.

    ``trees``: yields ``(tenant, tree, path)`` for every tree there is. ``ledger``: the SQLite
    file recording, per tree, the time and size it is metered up to. A tree enters the ledger
    when it is created (:meth:`started`) or, for trees that existed before metering began,
    when a tick first sees it; it leaves it when deleted (:meth:`ended`, which bills the last
    part-interval). :meth:`start` ticks every ``interval_s`` on a background thread;
    :meth:`close` stops it and bills everything up to that moment.
    """

    def __init__(
        self,
        ledger: str | Path,
        trees: Callable[[], Iterable[tuple[str, str, Path]]],
        sink: UsageSink,
        clock: Callable[[], float] = time.time,
    ):
        self.ledger, self.trees, self.sink, self.clock = Path(ledger), trees, sink, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._transaction(
            lambda db: db.execute(
                "CREATE TABLE IF NOT EXISTS storage (tenant TEXT, tree TEXT, since REAL, "
                "bytes INTEGER, PRIMARY KEY (tenant, tree))"
            )
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.ledger, timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
        return db

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._connect()
        try:
            out = work(db)
            db.execute("COMMIT")
            return out
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def started(self, tenant: str, tree: str, path: Path) -> None:
        """A tree was created: meter it from now."""
        size = tree_bytes(path)
        self._transaction(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO storage VALUES (?, ?, ?, ?)",
                (tenant, tree, self.clock(), size),
            )
        )

    def ended(self, tenant: str, tree: str, path: Path) -> None:
        """The tree at ``path`` is about to be deleted: bill its last part-interval."""

        def bill(db: sqlite3.Connection) -> dict[str, Any] | None:
            event = self._bill(db, tenant, tree, tree_bytes(path), self.clock())
            db.execute("DELETE FROM storage WHERE tenant = ? AND tree = ?", (tenant, tree))
            return event

        if (event := self._transaction(bill)) is not None:
            self.sink.emit(event)

    def tick(self) -> list[dict[str, Any]]:
        """Bill every tree up to now; return (and emit) the events."""

        def bill(db: sqlite3.Connection) -> list[dict[str, Any]]:
            # Trees are listed and measured while the ledger is locked: a tree another process
            # creates or deletes meanwhile is either wholly seen or wholly unseen.
            now, events, seen = self.clock(), [], set()
            for tenant, tree, path in self.trees():
                seen.add((tenant, tree))
                event = self._bill(db, tenant, tree, tree_bytes(path), now)
                if event is not None:
                    events.append(event)
            known = db.execute("SELECT tenant, tree FROM storage").fetchall()
            for gone in {(str(a), str(b)) for a, b in known} - seen:  # removed by other means
                db.execute("DELETE FROM storage WHERE tenant = ? AND tree = ?", gone)
            return events

        events: list[dict[str, Any]] = self._transaction(bill)
        for event in events:
            self.sink.emit(event)
        return events

    @staticmethod
    def _bill(
        db: sqlite3.Connection, tenant: str, tree: str, size: int, now: float
    ) -> dict[str, Any] | None:
        row = db.execute(
            "SELECT since, bytes FROM storage WHERE tenant = ? AND tree = ?", (tenant, tree)
        ).fetchone()
        if row is not None and now <= row[0]:  # already billed this far
            return None
        db.execute("INSERT OR REPLACE INTO storage VALUES (?, ?, ?, ?)", (tenant, tree, now, size))
        if row is None:  # first seen: metered from now on
            return None
        since, before = float(row[0]), int(row[1])
        hours = (now - since) / 3600
        return {
            "event": "storage",
            "tenant": tenant,
            "key_id": None,  # storage is the tenant's, not any one key's
            "tree": tree,
            "time": now,
            "start": since,
            "end": now,
            "bytes": size,
            "hours": hours,
            "byte_hours": (before + size) / 2 * hours,
        }

    def start(self, interval_s: float) -> None:
        """Tick every ``interval_s`` seconds on a background thread until :meth:`close`."""

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.tick()

        self._thread = threading.Thread(target=run, daemon=True, name="storage-meter")
        self._thread.start()

    def close(self) -> None:
        """Stop ticking and bill everything up to now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.tick()


def open_sink(spec: str | None) -> UsageSink | None:
    """A sink from a spec: ``jsonl:PATH`` or an ``http(s)://`` webhook URL; ``None``: none."""
    from megacontext.errors import InvalidInputError

    if not spec:
        return None
    if spec.startswith("jsonl:"):
        return JsonlSink(spec[len("jsonl:") :])
    if spec.startswith(("http://", "https://")):
        return WebhookSink(spec)
    raise InvalidInputError(f"usage sink {spec!r} is not jsonl:PATH or an http(s):// webhook URL")


__all__ = ["JsonlSink", "StorageMeter", "UsageSink", "WebhookSink", "open_sink", "tree_bytes"]
