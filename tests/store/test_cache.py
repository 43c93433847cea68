"""Page cache, asyncio batched reads, prefetch hints, and readers concurrent with an appender."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.errors import InvalidInputError
from megacontext.store import LocalStore
from megacontext.store.cache import AsyncTreeReader, PageCache

from .conftest import DIM, K, MeanGister, stream


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    tree = MegaContextTree(
        LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=50), MeanGister(), K=K
    )
    tree.append(stream(0, 1000))
    return tree.backend  # type: ignore[return-value]


def test_cache_reads_equal_backend_reads_and_count(store: LocalStore) -> None:
    cache = PageCache(store, page_records=16, capacity_pages=8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        level = int(rng.integers(0, 3))
        n = store.count(level)
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo, min(n, lo + 40) + 1))
        got = cache.read(level, lo, hi)
        assert np.array_equal(got, store.read(level, lo, hi)) and not got.flags.writeable
        assert len(cache) <= 8  # bounded
    assert cache.stats.hits > 0 and cache.stats.misses > 0 and cache.stats.evictions > 0
    before = cache.stats.misses
    cache.read(0, 0, 16)
    cache.read(0, 0, 16)
    assert cache.stats.misses == before + 1 or cache.stats.misses == before


def test_tail_page_is_never_cached(tmp_path: Path) -> None:
    backend = MemoryBackend(DIM)
    backend.append(0, stream(0, 10))
    cache = PageCache(backend, page_records=16)
    assert np.array_equal(cache.read(0, 0, 10), stream(0, 10))
    backend.append(0, stream(10, 20))
    assert np.array_equal(cache.read(0, 0, 20), stream(0, 20))  # not a stale partial page
    assert len(cache) == 1


def test_async_batches_and_prefetch(store: LocalStore) -> None:
    cache = PageCache(store, page_records=K, capacity_pages=64)
    reader = AsyncTreeReader(store, cache, K=K)

    async def main() -> None:
        nodes = [(2, 3), (1, 7), (1, 8), (1, 9), (0, 5), (2, 4)]
        got = await reader.fetch_nodes(nodes)
        for (level, index), record in zip(nodes, got, strict=True):
            assert np.array_equal(record, store.read(level, index, index + 1)[0])
        kids = await reader.fetch_children([(1, 20), (2, 3)])
        assert np.array_equal(kids[0], store.read(0, 80, 84))
        assert np.array_equal(kids[1], store.read(1, 12, 16))
        misses = cache.stats.misses
        for future in reader.hint([(1, 100), (1, 101), (0, 3)]):  # level 0 has no children: ignored
            future.result()
        assert cache.stats.prefetched == 2
        await reader.fetch_children([(1, 100), (1, 101)])
        assert cache.stats.misses == misses  # the hinted children were already there
        with pytest.raises(InvalidInputError):
            await reader.fetch_children([(0, 1)])

    asyncio.run(main())
    reader.close()


def test_readers_concurrent_with_an_appender_never_see_an_incomplete_record(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=37)
    tree = MegaContextTree(store, MeanGister(), K=K)
    reference = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    total = 2500
    reference.append(stream(0, total))
    stop = threading.Event()
    failures: list[str] = []
    checks = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set() or checks[0] < 50:
            level = int(rng.integers(0, 3))
            n = store.count(level)
            if n == 0:
                continue
            lo = int(rng.integers(max(0, n - 80), n))
            got = store.read(level, lo, n)
            want = reference.backend.read(level, lo, n)
            if not np.array_equal(got, want):
                failures.append(f"level {level} [{lo}, {n})")
            checks[0] += 1
            time.sleep(0.0002)  # let the appender run

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    rng = np.random.default_rng(1)
    pos = 0
    while pos < total:
        n = min(total - pos, int(rng.integers(1, 50)))
        tree.append(stream(pos, pos + n))
        pos += n
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert checks[0] >= 50
    tree.close()


@given(chunks=st.lists(st.integers(1, 90), min_size=1, max_size=12), seed=st.integers(0, 10**6))
def test_a_tree_over_a_cached_backend_equals_one_over_the_plain_backend(
    chunks: list[int], seed: int
) -> None:
    from megacontext.store.cache import CachedBackend

    plain = MegaContextTree(MemoryBackend(dim=DIM), MeanGister(), K=K)
    inner = MemoryBackend(dim=DIM)
    cached_backend = CachedBackend(inner, PageCache(inner, page_records=8, capacity_pages=3))
    cached = MegaContextTree(cached_backend, MeanGister(), K=K)
    rng = np.random.default_rng(seed)
    position = 0
    for n in chunks:  # grow both trees, reading through the cache between appends
        for tree in (plain, cached):
            tree.append(stream(position, position + n))
        position += n
        for level in range(plain.num_levels + 1):
            count = plain.backend.count(level)
            assert cached.backend.count(level) == count
            lo = int(rng.integers(0, count + 1))
            hi = int(rng.integers(lo, count + 1))
            assert np.array_equal(
                cached.backend.read(level, lo, hi), plain.backend.read(level, lo, hi)
            )
    assert len(cached_backend.cache) <= 3
    with pytest.raises(InvalidInputError, match="same backend"):
        CachedBackend(MemoryBackend(dim=DIM), PageCache(MemoryBackend(dim=DIM)))
