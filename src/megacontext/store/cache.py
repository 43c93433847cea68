"""A bounded page cache and an asyncio read API over any tree backend.

:class:`PageCache` keeps fixed-size pages of records (``page_records`` per page, per level) in an
LRU bounded by ``capacity_pages``, counting hits and misses. Only complete pages are cached, so a
page never goes stale while the tree grows.

:class:`AsyncTreeReader` fetches nodes and children in batches on a thread pool (mmap and fsspec
reads release the event loop) and takes *prefetch hints*: the children of gists the focus
allocator is close to expanding are loaded in the background, so the expansion that follows hits
the cache.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from megacontext.core.tree import TreeBackend
from megacontext.store.errors import InvalidInputError


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    evictions: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PageCache:
    """LRU of record pages over a backend. Thread-safe.

    Args:
        backend: any :class:`~megacontext.core.tree.TreeBackend`.
        page_records: records per page (a page of level ``l`` holds records
            ``[p * page_records, (p + 1) * page_records)``).
        capacity_pages: the most pages kept; the least recently used page is evicted first.
    """

    def __init__(self, backend: TreeBackend, page_records: int = 256, capacity_pages: int = 1024):
        if page_records < 1 or capacity_pages < 1:
            raise InvalidInputError(
                "page_records and capacity_pages must be >= 1, got "
                f"{page_records}, {capacity_pages}"
            )
        self.backend = backend
        self.page_records = page_records
        self.capacity_pages = capacity_pages
        self.stats = CacheStats()
        self._pages: OrderedDict[tuple[int, int], npt.NDArray[np.generic]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pages)

    def _page(
        self, level: int, page: int, prefetch: bool = False
    ) -> npt.NDArray[np.generic] | None:
        """A complete page (cached or loaded), or ``None`` when the page is not complete yet."""
        key = (level, page)
        with self._lock:
            found = self._pages.get(key)
            if found is not None:
                self._pages.move_to_end(key)
                if not prefetch:
                    self.stats.hits += 1
                return found
        lo, hi = page * self.page_records, (page + 1) * self.page_records
        if hi > self.backend.count(level):
            return None
        data = np.array(self.backend.read(level, lo, hi))  # a private copy, bounded by the LRU
        data.flags.writeable = False
        with self._lock:
            if prefetch:
                self.stats.prefetched += 1
            else:
                self.stats.misses += 1
            self._pages[key] = data
            self._pages.move_to_end(key)
            while len(self._pages) > self.capacity_pages:
                self._pages.popitem(last=False)
                self.stats.evictions += 1
        return data

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Records ``[start, stop)`` of ``level`` through the cache (read-only)."""
        if start >= stop:
            return self.backend.read(level, start, stop)
        size = self.page_records
        parts = []
        for page in range(start // size, (stop - 1) // size + 1):
            lo, hi = max(start, page * size), min(stop, (page + 1) * size)
            data = self._page(level, page)
            if data is None:  # the growing tail: read through, never cached
                with self._lock:
                    self.stats.misses += 1
                parts.append(self.backend.read(level, lo, hi))
            else:
                parts.append(data[lo - page * size : hi - page * size])
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if out.flags.writeable:
            out.flags.writeable = False
        return out

    def forget_from(self, level: int, count: int) -> None:
        """Drop the cached pages of ``level`` that hold any record at or after ``count`` (the
        level was truncated there, and what comes next is new)."""
        first_stale = count // self.page_records
        with self._lock:
            for key in [k for k in self._pages if k[0] == level and k[1] >= first_stale]:
                del self._pages[key]

    def prefetch(self, level: int, start: int, stop: int) -> None:
        """Load the complete pages covering ``[start, stop)`` without counting hits or misses."""
        size = self.page_records
        for page in range(start // size, max(start, stop - 1) // size + 1):
            self._page(level, page, prefetch=True)


class CachedBackend:
    """A :class:`~megacontext.core.tree.TreeBackend` whose reads go through a :class:`PageCache`.

    Appends, counts, flushes and closes go to ``backend``; only complete pages are cached, so
    reads stay correct while the tree grows. A session reads its tree through one of these.
    """

    def __init__(self, backend: TreeBackend, cache: PageCache | None = None):
        self.backend = backend
        self.cache = cache if cache is not None else PageCache(backend)
        if self.cache.backend is not backend:
            raise InvalidInputError("the page cache must wrap the same backend")

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return self.backend.gist_dtype

    def count(self, level: int) -> int:
        return self.backend.count(level)

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        self.backend.append(level, records)

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        return self.cache.read(level, start, stop)

    def flush(self) -> None:
        self.backend.flush()

    def truncate(self, level: int, count: int) -> None:
        self.cache.forget_from(level, count)
        self.backend.truncate(level, count)

    def close(self) -> None:
        self.backend.close()


class AsyncTreeReader:
    """Batched asyncio reads of nodes and children, with prefetch hints.

    Example:
        >>> reader = AsyncTreeReader(store, PageCache(store), K=32)            # doctest: +SKIP
        >>> gists = await reader.fetch_nodes([(2, 0), (1, 40), (1, 41)])       # doctest: +SKIP
        >>> reader.hint([(1, 41)])   # the allocator may expand it soon        # doctest: +SKIP
        >>> tokens = await reader.fetch_children([(1, 41)])                    # doctest: +SKIP
    """

    def __init__(
        self, backend: TreeBackend, cache: PageCache | None = None, *, K: int, workers: int = 4
    ):
        self.backend = backend
        self.cache = cache if cache is not None else PageCache(backend)
        self.K = K
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-read")

    async def fetch_nodes(self, nodes: Sequence[tuple[int, int]]) -> list[npt.NDArray[np.generic]]:
        """The records of ``(level, index)`` nodes, in order; adjacent nodes share one read."""
        runs = _runs([(level, index, index + 1) for level, index in nodes])
        loop = asyncio.get_running_loop()
        blocks = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self.cache.read, lv, lo, hi)
                for lv, lo, hi, _ in runs
            )
        )
        out: list[npt.NDArray[np.generic]] = [np.empty(0)] * len(nodes)
        for (_lv, lo, _hi, members), block in zip(runs, blocks, strict=True):
            for position, index in members:
                out[position] = block[index - lo]
        return out

    async def fetch_children(
        self, nodes: Sequence[tuple[int, int]]
    ) -> list[npt.NDArray[np.generic]]:
        """For each gist node ``(level >= 1, index)``, the records of its K children."""
        for level, _ in nodes:
            if level < 1:
                raise InvalidInputError("tokens (level 0) have no children")
        loop = asyncio.get_running_loop()
        reads = [
            loop.run_in_executor(
                self._pool, self.cache.read, level - 1, index * self.K, (index + 1) * self.K
            )
            for level, index in nodes
        ]
        return list(await asyncio.gather(*reads))

    def hint(self, nodes: Sequence[tuple[int, int]]) -> list[Future[None]]:
        """Prefetch the children of gists that may be expanded soon (returns the futures)."""
        return [
            self._pool.submit(self.cache.prefetch, level - 1, index * self.K, (index + 1) * self.K)
            for level, index in nodes
            if level >= 1
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _runs(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
    """Group ``(level, start, stop)`` requests into contiguous runs per level."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1]))
    runs: list[tuple[int, int, int, list[tuple[int, int]]]] = []
    for i in order:
        level, lo, hi = spans[i]
        if runs and runs[-1][0] == level and lo <= runs[-1][2]:
            lv, start, stop, members = runs[-1]
            runs[-1] = (lv, start, max(stop, hi), members)
        else:
            runs.append((level, lo, hi, []))
        runs[-1][3].append((i, lo))
    return runs
