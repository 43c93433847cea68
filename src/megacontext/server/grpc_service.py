"""The service over gRPC (``protos/megacontext.proto``): ingest as a client stream, ask as a
server stream, focus and provenance calls — the same operations, keys, limits and metering as
HTTP (:mod:`megacontext.server.app`).

The message and stub modules are generated from the ``.proto`` file when first used
(``grpc.protos_and_services``, grpcio-tools' compiler): nothing generated is committed.
"""

from __future__ import annotations

import json
import queue
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import grpc

from megacontext.errors import InvalidInputError, MegaContextError
from megacontext.server import schemas as s
from megacontext.server.app import (
    ERROR_STATUS,
    Service,
    ask_tree,
    focused_context,
    ingest_text,
    provenance_of,
)
from megacontext.server.keys import Principal

PROTO_DIR = Path(__file__).parent / "protos"
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@cache
def proto_modules() -> tuple[Any, Any]:
    """``(messages, services)`` generated from ``megacontext.proto``."""
    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services("megacontext.proto")  # type: ignore[no-any-return]
    finally:
        sys.path.remove(str(PROTO_DIR))


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status of an error of the service (the HTTP table, translated)."""
    for cls, code, kind in ERROR_STATUS:
        if isinstance(exc, cls):
            if code == 409:
                exists = kind == "already_exists"
                status = grpc.StatusCode.ALREADY_EXISTS if exists else grpc.StatusCode.ABORTED
                return status, str(exc)
            return _STATUS.get(code, grpc.StatusCode.INTERNAL), str(exc)
    return grpc.StatusCode.INTERNAL, f"the service failed ({type(exc).__name__}); retry"


class _Servicer:
    """Implements ``megacontext.v1.MegaContext`` over a :class:`Service`."""

    def __init__(self, service: Service):
        self.service = service
        self.pb, _ = proto_modules()

    @contextmanager
    def _errors(self, context: grpc.ServicerContext) -> Iterator[None]:
        try:
            yield
        except (MegaContextError, ValueError) as exc:
            code, message = status_of(exc)
            context.abort(code, message)

    def _caller(self, context: grpc.ServicerContext, route_class: str) -> Principal:
        metadata = dict(context.invocation_metadata())
        scheme, _, key = str(metadata.get("authorization", "")).partition(" ")
        who = self.service.keys.verify(key.strip() if scheme.lower() == "bearer" else None)
        self.service.limiter.take(who.key_id, route_class)
        if route_class != "read":
            self.service.budget.check(who.tenant)
        return who

    def Ingest(self, chunks: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with self._errors(context):
            caller = self._caller(context, "write")
            first, texts = None, []
            for chunk in chunks:
                first = first or chunk
                texts.append(chunk.text)
            if first is None or not first.tree:
                raise InvalidInputError("the first chunk must name the tree")
            metadata = json.loads(first.metadata_json) if first.metadata_json else None
            body = s.Ingest(
                text="".join(texts),
                source=first.source or None,
                metadata=metadata,
                force=first.force,
            )
            done = self.service.lane.call(ingest_text, self.service, caller, first.tree, body)
            return self.pb.IngestReply(
                tokens=done.tokens,
                start=done.start,
                stop=done.stop,
                duplicate_of=done.duplicate_of or "",
            )

    def Ask(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with self._errors(context):
            caller = self._caller(context, "ask")
            question = s.Ask(
                question=request.question,
                max_new_tokens=request.max_new_tokens or 64,
                focus_steps=request.focus_steps if request.HasField("focus_steps") else None,
                remember=request.remember,
                stream=True,
                where=request.where if request.HasField("where") else None,
                prior=request.prior if request.HasField("prior") else None,
            ).model_dump(exclude={"stream"})
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                answer = ask_tree(
                    self.service, caller, request.tree, question, lambda t: events.put(("t", t))
                )
                events.put(("answer", answer))
            except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
                events.put(("error", exc))

        self.service.lane.submit(work)
        while True:
            kind, value = events.get()
            if kind == "t":
                yield self.pb.AskEvent(text=value)
            elif kind == "answer":
                yield self.pb.AskEvent(answer=self._answer(value))
                return
            else:
                code, message = status_of(value)
                context.abort(code, message)

    def Focus(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._errors(context):
            caller = self._caller(context, "ask")
            body = s.FocusRequest(
                question=request.question or None,
                W_max=request.w_max if request.HasField("w_max") else None,
                focus_steps=request.focus_steps if request.HasField("focus_steps") else None,
                pins=[(r.start, r.stop) for r in request.pins],
                expand=[(n.level, n.index) for n in request.expand],
                collapse=[(n.level, n.index) for n in request.collapse],
            )
            wc = self.service.lane.call(focused_context, self.service, caller, request.tree, body)
            return self.pb.WorkingContext(
                w_max=wc.W_max,
                size=wc.size,
                focus_steps=wc.focus_steps,
                entries=[self.pb.ContextEntry(**e.model_dump()) for e in wc.entries],
            )

    def Provenance(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._errors(context):
            caller = self._caller(context, "read")
            found = self.service.lane.call(
                provenance_of, self.service, caller, request.tree, request.start, request.stop
            )
            return self.pb.ProvenanceReply(
                spans=[
                    self.pb.ProvenanceSpan(
                        source=p.source,
                        kind=p.kind,
                        start=p.start,
                        stop=p.stop,
                        lines=self._range(p.lines),
                        bytes=self._range(p.bytes),
                    )
                    for p in found.spans
                ]
            )

    def _range(self, pair: tuple[int, int] | None) -> Any:
        return None if pair is None else self.pb.Range(start=pair[0], stop=pair[1])

    def _answer(self, answer: s.Answer) -> Any:
        return self.pb.Answer(
            answer=answer.answer,
            citations=[
                self.pb.Citation(
                    source=c.source or "",
                    lines=self._range(c.lines),
                    tokens=self._range(c.tokens),
                    score=c.score,
                    text=c.text,
                    label=c.label,
                    **({} if c.latest is None else {"latest": c.latest}),
                )
                for c in answer.citations
            ],
            spans=[self._range(span) for span in answer.spans],
            focus_steps=answer.focus_steps,
            usage=self.pb.Usage(**answer.usage.model_dump()),
        )


def grpc_server(service: Service, address: str, workers: int = 8) -> grpc.Server:
    """A started gRPC server for ``service`` on ``address`` (``host:port``; port 0 picks one:
    read ``server.megacontext_port``)."""
    _, services = proto_modules()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    services.add_MegaContextServicer_to_server(_Servicer(service), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise InvalidInputError(f"cannot listen for gRPC on {address}")
    server.megacontext_port = port  # type: ignore[attr-defined]
    server.start()
    return server


__all__ = ["grpc_server", "proto_modules", "status_of"]
