"""Erasure with proof, legal holds, retention and the compliance report — on SQLite and a real
PostgreSQL server, through the library and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from megacontext.cli import app as cli
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.erasure import (
    REDACTED,
    apply_retention,
    erase_sources,
    verify_erasure,
    window_hashes,
)
from megacontext.runtime.session import Session
from megacontext.store.metadata import lineage_table, schema
from megacontext.store.policies import Policies, SourceOnHoldError

HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(40))
ORCHARD = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(40))
CONFIG = SessionConfig(W_max=48, protected_recent=12, refocus_every=4, focus_steps=2)


def words(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def build(path: Path, tiny_world, url: str | None = None) -> None:  # type: ignore[no-untyped-def]
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, CONFIG, metadata_url=url) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        # focus on a line of the harbour text, so the trace records it coming into view
        target = mc.metadata.ingests_of(mc.tree_id)[0].stop - 100 if mc.metadata else 0

        def oracle(wc):  # type: ignore[no-untyped-def]
            starts, ends = wc.spans()
            return np.where((starts <= target) & (target < ends), 1.0, -1.0)

        mc.score_override = oracle
        for _ in range(12):
            mc.refocus()


@pytest.fixture(params=["in the tree", "postgresql"])
def session(request: pytest.FixtureRequest, tiny_world, tmp_path: Path) -> Iterator[Session]:  # type: ignore[no-untyped-def]
    # The SQLite case keeps the default layout (meta.sqlite inside the session directory), so
    # the byte scan covers the metadata database too.
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        schema.drop_all(engine)
        engine.dispose()
    build(tmp_path / "s", tiny_world, url)
    with open_session(tmp_path / "s", tiny_world.base) as mc:
        yield mc


def shown_in_traces(path: Path, start: int, stop: int) -> list[str]:
    """The texts traces recorded for blocks expanded within tokens [start, stop)."""
    texts = []
    for trace in (path / "traces").glob("*.jsonl"):
        for line in trace.read_text().splitlines():
            for shown in json.loads(line)["expanded_text"]:
                a, b = shown["tokens"]
                if start <= a and b <= stop:
                    texts.append(shown["text"])
    return texts


def harbour_of(mc: Session):  # type: ignore[no-untyped-def]
    assert mc.metadata is not None
    (found,) = [i for i in mc.metadata.ingests_of(mc.tree_id) if "harbour" in i.source.uri]
    return found


def test_window_hashes_match_a_direct_computation() -> None:
    tokens = np.array([5, 1, 2**32 - 1, 7, 9, 3], dtype=np.uint32)
    salt = 0x9E3779B97F4A7C15
    got = window_hashes(tokens, salt, window=3)
    want = [
        (int(a) * salt * salt + int(b) * salt + int(c)) % 2**64
        for a, b, c in zip(tokens, tokens[1:], tokens[2:], strict=False)
    ]
    assert got.tolist() == want


def test_an_erasure_leaves_nothing_and_the_verifier_proves_it(session: Session) -> None:
    assert session.path is not None and session.metadata is not None
    harbour = harbour_of(session)
    erased_tokens = session.tree.tokens(harbour.start, harbour.stop).copy()
    shown = shown_in_traces(session.path, harbour.start, harbour.stop)
    assert shown and all(t != REDACTED for t in shown)  # harbour text came into view
    erasure = erase_sources(session, [harbour])
    assert erasure.tokens == len(erased_tokens) and erasure.fingerprints > 0
    verdict = verify_erasure(session, erasure.id)
    assert verdict.ok, verdict.problems
    assert verdict.files_scanned >= 5 and verdict.lineage_checked > 0
    assert set(shown_in_traces(session.path, harbour.start, harbour.stop)) == {REDACTED}
    lexical = session.path / "lexical.sqlite"
    if lexical.is_file():  # the SQLite index: no page keeps the erased text
        assert b"ferry" not in lexical.read_bytes()
    events = [e.action for e in session.audit().events()]  # type: ignore[union-attr]
    assert events[-2:] == ["remove", "erase"]

    # the verifier is not a formality: a stray copy of the tokens, at any alignment, is found
    stray = session.path / "tree" / "stray.bin"
    stray.write_bytes(b"\x00" * 3 + erased_tokens.astype("<u4").tobytes()[40:400])
    caught = verify_erasure(session, erasure.id)
    assert any("tree/stray.bin holds erased tokens" in p for p in caught.problems)
    stray.unlink()
    with session.metadata.engine.begin() as conn:  # a gist's lineage edited
        conn.execute(
            lineage_table.update()
            .where(lineage_table.c.tree_id == session.tree_id, lineage_table.c.idx == 0)
            .values(hash="f" * 64)
        )
    assert any("lineage" in p for p in verify_erasure(session, erasure.id).problems)


def test_a_legal_hold_blocks_erasure_until_released(session: Session) -> None:
    assert session.metadata is not None
    policies = Policies(session.metadata, session.tree_id)
    harbour = harbour_of(session)
    policies.hold(harbour.id, "case 2026-114", "legal")
    with pytest.raises(SourceOnHoldError, match="case 2026-114"):
        erase_sources(session, [harbour])
    assert harbour_of(session).status == "complete"  # nothing was touched
    policies.retain_until(harbour.id, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "ops")
    assert apply_retention(session) is None  # due, but held
    policies.release(harbour.id, "legal")
    erasure = apply_retention(session)
    assert erasure is not None and [s["source"] for s in erasure.sources] == ["harbour.txt"]
    actions = [e.action for e in session.audit().events()]  # type: ignore[union-attr]
    assert [a for a in actions if a.startswith("policy")] == [
        "policy.hold",
        "policy.retention",
        "policy.release",
    ]


def test_retention_hold_verify_and_report_from_the_cli(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s"
    build(path, tiny_world)
    runner = CliRunner()
    tree = ["--tree", str(path)]

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return words(result.output)

    assert "kept until" in run("compliance", "retain", "harbour.txt", "--days", "1", *tree)
    run("compliance", "retain", "orchard.txt", "--days", "1", *tree)
    run("compliance", "hold", "orchard.txt", "--reason", "audit 7", *tree)
    run("compliance", "label", "orchard.txt", "--labels", "finance,eu", *tree)
    assert "nothing is due" in run("compliance", "apply-retention", *tree)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    assert "erased harbour.txt" in run("compliance", "apply-retention", "--now", later, *tree)
    refused = runner.invoke(cli, ["sources", "remove", "orchard.txt", "--yes", *tree])
    # (`megacontext` prints a typed error as one line and exits 2; the runner shows the error)
    assert isinstance(refused.exception, SourceOnHoldError)
    assert "release the hold first" in str(refused.exception)
    proof = json.loads(runner.invoke(cli, ["compliance", "verify-erasure", *tree, "--json"]).output)
    assert [v["ok"] for v in proof] == [True]
    report = json.loads(run("compliance", "report", *tree, "--json").replace("│", ""))
    (orchard,) = report["sources"]
    assert orchard["labels"] == ["eu", "finance"] and orchard["hold"] == "audit 7"
    assert [e["sources"] for e in report["erasures"]] == [["harbour.txt"]]
    assert report["audit_chain"]["ok"] and report["lineage"]["mismatches"] == 0
    out = tmp_path / "report.md"
    run("compliance", "report", *tree, "--out", str(out))
    text = out.read_text()
    assert "## Legal holds" in text and "audit 7" in text and "The audit chain holds" in text
    bad = runner.invoke(
        cli, ["compliance", "retain", "orchard.txt", "--days", "1", "--forever", *tree]
    )
    assert bad.exit_code == 2 and "exactly one of" in words(bad.output)
    missing = runner.invoke(cli, ["compliance", "hold", "nope.txt", "--reason", "x", *tree])
    assert "no source" in str(missing.exception) or "nope.txt" in str(missing.exception)


def test_an_erasure_interrupted_before_its_cleanup_is_finished_by_the_next_writer(
    tiny_world,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from megacontext.runtime import erasure as module

    path = tmp_path / "s"
    build(path, tiny_world)
    finish = module._finish

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C right after the removal, before the cleanup

    with open_session(path, tiny_world.base) as mc:
        harbour = harbour_of(mc)
        monkeypatch.setattr(module, "_finish", crash)
        with pytest.raises(KeyboardInterrupt):
            erase_sources(mc, [harbour])
        monkeypatch.setattr(module, "_finish", finish)
    with open_session(path, tiny_world.base, readonly=True) as reader:
        (pending,) = module.erasures(reader.metadata, reader.tree_id)  # type: ignore[arg-type]
        verdict = verify_erasure(reader, pending.id)
        assert not verdict.ok and "interrupted before its cleanup" in verdict.problems[0]
    with open_session(path, tiny_world.base) as writer:  # opening for writing finishes it
        assert verify_erasure(writer, pending.id).ok
        assert set(shown_in_traces(path, harbour.start, harbour.stop)) <= {REDACTED}
        assert [e.action for e in writer.audit().events()][-1] == "erase"  # type: ignore[union-attr]
