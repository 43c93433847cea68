"""Usage metering: every billable thing the service does becomes an event sent to a sink.

Events (JSON objects): ``{"event": "ingest" | "ask" | "generate", "tenant", "key_id", "tree",
"time", ...}`` with ``tokens`` (ingest: tokens appended; generate: tokens generated),
``prompt_tokens`` and ``completion_tokens`` (ask: positions the base read, tokens decoded) and
``gists`` (gists computed by an ingest or a generation). Sinks: :class:`JsonlSink` (one line per
event, appended and flushed) and :class:`WebhookSink` (POSTs each event as JSON from a
background thread, retrying with backoff; events it could not deliver are counted in
``failures`` and appended to a dead-letter JSONL file when one is given). Storage byte-hours are
not metered yet.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol


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
                if self.dead_letter is not None:
                    self.dead_letter.emit(event)


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


__all__ = ["JsonlSink", "UsageSink", "WebhookSink", "open_sink"]
