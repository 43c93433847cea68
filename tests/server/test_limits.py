"""Idempotency keys, rate limits, token budgets and usage metering of the service."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient

from megacontext.server import create_app
from megacontext.server.limits import Limits
from megacontext.server.usage import JsonlSink, WebhookSink

from .conftest import TEXT, World, config, tree_with_text


def _app(tiny_world, root: Path, **kw) -> tuple[TestClient, str]:  # type: ignore[no-untyped-def]
    app = create_app(root, base=tiny_world.base, focus=tiny_world.bundle, config=config(), **kw)
    key, _ = app.state.service.keys.create("acme", "read,write")
    return TestClient(app), key


def test_a_retried_ingest_with_an_idempotency_key_changes_nothing(world: World) -> None:
    tree_with_text(world)
    h = {**world.headers(world.writer), "Idempotency-Key": "ingest-42"}
    body = {"text": "one more line about the harbour\n", "force": True}
    first = world.client.post("/v1/trees/notes/sources", json=body, headers=h)
    tokens = world.client.get("/v1/trees/notes", headers=h).json()["tokens"]
    again = world.client.post("/v1/trees/notes/sources", json=body, headers=h)
    assert again.status_code == first.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert world.client.get("/v1/trees/notes", headers=h).json()["tokens"] == tokens
    other = world.client.post(
        "/v1/trees/notes/sources", json={**body, "text": "another text\n"}, headers=h
    )
    assert other.status_code == 422 and other.json()["error"]["type"] == "idempotency_key_reused"
    # the key is the caller's own: another tenant's request with it is a request of its own
    theirs = {**world.headers(world.other), "Idempotency-Key": "ingest-42"}
    assert world.client.post("/v1/trees", json={"name": "x"}, headers=theirs).status_code == 201


def test_a_retry_after_a_conflict_runs_for_real_under_the_same_idempotency_key(
    world: World,
) -> None:
    """A 409 (another writer) says "not now": it is not stored under the key, so the SDKs'
    retry with the same key ingests, once."""
    tree_with_text(world)
    h = {**world.headers(world.writer), "Idempotency-Key": "retried-7"}
    body = {"text": "a line written while another writer held the tree\n"}
    service = world.client.app.state.service  # type: ignore[attr-defined]
    with service.trees.writer("acme", "notes"):
        busy = world.client.post("/v1/trees/notes/sources", json=body, headers=h)
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "conflict"
    done = world.client.post("/v1/trees/notes/sources", json=body, headers=h)
    assert done.status_code == 200 and "Idempotent-Replayed" not in done.headers
    assert done.json()["tokens"] > 0
    again = world.client.post("/v1/trees/notes/sources", json=body, headers=h)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == done.json()


def test_rate_limits_answer_429_with_retry_after_and_ratelimit_headers(
    tiny_world, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    client, key = _app(tiny_world, tmp_path, limits=Limits(per_minute={"read": 3, "write": 60}))
    h = {"Authorization": f"Bearer {key}"}
    remaining = []
    for _ in range(3):
        response = client.get("/v1/trees", headers=h)
        assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "3"
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    limited = client.get("/v1/trees", headers=h)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limited"
    assert client.post("/v1/trees", json={"name": "t"}, headers=h).status_code == 201  # own class


def test_token_budgets_hold_per_request_and_per_day(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, key = _app(
        tiny_world, tmp_path, limits=Limits(max_request_tokens=400, tokens_per_day=1500)
    )
    h = {"Authorization": f"Bearer {key}"}
    client.post("/v1/trees", json={"name": "t"}, headers=h)
    too_long = client.post("/v1/trees/t/sources", json={"text": TEXT * 3}, headers=h)
    assert too_long.status_code == 400 and "at most 400" in too_long.json()["error"]["message"]
    ask = {"question": "which ship?", "max_new_tokens": 500}
    assert client.post("/v1/trees/t/ask", json=ask, headers=h).status_code == 400
    spent = 0
    for i in range(20):  # small ingests until the day's budget is spent
        response = client.post(
            "/v1/trees/t/sources", json={"text": f"{i} " + TEXT[:250]}, headers=h
        )
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
        spent += response.json()["tokens"]
    assert response.status_code == 429, "the daily budget never held"
    assert response.json()["error"]["type"] == "rate_limited" and "daily budget" in response.text
    assert int(response.headers["Retry-After"]) > 0
    assert 1500 <= spent < 1500 + 400  # checked before each request, counted after
    assert client.post("/v1/trees/t/ask", json={"question": "q"}, headers=h).status_code == 429
    assert client.get("/v1/trees/t", headers=h).status_code == 200  # reading is not budgeted


def test_usage_events_reach_a_jsonl_file(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sink = JsonlSink(tmp_path / "usage.jsonl")
    client, key = _app(tiny_world, tmp_path / "svc", usage=sink)
    h = {"Authorization": f"Bearer {key}"}
    client.post("/v1/trees", json={"name": "t"}, headers=h)
    ingested = client.post("/v1/trees/t/sources", json={"text": TEXT}, headers=h).json()
    answer = client.post(
        "/v1/trees/t/ask", json={"question": "q?", "max_new_tokens": 4}, headers=h
    ).json()
    events = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["ingest", "ask"]
    assert events[0]["tokens"] == ingested["tokens"] and events[0]["gists"] > 0
    assert events[0]["tenant"] == "acme" and events[0]["tree"] == "t"
    assert events[1]["prompt_tokens"] == answer["usage"]["prompt_tokens"]
    assert events[1]["completion_tokens"] == answer["usage"]["completion_tokens"]


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []
    fail_first: ClassVar[int] = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.received.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_sink_retries_and_keeps_what_it_cannot_deliver(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/usage"
    sink = WebhookSink(url, retries=2, backoff_s=0.01)
    sink.emit({"event": "ingest", "tokens": 7})
    sink.close()
    server.shutdown()
    assert _Hook.received == [{"event": "ingest", "tokens": 7}] and sink.failures == 0
    dead = WebhookSink(
        "http://127.0.0.1:9/nowhere", retries=1, backoff_s=0.01, dead_letter=tmp_path / "dl.jsonl"
    )
    dead.emit({"event": "ask", "prompt_tokens": 3})
    dead.close()
    assert dead.failures == 1
    assert json.loads((tmp_path / "dl.jsonl").read_text()) == {"event": "ask", "prompt_tokens": 3}


def test_serve_names_a_bad_rate_limit_flag() -> None:
    from typer.testing import CliRunner

    from megacontext.cli import app

    result = CliRunner().invoke(app, ["serve", "--rate-limit", "reads=5"])
    assert result.exit_code != 0 and "--rate-limit" in result.output


def _tree_size(path: Path) -> int:  # what is stored, not SQLite's shared-memory scratch
    files = [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
    return sum(f.stat().st_size for f in files if not f.name.endswith("-shm"))


def test_storage_is_billed_in_byte_hours_from_creation_to_deletion(
    tiny_world, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sink = JsonlSink(tmp_path / "usage.jsonl")
    client, key = _app(tiny_world, tmp_path / "svc", usage=sink, storage_interval_s=None)
    service = client.app.state.service  # type: ignore[attr-defined]
    now = [1000.0]
    service.storage.clock = lambda: now[0]
    h = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/trees", json={"name": "t"}, headers=h).status_code == 201
    assert client.post("/v1/trees", json={"name": "kept"}, headers=h).status_code == 201
    path = service.trees.path("acme", "t")
    created = _tree_size(path)
    client.post("/v1/trees/t/sources", json={"text": TEXT}, headers=h).raise_for_status()
    grown = _tree_size(path)
    assert grown > created

    now[0] += 1800  # half an hour
    ticked = {e["tree"]: e for e in service.storage.tick()}
    assert set(ticked) == {"t", "kept"}
    first = ticked["t"]
    assert first["tenant"] == "acme" and first["bytes"] == grown
    assert (first["start"], first["end"], first["hours"]) == (1000.0, 2800.0, 0.5)
    assert first["byte_hours"] == (created + grown) / 2 * 0.5  # the mean size over the interval

    now[0] += 900
    assert client.delete("/v1/trees/t", headers=h).status_code == 204
    now[0] += 3600
    service.close()  # the last tick: "kept" up to now, and nothing more for the deleted tree

    storage = [
        e for e in map(json.loads, sink.path.read_text().splitlines()) if e["event"] == "storage"
    ]
    billed_t = [e for e in storage if e["tree"] == "t"]
    assert [(e["start"], e["end"]) for e in billed_t] == [(1000.0, 2800.0), (2800.0, 3700.0)]
    assert billed_t[-1]["byte_hours"] == grown * 0.25
    billed_kept = [e for e in storage if e["tree"] == "kept"]
    assert [(e["start"], e["end"]) for e in billed_kept] == [(1000.0, 2800.0), (2800.0, 7300.0)]


def test_a_metered_interval_is_billed_once_across_processes(tmp_path: Path) -> None:
    """Two meters over one ledger (two serving processes): whatever order and clocks they
    tick with, each tree's billed intervals tile time from its first sighting, never overlap
    and never run backwards."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from megacontext.server.usage import StorageMeter

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "blob").write_bytes(b"x" * 3600)

    class Collect:
        def __init__(self) -> None:
            self.events: list[dict[str, object]] = []

        def emit(self, event: dict[str, object]) -> None:
            self.events.append(event)

        def close(self) -> None:
            pass

    ticks = st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1e5)), min_size=1, max_size=20)

    @settings(max_examples=60, deadline=None)
    @given(ticks)
    def check(plan: list[tuple[int, float]]) -> None:
        ledger = tmp_path / "ledger.sqlite"
        ledger.unlink(missing_ok=True)
        sink, clocks = Collect(), [0.0, 0.0]
        meters = [
            StorageMeter(ledger, lambda: [("acme", "t", tree)], sink, lambda i=i: clocks[i])
            for i in (0, 1)
        ]
        meters[0].tick()  # first sighting at time 0
        for which, when in plan:
            clocks[which] = when
            meters[which].tick()
        spans = [(e["start"], e["end"]) for e in sink.events]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # tiled, in order
        assert all(start < end for start, end in spans)
        billed_to = max([0.0, *(when for _, when in plan)])
        assert (spans[-1][1] if spans else 0.0) == billed_to
        assert sum(e["byte_hours"] for e in sink.events) == pytest.approx(billed_to)  # 3600 B

    check()
