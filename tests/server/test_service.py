"""The HTTP service: trees, sources, ask (with citations, streamed), tenants, scopes, bad input."""

from __future__ import annotations

import itertools
import json

from megacontext.client import parse_events
from megacontext.server.app import openapi_document

from .conftest import TEXT, World, tree_with_text


def _error(response, code: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return dict(body["error"])


def test_ingest_ask_with_citations_and_sources(world: World) -> None:
    tree_with_text(world)
    h = world.headers(world.writer)
    tree = world.client.get("/v1/trees/notes", headers=h).json()
    assert tree["sources"] == 1 and tree["tokens"] > 0
    again = world.client.post(
        "/v1/trees/notes/sources", json={"text": TEXT, "source": "file:///copy.txt"}, headers=h
    ).json()
    assert again["tokens"] == 0 and again["duplicate_of"]  # the same content is not added twice

    asked = world.client.post(
        "/v1/trees/notes/ask",
        json={"question": "Which ship at dusk?", "max_new_tokens": 6},
        headers=world.headers(world.reader),
    )
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert (
        body["usage"]["completion_tokens"] == len(body["answer"])
        or body["usage"]["completion_tokens"] <= 6
    )
    for citation in body["citations"]:
        assert citation["source"] == "logbook.txt" and citation["label"].startswith("logbook.txt")
    after = world.client.get("/v1/trees/notes", headers=h).json()
    assert after["tokens"] == tree["tokens"]  # the question was not written into the history

    sources = world.client.get("/v1/trees/notes/sources", headers=h).json()["sources"]
    assert [s["source"] for s in sources] == ["logbook.txt"]
    removed = world.client.delete(f"/v1/trees/notes/sources/{sources[0]['id']}", headers=h)
    assert removed.json()["removed_tokens"] == tree["tokens"]
    assert world.client.get("/v1/trees/notes", headers=h).json()["tokens"] == 0
    _error(world.client.delete("/v1/trees/notes/sources/999", headers=h), 404)


def test_a_streamed_answer_adds_up_to_the_answer(world: World) -> None:
    tree_with_text(world)
    question = {"question": "Which ship at dusk?", "max_new_tokens": 8}
    whole = world.client.post(
        "/v1/trees/notes/ask", json=question, headers=world.headers(world.reader)
    ).json()
    with world.client.stream(
        "POST",
        "/v1/trees/notes/ask",
        json={**question, "stream": True},
        headers=world.headers(world.reader),
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(parse_events(response.iter_lines()))
    texts = "".join(data["text"] for event, data in events if event == "text")
    (final,) = [data for event, data in events if event == "answer"]
    assert texts == final["answer"] == whole["answer"]


def test_a_tenant_cannot_see_another_tenants_trees(world: World) -> None:
    tree_with_text(world)
    h = world.headers(world.other)
    assert world.client.get("/v1/trees", headers=h).json() == {"trees": []}
    assert world.client.get("/v1/models", headers=h).json()["data"] == []
    for method, path, body in (
        ("GET", "/v1/trees/notes", None),
        ("GET", "/v1/trees/notes/sources", None),
        ("POST", "/v1/trees/notes/sources", {"text": "x"}),
        ("POST", "/v1/trees/notes/ask", {"question": "what?"}),
        ("POST", "/v1/trees/notes/generate", {"max_new_tokens": 2}),
        ("DELETE", "/v1/trees/notes", None),
        ("DELETE", "/v1/trees/notes/sources/1", None),
    ):
        response = world.client.request(method, path, json=body, headers=h)
        assert _error(response, 404)["type"] == "not_found", (method, path)
    chat = world.client.post(
        "/v1/chat/completions",
        json={"model": "notes", "messages": [{"role": "user", "content": "hi"}]},
        headers=h,
    )
    _error(chat, 404)
    # the same name is free in the other tenant's namespace
    assert world.client.post("/v1/trees", json={"name": "notes"}, headers=h).status_code == 201
    mine = world.client.get("/v1/trees/notes", headers=world.headers(world.writer)).json()
    assert mine["tokens"] > 0


def test_keys_and_scopes(world: World) -> None:
    tree_with_text(world)
    assert world.client.get("/v1/health").json()["status"] == "ok"
    assert _error(world.client.get("/v1/trees"), 401)["type"] == "unauthorized"
    _error(world.client.get("/v1/trees", headers=world.headers("mck_nonsense")), 401)
    forged = world.writer[:-4] + "AAAA"
    _error(world.client.get("/v1/trees", headers=world.headers(forged)), 401)
    reader = world.headers(world.reader)
    _error(world.client.post("/v1/trees/notes/sources", json={"text": "x"}, headers=reader), 403)
    remember = {"question": "what?", "remember": True}
    _error(world.client.post("/v1/trees/notes/ask", json=remember, headers=reader), 403)
    _error(world.client.post("/v1/trees", json={"name": "mine"}, headers=reader), 403)
    keys = world.client.app.state.service.keys  # type: ignore[attr-defined]
    key_id = world.reader.split("_")[1]
    keys.revoke(key_id)
    assert "revoked" in _error(world.client.get("/v1/trees", headers=reader), 401)["message"]


def test_bad_input_gets_one_error_schema(world: World) -> None:
    tree_with_text(world)
    h = world.headers(world.writer)
    as_json = {**h, "content-type": "application/json"}
    raw = world.client.post("/v1/trees/notes/ask", content=b"{not json", headers=as_json)
    _error(raw, 422)
    _error(world.client.post("/v1/trees/notes/ask", json={"question": 5}, headers=h), 422)
    wrong = world.client.post(
        "/v1/trees/notes/ask", json={"question": "q", "max_new_tokens": -1}, headers=h
    )
    assert "max_new_tokens" in _error(wrong, 422)["message"]
    _error(world.client.post("/v1/trees", json={"name": "../etc"}, headers=h), 400)
    exists = world.client.post("/v1/trees", json={"name": "notes"}, headers=h)
    assert _error(exists, 409)["type"] == "already_exists"
    assert "Retry-After" not in exists.headers  # retrying will not help
    _error(world.client.get("/v1/trees/nowhere", headers=h), 404)
    big = world.client.post("/v1/trees/notes/sources", json={"text": "x" * 100_000}, headers=h)
    assert "limit" in _error(big, 413)["message"]
    not_utf8 = world.client.post(
        "/v1/trees/notes/sources",
        content=b'{"text": "caf\xe9"}',
        headers=as_json,
    )
    assert "UTF-8" in _error(not_utf8, 400)["message"]
    chat = world.client.post(
        "/v1/chat/completions",
        json={"model": "notes", "messages": [{"role": "assistant", "content": "hi"}]},
        headers=h,
    )
    assert "user" in _error(chat, 400)["message"]
    assert world.client.get("/v1/trees/notes", headers=h).json()["sources"] == 1  # kept


def test_the_committed_openapi_document_is_the_apps() -> None:
    from pathlib import Path

    committed = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: python -m megacontext.server openapi docs/openapi.json"
    )
    assert committed["openapi"].startswith("3.1")


def test_the_working_context_and_provenance_can_be_looked_at(world: World) -> None:
    tree_with_text(world)
    h = world.headers(world.reader)
    tokens = world.client.get("/v1/trees/notes", headers=h).json()["tokens"]
    plain = world.client.post("/v1/trees/notes/context", json={}, headers=h).json()
    assert plain["size"] <= plain["W_max"] == 48
    covered = [(e["start"], e["end"]) for e in plain["entries"]]
    assert covered[0][0] == 0 and covered[-1][1] == tokens  # the whole history, in order
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # contiguous
    assert sum(e["entries"] for e in plain["entries"]) == plain["size"]
    pinned = world.client.post(
        "/v1/trees/notes/context", json={"pins": [[40, 44]], "W_max": 128}, headers=h
    ).json()
    assert "entries" in pinned, pinned
    raw = [e for e in pinned["entries"] if e["level"] == 0]
    assert any(e["start"] <= 40 and e["end"] >= 44 for e in raw), pinned  # pinned tokens raw
    assert pinned["W_max"] == 128 and pinned["size"] <= 128
    asked = world.client.post(
        "/v1/trees/notes/context", json={"question": "Which ship at dusk?"}, headers=h
    )
    assert asked.status_code == 200 and asked.json()["size"] <= 48
    too_big = world.client.post("/v1/trees/notes/context", json={"W_max": 10**6}, headers=h)
    assert "W_max" in _error(too_big, 400)["message"]
    spans = world.client.get("/v1/trees/notes/provenance?start=0&stop=5", headers=h).json()
    rows = spans["spans"]  # one row per LOD1 block of the source
    assert rows[0]["start"] == 0 and rows[-1]["stop"] >= 5 and rows[0]["lines"][0] == 1
    assert {r["source"] for r in rows} == {"logbook.txt"}
    _error(world.client.get("/v1/trees/notes/provenance?start=5&stop=5", headers=h), 400)


def test_files_upload_in_any_encoding_with_progress_events(world: World) -> None:
    h = world.headers(world.writer)
    world.client.post("/v1/trees", json={"name": "docs"}, headers=h)
    latin = "".join(f"ligne {i}: le café coûte {i} francs à Genève\n" for i in range(80))
    done = world.client.post(
        "/v1/trees/docs/uploads?name=prix.txt",
        content=latin.encode("latin-1"),
        headers={**h, "content-type": "application/octet-stream"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["tokens"] > 0
    spans = world.client.get("/v1/trees/docs/provenance?start=0&stop=4", headers=h).json()
    assert spans["spans"][0]["source"] == "prix.txt"
    context = world.client.post("/v1/trees/docs/context", json={}, headers=h).json()
    assert "café" in "".join(e["text"] for e in context["entries"])  # decoded, not mangled

    text = "".join(f"row {i}: the gauge read {i * 3} bar\n" for i in range(200))
    with world.client.stream(
        "POST",
        "/v1/trees/docs/uploads?name=gauges.txt&events=true",
        content=text.encode(),
        headers={**h, "content-type": "application/octet-stream"},
    ) as response:
        events = list(parse_events(response.iter_lines()))
    progress = [data for event, data in events if event == "progress"]
    (ingested,) = [data for event, data in events if event == "ingested"]
    assert progress and progress[-1]["tokens"] == progress[-1]["total"] == ingested["tokens"]
    assert [p["tokens"] for p in progress] == sorted(p["tokens"] for p in progress)

    wrong = world.client.post(
        "/v1/trees/docs/uploads?encoding=ascii",
        content=latin.encode("latin-1"),
        headers={**h, "content-type": "application/octet-stream"},
    )
    assert "not ascii text" in _error(wrong, 400)["message"]
    binary = world.client.post("/v1/trees/docs/uploads", content=b"\x00\x01\x02" * 100, headers=h)
    assert "binary" in _error(binary, 400)["message"]
    _error(world.client.post("/v1/trees/none/uploads", content=b"text", headers=h), 404)


def test_traces_a_session_wrote_can_be_read(world: World) -> None:
    from megacontext.runtime import SessionConfig, open_session

    tree_with_text(world)
    path = world.root / "tenants" / "acme" / "trees" / "notes"
    traced = SessionConfig(W_max=48, protected_recent=12, query_tokens=8, refocus_every=4)
    with open_session(path, config=traced) as mc:  # a writer that records its focus
        list(mc.generate("And then", max_new_tokens=12))
    h = world.headers(world.reader)
    (listed,) = world.client.get("/v1/trees/notes/traces", headers=h).json()["traces"]
    assert listed["steps"] > 0 and listed["name"].startswith("session-")
    trace = world.client.get(f"/v1/trees/notes/traces/{listed['name']}", headers=h).json()
    assert len(trace["steps"]) == listed["steps"]
    assert {"step", "tokens", "expands", "collapses"} <= set(trace["steps"][0])
    _error(world.client.get("/v1/trees/notes/traces/nope.jsonl", headers=h), 404)
    other = world.headers(world.other)
    _error(world.client.get("/v1/trees/notes/traces", headers=other), 404)


def test_concurrent_requests_run_every_model_on_one_thread(world: World, live: str) -> None:
    """Torch must only ever run on the service's model lane (server/lane.py): a forward pass
    on any other thread would give that thread an OpenMP team of its own."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    tree_with_text(world)
    trees = world.client.app.state.service.trees
    modules = [trees.base.model, trees.bundle.get("gistnet"), trees.bundle.get("lensnet")]
    threads: set[int] = set()
    hooks = [
        m.register_forward_pre_hook(lambda *_: threads.add(threading.get_ident())) for m in modules
    ]
    h = world.headers(world.writer)

    def ask(i: int) -> int:
        question = {"question": f"Which ship at dusk, {i}?", "max_new_tokens": 3}
        return httpx.post(
            f"{live}/v1/trees/notes/ask", json=question, headers=h, timeout=120
        ).status_code

    def ingest(i: int) -> int:
        text = {"text": f"note {i}: " + TEXT[:400], "source": f"file:///n{i}.txt"}
        return httpx.post(
            f"{live}/v1/trees/notes/sources", json=text, headers=h, timeout=120
        ).status_code

    try:
        with ThreadPoolExecutor(6) as pool:
            asked = [pool.submit(ask, i) for i in range(4)]
            ingested = [pool.submit(ingest, i) for i in range(2)]
            codes = [f.result() for f in asked + ingested]
    finally:
        for hook in hooks:
            hook.remove()
    assert codes == [200] * 6
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_ask_where_keeps_focus_and_citations_on_the_admitted_sources(world: World) -> None:
    h = world.headers(world.writer)
    assert world.client.post("/v1/trees", json={"name": "kb"}, headers=h).status_code == 201
    old = "Refunds are accepted within 30 days of purchase. " * 12
    new = "Refunds are accepted within 14 days of purchase. " * 12
    for version, text in ((1, old), (2, new)):
        meta = {"partition": "policies", "doc": "refunds", "version": version, "kind": "policy"}
        done = world.client.post(
            "/v1/trees/kb/sources",
            json={"text": text, "source": f"kb://policies/refunds@v{version}", "metadata": meta},
            headers=h,
        )
        assert done.status_code == 200, done.text
    where = {"question": "How many days?", "max_new_tokens": 4, "where": "version=latest"}
    asked = world.client.post("/v1/trees/kb/ask", json=where, headers=world.headers(world.reader))
    assert asked.status_code == 200, asked.text
    body = asked.json()
    for citation in body["citations"]:
        assert citation["source"] == "policies/refunds@v2" and citation["latest"] is True
    plain = world.client.post(
        "/v1/trees/kb/ask",
        json={"question": "How many days?", "max_new_tokens": 4},
        headers=world.headers(world.reader),
    ).json()
    assert all(c["latest"] is None for c in plain["citations"])
    with world.client.stream(
        "POST",
        "/v1/trees/kb/ask",
        json={**where, "stream": True},
        headers=world.headers(world.reader),
    ) as response:
        events = list(parse_events(response.iter_lines()))
    (final,) = [data for event, data in events if event == "answer"]
    assert final["answer"] == body["answer"]
    bad = world.client.post(
        "/v1/trees/kb/ask",
        json={**where, "where": "colour=red"},
        headers=world.headers(world.reader),
    )
    assert "unknown field 'colour'" in _error(bad, 400)["message"]
    both = world.client.post("/v1/trees/kb/ask", json={**where, "remember": True}, headers=h)
    assert "cannot be combined with remember" in _error(both, 400)["message"]
    weighed = world.client.post(
        "/v1/trees/kb/ask",
        json={**where, "prior": "policies: lexical=1, lens=1"},
        headers=world.headers(world.reader),
    )
    assert weighed.status_code == 200, weighed.text
    assert all(c["latest"] is True for c in weighed.json()["citations"])
    for prior, said in [
        ("policies: colour=1", "SIGNAL one of lexical, keys, lens"),
        ("memos: lexical=1", "partition 'memos', which holds no source"),
    ]:
        refused = world.client.post(
            "/v1/trees/kb/ask", json={**where, "prior": prior}, headers=world.headers(world.reader)
        )
        assert said in _error(refused, 400)["message"]
    both = world.client.post(
        "/v1/trees/kb/ask",
        json={"question": "q", "prior": "lexical=1", "remember": True},
        headers=h,
    )
    assert "prior shapes how one question" in _error(both, 400)["message"]
    listed = world.client.get("/v1/trees/kb/sources", headers=h).json()["sources"]
    assert len(listed) == 2  # the old version stays in the history; where only steered focus
