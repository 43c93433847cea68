"""Two `megacontext serve` processes on one tree directory and one PostgreSQL metadata
database: concurrent writes to one tree are serialised (409 + retry), reads run beside them,
and every acknowledged ingest is in the tree afterwards, once, with its provenance."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from megacontext import client as sdk
from megacontext.bench.service import start_server
from megacontext.server.keys import KeyStore

PIECE = "".join(
    f"entry {i}: the tide tables list high water at {i}:{i % 60:02d}\n" for i in range(40)
)


def _serve(root: Path, metadata_url: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    extra = ["--metadata-url", metadata_url] if metadata_url is not None else []
    return start_server(root, "default", *extra, w_max=128)


@pytest.mark.slow
def test_two_processes_share_one_store_and_lose_nothing(tmp_path: Path, postgres_url: str) -> None:
    root = tmp_path / "service"
    root.mkdir()
    key, _ = KeyStore(root / "keys.sqlite").create("acme", "read,write")
    servers = [_serve(root, postgres_url) for _ in range(2)]
    try:
        clients = [sdk.Client(url, key, max_retries=30) for _, url in servers]
        clients[0].create_tree("shared")
        acknowledged: list[sdk.Ingested] = []
        errors: list[BaseException] = []

        def writer(number: int) -> None:
            try:
                for i in range(5):
                    text = f"process {number} piece {i}\n" + PIECE
                    acknowledged.append(
                        clients[number].ingest("shared", text, source=f"p{number}/{i}")
                    )
                    clients[number].ask("shared", "When is high water?", max_new_tokens=2)
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not errors, errors
        assert len(acknowledged) == 10 and all(a.tokens > 0 for a in acknowledged)

        tree = clients[1].get_tree("shared")
        sources = clients[0].list_sources("shared")
        assert sorted(s.source for s in sources) == sorted(
            f"p{n}/{i}" for n in (0, 1) for i in range(5)
        )
        spans = sorted((s.start, s.stop) for s in sources)
        assert spans[0][0] == 0 and spans[-1][1] == tree.tokens  # tiled: no gap, no overlap
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert sorted((a.start, a.stop) for a in acknowledged) == spans  # what was acknowledged
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
def test_a_terminated_server_finishes_the_ingest_it_acknowledges(tmp_path: Path) -> None:
    """SIGTERM while an ingest is in flight: the server lets it finish before it exits; what
    it acknowledged is in the tree after a restart, and nothing partial ever is."""
    root = tmp_path / "service"
    root.mkdir()
    key, _ = KeyStore(root / "keys.sqlite").create("acme", "read,write")
    process, url = _serve(root)
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(f"{url}/v1/trees", json={"name": "t"}, headers=headers).raise_for_status()
    big = PIECE * 120  # a few seconds of gisting on the tiny base
    outcome: dict[str, object] = {}

    def ingest() -> None:
        try:
            response = httpx.post(
                f"{url}/v1/trees/t/sources", json={"text": big}, headers=headers, timeout=300
            )
            outcome["status"], outcome["body"] = response.status_code, response.json()
        except httpx.TransportError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=ingest)
    thread.start()
    time.sleep(1.0)  # the request is being served
    process.terminate()
    thread.join(timeout=300)
    process.wait(timeout=300)
    assert outcome.get("status") == 200, outcome  # finished, not cut off
    acknowledged = outcome["body"]
    process, url = _serve(root)  # a new server over the same directory
    try:
        tree = httpx.get(f"{url}/v1/trees/t", headers=headers).json()
        sources = httpx.get(f"{url}/v1/trees/t/sources", headers=headers).json()["sources"]
        assert tree["tokens"] == acknowledged["stop"] and len(sources) == 1  # type: ignore[index]
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.slow
def test_a_served_tree_is_billed_for_storage_until_it_is_deleted(tmp_path: Path) -> None:
    """`serve --usage jsonl:… --storage-interval`: storage events tile a tree's life from its
    creation to its deletion, and the ingest is metered beside them; a SIGTERM flushes."""
    root = tmp_path / "service"
    root.mkdir()
    usage = tmp_path / "usage.jsonl"
    key, _ = KeyStore(root / "keys.sqlite").create("acme", "read,write")
    process, url = start_server(
        root, "default", "--usage", f"jsonl:{usage}", "--storage-interval", "0.5", w_max=128
    )
    try:
        with sdk.Client(url, key) as mc:
            before = time.time()
            mc.create_tree("billed")
            mc.ingest("billed", PIECE)
            time.sleep(2.0)  # several ticks
            mc.delete_tree("billed")
            deleted = time.time()
            mc.create_tree("kept")
    finally:
        process.terminate()
        process.wait(timeout=60)
    events = [json.loads(line) for line in usage.read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] != "storage"] == ["ingest"]
    billed = [e for e in events if e["event"] == "storage" and e["tree"] == "billed"]
    assert len(billed) >= 3
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(billed))
    assert before <= billed[0]["start"] and billed[-1]["end"] <= deleted
    assert all(e["bytes"] > 0 and e["byte_hours"] > 0 and e["tenant"] == "acme" for e in billed)
    # the last tick at shutdown billed the tree still there
    assert any(e["tree"] == "kept" for e in events if e["event"] == "storage")
