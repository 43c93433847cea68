"""megacontext.client, the Python SDK: against a live server, retries on a scripted transport,
and its result types checked against the OpenAPI document (a drift fails here)."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from megacontext import client as sdk
from megacontext.server.app import openapi_document

from .conftest import TEXT, World


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


def _scripted(*statuses: int) -> tuple[httpx.MockTransport, list[int]]:
    """A transport answering with ``statuses`` in turn (the last one repeats)."""
    seen: list[int] = []

    def reply(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        body = {"error": {"type": "t", "message": f"status {status}", "code": status}}
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
    ],
)
def test_the_sdk_types_match_the_openapi_document(cls: type, schema: str) -> None:
    properties = openapi_document()["components"]["schemas"][schema]["properties"]
    assert [f.name for f in dataclasses.fields(cls)] == list(properties)
