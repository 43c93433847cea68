"""The service on the audit trail: trees created and deleted and keys made and revoked on the
service's chain, questions asked through it on the tree's chain, each with the key that acted."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from megacontext.cli import app as cli

from .conftest import World, tree_with_text


def test_trees_keys_and_questions_are_audited_with_who_acted(world: World) -> None:
    tree_with_text(world)
    h = world.headers(world.reader)
    asked = world.client.post("/v1/trees/notes/ask", json={"question": "Which ship?"}, headers=h)
    assert asked.status_code == 200, asked.text
    w = world.headers(world.writer)
    assert world.client.post("/v1/trees", json={"name": "scratch"}, headers=w).status_code == 201
    assert world.client.delete("/v1/trees/scratch", headers=w).status_code == 204
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--root", str(world.root)])
    assert made.exit_code == 0, made.output
    writer_id = world.writer.split("_")[1]

    service = json.loads(runner.invoke(cli, ["audit", "log", str(world.root), "--json"]).output)
    assert [(e["action"], e["subject"]) for e in service] == [
        ("tree.create", "acme/notes"),
        ("tree.create", "acme/scratch"),
        ("tree.delete", "acme/scratch"),
        ("key.create", made.output.strip().splitlines()[-1].split("_")[1]),
    ]
    assert service[0]["actor"] == f"acme/{writer_id}"
    assert service[-1]["actor"].startswith("local:")
    tree = world.root / "tenants" / "acme" / "trees" / "notes"
    events = json.loads(runner.invoke(cli, ["audit", "log", str(tree), "--json"]).output)
    assert [e["action"] for e in events] == ["ingest", "ask"]
    assert events[1]["actor"] == f"acme/{world.reader.split('_')[1]}"
    assert events[0]["actor"] == f"acme/{writer_id}"
    for path in (world.root, tree):
        assert runner.invoke(cli, ["audit", "verify", str(path)]).exit_code == 0
