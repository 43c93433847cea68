"""Object-store tiers: sealed segments on ``s3://`` (moto's server mode on loopback stands in
for S3) beside ``file://`` roots, read-repair across them, durability of replica writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

from megacontext.cli.store import app
from megacontext.core.tree import MegaContextTree
from megacontext.store import LocalStore, ReplicaError, Replication
from megacontext.store.replicas import ReplicaSet

from .conftest import (
    DIM,
    K,
    MeanGister,
    S3Bucket,
    endpoint_of,
    start_moto,
    stream,
    use_s3_endpoint,
)

TOKENS = 400  # with 16 records per segment: 25 sealed token segments, 32 sealed in all
runner = CliRunner()


def _tree(path: Path, replication: Replication | None, tokens: int = TOKENS) -> LocalStore:
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=16, replication=replication)
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(0, tokens))
    tree.flush()
    return store


def _sealed(store: LocalStore, level: int | None = None) -> list[str]:
    return [
        e.name
        for lv in store.manifest.levels
        for e in lv.segments
        if level is None or lv.level == level
    ]


def _copy(root: str, store: LocalStore, name: str) -> tuple[Any, str]:
    """The filesystem and path of the copy of ``name`` on ``root``."""
    fs, path = fsspec.core.url_to_fs(f"{root}/{store.manifest.tree_id}/{name}")
    return fs, path


def _roots(tmp_path: Path, s3: S3Bucket) -> tuple[str, str]:
    return f"file://{tmp_path}/replicas", s3.root()


def test_sealed_segments_land_on_file_and_s3_byte_identical(tmp_path: Path, s3: S3Bucket) -> None:
    file_root, s3_root = _roots(tmp_path, s3)
    store = _tree(tmp_path / "t", Replication([file_root, s3_root], 2, write_quorum=2))
    names = _sealed(store)
    assert len(names) == 32
    tree_id = store.manifest.tree_id
    for lv in store.manifest.levels:
        for entry in lv.segments:
            assert sorted(entry.replicas) == sorted([file_root, s3_root])
    for name in names:
        local = (tmp_path / "t" / name).read_bytes()
        assert (tmp_path / "replicas" / tree_id / name).read_bytes() == local
        assert s3.fs.cat_file(f"{s3.bucket}/replicas/{tree_id}/{name}") == local
    s3.fs.invalidate_cache()
    keys = sorted(s3.fs.find(s3.bucket))
    assert keys == sorted(f"{s3.bucket}/replicas/{tree_id}/{n}" for n in names)  # nothing else
    assert store.verify() == []
    store.close()


@pytest.mark.parametrize(
    ("damaged", "how"),
    [("s3", "corrupt"), ("s3", "delete"), ("file", "corrupt"), ("local", "corrupt")],
)
def test_read_repair_across_file_and_s3(
    tmp_path: Path, s3: S3Bucket, damaged: str, how: str
) -> None:
    """A read whose local copy is bad passes over the damaged replica (placed first), reads
    the other one, and rewrites both the replica and the local copy."""
    file_root, s3_root = _roots(tmp_path, s3)
    store = _tree(tmp_path / "t", Replication([file_root, s3_root], 2, write_quorum=2))
    first = s3_root if damaged in ("s3", "local") else file_root
    assert store.replicas is not None
    name = next(n for n in _sealed(store, 0) if store.replicas.placement(n)[0] == first)
    local = tmp_path / "t" / name
    good = local.read_bytes()
    store.close()

    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    if damaged == "local":  # the replicas are fine: only the local copy is corrupt
        os.chmod(local, 0o644)
        local.write_bytes(bytes(bad))
    else:  # the local copy is lost, and the replica placed first is damaged
        local.unlink()
        fs, path = _copy(first, store, name)
        if how == "corrupt":
            fs.pipe_file(path, bytes(bad))
        else:
            fs.rm_file(path)

    store = LocalStore.open(tmp_path / "t")
    seq = int(name.split("/")[1].split(".")[0])
    lo, hi = seq * 16, (seq + 1) * 16
    assert np.array_equal(store.read(0, lo, hi), stream(lo, hi))
    assert store.stats.replica_reads == 1
    assert store.stats.corrupt_copies_found == 1
    assert store.stats.read_repairs == (1 if damaged == "local" else 2)
    assert local.read_bytes() == good
    for root in (file_root, s3_root):
        fs, path = _copy(root, store, name)
        assert fs.cat_file(path) == good
    assert store.verify() == []
    store.close()


def test_keep_local_false_reads_everything_back_from_s3(tmp_path: Path, s3: S3Bucket) -> None:
    store = _tree(tmp_path / "t", Replication([s3.root()], 1, write_quorum=1, keep_local=False))
    names = _sealed(store)
    store.close()
    assert names and not any((tmp_path / "t" / n).exists() for n in names)  # only on S3
    reference = _tree(tmp_path / "ref", None)  # the same tree, no replication

    reader = LocalStore.open(tmp_path / "t", readonly=True)
    assert reader.num_levels == reference.num_levels
    for level in range(reader.num_levels):
        count = reference.count(level)
        assert reader.count(level) == count
        assert np.array_equal(reader.read(level, 0, count), reference.read(level, 0, count))
    assert reader.stats.replica_reads == len(names)  # every sealed segment came from S3
    assert reader.stats.corrupt_copies_found == 0
    assert reader.verify() == []
    reader.close()
    reference.close()


def test_a_put_to_s3_is_one_version_of_the_final_key(tmp_path: Path, s3: S3Bucket) -> None:
    """No temp object, no copy + delete: with versioning on, the bucket's whole history is one
    version per segment."""
    import boto3

    client = boto3.client("s3")
    client.put_bucket_versioning(Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"})
    store = _tree(tmp_path / "t", Replication([s3.root()], 1, write_quorum=1))
    names = _sealed(store)
    store.close()
    history = client.list_object_versions(Bucket=s3.bucket)
    keys = sorted(v["Key"] for v in history.get("Versions", []))
    assert keys == sorted(f"replicas/{store.manifest.tree_id}/{n}" for n in names)
    assert not history.get("DeleteMarkers")


@pytest.mark.parametrize("form", ["url", "plain path"])
def test_a_local_replica_copy_is_fsynced_around_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = f"file://{tmp_path}/root" if form == "url" else f"{tmp_path}/root"
    replicas = ReplicaSet(Replication([root], 1, 1), "tree")
    replicas.write(replicas.roots[0], "L0/00000000.seg", b"segment bytes")

    copy = tmp_path / "root" / "tree" / "L0" / "00000000.seg"
    assert copy.read_bytes() == b"segment bytes"
    assert not list(copy.parent.glob("*.tmp"))
    # the bytes are durable before the rename, the rename after it
    assert synced.index(f"{copy}.tmp") < synced.index(str(copy.parent))
    for directory in (tmp_path, tmp_path / "root", tmp_path / "root" / "tree"):
        assert str(directory) in synced  # each directory created for the copy is durable too


def test_store_verify_cli_reports_damaged_s3_copies_and_repair_fixes_them(
    tmp_path: Path, s3: S3Bucket
) -> None:
    file_root, s3_root = _roots(tmp_path, s3)
    store = _tree(tmp_path / "t", Replication([file_root, s3_root], 2, write_quorum=2))
    names = _sealed(store)[:2]
    store.close()
    corrupt, lost = names
    fs, path = _copy(s3_root, store, corrupt)
    good = fs.cat_file(path)
    fs.pipe_file(path, good[:-1] + bytes([good[-1] ^ 1]))
    fs, path = _copy(s3_root, store, lost)
    fs.rm_file(path)

    result = runner.invoke(app, ["verify", str(tmp_path / "t"), "--json"])
    assert result.exit_code == 1, result.output
    problems = {p["path"]: p["message"] for p in json.loads(result.output)["problems"]}
    tree_id = store.manifest.tree_id
    assert problems == {
        f"{s3_root}/{tree_id}/{corrupt}": "replica corrupt",
        f"{s3_root}/{tree_id}/{lost}": "replica missing",
    }

    repaired = runner.invoke(app, ["repair", str(tmp_path / "t")])
    assert repaired.exit_code == 0, repaired.output
    assert runner.invoke(app, ["verify", str(tmp_path / "t")]).exit_code == 0
    for name in names:
        fs, path = _copy(s3_root, store, name)
        assert fs.cat_file(path) == (tmp_path / "t" / name).read_bytes()


def test_write_quorum_fails_typed_while_s3_is_down_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_moto()  # its own server: this test stops it
    endpoint = endpoint_of(server)
    use_s3_endpoint(monkeypatch, endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail at once against a closed port, no backoff
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("mc-quorum")
    file_root, s3_root = f"file://{tmp_path}/replicas", "s3://mc-quorum/replicas"
    store = LocalStore.create(
        tmp_path / "t",
        dim=DIM,
        K=K,
        segment_records=16,
        replication=Replication([file_root, s3_root], 2, write_quorum=2),
    )
    store.append(0, stream(0, 320))  # 20 sealed segments, on both roots
    store.flush()
    assert store.replicas is not None
    name = next(n for n in _sealed(store) if store.replicas.placement(n)[0] == s3_root)
    (tmp_path / "t" / name).unlink()  # a lost local copy, to be served while S3 is down
    server.stop()
    try:
        with pytest.raises(ReplicaError) as raised:
            store.append(0, stream(320, 336))  # fills segment 20: sealing it needs S3
        message = str(raised.value)
        assert "write quorum is 2" in message and s3_root in message
        assert "AWS_ENDPOINT_URL_S3" in message  # says what to check
        assert store.count(0) == 336
        # nothing already stored is lost, and the lost local copy comes from the file root
        assert np.array_equal(store.read(0, 0, 336), stream(0, 336))
        assert store.stats.replica_reads == 1 and store.stats.corrupt_copies_found == 0
        assert store.stats.read_repairs == 1  # the local copy; S3's copy is fine, just away
        entry = store.manifest.levels[0].segments[0]
        alone = ReplicaSet(Replication([s3_root], 1, 1), store.manifest.tree_id)
        with pytest.raises(ReplicaError, match="unreadable"):  # not "corrupt": S3 is away
            alone.fetch(entry.name, entry.sha256, (tmp_path / "t" / entry.name).stat().st_size)
        info = runner.invoke(app, ["info", str(tmp_path / "t"), "--json"])
        health = json.loads(info.output)["replica_health"]
        assert health == {"ok": 20, "missing": 0, "corrupt": 0, "unreadable": 20}
    finally:
        server = type(server)(ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]))
        server.start()
    try:
        store.append(0, stream(336, 352))  # S3 is back: segment 20 is sealed now, then 21
        store.flush()
        assert len(store.manifest.levels[0].segments) == 22
        assert all(len(e.replicas) == 2 for e in store.manifest.levels[0].segments)
        assert np.array_equal(store.read(0, 0, 352), stream(0, 352))
        assert store.verify() == []
        store.close()
    finally:
        server.stop()


def test_missing_s3_credentials_name_the_variables_to_set(
    tmp_path: Path, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    file_root, s3_root = _roots(tmp_path, s3)
    store = LocalStore.create(
        tmp_path / "t",
        dim=DIM,
        K=K,
        segment_records=16,
        replication=Replication([file_root, s3_root], 2, write_quorum=2),
    )
    with pytest.raises(ReplicaError) as raised:
        store.append(0, stream(0, 16))
    message = str(raised.value)
    assert s3_root in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert np.array_equal(store.read(0, 0, 16), stream(0, 16))  # stored locally all the same
    store.close()


def test_a_read_repair_the_root_cannot_take_does_not_fail_the_read(
    tmp_path: Path, s3: S3Bucket
) -> None:
    file_root, s3_root = _roots(tmp_path, s3)
    store = _tree(tmp_path / "t", Replication([file_root, s3_root], 2, write_quorum=2))
    assert store.replicas is not None
    name = next(n for n in _sealed(store, 0) if store.replicas.placement(n)[0] == file_root)
    store.close()
    (tmp_path / "t" / name).unlink()
    level_dir = tmp_path / "replicas" / store.manifest.tree_id / "L0"
    for copy in level_dir.iterdir():
        copy.unlink()
    level_dir.rmdir()
    level_dir.write_text("a file where the level's directory should be")  # no copy, no writes

    store = LocalStore.open(tmp_path / "t")
    seq = int(name.split("/")[1].split(".")[0])
    assert np.array_equal(store.read(0, seq * 16, seq * 16 + 16), stream(seq * 16, seq * 16 + 16))
    assert store.stats.corrupt_copies_found == 1  # the file root's copy is missing
    assert store.stats.read_repairs == 1  # the local copy; the file root could not take one
    problems = {p.path for p in store.verify() if p.severity == "error"}
    assert f"{file_root}/{store.manifest.tree_id}/{name}" in problems
    store.close()
