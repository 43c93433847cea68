"""The local durable backend: same behaviour as MemoryBackend, durability, errors, binding."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megacontext.core.tree import GistBatch, MegaContextTree, MemoryBackend, TreeBackend
from megacontext.errors import (
    FingerprintMismatchError,
    InvalidInputError,
    StorageCorruptionError,
)
from megacontext.store import (
    DiskFullError,
    Fingerprints,
    LocalStore,
    NotAStoreError,
    StoreLockedError,
    StorePermissionError,
    recover_manifest,
)
from megacontext.store.segment import HEADER_BYTES, SegmentHeader

from .conftest import DIM, K, MeanGister, crash, stream


def assert_same_tree(a: MegaContextTree, b: MegaContextTree) -> None:
    assert a.num_tokens == b.num_tokens
    assert a.num_levels == b.num_levels
    for level in range(a.num_levels + 1):
        n = a.count(level)
        assert n == b.count(level)
        assert np.array_equal(a.backend.read(level, 0, n), b.backend.read(level, 0, n))


def test_local_store_is_a_tree_backend(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "t", dim=DIM, K=K) as store:
        assert isinstance(store, TreeBackend)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    capacity=st.integers(1, 40),
    reopen_at=st.integers(0, 12),
)
def test_same_tree_operations_over_both_backends(
    batches: list[int], capacity: int, reopen_at: int
) -> None:
    gister = MeanGister()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t"
        disk = MegaContextTree(
            LocalStore.create(path, dim=DIM, K=K, segment_records=capacity), gister, K=K
        )
        memory = MegaContextTree(MemoryBackend(DIM), gister, K=K)
        pos = 0
        for i, size in enumerate(batches):
            ids = stream(pos, pos + size)
            pos += size
            assert disk.append(ids) == memory.append(ids)
            if i == reopen_at:
                disk.close()
                disk = MegaContextTree(LocalStore.open(path), gister, K=K)
        assert_same_tree(disk, memory)
        n = disk.num_tokens
        if n:
            assert np.array_equal(disk.tokens(n // 3, n), memory.tokens(n // 3, n))
            assert np.array_equal(disk.tail(), memory.tail())
        for level in range(1, disk.num_levels + 1):
            for index in range(disk.count(level)):
                assert np.array_equal(disk.node(level, index), memory.node(level, index))
                assert disk.children(level, index) == memory.children(level, index)
        assert disk.backend.verify() == []  # type: ignore[attr-defined]
        disk.close()


def test_reads_of_a_sealed_segment_are_read_only_mmap_views(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 20))
    view = store.read(0, 0, 8)
    assert not view.flags.writeable
    assert not view.flags.owndata  # a view of the segment's memory map, not a copy
    with pytest.raises(ValueError):
        view[0] = 1
    spanning = store.read(0, 5, 20)  # sealed, sealed, open segment
    assert np.array_equal(spanning, stream(5, 20)) and not spanning.flags.writeable
    store.close()


def test_segment_layout_matches_the_format(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 12))
    store.close()
    raw = (tmp_path / "t" / "L0" / "00000001.seg").read_bytes()
    header = SegmentHeader.unpack(raw[:HEADER_BYTES], Path("x"), "")
    assert (
        header.level,
        header.dtype,
        header.width,
        header.K,
        header.capacity,
        header.first_index,
    ) == (
        0,
        "uint32",
        1,
        K,
        8,
        8,
    )
    assert raw[:4] == b"MCSG"
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], "<u4"), stream(8, 12))
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    segment = manifest["levels"][0]["segments"][0]
    assert segment["name"] == "L0/00000000.seg" and segment["sealed"] and segment["count"] == 8


def test_torn_trailing_record_is_truncated_at_reopen(tmp_path: Path, gister: MeanGister) -> None:
    path = tmp_path / "t"
    tree = MegaContextTree(LocalStore.create(path, dim=DIM, K=K, segment_records=64), gister, K=K)
    tree.append(stream(0, 10))
    tree.close()
    segment = path / "L0" / "00000000.seg"
    with open(segment, "ab") as handle:
        handle.write(b"\x01\x02")  # half a record, as a crash mid-write leaves it
    readonly = LocalStore.open(path, readonly=True)
    assert readonly.count(0) == 10 and any(p.severity == "warning" for p in readonly.verify())
    readonly.close()
    store = LocalStore.open(path)
    assert store.count(0) == 10
    assert segment.stat().st_size == HEADER_BYTES + 10 * 4
    assert np.array_equal(store.read(0, 0, 10), stream(0, 10))
    assert store.verify() == []
    store.close()


def test_gists_of_lost_tokens_are_dropped_and_regisTed(tmp_path: Path, gister: MeanGister) -> None:
    path = tmp_path / "t"
    tree = MegaContextTree(LocalStore.create(path, dim=DIM, K=K, segment_records=64), gister, K=K)
    tree.append(stream(0, 9))
    tree.flush()
    tree.append(stream(9, 16))  # gisted, never flushed
    crash(tree.backend)  # type: ignore[arg-type]
    # a power loss kept the gists' pages but not the last 7 tokens'
    os.truncate(path / "L0" / "00000000.seg", HEADER_BYTES + 9 * 4)
    store = LocalStore.open(path)
    assert store.count(0) == 9 and store.count(1) == 2 and store.count(2) == 0
    tree = MegaContextTree(store, gister, K=K)
    tree.append(stream(9, 16))
    reference = MegaContextTree(MemoryBackend(DIM), gister, K=K)
    reference.append(stream(0, 16))
    assert_same_tree(tree, reference)
    tree.close()


def test_full_unsealed_segment_is_sealed_at_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 5))
    store.flush()
    store.append(0, stream(5, 8))  # fills and seals the segment in memory only
    crash(store)  # killed before the manifest naming it was committed
    assert b"00000000.seg" not in (path / "manifest.json").read_bytes()
    store = LocalStore.open(path)
    assert store.info()["levels"][0]["sealed_segments"] == 1
    assert store.count(0) == 8 and store.verify() == []
    store.close()


# -- corruption --------------------------------------------------------------------------------


def flip_bit(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def make_store(path: Path, gister: MeanGister, tokens: int = 100) -> None:
    tree = MegaContextTree(LocalStore.create(path, dim=DIM, K=K, segment_records=16), gister, K=K)
    tree.append(stream(0, tokens))
    tree.close()


@pytest.mark.parametrize("offset", [HEADER_BYTES + 5, 70, 63])
def test_flipped_bit_in_sealed_segment_is_detected(
    tmp_path: Path, gister: MeanGister, offset: int
) -> None:
    path = tmp_path / "t"
    make_store(path, gister)
    flip_bit(path / "L0" / "00000001.seg", offset)
    store = LocalStore.open(path)
    problems = store.verify()
    assert [p.path for p in problems if p.severity == "error"] == [
        str(path / "L0" / "00000001.seg")
    ]
    with pytest.raises(StorageCorruptionError, match=r"00000001\.seg.*megacontext store verify"):
        store.read(0, 16, 17)
    assert np.array_equal(store.read(0, 0, 16), stream(0, 16))  # other segments still read
    store.close()


def test_flipped_bit_in_open_segment_header_is_detected_and_repaired(
    tmp_path: Path, gister: MeanGister
) -> None:
    path = tmp_path / "t"
    make_store(path, gister)
    flip_bit(path / "L0" / "00000006.seg", 20)  # capacity field of the open segment
    store = LocalStore.open(path)  # opens (so that it can be repaired), but refuses the segment
    assert [(p.kind, p.path) for p in store.verify()] == [
        ("header", str(path / "L0" / "00000006.seg"))
    ]
    with pytest.raises(StorageCorruptionError, match=r"00000006\.seg.*CRC32.*megacontext store"):
        store.read(0, 96, 97)
    with pytest.raises(StorageCorruptionError, match=r"cannot append to level 0.*repair"):
        store.append(0, stream(100, 101))
    assert np.array_equal(store.read(0, 0, 96), stream(0, 96))  # sealed segments still read
    report = store.repair()
    assert report.ok and not report.lost and not report.dropped
    assert any("rewrote its header" in item for item in report.repaired)
    assert store.verify() == []
    assert np.array_equal(store.read(0, 0, 100), stream(0, 100))
    store.close()


def test_flipped_bit_in_manifest_is_detected_and_repaired(
    tmp_path: Path, gister: MeanGister
) -> None:
    path = tmp_path / "t"
    make_store(path, gister)
    text = (path / "manifest.json").read_text()
    flip_bit(path / "manifest.json", text.index('"K"') + 6)
    with pytest.raises(StorageCorruptionError, match=r"manifest\.json.*megacontext store repair"):
        LocalStore.open(path)
    assert "rewrote manifest.json" in recover_manifest(path)
    store = LocalStore.open(path)
    assert store.count(0) == 100 and store.verify() == []
    store.close()


def test_both_manifest_copies_corrupt_is_a_clear_error(tmp_path: Path, gister: MeanGister) -> None:
    path = tmp_path / "t"
    make_store(path, gister)
    for name in ("manifest.json", "manifest.backup.json"):
        flip_bit(path / name, 40)
    with pytest.raises(StorageCorruptionError, match="both"):
        recover_manifest(path)


def test_missing_sealed_segment_is_detected(tmp_path: Path, gister: MeanGister) -> None:
    path = tmp_path / "t"
    make_store(path, gister)
    (path / "L1" / "00000000.seg").unlink()
    store = LocalStore.open(path)
    assert any("missing" in p.message for p in store.verify())
    with pytest.raises(StorageCorruptionError, match="missing"):
        store.read(1, 0, 1)
    store.close()


# -- bad paths, locks, space -------------------------------------------------------------------


def test_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotAStoreError, match="is a file"):
        LocalStore.create(path, dim=DIM)
    with pytest.raises(NotAStoreError, match="is a file"):
        LocalStore.open(path)
    assert path.read_text() == "x"


def test_not_a_store_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match="does not exist"):
        LocalStore.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match="not a MegaContext store"):
        LocalStore.open(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not empty"):
        LocalStore.create(tmp_path / "full", dim=DIM)
    for kwargs in (
        {"dim": 0},
        {"dim": DIM, "K": 1},
        {"dim": DIM, "gist_dtype": "int8"},
        {"dim": DIM, "segment_records": 0},
    ):
        with pytest.raises(InvalidInputError):
            LocalStore.create(tmp_path / "bad", **kwargs)  # type: ignore[arg-type]
    store = LocalStore.create(tmp_path / "ok", dim=DIM, K=K)
    with pytest.raises(InvalidInputError):
        LocalStore.create(tmp_path / "ok", dim=DIM)
    with pytest.raises(InvalidInputError, match="1-D"):
        store.append(0, np.zeros((2, 2), np.uint32))
    with pytest.raises(InvalidInputError, match="uint32 range"):
        store.append(0, np.array([-1]))
    with pytest.raises(InvalidInputError, match=r"levels 0\.\.0 \(a new level"):
        store.append(2, np.zeros((1, DIM), np.float32))
    with pytest.raises(InvalidInputError, match=r"shape \(n, 4\)"):
        store.append(1, np.zeros((1, 3), np.float32))
    assert store.num_levels == 1  # a refused append creates no level
    with pytest.raises(InvalidInputError, match="outside level 0"):
        store.read(0, 0, 1)
    store.close()


def test_second_writer_is_refused(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K)
    store.append(0, stream(0, 5))
    with pytest.raises(StoreLockedError, match="open for writing elsewhere"):
        LocalStore.open(tmp_path / "t")
    reader = LocalStore.open(tmp_path / "t", readonly=True)  # readers need no lock
    assert reader.count(0) == 5
    with pytest.raises(StorePermissionError, match="read-only"):
        reader.append(0, stream(0, 1))
    reader.close()
    store.close()
    LocalStore.open(tmp_path / "t").close()  # the lock is released on close


def test_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K)
    pid = os.fork()
    if pid == 0:  # child: a different process trying to write
        try:
            LocalStore.open(tmp_path / "t")
            os._exit(0)
        except StoreLockedError:
            os._exit(7)
        except BaseException:  # noqa: BLE001  (a forked child must never return into pytest)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    store.close()


def test_disk_full_keeps_everything_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC is simulated by making os.pwrite / os.write fail after a byte budget."""
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=16)
    store.append(0, stream(0, 10))
    store.flush()
    budget = [30]
    real_pwrite, real_write = os.pwrite, os.write

    def full_pwrite(fd: int, data: bytes, offset: int) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), budget[0])
        budget[0] -= n
        return real_pwrite(fd, bytes(memoryview(data)[:n]), offset)

    def full_write(fd: int, data: bytes) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "pwrite", full_pwrite)
    monkeypatch.setattr(os, "write", full_write)
    with pytest.raises(DiskFullError, match=r"no space left.*records already flushed are safe"):
        store.append(0, stream(10, 40))  # fills the segment (seal needs the manifest) and more
    stored = store.count(0)
    assert 10 <= stored < 40
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    monkeypatch.setattr(os, "write", real_write)
    assert np.array_equal(store.read(0, 0, stored), stream(0, stored))
    store.append(0, stream(stored, 40))  # space is back: appending resumes
    store.close()
    store = LocalStore.open(path)
    assert np.array_equal(store.read(0, 0, 40), stream(0, 40)) and store.verify() == []
    store.close()


def test_manifest_write_failure_leaves_old_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 7))
    before = (path / "manifest.json").read_bytes()

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    store.append(0, stream(7, 8))  # completes and seals the segment (in memory)
    with pytest.raises(DiskFullError):
        store.flush()  # committing the manifest fails
    monkeypatch.undo()
    assert (path / "manifest.json").read_bytes() == before
    assert not (path / "manifest.json.tmp").exists()
    store.append(0, stream(8, 9))
    store.flush()  # the commit is retried
    assert b"00000000.seg" in (path / "manifest.json").read_bytes()
    store.close()
    store = LocalStore.open(path)
    assert np.array_equal(store.read(0, 0, 9), stream(0, 9)) and store.verify() == []
    store.close()


def _as_nobody() -> bool:
    return os.geteuid() == 0


def test_read_only_directory(tmp_path: Path) -> None:
    """As root, permission bits do not apply, so a forked child drops to uid 65534 first."""
    base = Path(tempfile.mkdtemp(prefix="mc-ro-"))
    try:
        os.chmod(base, 0o755)
        store = LocalStore.create(base / "t", dim=DIM, K=K)
        store.append(0, stream(0, 5))
        store.close()
        os.chmod(base, 0o555)
        for p in [base / "t", *(base / "t").rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if _as_nobody():
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    LocalStore.create(base / "new", dim=DIM)
                except StorePermissionError:
                    code += 10
                try:
                    LocalStore.open(base / "t")
                except StorePermissionError:
                    code += 20
                reader = LocalStore.open(base / "t", readonly=True)
                if np.array_equal(reader.read(0, 0, 5), stream(0, 5)):
                    code += 40
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 70
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755)
        import shutil

        shutil.rmtree(base)


# -- binding (D13) -----------------------------------------------------------------------------

FP = Fingerprints(base="base-a", tokenizer="tok-a", gistnet="gist-1")


def test_fingerprints_are_recorded_and_checked(tmp_path: Path, gister: MeanGister) -> None:
    path = tmp_path / "t"
    tree = MegaContextTree(LocalStore.create(path, dim=DIM, K=K, fingerprints=FP), gister, K=K)
    tree.append(stream(0, 40))
    tree.close()
    LocalStore.open(path, fingerprints=FP).close()
    with pytest.raises(FingerprintMismatchError, match=r"gistnet.*gist-1.*gist-2.*regist=True"):
        LocalStore.open(path, fingerprints=Fingerprints("base-a", "tok-a", "gist-2"))
    with pytest.raises(FingerprintMismatchError, match=r"tokenizer.*tree's tokenizer"):
        LocalStore.open(path, fingerprints=Fingerprints("base-a", "tok-b", "gist-1"), regist=True)
    store = LocalStore.open(path)  # not checked when the caller does not say
    assert store.fingerprints == FP
    store.close()


def test_regist_drops_gists_and_the_tree_recomputes_them(
    tmp_path: Path, gister: MeanGister
) -> None:
    path = tmp_path / "t"
    tree = MegaContextTree(
        LocalStore.create(path, dim=DIM, K=K, fingerprints=FP, segment_records=8), gister, K=K
    )
    tree.append(stream(0, 70))
    tree.close()
    new = Fingerprints("base-a", "tok-a", "gist-2")
    store = LocalStore.open(path, fingerprints=new, regist=True)
    assert store.count(0) == 70 and store.count(1) == 0
    assert store.fingerprints == new
    tree = MegaContextTree(store, gister, K=K)  # catch-up gists every complete node
    assert tree.count(1) == 70 // K and tree.count(2) == 70 // K**2
    tree.close()
    store = LocalStore.open(path, fingerprints=new)
    assert store.verify() == []
    store.close()


def test_views_of_the_open_segment_survive_appends_and_sealing(tmp_path: Path) -> None:
    store = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 3))
    early = store.read(0, 0, 3)  # a view of the open segment's map
    store.append(0, stream(3, 20))  # grows, seals, starts new segments
    assert np.array_equal(early, stream(0, 3)) and not early.flags.writeable
    assert np.array_equal(store.read(0, 0, 20), stream(0, 20))
    store.close()


@pytest.mark.parametrize("size", [0, 30, 64])
def test_segment_torn_while_writing_its_header_is_dropped(tmp_path: Path, size: int) -> None:
    path = tmp_path / "t"
    store = LocalStore.create(path, dim=DIM, K=K, segment_records=8)
    store.append(0, stream(0, 8))  # seals segment 0; segment 1 does not exist yet
    store.close()
    (path / "L0" / "00000001.seg").write_bytes(b"\xff" * size)  # a header cut short / garbage
    store = LocalStore.open(path)
    assert store.count(0) == 8
    store.append(0, stream(8, 10))
    assert np.array_equal(store.read(0, 0, 10), stream(0, 10)) and store.verify() == []
    store.close()


def test_disk_full_on_a_real_tiny_tmpfs(tmp_path: Path) -> None:
    """A real ENOSPC: a 256 KiB tmpfs (needs root with mount rights; skipped elsewhere)."""
    import shutil
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        store = LocalStore.create(mount / "t", dim=DIM, K=K, segment_records=4096)
        pos = 0
        with pytest.raises(DiskFullError, match="no space left"):
            while True:
                store.append(0, stream(pos, pos + 1000))
                store.flush()
                pos += 1000
        stored = store.count(0)
        assert stored >= pos  # everything acknowledged is still there
        assert np.array_equal(store.read(0, 0, stored), stream(0, stored))
        store.close()  # the manifest may lag (no room to commit it): nothing is lost
        store = LocalStore.open(mount / "t", readonly=True)  # sees every flushed record
        seen = store.count(0)
        assert pos <= seen <= stored and np.array_equal(store.read(0, 0, seen), stream(0, seen))
        store.close()
        store = LocalStore.open(mount / "t")  # a writer finds everything stored
        assert store.count(0) == stored
        assert np.array_equal(store.read(0, 0, stored), stream(0, stored))
        store.close()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("dtype", ["float16", "float32", np.float32])
def test_gist_dtypes_are_recorded_and_round_trip(tmp_path: Path, dtype: str | type) -> None:
    name = np.dtype(dtype).name
    tree = MegaContextTree(
        LocalStore.create(tmp_path / "t", dim=DIM, K=K, gist_dtype=dtype, segment_records=8),
        MeanGister(),
        K=K,
    )
    memory = MegaContextTree(MemoryBackend(DIM, gist_dtype=name), MeanGister(), K=K)
    tree.append(stream(0, 50))
    memory.append(stream(0, 50))
    tree.close()
    store = LocalStore.open(tmp_path / "t")
    assert store.gist_dtype == np.dtype(name) and store.info()["gist_dtype"] == name
    assert np.array_equal(store.read(1, 0, 12), memory.backend.read(1, 0, 12))
    header = SegmentHeader.unpack(
        (tmp_path / "t" / "L1" / "00000000.seg").read_bytes()[:64], Path("x"), ""
    )
    assert header.dtype == name and header.width == DIM
    store.close()


def test_bfloat16_needs_ml_dtypes(tmp_path: Path) -> None:
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInputError, match="pip install ml_dtypes"):
            LocalStore.create(tmp_path / "t", dim=DIM, gist_dtype="bfloat16")
    else:
        LocalStore.create(tmp_path / "t", dim=DIM, gist_dtype="bfloat16").close()


def test_readers_see_at_least_everything_flushed(tmp_path: Path) -> None:
    path = tmp_path / "t"
    writer = LocalStore.create(path, dim=DIM, K=K, segment_records=8)
    writer.append(0, stream(0, 30))
    writer.flush()  # commits the three sealed segments
    writer.append(0, stream(30, 70))  # seals more, not flushed: the manifest on disk lags
    reader = LocalStore.open(path, readonly=True)
    seen = reader.count(0)
    assert 30 <= seen <= 70
    assert np.array_equal(reader.read(0, 0, seen), stream(0, seen))
    assert reader.verify() == []
    reader.close()
    writer.close()
    reader = LocalStore.open(path, readonly=True)
    assert reader.count(0) == 70
    reader.close()


def test_repair_recomputes_a_corrupt_gist_segment_with_a_gister(
    tmp_path: Path, gister: MeanGister
) -> None:
    path = tmp_path / "t"
    make_store(path, gister, tokens=300)
    segment = path / "L1" / "00000001.seg"
    original = segment.read_bytes()
    flip_bit(segment, 100)
    store = LocalStore.open(path)
    report = store.repair(gister=gister)
    assert report.repaired == [str(segment)] and not report.unrecoverable
    assert segment.read_bytes() == original  # a deterministic gister restores the exact bytes
    assert store.verify() == []
    reference = MegaContextTree(MemoryBackend(DIM), gister, K=K)
    reference.append(stream(0, 300))
    assert np.array_equal(store.read(1, 16, 32), reference.backend.read(1, 16, 32))
    store.close()


class KeyedGister(MeanGister):
    """Returns gists and 3-dim retrieval keys (D7)."""

    def __call__(self, level: int, inputs: np.ndarray) -> GistBatch:  # type: ignore[override]
        gists = super().__call__(level, inputs)
        return GistBatch(gists, gists[:, :3] * 0.001)


def test_a_key_store_holds_retrieval_keys_beside_the_gists(tmp_path: Path) -> None:
    gister = KeyedGister()

    def open_tree(create: bool) -> MegaContextTree:
        if create:
            gists = LocalStore.create(tmp_path / "t", dim=DIM, K=K, segment_records=8)
            keys = LocalStore.create(tmp_path / "k", dim=3, K=K, segment_records=8, role="keys")
        else:
            gists, keys = LocalStore.open(tmp_path / "t"), LocalStore.open(tmp_path / "k")
        return MegaContextTree(gists, gister, K=K, key_backend=keys)

    tree = open_tree(create=True)
    tree.append(stream(0, 150))
    tree.close()
    keys = LocalStore.open(tmp_path / "k")  # a crash lost the newest keys
    assert keys.info()["role"] == "keys" and keys.count(1) == 150 // K
    keys.close()
    os.truncate(tmp_path / "k" / "L1" / "00000004.seg", HEADER_BYTES + 8)
    tree = open_tree(create=False)  # the tree recomputes the missing keys on open
    reference = MegaContextTree(MemoryBackend(DIM), gister, K=K, key_backend=MemoryBackend(3))
    reference.append(stream(0, 150))
    for level in (1, 2):
        n = reference.count(level)
        assert np.array_equal(tree.keys(level, 0, n), reference.keys(level, 0, n))
    for store in (tree.backend, tree.key_backend):
        assert isinstance(store, LocalStore) and store.verify() == []
    tree.close()
    with pytest.raises(InvalidInputError, match="role"):
        LocalStore.create(tmp_path / "x", dim=3, role="values")
