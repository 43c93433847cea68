"""Storage format v2: every record of an open segment is checked by a CRC32C of its block."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from crc32c import crc32c
from typer.testing import CliRunner

from megacontext.cli.store import app
from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.errors import StorageCorruptionError
from megacontext.store import LocalStore, checksums
from megacontext.store.checksums import SLOT, SLOTS, SumFile, read_marker
from megacontext.store.segment import HEADER_BYTES, SegmentHeader

from .conftest import DIM, K, MeanGister, crash, stream

runner = CliRunner()


def flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_open_token_segment_is_caught(tmp_path: Path) -> None:
    """The user's reproduction: a tree under one segment never sealed, so v1 never checked it."""
    path = tmp_path / "t"
    tree = MegaContextTree(LocalStore.create(path, dim=DIM, K=K), MeanGister(), K=K)
    tree.append(stream(0, 20000))
    tree.close()
    segment = path / "L0" / "00000000.seg"
    flip(segment, HEADER_BYTES + 4 * 1234 + 1)  # token 1234
    result = runner.invoke(app, ["verify", str(path), "--strict", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert [(p["kind"], p["path"]) for p in problems] == [("open-checksum", str(segment))]
    assert "[0, 16384)" in problems[0]["message"]  # the 64 KiB block holding token 1234
    with LocalStore.open(path, readonly=True) as store:
        assert np.array_equal(store.read(0, 16384, 20000), stream(16384, 20000))  # next block
        with pytest.raises(
            StorageCorruptionError,
            match=r"00000000\.seg: records \[0, 1235\) of level 0 fail their CRC32C checksum "
            r".*00000000\.sum.*megacontext store repair",
        ):
            store.read(0, 1230, 1235)


def test_layout_of_the_checksum_file(tmp_path: Path) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=40)
    store.append(0, stream(0, 25))  # blocks of 10 tokens: two full, one of 5
    store.flush()
    store.close()
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 2
    assert json.loads((path / "manifest.json").read_text())["levels"][0]["block_records"] == 10
    raw = (path / "L0" / "00000000.seg").read_bytes()
    assert SegmentHeader.unpack(raw[:HEADER_BYTES], Path("x"), "").version == 2
    sums = (path / "L0" / "00000000.sum").read_bytes()
    assert len(sums) == SLOTS + 2 * SLOT * 7  # ceil(64 / 10) blocks, fixed size
    magic, version, level, record_bytes, block, capacity = struct.unpack_from("<4sHHIII", sums)
    assert (magic, version, level, record_bytes, block, capacity) == (b"MCCK", 2, 0, 4, 10, 64)
    for b, (lo, hi) in enumerate([(0, 10), (10, 20), (20, 25)]):
        for s in (0, 1):
            position = SLOTS + 2 * SLOT * b + SLOT * s
            end, crc, _tag, check = struct.unpack_from("<IIII", sums, position)
            assert (end, crc) == (hi - lo, crc32c(stream(lo, hi).tobytes()))
            assert check == crc32c(sums[position : position + 12], position)
    assert sums[SLOTS + 2 * SLOT * 3 :] == bytes(2 * SLOT * 4)  # blocks not written yet
    fd = os.open(path / "L0" / "00000000.sum", os.O_RDONLY)
    assert read_marker(fd)[0] == 25  # the durable marker: records flushed
    os.close(fd)


def test_single_token_appends_cost_one_slot_write_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding appends one token at a time: each costs the CRC of its own bytes and one
    16-byte write, never a re-hash, and the checksum file never grows."""
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K, block_bytes=64)
    store.append(0, stream(0, 1))
    sums = tmp_path / "t" / "L0" / "00000000.sum"
    size = sums.stat().st_size
    writes: list[int] = []
    crc_bytes: list[int] = []
    real_pwrite, real_crc = os.pwrite, checksums.crc32c
    monkeypatch.setattr(
        os, "pwrite", lambda fd, d, o: writes.append(len(d)) or real_pwrite(fd, d, o)
    )
    monkeypatch.setattr(
        checksums, "crc32c", lambda d, *a: crc_bytes.append(len(d)) or real_crc(d, *a)
    )
    for i in range(1, 101):
        store.append(0, stream(i, i + 1))
    monkeypatch.undo()
    assert writes.count(4) == 100  # the tokens
    assert len(writes) <= 100 + 100  # and one slot write each (both slots opening a block)
    assert max(crc_bytes) <= 12  # CRCs of one token or one slot, nothing bigger
    assert sums.stat().st_size == size
    assert np.array_equal(store.read(0, 0, 101), stream(0, 101))
    store.close()


def test_records_without_a_checksum_are_cut_like_a_torn_record(tmp_path: Path) -> None:
    """A crash between writing records and writing their checksum: reopening drops them."""
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16)
    store.append(0, stream(0, 10))
    crash(store)
    with open(path / "L0" / "00000000.seg", "ab") as handle:
        handle.write(stream(10, 13).tobytes() + b"\x01")  # written, never checksummed
    with LocalStore.open(path, readonly=True) as reader:  # readers only see checksummed ones
        assert reader.count(0) == 10
        assert [p.kind for p in reader.verify()] == ["torn"]
    store = LocalStore.open(path)
    assert store.count(0) == 10 and store.recovered == [] and store.verify() == []
    assert (path / "L0" / "00000000.seg").stat().st_size == HEADER_BYTES + 40
    store.append(0, stream(10, 20))
    assert np.array_equal(store.read(0, 0, 20), stream(0, 20))
    store.close()


def test_a_checksum_without_its_records_is_cut_too(tmp_path: Path) -> None:
    """The other order (after a power loss): slots say more records than the file holds, past
    the last flush. Reopening keeps the flushed records, silently."""
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16)
    store.append(0, stream(0, 10))
    store.flush()
    store.append(0, stream(10, 30))
    crash(store)
    os.truncate(path / "L0" / "00000000.seg", HEADER_BYTES + 4 * 22 + 3)  # lost pages
    store = LocalStore.open(path)
    assert store.count(0) == 20  # 4-token blocks: [20, 24) lost its bytes, so it goes
    assert store.recovered == [] and store.verify() == []
    assert np.array_equal(store.read(0, 0, 20), stream(0, 20))
    store.close()


def test_a_crash_between_records_and_checksums_in_a_child_process(tmp_path: Path) -> None:
    path = tmp_path / "t"
    LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16).close()
    pid = os.fork()
    if pid == 0:  # child: killed right after writing records, before their checksum
        try:
            store = LocalStore.open(path)
            store.append(0, stream(0, 7))
            SumFile._write_slots = lambda *a: os._exit(0)  # type: ignore[method-assign]
            store.append(0, stream(7, 12))
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (path / "L0" / "00000000.seg").stat().st_size == HEADER_BYTES + 4 * 12
    store = LocalStore.open(path)
    assert store.count(0) == 7 and store.verify() == []
    assert np.array_equal(store.read(0, 0, 7), stream(0, 7))
    store.close()


def test_damage_in_flushed_records_is_never_cut_silently(tmp_path: Path) -> None:
    """A flipped bit in flushed tokens is not a crash: the writer opens, refuses to append or
    seal over it, and leaves the decision to repair, which reports the loss."""
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16)
    store.append(0, stream(0, 30))
    store.close()
    flip(path / "L0" / "00000000.seg", HEADER_BYTES + 4 * 13)  # token 13: block [12, 16)
    store = LocalStore.open(path)
    assert store.count(0) == 30  # nothing cut
    with pytest.raises(StorageCorruptionError, match=r"cannot append to level 0.*\[12, 16\)"):
        store.append(0, stream(30, 31))
    assert np.array_equal(store.read(0, 16, 30), stream(16, 30))
    report = store.repair()
    assert report.lost and "level 0 records [12, 30) lost: 18 token(s)" in report.lost[0]
    assert store.count(0) == 12 and store.verify() == []
    salvaged = Path(report.salvage) / "L0" / "00000000.seg"
    assert salvaged.read_bytes()[HEADER_BYTES + 4 * 16 :] == stream(16, 30).tobytes()
    store.append(0, stream(12, 40))
    assert np.array_equal(store.read(0, 0, 40), stream(0, 40))
    store.close()


def test_sealing_refuses_records_that_changed_after_they_were_written(tmp_path: Path) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=32, block_bytes=16)
    store.append(0, stream(0, 20))
    store.flush()
    flip(path / "L0" / "00000000.seg", HEADER_BYTES + 4 * 5)  # behind the writer's back
    with pytest.raises(StorageCorruptionError, match=r"\[4, 8\).*cannot be sealed"):
        store.append(0, stream(20, 40))
    assert store.info()["levels"][0]["sealed_segments"] == 0  # never sealed over bad bytes
    store.close()
    assert [p.kind for p in LocalStore.verify_path(path)] == ["open-checksum"]


def test_gists_of_damaged_derived_records_are_dropped_and_recomputed(tmp_path: Path) -> None:
    """On a gist level, flushed records that fail their checksum are derived data: the writer
    drops them at open (and says so), the tree recomputes them."""
    path = tmp_path / "t"
    gister = MeanGister()
    tree = MegaContextTree(
        LocalStore.create(path, dim=DIM, K=K, segment_records=64, block_bytes=16), gister, K=K
    )
    tree.append(stream(0, 100))
    tree.close()
    flip(path / "L1" / "00000000.seg", HEADER_BYTES + 8 * 9)  # gist 9: block [8, 10)
    store = LocalStore.open(path)
    assert store.count(1) == 8 and store.count(2) == 2  # the gists above went with it
    assert len(store.recovered) == 1 and "level 1" in store.recovered[0]
    tree = MegaContextTree(store, gister, K=K)
    reference = MegaContextTree(MemoryBackend(DIM), gister, K=K)
    reference.append(stream(0, 100))
    for level in (1, 2, 3):
        n = reference.count(level)
        assert tree.count(level) == n
        assert np.array_equal(store.read(level, 0, n), reference.backend.read(level, 0, n))
    assert store.verify() == []
    tree.close()


def test_sealed_segments_keep_their_checksum_file_until_compaction(tmp_path: Path) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=8, block_bytes=16)
    store.append(0, stream(0, 20))
    assert (path / "L0" / "00000000.sum").exists()  # a reader's snapshot may have it open
    assert store.verify() == []
    assert sorted(Path(p).name for p in store.compact()) == ["00000000.sum", "00000001.sum"]
    assert store.verify() == []
    store.close()
    with LocalStore.open(path) as store:
        assert np.array_equal(store.read(0, 0, 20), stream(0, 20))
