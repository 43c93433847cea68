"""The audit trail as sessions, the CLI and the service write it: ingests, questions with the
context the base read, removals, notes, trees and keys — then verified, tampered with, caught."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext.cli import app as cli
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.journal import remove_sources
from megacontext.store.annotations import Annotations

HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(40))
ORCHARD = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(40))
CONFIG = SessionConfig(W_max=48, protected_recent=12, query_tokens=8, focus_steps=2)


def words(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


@pytest.fixture()
def session_dir(tiny_world, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "s"
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, CONFIG) as mc:
        mc.actor = "ana"
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
    with open_session(path, tiny_world.base, readonly=True) as reader:  # beside no writer
        reader.actor = "ben"
        reader.ask("Where do pears ripen?", max_new_tokens=2)
    with open_session(path, tiny_world.base) as mc:
        mc.actor = "cy"
        assert mc.metadata is not None
        (harbour,) = [i for i in mc.metadata.ingests_of(mc.tree_id) if "harbour" in i.source.uri]
        remove_sources(mc, [harbour])
        Annotations(mc.metadata, mc.tree_id).create(0, 0, 4, "first words", [], "dee")
    return path


def test_every_change_and_question_is_on_the_chain(session_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["audit", "log", str(session_dir), "--json"])
    assert result.exit_code == 0, result.output
    events = json.loads(result.output)
    assert [(e["action"], e["actor"]) for e in events] == [
        ("ingest", "ana"),
        ("ingest", "ana"),
        ("ask", "ben"),
        ("remove", "cy"),
        ("annotate", "dee"),
    ]
    ingest, _, ask, remove, note = events
    assert (
        ingest["subject"] == "file:///harbour.txt" and len(ingest["detail"]["content_sha256"]) == 64
    )
    assert ask["detail"]["question"] == "Where do pears ripen?"
    placed = sum(count for _, _, count in ask["detail"]["context"])
    assert 0 < placed <= CONFIG.W_max  # what the base read for it, entry by entry
    assert remove["detail"]["sources"] == ["harbour.txt"] and remove["detail"]["tokens"] > 0
    assert note["detail"]["action"] == "create" and note["detail"]["note"] == "first words"
    verified = CliRunner().invoke(cli, ["audit", "verify", str(session_dir)])
    assert verified.exit_code == 0 and "5 events" in words(verified.output)


def test_the_cli_catches_tampering_and_a_cut_chain(session_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    key, anchors = tmp_path / "audit.key", tmp_path / "anchors.jsonl"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    done = runner.invoke(
        cli, ["audit", "anchor", str(session_dir), "--key-file", str(key), "--out", str(anchors)]
    )
    assert done.exit_code == 0, done.output
    checked = ["audit", "verify", str(session_dir), "--anchors", str(anchors)]
    assert runner.invoke(cli, [*checked, "--key-file", str(key)]).exit_code == 0
    database = sqlite3.connect(session_dir / "tree" / "meta.sqlite")
    with database:  # someone rewrites what was asked
        database.execute(
            "UPDATE audit_events SET detail = json_set(detail, '$.question', 'nothing') "
            "WHERE action = 'ask'"
        )
    broken = runner.invoke(cli, ["audit", "verify", str(session_dir), "--json"])
    assert broken.exit_code == 1
    verdict = json.loads(broken.output)
    assert verdict["first_bad"] == 3 and "was changed" in verdict["problem"]
    with database:  # ... or cuts the chain back to before the removal: a valid, shorter chain
        database.execute("DELETE FROM audit_events WHERE seq >= 3")
    assert runner.invoke(cli, ["audit", "verify", str(session_dir)]).exit_code == 0
    cut = runner.invoke(cli, [*checked, "--key-file", str(key)])
    assert cut.exit_code == 1 and "the chain was cut back" in words(cut.output)
    database.close()
    short = tmp_path / "short.key"
    short.write_bytes(b"short")
    refused = runner.invoke(cli, [*checked, "--key-file", str(short)])
    assert refused.exit_code == 2 and "at least 16" in words(refused.output)
    nowhere = runner.invoke(cli, ["audit", "verify", str(tmp_path / "nothing")])
    assert nowhere.exit_code == 2 and "neither a session directory" in words(nowhere.output)


def test_export_is_the_chain(session_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    done = CliRunner().invoke(cli, ["audit", "export", str(session_dir), "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
