"""Ingest on a dask.distributed cluster (a LocalCluster of worker processes on 127.0.0.1): the
tree, keys, provenance and lexical index are byte for byte those of a serial ingest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from megacontext.errors import InvalidInputError
from megacontext.runtime.cluster import Document, ingest_on_cluster, level1_calls
from megacontext.runtime.config import SessionConfig
from megacontext.runtime.opening import open_session
from megacontext.runtime.session import INGEST_CHUNK

ROOT = Path(__file__).resolve().parents[2]
# A small gist batch: a source's blocks are gisted in many calls whose boundaries must match.
CONFIG = SessionConfig(gist_batch=5)


def documents() -> list[Document]:
    """The project's docs pages, one longer than an ingest chunk, one shorter than a block (so
    blocks straddle sources), and one page twice (the second is skipped as a duplicate)."""
    pages = sorted((ROOT / "docs").glob("*.md"))
    docs = [Document(p.read_text(encoding="utf-8"), p.as_uri(), {"path": p.name}) for p in pages]
    long = "\n\n".join(d.text for d in docs)
    return [
        docs[0],
        Document("A short note.", "note:short", {"path": "short"}),
        *docs[1:4],
        Document(long, "docs:all", {"path": "all pages"}),
        docs[2],
        Document("Another one, also short.", "note:other"),
        *docs[4:6],
    ]


def without_identity(data: bytes) -> bytes:
    """A segment or checksum file with its tree's identity (header bytes 32-48, a hash of the
    tree's id, which differs between any two trees) and the header CRC over it zeroed."""
    return data[:32] + bytes(16) + data[48:60] + bytes(4) + data[64:]


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a tree directory holds that is not an identity or a time: every segment and
    checksum file of the tree and its keys by content, provenance rows, ingests and the lexical
    index's answers."""
    files = {
        str(p.relative_to(root)): hashlib.sha256(without_identity(p.read_bytes())).hexdigest()
        for sub in ("tree", "keys")
        for p in sorted((root / sub).rglob("*"))
        if p.suffix in (".seg", ".sum")
    }
    with open_session(root, readonly=True) as mc:
        db, tree_id, n = mc.metadata, mc.tree_id, mc.tree.num_tokens
        spans = [
            (p.start_index, p.stop_index, p.source.uri, p.byte_range, p.line_range, p.gist_version)
            for p in db.provenance(tree_id, 0, n)
        ]
        ingests = [(i.source.uri, i.start, i.stop, i.status) for i in db.ingests_of(tree_id)]
        lexical = mc.lexical.block_scores("session working context gist")
        records = {
            level: hashlib.sha256(
                (
                    mc.tree.tokens(0, n)
                    if level == 0
                    else mc.tree.gists(level, 0, mc.tree.count(level))
                ).tobytes()
            ).hexdigest()
            for level in range(mc.tree.num_levels + 1)
        }
    return {
        "files": files,
        "spans": spans,
        "ingests": ingests,
        "lexical": lexical,
        "records": records,
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as local:
        yield local


@pytest.mark.slow
def test_a_cluster_ingest_is_byte_identical_to_a_serial_one(tmp_path: Path, cluster: Any) -> None:
    from distributed import Client

    docs = documents()
    assert len(docs[5].text) > 4 * INGEST_CHUNK  # several chunks, whatever the tokenizer
    with open_session(tmp_path / "serial", config=CONFIG) as mc:
        mc.ingest("What the history held before this run.", "note:before")
        serial = [mc.ingest(d.text, d.source, d.metadata) for d in docs]
    with open_session(tmp_path / "cluster", config=CONFIG) as mc:
        mc.ingest("What the history held before this run.", "note:before")
        committed: list[int] = []
        with Client(cluster) as client:
            run = ingest_on_cluster(mc, docs, client, on_committed=lambda i, _: committed.append(i))
    assert run.results == serial
    assert serial[6].duplicate_of == docs[3].metadata["path"]
    assert committed == list(range(len(docs)))
    assert run.workers == 2
    assert run.computed == 0 and run.served > 20  # every level-1 call came from a worker
    assert run.tokens == sum(r.tokens for r in serial) > 4 * INGEST_CHUNK
    expected = snapshot(tmp_path / "serial")
    assert sum(name.endswith(".seg") for name in expected["files"]) >= 6  # tree and keys, 3 levels
    assert snapshot(tmp_path / "cluster") == expected


def test_the_plan_is_the_serial_gister_calls() -> None:
    """level1_calls is what MegaContextTree gists during Session.ingest's chunked appends."""
    from megacontext.core import MegaContextTree, MemoryBackend

    calls: list[tuple[int, int]] = []
    first_node = [0]

    def gister(level: int, inputs: np.ndarray) -> np.ndarray:
        if level == 1:
            calls.append((first_node[0], first_node[0] + len(inputs)))
            first_node[0] += len(inputs)
        return np.zeros((len(inputs), 2), np.float32)

    gister.dim = 2  # type: ignore[attr-defined]
    tree = MegaContextTree(MemoryBackend(2, np.float32), gister, K=4, gist_batch_size=7)
    rng = np.random.default_rng(0)
    for count in (3, 5, 2 * INGEST_CHUNK + 9, 1, 40):
        first, calls[:] = tree.num_tokens, []
        first_node[0] = first // 4
        ids = rng.integers(0, 50, count)
        for lo in range(0, count, INGEST_CHUNK):  # Session._append_blocks' chunks
            tree.append(ids[lo : lo + INGEST_CHUNK])
        assert calls == level1_calls(first, count, 4, 7)


def test_an_unreachable_scheduler_is_named(tmp_path: Path) -> None:
    with open_session(tmp_path / "t", config=CONFIG) as mc:
        with pytest.raises(InvalidInputError, match="cannot reach the dask scheduler"):
            ingest_on_cluster(mc, documents()[:1], "tcp://127.0.0.1:9")
        assert mc.tree.num_tokens == 0


@pytest.mark.slow
def test_the_cli_ingests_on_a_cluster(tmp_path: Path, cluster: Any) -> None:
    """`megacontext ingest --cluster` reports every file and makes the serial CLI's tree."""
    import json

    from typer.testing import CliRunner

    from megacontext.cli import app

    pages = tmp_path / "pages"
    pages.mkdir()
    for page in sorted((ROOT / "docs").glob("*.md"))[:4]:
        (pages / page.name).write_bytes(page.read_bytes())
    (pages / "blob.bin").write_bytes(b"\x00\x01\x02")
    runner = CliRunner()
    out = {}
    for name, extra in (("serial", []), ("cluster", ["--cluster", cluster.scheduler_address])):
        args = ["ingest", str(pages), "--tree", str(tmp_path / name), "--json", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        out[name] = json.loads(result.stdout)
    statuses = sorted((Path(f["path"]).name, f["status"]) for f in out["cluster"]["files"])
    assert statuses == sorted((Path(f["path"]).name, f["status"]) for f in out["serial"]["files"])
    assert ("blob.bin", "skipped") in statuses and len(statuses) == 5
    assert out["cluster"]["tokens"] == out["serial"]["tokens"] > 0
    assert snapshot(tmp_path / "cluster") == snapshot(tmp_path / "serial")


def test_the_cli_names_an_unreachable_cluster(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from megacontext.cli import app

    (tmp_path / "a.txt").write_text("Some text to ingest.", encoding="utf-8")
    args = ["ingest", str(tmp_path / "a.txt"), "--tree", str(tmp_path / "t")]
    result = CliRunner().invoke(app, [*args, "--cluster", "tcp://127.0.0.1:9"])
    assert isinstance(result.exception, InvalidInputError)
    assert "cannot reach the dask scheduler" in str(result.exception)
    assert "--cluster" in str(result.exception)
