"""Lineage: every gist's Merkle hash recorded as it is made, recomputed by the verifier, cut back
and rebuilt with the history — on SQLite and a real PostgreSQL server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from megacontext.cli import app as cli
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.journal import remove_sources
from megacontext.runtime.session import Session
from megacontext.store.lineage import block_hashes, parent_hashes
from megacontext.store.metadata import lineage_table

HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(50))
ORCHARD = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(50))


@pytest.fixture()
def session(metadata_url: str, tiny_world, tmp_path: Path) -> Iterator[Session]:  # type: ignore[no-untyped-def]
    config = SessionConfig(W_max=48, protected_recent=12)
    with open_session(
        tmp_path / "s", tiny_world.base, tiny_world.bundle_dir, config, metadata_url=metadata_url
    ) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        yield mc


def expected(mc: Session) -> dict[int, list[str]]:
    """Every level's hashes recomputed from the tokens alone."""
    tree, K = mc.tree, mc.tree.K
    hashes = block_hashes(tree.tokens(0, tree.count(1) * K), K)
    out = {1: [h.hex() for h in hashes]}
    for level in range(2, tree.num_levels + 1):
        hashes = parent_hashes(hashes, K)
        out[level] = [h.hex() for h in hashes]
    return out


def recorded(mc: Session) -> dict[int, list[str]]:
    assert mc.metadata is not None
    with mc.metadata.engine.connect() as conn:
        rows = conn.execute(
            sa.select(lineage_table.c.level, lineage_table.c.idx, lineage_table.c.hash)
            .where(lineage_table.c.tree_id == mc.tree_id)
            .order_by(lineage_table.c.level, lineage_table.c.idx)
        ).all()
    out: dict[int, list[str]] = {}
    for level, _, digest in rows:
        out.setdefault(level, []).append(digest)
    return out


def test_every_gist_records_the_hash_of_what_it_was_computed_from(session: Session) -> None:
    tree = session.tree
    assert tree.num_levels >= 3
    assert recorded(session) == expected(session)
    assert {level: len(h) for level, h in recorded(session).items()} == {
        level: tree.count(level) for level in range(1, tree.num_levels + 1)
    }
    lineage = session.lineage()
    assert lineage is not None
    checked, bad = lineage.verify(tree)
    assert bad == [] and checked == sum(tree.count(lv) for lv in range(1, tree.num_levels + 1))


def test_the_verifier_names_a_changed_or_missing_hash(session: Session) -> None:
    lineage = session.lineage()
    assert lineage is not None and session.metadata is not None
    with session.metadata.engine.begin() as conn:
        conn.execute(
            lineage_table.update()
            .where(lineage_table.c.tree_id == session.tree_id, lineage_table.c.level == 1)
            .where(lineage_table.c.idx == 5)
            .values(hash="0" * 64)
        )
        conn.execute(
            lineage_table.delete().where(
                lineage_table.c.tree_id == session.tree_id,
                lineage_table.c.level == 2,
                lineage_table.c.idx == 0,
            )
        )
    _, bad = lineage.verify(session.tree)
    found = [(m.level, m.index, m.problem) for m in bad]
    assert (1, 5, "changed") in found and (2, 0, "missing") in found
    assert found[0] == (1, 5, "changed")  # lowest level first


def test_a_removal_leaves_no_gist_computed_from_the_source(session: Session) -> None:
    assert session.metadata is not None
    (harbour,) = [
        i for i in session.metadata.ingests_of(session.tree_id) if "harbour" in i.source.uri
    ]
    remove_sources(session, [harbour])
    assert recorded(session) == expected(session)  # rebuilt over the kept tokens only
    lineage = session.lineage()
    assert lineage is not None and lineage.verify(session.tree)[1] == []
    for level in range(1, session.tree.num_levels + 1):
        width = session.tree.K**level
        for index in range(session.tree.count(level)):
            rows = session.metadata.provenance(session.tree_id, index * width, (index + 1) * width)
            assert all("harbour" not in r.source.uri for r in rows)


def test_the_cli_lists_a_gists_sources_and_checks_it(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s"
    with open_session(path, tiny_world.base, tiny_world.bundle_dir) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        K = mc.tree.K
        straddling = mc.metadata.ingests_of(mc.tree_id)[1].start // K**2 if mc.metadata else 0
    runner = CliRunner()
    shown = runner.invoke(cli, ["audit", "lineage", str(path), "2", str(straddling), "--json"])
    assert shown.exit_code == 0, shown.output
    node = json.loads(shown.output)
    assert node["holds"] and len(node["recorded_hash"]) == 64
    assert {s["source"] for s in node["sources"]} == {"harbour.txt", "orchard.txt"}
    assert runner.invoke(cli, ["audit", "verify", str(path)]).exit_code == 0
    missing = runner.invoke(cli, ["audit", "lineage", str(path), "9", "0"])
    assert missing.exit_code == 2 and "no gist 0 at level 9" in " ".join(missing.output.split())
