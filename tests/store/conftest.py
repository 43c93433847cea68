"""Shared helpers of the storage tests: a deterministic gister, a reference token stream, ways
to end a writer the way a crash or a power loss would, and an S3-compatible server on loopback
(moto's server mode) for the object-store tiers."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from megacontext.store import LocalStore
from megacontext.store.checksums import SLOT, SLOTS, read_marker
from megacontext.store.segment import HEADER_BYTES

DIM = 4
K = 4


class MeanGister:
    """Deterministic, cheap gister: level 1 = (mean, min, max, first) of ids; above = mean."""

    dim = DIM

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        x = inputs.astype(np.float32)
        if level == 1:
            return np.stack([x.mean(1), x.min(1), x.max(1), x[:, 0]], axis=1)
        return x.mean(axis=1)


def stream(start: int, stop: int) -> npt.NDArray[np.uint32]:
    """Token ids of positions [start, stop) of an endless reference stream."""
    positions = np.arange(start, stop, dtype=np.uint64)
    return ((positions * np.uint64(2654435761)) % np.uint64(50_000)).astype(np.uint32)


@pytest.fixture
def gister() -> MeanGister:
    return MeanGister()


def crash(store: LocalStore) -> None:
    """End a writer as a killed process would: nothing more is flushed or committed (what was
    written stays in the OS page cache, so in the files), the lock goes with the process."""
    store._close_files()
    store._release_lock()
    store._state.closed = True


def lose_unflushed(path: Path, rng: np.random.Generator) -> None:
    """After :func:`crash`, do what a power loss may do to each level's open segment: cut the
    segment file anywhere past its last flush, and lose checksum slots of blocks written after
    it (the slots of the block holding the flush point are left: one of them is protected)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for level in manifest["levels"]:  # sealed segments were fsynced before the commit
        sealed = len(level["segments"])
        sums_path = path / f"L{level['level']}" / f"{sealed:08d}.sum"
        segment = sums_path.with_suffix(".seg")
        if not segment.exists() or not sums_path.exists():
            continue
        fd = os.open(sums_path, os.O_RDWR)
        try:
            durable, _ = read_marker(fd)
            head = os.pread(fd, 64, 0)
            record_bytes = int.from_bytes(head[8:12], "little")
            block = int.from_bytes(head[12:16], "little")
            size = segment.stat().st_size
            floor = HEADER_BYTES + durable * record_bytes
            if size > floor:
                os.truncate(segment, int(rng.integers(floor, size + 1)))
            blocks = (os.fstat(fd).st_size - SLOTS) // (2 * SLOT)
            for b in range(durable // block + 1, blocks):
                if rng.random() < 0.5:
                    os.pwrite(fd, bytes(2 * SLOT), SLOTS + 2 * SLOT * b)
        finally:
            os.close(fd)


# -- an S3-compatible server on loopback ----------------------------------------------------------
# No real object store is reachable from CI: moto's server mode (a dev dependency from PyPI)
# stands in for S3. It speaks the S3 REST protocol over HTTP, so s3fs/botocore run unchanged.


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test S3 server; ``fs`` is an s3fs filesystem of the test's own."""

    endpoint: str
    bucket: str
    fs: Any

    def root(self, prefix: str = "replicas") -> str:
        return f"s3://{self.bucket}/{prefix}"


def start_moto() -> Any:
    """Start moto's S3 server on a free loopback port (the caller stops it)."""
    moto_server = _moto_server()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


def endpoint_of(server: Any) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def use_s3_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point s3fs at ``endpoint`` the way docs/storage.md tells users to: environment only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    # a developer's own ~/.aws must not leak in, nor a metadata-service lookup run
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    forget_s3_clients()


def forget_s3_clients() -> None:
    """s3fs caches one filesystem (with its botocore client and endpoint) per set of arguments:
    drop them, so the next one reads the environment again."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _moto_server() -> Any:
    try:
        import moto.server
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("moto[server] is not installed; CI must run the object-store tests")
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    return moto.server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One S3 server for the session (each test gets its own bucket)."""
    server = start_moto()
    try:
        yield endpoint_of(server)
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh, empty bucket, with the environment pointing s3fs at the test server."""
    import fsspec

    use_s3_endpoint(monkeypatch, moto_endpoint)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"mc-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    try:
        yield S3Bucket(moto_endpoint, bucket, fs)
    finally:
        forget_s3_clients()
