"""megacontext.client, the Python SDK: against a live server, retries on a scripted transport,
and its result types checked against the OpenAPI document (a drift fails here)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from megacontext import client as sdk
from megacontext.server.app import openapi_document

from .conftest import TEXT, World

# Not UTF-8 once encoded: "€", the curly quotes and the dash are single bytes in cp1252.
CP1252 = "".join(
    f"entry {i}: the café paid €{i * 3} for “naïve” façades – all sold\n" for i in range(12)
)
UTF16 = "".join(f"ligne {i} : le phare de l'île voit {i * 5} bâteaux à l'aube\n" for i in range(12))
LATIN1 = "".join(
    f"Zeile {i}: der Hafenmeister zählt {i * 2} Schiffe über Nacht\n" for i in range(12)
)
BINARY = bytes(range(256)) * 4


def test_the_client_round_trip_against_a_live_server(world: World, live: str) -> None:
    with sdk.Client(live, world.writer) as mc:
        assert mc.health()["status"] == "ok"
        assert mc.create_tree("notes").tokens == 0
        done = mc.ingest("notes", TEXT, source="file:///log.txt", metadata={"path": "log.txt"})
        assert done.tokens > 0 and done.duplicate_of is None
        assert mc.ingest("notes", TEXT).duplicate_of  # the same content: nothing appended
        assert [s.source for s in mc.list_sources("notes")] == ["log.txt"]
        answer = mc.ask("notes", "Which ship at dusk?", max_new_tokens=8)
        assert (
            answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
        )
        events = list(mc.ask_stream("notes", "Which ship at dusk?", max_new_tokens=8))
        assert events[-1].answer is not None and events[-1].answer.answer == answer.answer
        kept = mc.ask("notes", "Which ship at dusk?", max_new_tokens=8, where="path=log.txt")
        assert kept.answer == answer.answer  # every source admitted: the same answer
        assert all(c.latest is True for c in kept.citations)  # a plain source is its latest
        with pytest.raises(sdk.BadRequestError, match="unknown field 'colour'"):
            mc.ask("notes", "q", where="colour=red")
        weighed = mc.ask("notes", "Which ship at dusk?", max_new_tokens=8, prior="lexical=1")
        assert all(c.latest is True for c in weighed.citations)
        with pytest.raises(sdk.BadRequestError, match="is not SIGNAL=WEIGHT"):
            mc.ask("notes", "q", prior="lexical")
        assert "".join(e.text for e in events[:-1] if e.text) == answer.answer
        assert mc.models() == ["notes"]
        view = mc.context("notes", "Which ship at dusk?", W_max=64, pins=[(4, 8)])
        assert view.W_max == 64 and view.entries[-1].end == mc.get_tree("notes").tokens
        (first, *_) = mc.provenance("notes", 0, 4)
        assert first.source == "log.txt" and first.lines is not None
        assert mc.generate("notes", max_new_tokens=3).tokens <= 3
        (source,) = [s for s in mc.list_sources("notes") if s.source == "log.txt"]
        assert mc.remove_source("notes", source.id) == source.tokens
        with pytest.raises(sdk.NotFoundError):
            mc.get_tree("missing")
        with pytest.raises(sdk.BadRequestError, match="max_new_tokens"):
            mc.ask("notes", "q", max_new_tokens=0)
        with pytest.raises(sdk.ConflictError, match="already_exists"):
            mc.create_tree("notes")  # not retried: a 409 without Retry-After will not change
    with pytest.raises(sdk.PermissionDeniedError):
        sdk.Client(live, world.reader).ingest("notes", "more")
    with pytest.raises(sdk.NotFoundError):
        list(sdk.Client(live, world.other).ask_stream("notes", "anything?"))
    with pytest.raises(sdk.AuthenticationError):
        sdk.Client(live, "mck_wrong").list_trees()


def test_the_async_client_streams_the_same_answer(world: World, live: str) -> None:
    async def run() -> tuple[str, str]:
        async with sdk.AsyncClient(live, world.writer) as mc:
            await mc.create_tree("notes")
            await mc.ingest("notes", TEXT)
            whole = await mc.ask("notes", "Which ship at dusk?", max_new_tokens=8)
            pieces = [
                e.text
                async for e in mc.ask_stream("notes", "Which ship at dusk?", max_new_tokens=8)
                if e.text
            ]
            return whole.answer, "".join(pieces)

    whole, streamed = asyncio.run(run())
    assert whole == streamed


def _tail(mc: sdk.Client, tree: str) -> str:
    """The last 24 characters of the raw text ending the tree's working context."""
    tail = mc.context(tree).entries[-1].text
    assert len(tail) >= 24
    return tail[-24:]


def test_uploads_bytes_in_any_encoding_and_reports_bad_ones(
    world: World, live: str, tmp_path: Path
) -> None:
    with sdk.Client(live, world.writer) as mc:
        mc.create_tree("docs")
        given = mc.upload("docs", CP1252.encode("cp1252"), name="cafe.txt", encoding="cp1252")
        assert given.tokens > 0 and given.start == 0 and given.stop == given.tokens
        assert given.duplicate_of is None
        assert CP1252.endswith(_tail(mc, "docs"))  # decoded as cp1252, not mangled
        detected = mc.upload("docs", UTF16.encode("utf-16"), name="phare.txt")  # BOM: detected
        assert detected.tokens > 0 and detected.start == given.stop
        assert UTF16.endswith(_tail(mc, "docs"))
        file = tmp_path / "hafen.txt"
        file.write_bytes(LATIN1.encode("latin-1"))
        from_path = mc.upload("docs", file, encoding="latin-1", source="file:///hafen.txt")
        assert from_path.tokens > 0 and from_path.start == detected.stop
        assert LATIN1.endswith(_tail(mc, "docs"))
        assert [s.source for s in mc.list_sources("docs")] == ["cafe.txt", "phare.txt", "hafen.txt"]
        assert mc.get_tree("docs").tokens == from_path.stop
        again = mc.upload("docs", file, encoding="latin-1")  # the same text: not appended
        assert again.tokens == 0 and again.duplicate_of == "hafen.txt"
        assert mc.upload("docs", file, encoding="latin-1", force=True).tokens == from_path.tokens
        assert mc.upload("docs", "plain text, sent as UTF-8", name="s.txt").tokens > 0

        with pytest.raises(sdk.BadRequestError, match="binary") as binary:
            mc.upload("docs", BINARY, name="blob.bin")
        assert binary.value.status == 400 and binary.value.type == "invalid_request"
        assert "blob.bin is empty or binary" in binary.value.message
        with pytest.raises(sdk.BadRequestError, match="binary"):
            mc.upload("docs", BINARY, on_progress=lambda *_: None)
        with pytest.raises(sdk.BadRequestError, match="not utf-8 text"):
            mc.upload("docs", CP1252.encode("cp1252"), encoding="utf-8")
        with pytest.raises(sdk.BadRequestError, match="unknown text encoding"):
            mc.upload("docs", b"text", encoding="no-such-codec")
        with pytest.raises(sdk.NotFoundError):
            mc.upload("missing", b"text")
        assert len(mc.list_sources("docs")) == 5  # nothing the service refused was appended
    with pytest.raises(sdk.PermissionDeniedError):
        sdk.Client(live, world.reader).upload("docs", b"more text")


def test_upload_progress_ends_with_the_same_ingested_as_the_final_event(
    world: World, live: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several progress events for a small text: report every 64 tokens (a multiple of K).
    monkeypatch.setattr("megacontext.runtime.session.INGEST_CHUNK", 64)
    calls: list[tuple[int, int]] = []
    with sdk.Client(live, world.writer) as mc:
        mc.create_tree("progress")
        mc.create_tree("raw")
        done = mc.upload("progress", TEXT.encode(), name="log.txt", on_progress=_record(calls))
        assert done.tokens > 128 and done.start == 0 and done.duplicate_of is None
        assert len(calls) == -(-done.tokens // 64)  # one per 64 tokens, the last one partial
        tokens = [t for t, _ in calls]
        assert tokens == sorted(tokens) and tokens[-1] == done.tokens
        assert {total for _, total in calls} == {done.tokens}
        assert mc.get_tree("progress").tokens == done.stop
        assert [s.source for s in mc.list_sources("progress")] == ["log.txt"]
        repeated: list[tuple[int, int]] = []
        again = mc.upload("progress", TEXT.encode(), on_progress=_record(repeated))
        assert (again.tokens, again.duplicate_of, repeated) == (0, "log.txt", [])

    # The same bytes to another tree, read raw: its last event is what upload returned.
    url = f"{live}/v1/trees/raw/uploads?name=log.txt&events=true"
    with httpx.stream("POST", url, content=TEXT.encode(), headers=world.headers(world.writer)) as r:
        events = list(sdk.parse_events(r.iter_lines()))
    assert [e for e, _ in events] == ["progress"] * len(tokens) + ["ingested"]
    assert events[-1][1] == dataclasses.asdict(done)


def _record(calls: list[tuple[int, int]]) -> Callable[[int, int], None]:
    def progress(tokens: int, total: int) -> None:
        calls.append((tokens, total))

    return progress


def test_lists_and_reads_the_traces_a_session_wrote(world: World, live: str) -> None:
    from megacontext.runtime import SessionConfig, open_session

    with sdk.Client(live, world.writer) as mc:
        mc.create_tree("traced")
        assert mc.list_traces("traced") == []  # the service's sessions record none
        mc.upload("traced", TEXT.encode(), name="log.txt")
        path = world.root / "tenants" / "acme" / "trees" / "traced"
        traced = SessionConfig(W_max=48, protected_recent=12, query_tokens=8, refocus_every=4)
        with open_session(path, config=traced) as session:  # a writer that records its focus
            list(session.generate("And then", max_new_tokens=12))
        (listed,) = mc.list_traces("traced")
        assert isinstance(listed, sdk.TraceFile)
        assert listed.name.startswith("session-") and listed.name.endswith(".jsonl")
        assert listed.steps > 0
        file = path / "traces" / listed.name
        assert listed.bytes == file.stat().st_size
        trace = sdk.Client(live, world.reader).get_trace("traced", listed.name)
        assert isinstance(trace, sdk.Trace) and trace.name == listed.name
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        assert trace.steps == lines and len(trace.steps) == listed.steps
        assert {"step", "tokens", "expands", "collapses"} <= set(trace.steps[0])
        with pytest.raises(sdk.NotFoundError, match=r"no trace named 'nope\.jsonl'"):
            mc.get_trace("traced", "nope.jsonl")
        with pytest.raises(sdk.NotFoundError):
            mc.list_traces("missing")
    with pytest.raises(sdk.NotFoundError):
        sdk.Client(live, world.other).list_traces("traced")  # another tenant's tree


def test_the_async_client_uploads_with_progress_and_lists_traces(
    world: World, live: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("megacontext.runtime.session.INGEST_CHUNK", 64)
    calls: list[tuple[int, int]] = []

    async def run() -> tuple[sdk.Ingested, sdk.Ingested, list[sdk.TraceFile], list[str]]:
        async with sdk.AsyncClient(live, world.writer) as mc:
            assert (await mc.health())["status"] == "ok"
            await mc.create_tree("notes")
            done = await mc.upload(
                "notes",
                CP1252.encode("cp1252"),
                name="cafe.txt",
                encoding="cp1252",
                on_progress=_record(calls),
            )
            plain = await mc.upload("notes", TEXT.encode())
            with pytest.raises(sdk.BadRequestError, match="binary"):
                await mc.upload("notes", BINARY, on_progress=_record(calls))
            with pytest.raises(sdk.NotFoundError):
                await mc.get_trace("notes", "nope.jsonl")
            return done, plain, await mc.list_traces("notes"), await mc.models()

    done, plain, traces, models = asyncio.run(run())
    assert done.tokens > 64 and done.start == 0
    assert calls[-1] == (done.tokens, done.tokens) and len(calls) == -(-done.tokens // 64)
    assert [t for t, _ in calls] == sorted(t for t, _ in calls)
    assert plain.start == done.stop and plain.tokens > 0
    assert traces == [] and models == ["notes"]


def test_notes_on_spans_through_both_clients(world: World, live: str, logs: str) -> None:
    with sdk.Client(live, world.writer) as client:
        note = client.annotate(logs, 0, 3, 9, "a phrase worth keeping", ["quote"])
        assert (note.version, note.tags, note.created_by.split("/")[0]) == (1, ["quote"], "acme")
        changed = client.edit_annotation(logs, note, "the phrase, checked")
        with pytest.raises(sdk.ConflictError) as stale:  # at once: a version conflict is final
            client.edit_annotation(logs, note, "an edit of what it no longer says")
        assert stale.value.type == "version_conflict"
        assert [a.note for a in client.annotations(logs, 0, 4)] == ["the phrase, checked"]
        assert client.annotations(logs, 9) == []

    async def from_async() -> list[str]:
        async with sdk.AsyncClient(live, world.writer) as client:
            (found,) = await client.annotations(logs)
            await client.delete_annotation(logs, found)
            history = await client.annotation_history(logs, found.id)
            return [h["action"] for h in history]

    assert changed.version == 2
    assert asyncio.run(from_async()) == ["create", "edit", "delete"]


def test_the_async_client_has_the_clients_methods() -> None:
    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(sdk.Client) - {"close"} == public(sdk.AsyncClient) - {"aclose"}


def _scripted(*statuses: int, kind: str = "conflict") -> tuple[httpx.MockTransport, list[int]]:
    """A transport answering with ``statuses`` in turn (the last one repeats); a 409 is of
    type ``kind``."""
    seen: list[int] = []

    def reply(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        error = kind if status == 409 else "t"
        body = {"error": {"type": error, "message": f"status {status}", "code": status}}
        if status == 200:
            return httpx.Response(200, json={"trees": []})
        return httpx.Response(status, json=body, headers={"Retry-After": "0"})

    return httpx.MockTransport(reply), seen


def test_retries_honour_retry_after_and_stop_at_errors_that_will_not_change() -> None:
    transport, seen = _scripted(429, 503, 200)
    assert sdk.Client("http://x", "k", transport=transport).list_trees() == []
    assert seen == [429, 503, 200]
    transport, seen = _scripted(409)
    with pytest.raises(sdk.ConflictError):
        sdk.Client("http://x", "k", transport=transport, max_retries=2).list_trees()
    assert seen == [409, 409, 409]
    for final in ("already_exists", "version_conflict"):  # asking again will not change them
        transport, seen = _scripted(409, kind=final)
        with pytest.raises(sdk.ConflictError):
            sdk.Client("http://x", "k", transport=transport, max_retries=2).list_trees()
        assert seen == [409]
    transport, seen = _scripted(400, 200)
    with pytest.raises(sdk.BadRequestError, match="status 400"):
        sdk.Client("http://x", "k", transport=transport).list_trees()
    assert seen == [400]  # not retried

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(sdk.APITimeoutError):
        sdk.Client(
            "http://x", "k", transport=httpx.MockTransport(timeout), max_retries=1
        ).list_trees()


def _uploads(*replies: str | int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering uploads with ``replies`` in turn: a status (an error body with
    ``Retry-After: 0``), or the text of an event stream."""
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = replies[min(len(seen), len(replies)) - 1]
        if isinstance(answer, str):
            return httpx.Response(200, text=answer, headers={"content-type": "text/event-stream"})
        if answer == 200:
            return httpx.Response(200, json=INGESTED)
        body = {"error": {"type": "conflict", "message": f"status {answer}", "code": answer}}
        return httpx.Response(answer, json=body, headers={"Retry-After": "0"})

    return httpx.MockTransport(reply), seen


INGESTED = {"tokens": 9, "start": 0, "stop": 9, "duplicate_of": None}


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def test_uploads_are_retried_as_requests_are_until_a_progress_event_is_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sdk, "BACKOFF_S", 0.0)
    transport, seen = _uploads(503, 200)
    mc = sdk.Client("http://x", "k", transport=transport)
    assert mc.upload("t", b"\xe9t\xe9", name="a b.txt", encoding="latin-1") == sdk.Ingested(
        **INGESTED
    )
    assert len(seen) == 2
    for request in seen:  # the same bytes and parameters on the retry
        assert request.method == "POST" and request.url.path == "/v1/trees/t/uploads"
        assert request.headers["content-type"] == "application/octet-stream"
        assert request.content == b"\xe9t\xe9"
        assert dict(request.url.params) == {"name": "a b.txt", "encoding": "latin-1"}
    # one Idempotency-Key per call, kept on its retries: a retry never applies a write twice
    assert seen[0].headers["idempotency-key"] == seen[1].headers["idempotency-key"]
    mc.upload("t", b"x")
    assert seen[2].headers["idempotency-key"] != seen[0].headers["idempotency-key"]

    conflict = {"error": {"type": "conflict", "message": "busy", "code": 409}}
    progress = _event("progress", {"tokens": 9, "total": 9})
    ingested = _event("ingested", INGESTED)
    calls: list[tuple[int, int]] = []
    transport, seen = _uploads(_event("error", conflict), progress + ingested)
    mc = sdk.Client("http://x", "k", transport=transport)
    assert mc.upload("t", b"x", force=True, on_progress=_record(calls)).tokens == 9
    assert calls == [(9, 9)] and len(seen) == 2
    assert dict(seen[0].url.params) == {"force": "true", "events": "true"}
    assert seen[0].headers["idempotency-key"] == seen[1].headers["idempotency-key"]

    # Once progress was passed on, an error is the caller's: not sent again.
    transport, seen = _uploads(progress + _event("error", conflict), progress + ingested)
    with pytest.raises(sdk.ConflictError, match="busy"):
        sdk.Client("http://x", "k", transport=transport).upload("t", b"x", on_progress=_record([]))
    assert len(seen) == 1
    transport, seen = _uploads(400)
    with pytest.raises(sdk.BadRequestError):
        sdk.Client("http://x", "k", transport=transport).upload("t", b"x", on_progress=_record([]))
    assert len(seen) == 1
    transport, seen = _uploads(progress)  # the stream ends without its result
    with pytest.raises(sdk.APIConnectionError, match="ended before"):
        sdk.Client("http://x", "k", transport=transport).upload("t", b"x", on_progress=_record([]))


def test_the_upload_sends_the_documented_query_parameters() -> None:
    upload = openapi_document()["paths"]["/v1/trees/{tree}/uploads"]["post"]
    documented = {p["name"] for p in upload["parameters"] if p["in"] == "query"}
    assert set(sdk._upload_query("n", "s", "e", force=True, events=True)) == documented
    assert "application/octet-stream" in upload["requestBody"]["content"]


@pytest.mark.parametrize(
    ("cls", "schema"),
    [
        (sdk.Tree, "Tree"),
        (sdk.Ingested, "Ingested"),
        (sdk.Source, "Source"),
        (sdk.Answer, "Answer"),
        (sdk.Citation, "Citation"),
        (sdk.Usage, "Usage"),
        (sdk.Generated, "Generated"),
        (sdk.WorkingContext, "WorkingContext"),
        (sdk.ContextEntry, "ContextEntry"),
        (sdk.ProvenanceSpan, "ProvenanceSpan"),
        (sdk.TraceFile, "TraceFile"),
        (sdk.Trace, "Trace"),
        (sdk.Annotation, "Annotation"),
    ],
)
def test_the_sdk_types_match_the_openapi_document(cls: type, schema: str) -> None:
    properties = openapi_document()["components"]["schemas"][schema]["properties"]
    assert [f.name for f in dataclasses.fields(cls)] == list(properties)
