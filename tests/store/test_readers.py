"""Readers beside a writer: every reader sees a consistent prefix of the deterministic stream.

A reader's counts are a snapshot taken at open or at ``refresh()``; every record below them
reads back exactly as written (checked against a reference tree over the same stream), whatever
the writer does meanwhile: appending, checksumming a block it is in the middle of, sealing
segments the reader has open, flushing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.store import LocalStore

from .conftest import DIM, K, MeanGister, stream

TOTAL = 6000


def reference_levels(tokens: int) -> list[npt.NDArray[np.generic]]:
    tree = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    tree.append(stream(0, tokens))
    return [tree.backend.read(lv, 0, tree.count(lv)) for lv in range(tree.num_levels + 1)]


REFERENCE = reference_levels(TOTAL)


def create(path: Path) -> None:
    # small segments and blocks: many seals and many partly written blocks while readers read
    LocalStore.create(path, dim=DIM, K=K, segment_records=96, block_bytes=48).close()


def write(path: Path, seed: int, pause: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    tree = MegaContextTree(LocalStore.open(path), MeanGister(), K=K)
    pos = 0
    while pos < TOTAL:
        n = min(TOTAL - pos, int(rng.integers(1, 50)))
        tree.append(stream(pos, pos + n))
        pos += n
        if rng.random() < 0.2:
            tree.flush()
        if pause:
            time.sleep(pause * rng.random())
    tree.close()


def check_reader(path: Path, seed: int, done: threading.Event | None, deadline: float) -> int:
    """Open, read random ranges, refresh, reopen, until the writer is done; return reads."""
    rng = np.random.default_rng(seed)
    store = LocalStore.open(path, readonly=True)
    seen = [0] * 8
    reads = 0
    views = []
    try:
        while not (done.is_set() if done is not None else False) and time.monotonic() < deadline:
            for level in range(store.num_levels):
                n = store.count(level)
                assert n >= seen[level], (
                    f"a snapshot went backwards: level {level} {seen[level]} -> {n}"
                )
                assert n <= len(REFERENCE[level]) if level < len(REFERENCE) else n == 0
                seen[level] = n
                if n == 0:
                    continue
                lo = int(rng.integers(0, n))
                hi = int(rng.integers(lo + 1, min(n, lo + 200) + 1))
                got = store.read(level, lo, hi)
                assert np.array_equal(got, REFERENCE[level][lo:hi]), (level, lo, hi)
                if rng.random() < 0.05:
                    views.append((got, level, lo, hi))
                reads += 1
            action = rng.random()
            if action < 0.3:
                store.refresh()
            elif action < 0.35:
                store.close()
                store = LocalStore.open(path, readonly=True)
                seen = [0] * 8
            elif action < 0.37:
                errors = [p for p in store.verify() if p.severity == "error"]
                assert errors == [], errors
        for got, level, lo, hi in views:  # arrays read earlier stay valid and unchanged
            assert np.array_equal(got, REFERENCE[level][lo:hi])
    finally:
        store.close()
    return reads


def test_readers_in_threads_beside_a_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "t"
    create(path)
    done = threading.Event()
    failures: list[BaseException] = []
    counts: list[int] = []

    def reader(seed: int) -> None:
        try:
            counts.append(check_reader(path, seed, done, time.monotonic() + 120))
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        write(path, seed=7, pause=0.0005)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    assert sum(counts) > 100
    with LocalStore.open(path, readonly=True) as store:
        for level, expected in enumerate(REFERENCE):
            assert np.array_equal(store.read(level, 0, len(expected)), expected)
        assert store.verify() == []


def test_readers_beside_a_writer_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "t"
    create(path)
    pid = os.fork()
    if pid == 0:  # the writer process
        code = 1
        try:
            write(path, seed=11, pause=0.001)
            code = 0
        finally:
            os._exit(code)
    reads = 0
    try:
        deadline = time.monotonic() + 120
        seed, (done, status) = 100, os.waitpid(pid, os.WNOHANG)
        while done == 0 and time.monotonic() < deadline:
            reads += check_reader(path, seed, None, time.monotonic() + 0.3)
            seed += 1
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    assert os.waitstatus_to_exitcode(status) == 0, "the writer failed"
    assert reads > 50
    with LocalStore.open(path, readonly=True) as store:
        assert store.count(0) == TOTAL and store.verify() == []
        for level, expected in enumerate(REFERENCE):
            assert np.array_equal(store.read(level, 0, len(expected)), expected)


def test_a_segment_sealed_after_a_reader_opened_is_still_readable(tmp_path: Path) -> None:
    path = tmp_path / "t"
    writer = LocalStore.create(path, dim=DIM, K=K, segment_records=16, block_bytes=16)
    writer.append(0, stream(0, 10))
    reader = LocalStore.open(path, readonly=True)
    assert reader.count(0) == 10  # segment 0 is open in this snapshot
    writer.append(0, stream(10, 60))  # seals segments 0, 1 and 2 (in memory, not flushed)
    writer.flush()
    assert reader.count(0) == 10
    assert np.array_equal(reader.read(0, 0, 10), stream(0, 10))
    reader.refresh()
    assert reader.count(0) == 60
    assert np.array_equal(reader.read(0, 0, 60), stream(0, 60))
    writer.append(0, stream(60, 62))  # not flushed, but checksummed: a refresh sees it
    reader.refresh()
    assert reader.count(0) == 62 and np.array_equal(reader.read(0, 55, 62), stream(55, 62))
    # past a seal the manifest does not name yet, a reader sees up to the full segment...
    writer.append(0, stream(62, 70))
    reader.refresh()
    assert reader.count(0) == 64 and np.array_equal(reader.read(0, 55, 64), stream(55, 64))
    writer.flush()  # ... and the rest once the writer commits the seal
    reader.refresh()
    assert reader.count(0) == 70 and np.array_equal(reader.read(0, 55, 70), stream(55, 70))
    writer.close()
    assert np.array_equal(reader.read(0, 0, 70), stream(0, 70))
    reader.close()


def test_a_reader_never_sees_records_whose_checksum_is_not_written(tmp_path: Path) -> None:
    """The writer's step between writing records and their checksum, frozen: a reader opening
    then takes only the checksummed records into its snapshot, and reads them fine."""
    from megacontext.store.checksums import SumFile

    path = tmp_path / "t"
    writer = LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16)
    writer.append(0, stream(0, 9))
    opened: list[LocalStore] = []
    real = SumFile.record

    def record_after_a_reader_opens(self: SumFile, start: int, data: memoryview) -> None:
        opened.append(LocalStore.open(path, readonly=True))  # records written, checksum not
        real(self, start, data)

    SumFile.record = record_after_a_reader_opens  # type: ignore[method-assign]
    try:
        writer.append(0, stream(9, 14))
    finally:
        SumFile.record = real  # type: ignore[method-assign]
    (reader,) = opened
    assert reader.count(0) == 9
    assert np.array_equal(reader.read(0, 0, 9), stream(0, 9))  # block [8, 12) half written
    reader.refresh()
    assert reader.count(0) == 14 and np.array_equal(reader.read(0, 0, 14), stream(0, 14))
    reader.close()
    writer.close()
