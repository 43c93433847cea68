"""Format v1 → v2 on a tree written by the v1 code (``data/v1-tree``, see make_v1_fixture.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from megacontext.cli.store import app
from megacontext.core.tree import MegaContextTree, MemoryBackend
from megacontext.store import LocalStore, migrate
from megacontext.store.segment import HEADER_BYTES, SegmentHeader

from .conftest import DIM, K, MeanGister, stream

DATA = Path(__file__).parent / "data" / "v1-tree"
TOKENS = 150
runner = CliRunner()


def copy_fixture(tmp_path: Path) -> Path:
    path = tmp_path / "t"
    shutil.copytree(DATA, path)
    return path


def digests(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def raw_records(path: Path) -> dict[int, bytes]:
    """Every record of every level, read straight from the files (no store code involved)."""
    manifest = json.loads((path / "manifest.json").read_text())
    out = {}
    for level in manifest["levels"]:
        files = sorted((path / f"L{level['level']}").glob("*.seg"))
        out[level["level"]] = b"".join(f.read_bytes()[HEADER_BYTES:] for f in files)
    return out


def reference() -> MegaContextTree:
    tree = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    tree.append(stream(0, TOKENS))
    return tree


def test_the_fixture_is_a_v1_tree() -> None:
    manifest = json.loads((DATA / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert not list(DATA.rglob("*.sum"))
    for segment in DATA.rglob("*.seg"):
        assert SegmentHeader.unpack(segment.read_bytes()[:64], segment, "").version == 1
    counts = [len(raw_records(DATA)[lv["level"]]) for lv in manifest["levels"]]
    assert counts == [TOKENS * 4, 37 * 8, 9 * 8, 2 * 8]  # sealed and open segments, 4 levels
    assert [len(lv["segments"]) for lv in manifest["levels"]] == [4, 1, 0, 0]


def test_a_reader_reads_a_v1_tree_and_changes_nothing(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    before = digests(path)
    expected = reference()
    with LocalStore.open(path, readonly=True) as store:
        assert store.manifest.format_version == 1 and store.migration is None
        for level in range(4):
            n = expected.count(level)
            assert store.count(level) == n
            assert np.array_equal(store.read(level, 0, n), expected.backend.read(level, 0, n))
        assert store.verify() == []
    assert digests(path) == before


def test_a_writer_migrates_and_every_record_reads_back_identically(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    raw = raw_records(path)
    sealed = {name: d for name, d in digests(path).items() if name.endswith(".seg")}
    store = LocalStore.open(path)
    report = store.migration
    assert report is not None and report.migrated
    assert (report.from_version, report.to_version) == (1, 2)
    assert [lv["checksummed_records"] for lv in report.levels] == [22, 5, 9, 2]
    assert "migrated" in report.summary() and "22 + 5" not in report.summary()
    for level, data in raw.items():
        n = store.count(level)
        assert store.read(level, 0, n).tobytes() == data
    assert store.verify() == []
    store.close()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    after = digests(path)
    for name, digest in sealed.items():  # sealed segments keep their bytes (and v1 header)
        if name in {"L0/00000004.seg", "L1/00000001.seg", "L2/00000000.seg", "L3/00000000.seg"}:
            header = SegmentHeader.unpack((path / name).read_bytes()[:64], path, "")
            assert header.version == 2  # the open segments follow the manifest
            assert (path / name).with_suffix(".sum").exists()
        else:
            assert after[name] == digest
    assert raw_records(path) == raw  # the records themselves never moved
    # the migrated tree grows like any v2 tree, and its v1 sealed segments still verify
    tree = MegaContextTree(LocalStore.open(path), MeanGister(), K=K)
    assert tree.backend.migration is None  # type: ignore[attr-defined]
    tree.append(stream(TOKENS, 400))
    tree.close()
    expected = MegaContextTree(MemoryBackend(DIM), MeanGister(), K=K)
    expected.append(stream(0, 400))
    with LocalStore.open(path, readonly=True) as store:
        assert store.verify() == []
        for level in range(expected.num_levels + 1):
            n = expected.count(level)
            assert np.array_equal(store.read(level, 0, n), expected.backend.read(level, 0, n))


def test_store_migrate_command(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    result = runner.invoke(app, ["migrate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["migrated"] and document["from_version"] == 1 and document["to_version"] == 2
    assert [lv["records"] for lv in document["levels"]] == [150, 37, 9, 2]
    again = runner.invoke(app, ["migrate", str(path)])
    assert again.exit_code == 0 and "already at storage format v2" in again.output
    human = runner.invoke(app, ["migrate", str(copy_fixture(tmp_path / "b"))])
    assert human.exit_code == 0, human.output
    assert "from storage format v1 to v2" in human.output and "checksummed" in human.output
    assert runner.invoke(app, ["verify", str(path), "--strict"]).exit_code == 0


def test_an_interrupted_migration_is_finished_by_the_next_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = copy_fixture(tmp_path)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # after the open segments were migrated, before the manifest

    monkeypatch.setattr(migrate, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        LocalStore.open(path)
    monkeypatch.undo()
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 1
    expected = reference()
    with LocalStore.open(path, readonly=True) as store:  # half-migrated: still reads
        for level in range(4):
            n = expected.count(level)
            assert np.array_equal(store.read(level, 0, n), expected.backend.read(level, 0, n))
        assert store.verify() == []
    store = LocalStore.open(path)
    assert store.migration is not None and store.migration.from_version == 1
    assert store.manifest.format_version == 2 and store.verify() == []
    store.close()


def test_a_torn_v1_tail_is_cut_before_it_is_checksummed(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path)
    with open(path / "L0" / "00000004.seg", "ab") as handle:
        handle.write(b"\x07\x07")  # half a token, as a v1 crash left it
    store = LocalStore.open(path)
    assert store.count(0) == TOKENS and store.verify() == []
    assert (path / "L0" / "00000004.seg").stat().st_size == HEADER_BYTES + 22 * 4
    store.close()
