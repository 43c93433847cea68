"""The model lane: one thread per serving process on which every session is opened and used.

Why one thread: torch on CPU splits each operation over an OpenMP team that belongs to the
calling thread. When requests run torch from several threads (the HTTP server's thread pool,
gRPC's), every such thread grows a team of its own; GNU OpenMP then manages more threads than
there are cores, stops spinning between parallel regions, and each of the thousands of small
operations in an ask waits for a wake-up. The same ask measured about 40 % slower in the
server than in a plain process (BENCHMARKS, 2026-12-05). On one thread there is one team, and
each operation has all the cores instead of requests competing for them.

What it costs: model work of concurrent requests runs one after another within a process (on a
CPU they would share the cores anyway). Several processes serve in parallel (``serve`` with a
PostgreSQL metadata URL, or several ``serve`` processes over one tree directory).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelLane:
    """Runs functions, one at a time and in order, on one long-lived thread."""

    def __init__(self, name: str = "megacontext-model"):
        self._ident: int | None = None
        self._executor = ThreadPoolExecutor(1, name, initializer=self._started)

    def _started(self) -> None:
        self._ident = threading.get_ident()

    def on_lane(self) -> bool:
        return threading.get_ident() == self._ident

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the lane (it must not wait for the lane itself)."""
        return self._executor.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the lane, from a thread that may block (gRPC's, a test's)."""
        if self.on_lane():  # already there: queueing would wait for ourselves forever
            return fn(*args)
        return self.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the lane, awaited from the event loop without blocking it."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._executor.shutdown(wait=True)


__all__ = ["ModelLane"]
