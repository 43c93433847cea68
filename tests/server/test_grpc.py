"""The gRPC service, driven by a real gRPC client over loopback: ingest as a client stream, ask
as a server stream, focus and provenance, and errors as gRPC statuses."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from megacontext.server.grpc_service import grpc_server, proto_modules

from .conftest import TEXT, World


@pytest.fixture()
def stub(world: World) -> Iterator[tuple[object, object]]:
    server = grpc_server(world.client.app.state.service, "127.0.0.1:0")  # type: ignore[attr-defined]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.megacontext_port}")  # type: ignore[attr-defined]
    pb, services = proto_modules()
    yield pb, services.MegaContextStub(channel)
    channel.close()
    server.stop(grace=None)


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_ingest_stream_ask_stream_focus_and_provenance(world: World, stub) -> None:  # type: ignore[no-untyped-def]
    pb, client = stub
    world.client.post("/v1/trees", json={"name": "notes"}, headers=world.headers(world.writer))
    pieces = [TEXT[i : i + 500] for i in range(0, len(TEXT), 500)]
    chunks = [
        pb.IngestChunk(
            tree="notes",
            text=pieces[0],
            source="file:///logbook.txt",
            metadata_json='{"path": "logbook.txt"}',
        ),
        *[pb.IngestChunk(text=piece) for piece in pieces[1:]],
    ]
    done = client.Ingest(iter(chunks), metadata=_auth(world.writer))
    rest = world.client.get("/v1/trees/notes", headers=world.headers(world.reader)).json()
    assert done.tokens == rest["tokens"] > 0 and done.start == 0  # the pieces, as one source

    request = pb.AskRequest(tree="notes", question="Which ship at dusk?", max_new_tokens=8)
    events = list(client.Ask(request, metadata=_auth(world.reader)))
    answer = events[-1].answer
    assert "".join(e.text for e in events[:-1]) == answer.answer
    http = world.client.post(
        "/v1/trees/notes/ask",
        json={"question": "Which ship at dusk?", "max_new_tokens": 8},
        headers=world.headers(world.reader),
    ).json()
    assert answer.answer == http["answer"]  # one answer routine behind both protocols
    assert answer.usage.total_tokens == http["usage"]["total_tokens"]

    wc = client.Focus(
        pb.FocusRequest(tree="notes", question="Which ship?", w_max=64),
        metadata=_auth(world.reader),
    )
    assert wc.w_max == 64 and wc.size <= 64 and wc.entries[-1].end == done.stop
    spans = client.Provenance(
        pb.ProvenanceRequest(tree="notes", start=0, stop=8), metadata=_auth(world.reader)
    ).spans
    assert spans[0].source == "logbook.txt" and spans[0].lines.start == 1


def test_errors_are_grpc_statuses(world: World, stub) -> None:  # type: ignore[no-untyped-def]
    pb, client = stub
    world.client.post("/v1/trees", json={"name": "notes"}, headers=world.headers(world.writer))
    cases = [
        (
            lambda: client.Provenance(pb.ProvenanceRequest(tree="notes", start=0, stop=1)),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            lambda: client.Ingest(
                iter([pb.IngestChunk(tree="notes", text="x")]), metadata=_auth(world.reader)
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            lambda: list(
                client.Ask(pb.AskRequest(tree="notes", question="q"), metadata=_auth(world.other))
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: client.Provenance(
                pb.ProvenanceRequest(tree="notes", start=5, stop=2), metadata=_auth(world.reader)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: client.Ingest(
                iter([pb.IngestChunk(text="no tree named")]), metadata=_auth(world.writer)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == code, raised.value.details()
        assert raised.value.details()


def test_ask_with_a_predicate_over_grpc(world: World, stub) -> None:  # type: ignore[no-untyped-def]
    pb, client = stub
    h = world.headers(world.writer)
    world.client.post("/v1/trees", json={"name": "kb"}, headers=h)
    for version in (1, 2):
        meta = {"partition": "policies", "doc": "refunds", "version": version}
        text = f"Version {version}: refunds within {30 if version == 1 else 14} days. " * 12
        world.client.post("/v1/trees/kb/sources", json={"text": text, "metadata": meta}, headers=h)
    # The predicate and the focus prior reach the same answer over gRPC as over HTTP.
    for shaping in ({"where": "version=latest"}, {"prior": "policies: lexical=1"}):
        asked = {"question": "How many days?", "max_new_tokens": 4, **shaping}
        answer = list(client.Ask(pb.AskRequest(tree="kb", **asked), metadata=_auth(world.reader)))
        http = world.client.post(
            "/v1/trees/kb/ask", json=asked, headers=world.headers(world.reader)
        ).json()
        assert answer[-1].answer.answer == http["answer"]
        assert [(c.label, c.latest) for c in answer[-1].answer.citations] == [
            (c["label"], c["latest"]) for c in http["citations"]
        ]
    bad = pb.AskRequest(tree="kb", question="q", where="colour=red")
    with pytest.raises(grpc.RpcError) as caught:
        list(client.Ask(bad, metadata=_auth(world.reader)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown field 'colour'" in str(caught.value.details())
