"""`megacontext store info|verify|repair|compact`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext.cli.store import app
from megacontext.core.tree import MegaContextTree
from megacontext.store import LocalStore

from .conftest import DIM, K, MeanGister, stream

runner = CliRunner()


def _store(path: Path) -> None:
    tree = MegaContextTree(
        LocalStore.create(path, dim=DIM, K=K, segment_records=16), MeanGister(), K=K
    )
    tree.append(stream(0, 100))
    tree.close()


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_info_human_and_json(tmp_path: Path) -> None:
    _store(tmp_path / "t")
    human = runner.invoke(app, ["info", str(tmp_path / "t")])
    assert human.exit_code == 0, human.output
    assert "bytes/token" in human.output and "level" in human.output
    result = runner.invoke(app, ["info", str(tmp_path / "t"), "--json"])
    document = json.loads(result.output)
    assert document["tokens"] == 100 and document["K"] == K
    assert [lv["records"] for lv in document["levels"]] == [100, 25, 6, 1]


def test_verify_passes_then_fails_on_corruption(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _store(path)
    ok = runner.invoke(app, ["verify", str(path), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    _flip(path / "L1" / "00000000.seg", 100)
    bad = runner.invoke(app, ["verify", str(path), "--json"])
    assert bad.exit_code == 1
    problems = json.loads(bad.output)["problems"]
    assert problems[0]["path"].endswith("L1/00000000.seg") and "sha256" in problems[0]["message"]
    human = runner.invoke(app, ["verify", str(path)])
    assert human.exit_code == 1 and "megacontext store repair" in human.output
    # no replica holds a good copy: the gists are dropped (nothing is lost: they derive from
    # the tokens), the tree recomputes them when it is next opened for writing
    repaired = runner.invoke(app, ["repair", str(path), "--json"])
    assert repaired.exit_code == 0, repaired.output
    document = json.loads(repaired.output)
    assert document["ok"] and not document["lost"] and not document["unrecoverable"]
    assert [d.split(" dropped")[0] for d in document["dropped"]] == [
        "level 1 records [0, 25)",
        "level 2 records [0, 6)",
        "level 3 records [0, 1)",
    ]
    assert runner.invoke(app, ["verify", str(path), "--strict"]).exit_code == 0
    tree = MegaContextTree(LocalStore.open(path), MeanGister(), K=K)
    assert [tree.count(level) for level in range(4)] == [100, 25, 6, 1]
    tree.close()
    assert runner.invoke(app, ["verify", str(path), "--strict"]).exit_code == 0


def test_corrupt_manifest_verify_then_repair(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _store(path)
    _flip(path / "manifest.json", 30)
    bad = runner.invoke(app, ["verify", str(path)])
    assert bad.exit_code == 1 and "manifest.json" in bad.output
    fixed = runner.invoke(app, ["repair", str(path), "--json"])
    assert fixed.exit_code == 0, fixed.output
    assert any("rewrote manifest.json" in item for item in json.loads(fixed.output)["repaired"])
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0


def test_compact_removes_only_garbage(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _store(path)
    (path / "manifest.json.tmp").write_text("half-written")
    (path / "L0" / "00000099.seg").write_bytes(b"stray")
    (path / "L7").mkdir()
    result = runner.invoke(app, ["compact", str(path), "--json"])
    assert result.exit_code == 0, result.output
    removed = json.loads(result.output)["removed"]
    sealed_sums = [
        f"L{lv}/{seq:08d}.sum" for lv, sealed in ((0, 6), (1, 1)) for seq in range(sealed)
    ]
    assert sorted(str(Path(p).relative_to(path)) for p in removed) == sorted(
        ["L0/00000099.seg", "L7", "manifest.json.tmp", *sealed_sums]
    )  # the checksum files of sealed segments go (their sha256 covers them); open ones stay
    assert (path / "L0" / "00000006.sum").exists() and (path / "L1" / "00000001.sum").exists()
    assert runner.invoke(app, ["verify", str(path), "--strict"]).exit_code == 0
    with LocalStore.open(path) as store:
        assert store.count(0) == 100


def test_info_reports_replica_health(tmp_path: Path) -> None:
    from megacontext.store import Replication

    roots = [f"file://{tmp_path}/r{i}" for i in range(3)]
    store = LocalStore.create(
        tmp_path / "t",
        dim=DIM,
        K=K,
        segment_records=16,
        replication=Replication(roots, replicas=2, write_quorum=2),
    )
    store.append(0, stream(0, 48))
    tree_id = store.manifest.tree_id
    store.close()
    victim = next((tmp_path / "r0" / tree_id).rglob("*.seg"), None) or next(
        (tmp_path / "r1" / tree_id).rglob("*.seg")
    )
    victim.unlink()
    document = json.loads(runner.invoke(app, ["info", str(tmp_path / "t"), "--json"]).output)
    assert document["replica_health"] == {"ok": 5, "missing": 1, "corrupt": 0, "unreadable": 0}
    human = runner.invoke(app, ["info", str(tmp_path / "t")])
    assert "missing=1" in human.output
    assert runner.invoke(app, ["verify", str(tmp_path / "t")]).exit_code == 1
    assert runner.invoke(app, ["repair", str(tmp_path / "t")]).exit_code == 0
    assert runner.invoke(app, ["verify", str(tmp_path / "t"), "--strict"]).exit_code == 0


def test_a_missing_store_is_explained_in_cli_terms(tmp_path: Path) -> None:
    from megacontext.store import NotAStoreError

    for command in ("info", "verify", "repair", "migrate", "compact"):
        result = runner.invoke(app, [command, str(tmp_path / "nope")])
        assert isinstance(result.exception, NotAStoreError), command
        message = str(result.exception)
        assert "does not exist" in message and "megacontext ingest FILE --tree" in message
        assert "LocalStore" not in message  # the Python API's wording stays in Python
    (tmp_path / "session" / "tree").mkdir(parents=True)
    _store(tmp_path / "session" / "tree")
    result = runner.invoke(app, ["info", str(tmp_path / "session"), "--json"])
    assert result.exit_code == 0, result.output  # info, verify, repair check a whole session
    assert json.loads(result.output)["keys"] is None  # this one has no key store yet
    result = runner.invoke(app, ["migrate", str(tmp_path / "session")])
    assert "is a session directory" in str(result.exception)  # migrate takes the store
    assert f"megacontext store info {tmp_path / 'session' / 'tree'}" in str(result.exception)
    with pytest.raises(NotAStoreError, match=r"LocalStore\.create"):  # Python keeps its own
        LocalStore.open(tmp_path / "nope")


def test_repair_exits_1_and_lists_lost_tokens(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _store(path)
    _flip(path / "L0" / "00000002.seg", 64 + 3)
    result = runner.invoke(app, ["repair", str(path), "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert not document["ok"] and document["lost"][0].startswith(
        "level 0 records [32, 100) lost: 68 token(s)"
    )
    assert Path(document["salvage"], "L0", "00000002.seg").exists()
    human = runner.invoke(app, ["verify", str(path), "--strict"])
    assert human.exit_code == 0, human.output
