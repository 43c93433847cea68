"""`megacontext store info|verify|repair SESSION`: the whole session is checked (tree, keys,
lexical index, metadata) and every state verify reports is repaired (issue 15 §4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from megacontext.cli import app
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.checkup import repair_session, session_info, verify_session
from megacontext.store.metadata import RUNNING

runner = CliRunner()
TEXT = "".join(f"line {i}: the river keeps its course past mill {i * 3}\n" for i in range(1, 121))


@pytest.fixture()
def session_dir(tiny_world, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "mc"
    config = SessionConfig(W_max=48, protected_recent=12, query_tokens=8, focus_steps=4)
    with open_session(root, base=tiny_world.base, focus=tiny_world.bundle_dir, config=config) as mc:
        mc.ingest(TEXT, source="file:///river.txt", metadata={"path": "river.txt"})
        assert mc.tree.num_levels >= 3  # gists at LOD1 and LOD2: both are checked
    return root


def _kinds(root: Path) -> dict[str, str]:
    return {p.kind or p.message: p.severity for p in verify_session(root)}


def _verify_cli(root: Path, *flags: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = runner.invoke(app, ["store", "verify", str(root), "--json", *flags])
    return result.exit_code, json.loads(result.stdout)


def test_a_healthy_session_verifies_clean_and_info_covers_all_of_it(session_dir: Path) -> None:
    assert verify_session(session_dir) == []
    code, document = _verify_cli(session_dir, "--strict")
    assert code == 0 and document["ok"]
    info = session_info(session_dir)
    tree = info["tree"]
    assert info["keys"] == {lv["level"]: lv["records"] for lv in tree["levels"][1:]}
    assert info["lexical_blocks"] == info["tree_blocks"] == tree["tokens"] // tree["K"]
    assert info["sources"] == 1 and info["journal"] == {"complete": 1}
    result = runner.invoke(app, ["store", "info", str(session_dir)])
    assert result.exit_code == 0, result.output
    assert "lexical index:" in result.output and "sources: 1" in result.output


def test_a_cut_gist_segment_is_found_and_repaired_with_keys_and_lexical(session_dir: Path) -> None:
    """The reproduction: 100 bytes cut off the gist segment made every open fail."""
    segment = sorted((session_dir / "tree" / "L1").glob("*.seg"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[:-100])
    (session_dir / "lexical.sqlite").unlink()
    code, document = _verify_cli(session_dir)
    assert code == 1 and not document["ok"]
    messages = " ".join(p["message"] for p in document["problems"])
    assert "tree:" in messages and "lexical index" in messages

    report = repair_session(session_dir)
    assert report.ok, report
    assert report.tree.repaired or report.tree.dropped
    assert verify_session(session_dir) == []
    with open_session(session_dir, readonly=True) as reader:
        n = reader.tree.num_tokens
        assert n > 0 and len(reader.tree.tokens(0, n)) == n


def test_missing_keys_and_a_running_append_are_warnings_the_repair_clears(
    session_dir: Path, tiny_world
) -> None:  # type: ignore[no-untyped-def]
    shutil.rmtree(session_dir / "keys")
    from megacontext.store import LocalStore
    from megacontext.store.metadata import MetadataDB, default_url

    with LocalStore.open(session_dir / "tree", readonly=True) as store:
        tree_id, n = store.manifest.tree_id, store.count(0)
    db = MetadataDB(default_url(str(session_dir / "tree")))
    source = db.add_source("file:///half.txt", "text", b"half", {"path": "half.txt"})
    db.begin_ingest(tree_id, source, n, n + 100)  # journaled, then killed 40 tokens in
    db.close()
    with LocalStore.open(session_dir / "tree") as store:
        store.append(0, np.full(40, 5, dtype=np.uint32))
        store.flush()

    kinds = _kinds(session_dir)
    assert set(kinds.values()) == {"warning"}, kinds
    assert "running" in kinds and "gists-behind" in kinds
    assert any("key store is missing" in k for k in kinds)
    code, _ = _verify_cli(session_dir)
    assert code == 0  # warnings: the next writer fixes them by itself
    assert _verify_cli(session_dir, "--strict")[0] == 1

    result = runner.invoke(app, ["store", "repair", str(session_dir), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["ok"] and document["remaining"] == []
    assert any("half.txt" in line and "rolled back" in line for line in document["reopened"])
    assert verify_session(session_dir) == []
    assert session_info(session_dir)["tree"]["tokens"] == n
    db = MetadataDB(default_url(str(session_dir / "tree")), readonly=True)
    assert not db.ingests_of(tree_id, RUNNING)
    db.close()


def test_tokens_without_provenance_are_an_error(session_dir: Path) -> None:
    from megacontext.store import LocalStore

    with LocalStore.open(session_dir / "tree") as store:  # tokens behind the journal's back
        store.append(0, np.full(40, 5, dtype=np.uint32))
        store.flush()
    kinds = _kinds(session_dir)
    assert kinds.get("provenance") == "error"
    assert _verify_cli(session_dir)[0] == 1


def test_store_commands_name_what_a_path_is(tmp_path: Path) -> None:
    result = runner.invoke(app, ["store", "verify", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception)
    result = runner.invoke(app, ["store", "repair", str(tmp_path), "--base", "tiny"])
    assert result.exit_code != 0
    assert "--base" in result.output
