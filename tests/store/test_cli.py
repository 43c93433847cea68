"""`megacontext store info|verify|repair|compact`."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    # no replica holds a good copy: repair says so and fails, dropping nothing
    repaired = runner.invoke(app, ["repair", str(path), "--json"])
    assert repaired.exit_code == 1
    assert json.loads(repaired.output)["unrecoverable"] == [str(path / "L1" / "00000000.seg")]


def test_corrupt_manifest_verify_then_repair(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _store(path)
    _flip(path / "manifest.json", 30)
    bad = runner.invoke(app, ["verify", str(path)])
    assert bad.exit_code == 1 and "manifest.json" in bad.output
    fixed = runner.invoke(app, ["repair", str(path), "--json"])
    assert fixed.exit_code == 0, fixed.output
    assert "rewrote manifest.json" in json.loads(fixed.output)["manifest"]
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
    assert sorted(Path(p).name for p in removed) == ["00000099.seg", "L7", "manifest.json.tmp"]
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
    assert document["replica_health"] == {"ok": 5, "missing": 1, "corrupt": 0}
    human = runner.invoke(app, ["info", str(tmp_path / "t")])
    assert "missing=1" in human.output
    assert runner.invoke(app, ["verify", str(tmp_path / "t")]).exit_code == 1
    assert runner.invoke(app, ["repair", str(tmp_path / "t")]).exit_code == 0
    assert runner.invoke(app, ["verify", str(tmp_path / "t"), "--strict"]).exit_code == 0
