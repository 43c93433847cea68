"""Crash safety: a writer killed with SIGKILL at seeded random moments loses nothing it flushed."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from megacontext.cli.store import app
from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.store import LocalStore

from .conftest import DIM, K, MeanGister, crash, lose_unflushed, stream

KILLS = 50


def _writer(path: Path, seed: int, ack_fd: int) -> None:
    """Child process: append seeded batches forever, acknowledging each flushed length."""
    try:
        rng = np.random.default_rng(seed)
        tree = MegaContextTree(LocalStore.open(path), MeanGister(), K=K)
        pos = tree.num_tokens
        while True:
            n = int(rng.integers(1, 60))
            tree.append(stream(pos, pos + n))
            pos += n
            if rng.random() < 0.5:
                tree.flush()
                os.write(ack_fd, f"{pos}\n".encode())
    finally:
        os._exit(1)  # only reached on an error: the parent expects SIGKILL


def _read_acks(fd: int, data: bytes) -> int:
    while chunk := os.read(fd, 65536):
        data += chunk
    lines = data.split()
    return int(lines[-1]) if lines else 0


def test_sigkill_at_random_moments_keeps_a_valid_prefix(tmp_path: Path) -> None:
    path = tmp_path / "t"
    LocalStore.create(path, dim=DIM, K=K, segment_records=32).close()
    rng = np.random.default_rng(20261125)
    acked = waited = 0
    gister = MeanGister()
    for attempt in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _writer(path, seed=attempt, ack_fd=write_fd)
        os.close(write_fd)
        first = b""
        if attempt % 2:  # half the kills come after the first flush (progress), half blind
            first = os.read(read_fd, 65536)
            waited += 1
        time.sleep(float(rng.uniform(0.0, 0.015)))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "writer failed"
        acked = max(acked, _read_acks(read_fd, first))
        os.close(read_fd)

        store = LocalStore.open(path)
        n = store.count(0)
        assert n >= acked, f"kill {attempt}: {n} tokens survived but {acked} were flushed"
        assert np.array_equal(store.read(0, 0, n), stream(0, n)), f"kill {attempt}: bad prefix"
        tree = MegaContextTree(store, gister, K=K)  # repairs missing gists
        reference = MegaContextTree(MemoryBackend(DIM), gister, K=K)
        reference.append(stream(0, n))
        for level in range(1, reference.num_levels + 1):
            count = reference.count(level)
            assert tree.count(level) == count
            assert np.array_equal(
                store.read(level, 0, count), reference.backend.read(level, 0, count)
            )
        assert store.verify() == [], f"kill {attempt}: verify failed"
        tree.close()
    assert acked >= waited  # every waited-for writer flushed past the previous one
    result = CliRunner().invoke(app, ["verify", str(path), "--strict"])
    assert result.exit_code == 0, result.output


@settings(max_examples=30, deadline=None)
@given(
    flushed=st.integers(0, 300),
    more=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_power_loss_reopens_to_a_valid_prefix(flushed: int, more: int, seed: int) -> None:
    """Flush, append more, crash, then lose any part of what was not flushed (segment bytes and
    checksum slots alike), as a power loss may: reopening keeps every flushed token and a valid
    prefix of the rest, with gists to match, and nothing to report."""
    gister = MeanGister()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t"
        tree = MegaContextTree(
            LocalStore.create(path, dim=DIM, K=K, segment_records=24, block_bytes=16),
            gister,
            K=K,
        )
        tree.append(stream(0, flushed))
        tree.flush()
        tree.append(stream(flushed, flushed + more))
        crash(tree.backend)  # type: ignore[arg-type]
        lose_unflushed(path, np.random.default_rng(seed))
        store = LocalStore.open(path)
        n = store.count(0)
        assert flushed <= n <= flushed + more
        assert np.array_equal(store.read(0, 0, n), stream(0, n))
        assert store.recovered == []  # a crash's tail is cut silently; nothing was damaged
        tree = MegaContextTree(store, gister, K=K)
        reference = MegaContextTree(MemoryBackend(DIM), gister, K=K)
        reference.append(stream(0, n))
        for lv in range(1, reference.num_levels + 1):
            count = reference.count(lv)
            assert tree.count(lv) == count
            assert np.array_equal(store.read(lv, 0, count), reference.backend.read(lv, 0, count))
        assert store.verify() == []
        tree.close()
