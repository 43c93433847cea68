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


def test_a_key_with_labels_never_sees_a_restricted_source(world: World) -> None:
    """A key made with --labels asks and reads the context as its labels allow; the explorer,
    which shows text unfiltered, refuses it."""
    from megacontext.store.metadata import MetadataDB
    from megacontext.store.policies import Policies

    tree_with_text(world)
    w = world.headers(world.writer)
    secret = "".join(f"salary band Q{i}: quokka zeppelin {1000 + i}\n" for i in range(20))
    done = world.client.post(
        "/v1/trees/notes/sources",
        json={"text": secret, "source": "file:///salaries.txt", "metadata": {"path": "s.txt"}},
        headers=w,
    ).json()
    path = world.root / "tenants" / "acme" / "trees" / "notes"
    db = MetadataDB(f"sqlite:///{path / 'tree' / 'meta.sqlite'}")
    try:
        (ingest,) = [i for i in db.ingests_of(db_tree(db)) if "salaries" in i.source.uri]
        Policies(db, db_tree(db)).set_labels(ingest.id, ["hr"], "admin")
    finally:
        db.close()
    made = CliRunner().invoke(
        cli,
        ["keys", "create", "--tenant", "acme", "--labels", "eng", "--root", str(world.root)],
    )
    assert made.exit_code == 0, made.output
    eng = world.headers(made.output.strip().splitlines()[-1])
    context = world.client.post(
        "/v1/trees/notes/context", json={"question": "salary band Q7", "W_max": 48}, headers=eng
    )
    assert context.status_code == 200, context.text
    hidden = [
        e
        for e in context.json()["entries"]
        if done["start"] < e["end"] and e["start"] < done["stop"]
    ]
    raw = [e for e in hidden if e["level"] == 0]  # the newest tokens are the secret's
    assert raw and all(e["text"] == "[redacted]" for e in raw)
    assert "quokka" not in context.text
    asked = world.client.post("/v1/trees/notes/ask", json={"question": "Q7?"}, headers=eng)
    assert asked.status_code == 200
    assert all(c["source"] != "s.txt" for c in asked.json()["citations"])
    listed_sources = world.client.get("/v1/trees/notes/sources", headers=eng).json()["sources"]
    assert [x["source"] for x in listed_sources] == ["logbook.txt"]  # not s.txt
    refused = world.client.get("/v1/trees/notes/explorer/overview", headers=eng)
    assert refused.status_code == 403 and "access labels" in refused.json()["error"]["message"]
    listed = CliRunner().invoke(cli, ["keys", "list", "--root", str(world.root)])
    assert "labels: eng" in listed.output and "all sources" in listed.output


def db_tree(db) -> str:  # type: ignore[no-untyped-def]
    from megacontext.store.metadata import trees

    with db.engine.connect() as conn:
        return str(conn.execute(trees.select()).first().id)
