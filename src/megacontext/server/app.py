"""The HTTP service: trees, sources, ask and generate, and OpenAI-compatible endpoints.

``create_app`` loads the base and the focus bundle once; every request opens the tree's session
(read-only for questions, so any number run at once beside one writer) with them. Every error
body is ``{"error": {"type", "message", "code"}}``. Authentication: ``Authorization: Bearer
mck_…`` (see :mod:`megacontext.server.keys`); a tenant sees only its own trees.

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
run time, and the caller's type is local to :func:`_routes`.)
"""

import asyncio
import hashlib
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from megacontext._version import __version__
from megacontext.errors import BudgetError, InvalidInputError, MegaContextError
from megacontext.explorer.browse import SpanNotFoundError, TraceNotFoundError
from megacontext.focus.access import REDACTION_TEXT
from megacontext.runtime import SessionConfig
from megacontext.runtime.session import Session
from megacontext.server import schemas as s
from megacontext.server.audit import service_audit
from megacontext.server.explore import explorer_routes
from megacontext.server.idempotency import (
    IdempotencyConflictError,
    IdempotencyMismatchError,
    IdempotencyStore,
    Stored,
)
from megacontext.server.keys import AuthError, KeyStore, Principal, ScopeError
from megacontext.server.lane import ModelLane
from megacontext.server.limits import (
    BudgetExceededError,
    DailyBudget,
    Limits,
    RateLimitedError,
    RateLimiter,
    check_request_tokens,
)
from megacontext.server.metrics import (
    LIMITED,
    REQUEST_SECONDS,
    REQUESTS,
    TreeCollector,
    register_trees,
    unregister_trees,
)
from megacontext.server.trees import (
    ConflictError,
    NotFoundError,
    TreeExistsError,
    Trees,
    tree_stats,
)
from megacontext.server.usage import StorageMeter, UsageSink, open_sink
from megacontext.store.annotations import AnnotationConflictError, AnnotationNotFoundError
from megacontext.store.policies import SourceOnHoldError

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_TOKEN_INDEX = 2**53  # token positions in queries (the store's indices are far below)
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (AuthError, 401, "unauthorized"),
    (ScopeError, 403, "forbidden"),
    (NotFoundError, 404, "not_found"),
    (SpanNotFoundError, 404, "not_found"),
    (TraceNotFoundError, 404, "not_found"),
    (AnnotationNotFoundError, 404, "not_found"),
    (AnnotationConflictError, 409, "version_conflict"),
    (SourceOnHoldError, 409, "on_hold"),
    (TreeExistsError, 409, "already_exists"),
    (ConflictError, 409, "conflict"),
    (IdempotencyConflictError, 409, "conflict"),
    (IdempotencyMismatchError, 422, "idempotency_key_reused"),
    (RateLimitedError, 429, "rate_limited"),
    (BudgetError, 400, "invalid_request"),
    (InvalidInputError, 400, "invalid_request"),
)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": what}
    for code, what in (
        (400, "Bad input (the message names it)"),
        (401, "Missing, unknown or revoked API key"),
        (403, "The key's scopes do not allow the call"),
        (404, "No such tree, source, span, trace or note in this tenant"),
        (
            409,
            "The tree exists (already_exists), another request is writing it (conflict), or "
            "an annotation changed since the version sent (version_conflict), or a source is "
            "under legal hold (on_hold)",
        ),
        (413, "Body larger than the service's limit"),
        (422, "A field has the wrong type or value, or an Idempotency-Key was reused"),
        (429, "Rate limit or daily token budget reached (see Retry-After)"),
    )
}


_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or events when streamed"}
}


class Service:
    """What the routes share: trees, keys, limits, idempotency, the usage meter, and the lane
    (:mod:`megacontext.server.lane`) on which every session is opened and used."""

    def __init__(
        self,
        root: Path,
        trees: Trees,
        keys: KeyStore,
        max_body_bytes: int,
        limits: Limits,
        usage: UsageSink | None,
        lane: ModelLane,
    ):
        self.root, self.trees, self.keys, self.max_body_bytes = root, trees, keys, max_body_bytes
        self.limits, self.usage, self.lane = limits, usage, lane
        self.limiter = RateLimiter(limits.per_minute)
        self.budget = DailyBudget(root / "usage.sqlite", limits.tokens_per_day)
        self.idempotency = IdempotencyStore(root / "idempotency.sqlite")
        self.storage = (
            StorageMeter(root / "storage.sqlite", trees.all, usage) if usage is not None else None
        )
        self.on_close: list[Callable[[], None]] = []
        self.on_closed: list[Callable[[], None]] = []  # run once everything has closed
        self.closed = False
        self.tree_metrics = TreeCollector(trees.all, tree_stats, per_tree=False)
        self.audit = service_audit(root, trees.metadata_url)

    def create_tree(self, tenant: str, name: str, actor: str) -> None:
        path = self.trees.create(tenant, name)
        self.audit.record("tree.create", actor, f"{tenant}/{name}", {"tenant": tenant})
        if self.storage is not None:
            self.storage.started(tenant, name, path)

    def delete_tree(self, tenant: str, name: str, actor: str) -> None:
        ended = self.storage.ended if self.storage is not None else None
        self.trees.delete(tenant, name, (lambda path: ended(tenant, name, path)) if ended else None)
        self.audit.record("tree.delete", actor, f"{tenant}/{name}", {"tenant": tenant})

    def close(self) -> None:
        """Stop serving (the app's shutdown calls it, once no HTTP request is in flight): run
        ``on_close`` (e.g. stop gRPC), bill storage up to now, finish queued model work, flush
        usage events; then run ``on_closed``."""
        if self.closed:
            return
        self.closed = True
        for hook in self.on_close:
            hook()
        unregister_trees(self.tree_metrics)
        if self.storage is not None:
            self.storage.close()
        self.lane.close()
        if self.usage is not None:
            self.usage.close()
        self.audit.db.close()
        for hook in self.on_closed:
            hook()

    def meter(self, caller: Principal, tree: str, event: str, spent: int, **counts: int) -> None:
        """Count ``spent`` tokens against the tenant's daily budget; emit a usage event."""
        self.budget.add(caller.tenant, spent)
        if self.usage is not None:
            self.usage.emit(
                {
                    "event": event,
                    "tenant": caller.tenant,
                    "key_id": caller.key_id,
                    "tree": tree,
                    "time": time.time(),
                    **counts,
                }
            )


def create_app(  # noqa: PLR0913  (the service's settings, keyword-only past config)
    root: str | Path,
    base: Any = "default",
    focus: Any = "default",
    config: SessionConfig | None = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: Limits | None = None,
    usage: UsageSink | str | None = None,
    storage_interval_s: float | None = 3600.0,
    metadata_url: str | None = None,
    metrics_per_tree: bool = False,
    canary_interval_s: float | None = None,
) -> FastAPI:
    """The service over the trees in ``root`` (``base``/``focus``: names, or loaded objects).

    ``limits``: rate limits and token budgets (:mod:`megacontext.server.limits`); ``usage``: a
    usage sink, or its spec (``jsonl:PATH``, an ``http(s)://`` webhook); with a sink, storage
    is billed in byte-hours every ``storage_interval_s`` seconds (``None``: only on
    ``app.state.service.storage.tick()`` and at close); ``metadata_url``: where new trees keep
    their metadata and lexical index (a PostgreSQL URL lets several serving processes share
    them; default: SQLite files in each tree); ``metrics_per_tree``: ``/metrics`` labels tree
    series with tenant and tree (their number is then the number of trees);
    ``canary_interval_s``: run the quality canary (:mod:`megacontext.server.canary`) at start
    and then this often (``None``: never). Call
    ``app.state.service.close()`` once the app has stopped taking requests.
    """
    from megacontext.models.bundle import Bundle, load_bundle, resolve_focus
    from megacontext.models.loading import load_base

    def loaded() -> tuple[Any, Bundle]:
        adapter = load_base(base) if isinstance(base, str) else base
        if isinstance(focus, Bundle):
            return adapter, focus
        found = resolve_focus(focus, adapter.fingerprints, adapter.source)
        return adapter, load_bundle(found, fingerprints=adapter.fingerprints)

    root = Path(root)
    lane = ModelLane()
    adapter, bundle = lane.call(loaded)  # on the lane too: no torch on any other thread
    root.mkdir(parents=True, exist_ok=True)
    service = Service(
        root,
        Trees(root, adapter, bundle, config or SessionConfig(trace=False), metadata_url),
        KeyStore(root / "keys.sqlite"),
        max_body_bytes,
        limits or Limits(),
        open_sink(usage) if isinstance(usage, str) or usage is None else usage,
        lane,
    )
    if service.storage is not None and storage_interval_s is not None:
        service.storage.start(storage_interval_s)
    service.tree_metrics.per_tree = metrics_per_tree
    register_trees(service.tree_metrics)
    if canary_interval_s is not None:
        from megacontext.server.canary import Canary, every

        canary = lane.call(Canary, adapter, bundle, service.trees.config)
        stop = threading.Event()
        every(canary_interval_s, lambda: lane.call(canary.measure), stop)
        service.on_close.append(stop.set)
    return _app(service)


def _app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # In the shutdown itself: uvicorn re-raises SIGTERM once it returns, so code after
        # uvicorn.run would never run.
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(
        title="MegaContext",
        version=__version__,
        summary="Unbounded memory for language models: trees, sources, questions with citations.",
        responses=ERRORS,
        lifespan=lifespan,
    )
    app.state.service = service
    _errors(app)
    _limits(app, service)
    _observed(app)  # added last: the outermost middleware, so it sees every answer
    _routes(app, service)
    return app


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI 3.1 document (built without loading any model)."""
    unloaded = object.__new__(Service)  # routes only, nothing loaded or opened
    unloaded.trees, unloaded.max_body_bytes = None, MAX_BODY_BYTES  # type: ignore[assignment]
    unloaded.lane = None  # type: ignore[assignment]
    return _app(unloaded).openapi()


# ----------------------------------------------------------------------------- errors, limits


def _error(code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"type": kind, "message": message, "code": code}}
    return JSONResponse(body, status_code=code, headers=headers)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(MegaContextError)
    async def megacontext_error(_: Request, exc: MegaContextError) -> Response:
        for cls, code, kind in ERROR_STATUS:
            if isinstance(exc, cls):
                headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
                if isinstance(exc, ConflictError | IdempotencyConflictError):
                    headers = {"Retry-After": "1"}  # transient: another request is at work
                if isinstance(exc, RateLimitedError):
                    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
                    reason = "budget" if isinstance(exc, BudgetExceededError) else "rate"
                    LIMITED.labels(reason=reason).inc()
                return _error(code, kind, str(exc), headers)
        return _error(500, "server_error", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        return _error(500, "server_error", f"the service failed ({type(exc).__name__}); retry")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return _error(422, "invalid_request", problems or "the request body is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400:  # starlette could not read the body
            kind, message = "invalid_request", "the request body is not UTF-8 JSON; send JSON"
        return _error(exc.status_code, kind, message)


def _observed(app: FastAPI) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")  # a template: names no tree
        method = request.method
        REQUESTS.labels(route=template, method=method, status=str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route=template, method=method).observe(time.perf_counter() - started)
        return response


def _limits(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def body_limit(request: Request, call_next: Callable[[Request], Any]) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > service.max_body_bytes:
            return _error(
                413,
                "payload_too_large",
                f"the body has {int(declared):,} bytes; the limit is {service.max_body_bytes:,} "
                "(send a large source in several ingests)",
            )
        response: Response = await call_next(request)
        return response

    @app.middleware("http")
    async def idempotency(request: Request, call_next: Callable[[Request], Any]) -> Response:
        key = request.headers.get("idempotency-key")
        if request.method != "POST" or key is None:
            response: Response = await call_next(request)
            return response
        try:
            who = service.keys.verify(_bearer(request))
        except AuthError:
            response = await call_next(request)  # the route answers 401
            return response
        body = await request.body()
        fingerprint = hashlib.sha256(
            request.method.encode() + b" " + request.url.path.encode() + b"\n" + body
        ).hexdigest()
        scope = f"{who.tenant}/{who.key_id}"
        try:
            stored = service.idempotency.begin(scope, key, fingerprint)
        except (IdempotencyConflictError, IdempotencyMismatchError) as exc:
            code, kind = (
                (409, "conflict")
                if isinstance(exc, IdempotencyConflictError)
                else (
                    422,
                    "idempotency_key_reused",
                )
            )
            return _error(code, kind, str(exc), {"Retry-After": "1"} if code == 409 else None)
        if stored is not None:
            return Response(
                stored.body,
                stored.status,
                headers={"Idempotent-Replayed": "true"},
                media_type=stored.content_type,
            )
        try:
            response = await call_next(request)
        except BaseException:
            service.idempotency.abandon(scope, key)
            raise
        media = response.headers.get("content-type", "")
        if response.status_code in TRANSIENT or media.startswith("text/event-stream"):
            # Not replayable: "not now" (another writer, a rate limit, a server error) must let
            # the retry with this key run for real, or the SDKs' retries would replay it forever.
            service.idempotency.abandon(scope, key)
            return response
        content = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
        service.idempotency.finish(scope, key, Stored(response.status_code, content, media))
        return Response(
            content, response.status_code, headers=dict(response.headers), media_type=None
        )


# Statuses that say "not now", not "done": 408, 409 (another writer, or this key's first try
# still running), 429 (rate limit or budget) and every 5xx.
TRANSIENT = frozenset({408, 409, 429, *range(500, 600)})


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


# ----------------------------------------------------------------------------- routes


def _routes(app: FastAPI, service: Service) -> None:  # noqa: C901, PLR0915  (the route table)
    bearer = HTTPBearer(auto_error=False, description="An API key: mck_<id>_<secret>")

    def caller_of(route_class: str) -> Callable[..., Principal]:
        """The key's principal, after its rate limit (and, for work, its daily budget)."""

        def caller(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            response: Response,
        ) -> Principal:
            who = service.keys.verify(credentials.credentials if credentials else None)
            response.headers.update(service.limiter.take(who.key_id, route_class))
            if route_class != "read":
                service.budget.check(who.tenant)
            return who

        return caller

    Reader = Annotated[Principal, Depends(caller_of("read"))]
    Writer = Annotated[Principal, Depends(caller_of("write"))]
    Asker = Annotated[Principal, Depends(caller_of("ask"))]
    explorer_routes(app, service, Depends(caller_of("read")), Depends(caller_of("write")))
    trees, lane = service.trees, service.lane

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the service is up and its base is loaded (no key needed)."""
        return {"status": "ok", "version": __version__, "base": service.trees.base.source}

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(caller: Reader) -> Response:
        """Prometheus's text format: the service's, the sessions' and the process's metrics
        (an admin key: per-tree series name every tenant's trees)."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        caller.require("admin")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/trees", tags=["trees"])
    async def list_trees(caller: Reader) -> s.TreeList:
        caller.require("read")

        def described() -> list[s.Tree]:
            return [tree_info(service, caller, name) for name in trees.names(caller.tenant)]

        return s.TreeList(trees=await lane.run(described))

    @app.post("/v1/trees", status_code=201, tags=["trees"])
    async def create_tree(body: s.TreeCreate, caller: Writer) -> s.Tree:
        caller.require("write")
        await lane.run(service.create_tree, caller.tenant, body.name, caller.name)
        return await lane.run(tree_info, service, caller, body.name)

    @app.get("/v1/trees/{tree}", tags=["trees"])
    async def get_tree(tree: str, caller: Reader) -> s.Tree:
        return await lane.run(tree_info, service, caller, tree)

    @app.delete("/v1/trees/{tree}", status_code=204, tags=["trees"])
    async def delete_tree(tree: str, caller: Writer) -> Response:
        caller.require("write")
        await lane.run(service.delete_tree, caller.tenant, tree, caller.name)
        return Response(status_code=204)

    @app.post("/v1/trees/{tree}/sources", tags=["sources"])
    async def ingest(tree: str, body: s.Ingest, caller: Writer) -> s.Ingested:
        """Append text to the tree's history (journaled: a crash rolls it back)."""
        return await lane.run(ingest_text, service, caller, tree, body)

    @app.post(
        "/v1/trees/{tree}/uploads",
        tags=["sources"],
        response_model=s.Ingested,
        responses=_STREAMED,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def upload(
        tree: str,
        request: Request,
        caller: Writer,
        name: Annotated[str | None, Query(max_length=1000)] = None,
        source: Annotated[str | None, Query(max_length=2000)] = None,
        encoding: Annotated[str | None, Query(max_length=64)] = None,
        force: bool = False,
        events: bool = False,
    ) -> Any:
        """Ingest a file's bytes as the body (any text encoding: given as ``encoding``, else
        UTF-8, else detected). ``name`` is the path citations show. With ``events``: server-sent
        ``progress`` events ({"tokens", "total"}) while it is ingested, then ``ingested``."""
        from megacontext.runtime.reading import check_encoding, decode_text

        caller.require("write")
        service.trees.found(caller.tenant, tree)  # an unknown tree is a 404 whatever the body
        what = name or "the upload"
        decoded = decode_text(await request.body(), check_encoding(encoding), what, "encoding=")
        if decoded is None:
            raise InvalidInputError(f"{what} is empty or binary, not text; nothing was ingested")
        metadata = {"encoding": decoded.encoding, **({"path": name} if name else {})}
        body = s.Ingest(text=decoded.text, source=source, metadata=metadata, force=force)
        if not events:
            return await lane.run(ingest_text, service, caller, tree, body)

        def work(send: Callable[[str], None]) -> str:
            def progress(done: int, total: int) -> None:
                send(json.dumps({"tokens": done, "total": total}))

            return ingest_text(service, caller, tree, body, progress).model_dump_json()

        return _sse(lane, work, lambda data: _event("progress", json.loads(data)), "ingested")

    @app.get("/v1/trees/{tree}/sources", tags=["sources"])
    async def list_sources(tree: str, caller: Reader) -> s.SourceList:
        caller.require("read")

        def listed() -> s.SourceList:
            with trees.reader(caller.tenant, tree, caller) as session:
                return s.SourceList(sources=[_source(i) for i in _journal(session)])

        return await lane.run(listed)

    @app.delete("/v1/trees/{tree}/sources/{source_id}", tags=["sources"])
    async def remove_source(
        tree: str, source_id: Annotated[int, PathParam(ge=0, le=MAX_TOKEN_INDEX)], caller: Writer
    ) -> s.Removed:
        """Erase a source: its tokens, the gists above them, its keys and lexical rows."""
        from megacontext.runtime.erasure import erase_sources

        caller.require("write")

        def removed() -> s.Removed:
            with trees.writer(caller.tenant, tree, caller) as session:
                found = [i for i in _journal(session) if i.id == source_id]
                if not found:
                    raise NotFoundError(f"tree {tree!r} has no source with id {source_id}")
                return s.Removed(removed_tokens=erase_sources(session, found).tokens)

        return await lane.run(removed)

    @app.post(
        "/v1/trees/{tree}/ask",
        tags=["questions"],
        response_model=s.Answer,
        responses=_STREAMED,
    )
    async def ask(tree: str, body: s.Ask, caller: Asker) -> Any:
        """Answer from the whole history, with citations; the question is not kept unless
        ``remember``. With ``stream``: events ``text`` ({"text"}) then ``answer`` (the Answer)."""
        question = body.model_dump(exclude={"stream"})
        if not body.stream:
            return await lane.run(ask_tree, service, caller, tree, question)
        caller.require("write" if body.remember else "read")
        _check_ask(service, caller, tree, question)  # before a stream starts: errors are statuses

        def events(send: Callable[[str], None]) -> str:
            return ask_tree(service, caller, tree, question, send).model_dump_json()

        return _sse(lane, events, lambda piece: _event("text", {"text": piece}), "answer")

    @app.post("/v1/trees/{tree}/context", tags=["focus"])
    async def context(tree: str, body: s.FocusRequest, caller: Asker) -> s.WorkingContext:
        """The working context the base would read: at ``W_max``, after the manual edits
        (pins, expand, collapse) and focusing for ``question``. Nothing is kept."""
        return await lane.run(focused_context, service, caller, tree, body)

    @app.get("/v1/trees/{tree}/provenance", tags=["focus"])
    async def provenance(
        tree: str,
        start: Annotated[int, Query(ge=0, le=MAX_TOKEN_INDEX)],
        stop: Annotated[int, Query(ge=1, le=MAX_TOKEN_INDEX)],
        caller: Reader,
    ) -> s.ProvenanceList:
        """Where the tokens ``[start, stop)`` come from: source, lines and bytes per span."""
        return await lane.run(provenance_of, service, caller, tree, start, stop)

    @app.get("/v1/trees/{tree}/traces", tags=["focus"])
    def list_traces(tree: str, caller: Reader) -> s.TraceList:
        """The tree's focus traces (written by sessions that record them, e.g. the CLI's)."""
        from megacontext.runtime.traces import count_steps
        from megacontext.runtime.traces import list_traces as traces_of

        caller.require("read")
        path = trees.found(caller.tenant, tree)
        return s.TraceList(
            traces=[
                s.TraceFile(
                    name=f.name,
                    steps=count_steps(f),
                    bytes=f.stat().st_size,
                )
                for f in traces_of(path)
            ]
        )

    @app.get("/v1/trees/{tree}/traces/{name}", tags=["focus"])
    def get_trace(tree: str, name: str, caller: Reader) -> s.Trace:
        """The refocus steps of one trace."""
        from megacontext.runtime.traces import list_traces as traces_of
        from megacontext.runtime.traces import read_trace

        caller.require("read")
        found = [f for f in traces_of(trees.found(caller.tenant, tree)) if f.name == name]
        if not found:
            raise NotFoundError(f"tree {tree!r} has no trace named {name!r}")
        return s.Trace(name=name, steps=read_trace(found[0]))

    @app.post("/v1/trees/{tree}/generate", tags=["questions"])
    async def generate(tree: str, body: s.Generate, caller: Writer) -> s.Generated:
        """Continue the history (after appending ``prompt``); what is generated is kept."""
        caller.require("write")
        check_request_tokens(
            body.max_new_tokens, service.limits.max_request_tokens, "max_new_tokens"
        )

        def generated() -> s.Generated:
            with trees.writer(caller.tenant, tree, caller) as session:
                before, gists = session.tree.num_tokens, _gists(session)
                pieces = list(session.generate(body.prompt, body.max_new_tokens, body.stop))
                added, gists = session.tree.num_tokens - before, _gists(session) - gists
            service.meter(
                caller, tree, "generate", added, tokens=added, generated=len(pieces), gists=gists
            )
            return s.Generated(text="".join(pieces), tokens=len(pieces))

        return await lane.run(generated)

    # -- OpenAI-compatible -------------------------------------------------------------------

    @app.get("/v1/models", tags=["openai"])
    def models(caller: Reader) -> dict[str, Any]:
        """The caller's trees, as OpenAI models: ``model`` in a completion names the tree."""
        caller.require("read")
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": caller.tenant}
                for name in trees.names(caller.tenant)
            ],
        }

    @app.post("/v1/chat/completions", tags=["openai"], responses=_STREAMED)
    async def chat_completions(body: s.ChatRequest, caller: Asker) -> Any:
        """OpenAI's chat completion over a tree: the last user message is asked of the tree
        (earlier messages are not re-read: the tree is the memory; ``remember`` keeps the turn).
        ``usage`` is in every response, and in a last streamed chunk with
        ``stream_options.include_usage``."""
        caller.require("write" if body.remember else "read")
        question = _last_user_message(body.messages)
        limit = body.max_completion_tokens or body.max_tokens or 256
        asked = {"question": question, "max_new_tokens": limit, "remember": body.remember}
        return await _openai(
            service, caller, body.model, asked, body.stream, body.stream_options, True
        )

    @app.post("/v1/completions", tags=["openai"], responses=_STREAMED)
    async def completions(body: s.CompletionRequest, caller: Asker) -> Any:
        """OpenAI's legacy completion over a tree: ``prompt`` is asked of the tree."""
        caller.require("read")
        asked = {"question": body.prompt, "max_new_tokens": body.max_tokens or 16}
        return await _openai(
            service, caller, body.model, asked, body.stream, body.stream_options, False
        )


# ----------------------------------------------------------------------------- operations
# What a route does, apart from how its request arrives: HTTP and gRPC share these.


def ingest_text(
    service: Service,
    caller: Principal,
    tree: str,
    body: s.Ingest,
    progress: Callable[[int, int], None] | None = None,
) -> s.Ingested:
    """Append ``body.text`` to the tree (metered, within the request's token budget);
    ``progress(tokens done, tokens in all)`` as it goes."""
    caller.require("write")
    with service.trees.writer(caller.tenant, tree, caller) as session:
        tokens = len(session.base.encode(body.text, add_bos=False))
        check_request_tokens(tokens, service.limits.max_request_tokens, "the text")
        gists = _gists(session)
        done = session.ingest(
            body.text,
            source=body.source,
            metadata=body.metadata,
            force=body.force,
            progress=progress,
        )
        gists = _gists(session) - gists
    service.meter(caller, tree, "ingest", done.tokens, tokens=done.tokens, gists=gists)
    return s.Ingested(
        tokens=done.tokens, start=done.start, stop=done.stop, duplicate_of=done.duplicate_of
    )


def focused_context(
    service: Service, caller: Principal, tree: str, body: s.FocusRequest
) -> s.WorkingContext:
    """The working context after ``body``'s budget, manual edits and question."""
    caller.require("read")
    with service.trees.reader(caller.tenant, tree, caller) as session:
        if body.W_max is not None:
            _check_budget(session, body.W_max)
            session.resize(body.W_max)
        for level, index in body.collapse:
            session.focus.collapse(level, index)
        for level, index in body.expand:
            session.focus.expand(level, index)
        for start, end in body.pins:
            session.focus.pin(start, end)
        steps = 0
        if body.question:
            query = session.base.encode(body.question, add_bos=False)
            steps = session.focus_for(query, steps=body.focus_steps)
        return _context(session, steps)


def provenance_of(
    service: Service, caller: Principal, tree: str, start: int, stop: int
) -> s.ProvenanceList:
    """Where the tokens ``[start, stop)`` of the tree come from."""
    caller.require("read")
    if not 0 <= start < stop:
        raise InvalidInputError(f"need 0 <= start < stop, got start={start} stop={stop}")
    with service.trees.reader(caller.tenant, tree, caller) as session:
        if session.metadata is None:
            return s.ProvenanceList(spans=[])
        rows = session.metadata.provenance(session.tree_id, start, stop)
    return s.ProvenanceList(
        spans=[
            s.ProvenanceSpan(
                source=str(r.source.meta.get("path") or r.source.uri),
                kind=r.source.kind,
                start=r.start_index,
                stop=r.stop_index,
                lines=r.line_range,
                bytes=r.byte_range,
            )
            for r in rows
        ]
    )


def ask_tree(
    service: Service,
    caller: Principal,
    tree: str,
    question: dict[str, Any],
    on_text: Callable[[str], None] | None = None,
) -> s.Answer:
    """Ask ``question`` (the fields of :class:`schemas.Ask`) of the tree, streaming through
    ``on_text``: every check first, then the answer (metered)."""
    caller.require("write" if question.get("remember") else "read")
    _check_ask(service, caller, tree, question)
    return _answer_body(*_asked(service, caller, tree, question, on_text))


# ----------------------------------------------------------------------------- helpers


def tree_info(service: Service, caller: Principal, name: str) -> s.Tree:
    """What the tree ``name`` holds."""
    caller.require("read")
    with service.trees.reader(caller.tenant, name) as session:
        return s.Tree(
            name=name,
            tokens=session.tree.num_tokens,
            levels=session.tree.num_levels,
            sources=len(_journal(session)),
        )


def _check_budget(session: Session, W_max: int) -> None:
    from megacontext.runtime.opening import check_positions

    check_positions(session.config.resized(W_max), session.base)


def _context(session: Session, steps: int) -> s.WorkingContext:
    """The working context for people: consecutive raw tokens merged into runs, each run's
    text decoded whole (a character may span several byte-level tokens). Entries the caller
    may not see (access labels) show as ``[redacted]``, in runs of their own."""
    starts, ends = session.wc.spans()
    access = session.access
    hidden = access.mask(session.wc) if access is not None else np.zeros(session.wc.size, bool)
    runs: list[list[int]] = []  # [level, index, start, end, entries, hidden]
    for pos in range(session.wc.size):
        level, index = int(session.wc.levels[pos]), int(session.wc.indices[pos])
        start, end, secret = int(starts[pos]), int(ends[pos]), int(hidden[pos])
        last = runs[-1] if runs else None
        joins = last is not None and last[0] == 0 and last[3] == start and last[5] == secret
        if level == 0 and joins:
            assert last is not None
            last[3], last[4] = end, last[4] + 1
            continue
        runs.append([level, index, start, end, 1, secret])
    entries = [
        s.ContextEntry(
            level=level,
            index=index,
            start=start,
            end=end,
            entries=count,
            text=(
                REDACTION_TEXT.strip()
                if secret
                else session.base.decode(session.tree.tokens(start, end).tolist())
                if level == 0
                else ""
            ),
        )
        for level, index, start, end, count, secret in runs
    ]
    return s.WorkingContext(
        W_max=session.wc.W_max, size=session.wc.size, entries=entries, focus_steps=steps
    )


def _gists(session: Session) -> int:
    tree = session.tree
    return sum(tree.count(level) for level in range(1, tree.num_levels))


def _journal(session: Session) -> list[Any]:
    """The tree's complete sources, as the caller may see them: a key holding access labels
    neither lists nor removes a source they do not allow (the session is restricted to them)."""
    from megacontext.store.metadata import COMPLETE

    if session.metadata is None:
        return []
    found = session.metadata.ingests_of(session.tree_id, COMPLETE)
    access = session.access
    if access is None or access.empty:
        return found
    hidden = access.overlaps(
        np.array([i.start for i in found], dtype=np.int64),
        np.array([i.stop or i.start for i in found], dtype=np.int64),
    )
    return [i for i, secret in zip(found, hidden, strict=True) if not secret]


def _source(ingest: Any) -> s.Source:
    from megacontext.runtime.journal import label

    stop = ingest.stop if ingest.stop is not None else ingest.start
    return s.Source(
        id=ingest.id,
        source=label(ingest),
        kind=ingest.source.kind,
        start=ingest.start,
        stop=stop,
        tokens=stop - ingest.start,
    )


def _asked(
    service: Service,
    caller: Principal,
    tree: str,
    question: dict[str, Any],
    on_text: Callable[[str], None] | None,
) -> tuple[Any, s.Usage]:
    """Ask ``question`` of the tree (metered); the answer and what the base read and wrote."""
    trees = service.trees
    opened = trees.writer if question.get("remember") else trees.reader
    with opened(caller.tenant, tree, caller) as session:
        where, prior = question.get("where"), question.get("prior")
        answer: Any
        if where is None and prior is None:
            answer = session.ask(
                **{k: v for k, v in question.items() if k not in ("where", "prior")},
                on_text=on_text,
            )
        else:
            from megacontext.apps.knowledge import ask_where

            answer = ask_where(
                session,
                question["question"],
                where,
                max_new_tokens=question["max_new_tokens"],
                focus_steps=question.get("focus_steps"),
                on_text=on_text,
                prior=prior,
            )
        read = (
            len(session.prompt.prefix)
            + len(session.wc)
            + len(session.prompt.question_ids(session.base, question["question"], ""))
        )
    usage = s.Usage(
        prompt_tokens=read,
        completion_tokens=len(answer.ids),
        total_tokens=read + len(answer.ids),
    )
    service.meter(
        caller,
        tree,
        "ask",
        usage.total_tokens,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    return answer, usage


def _check_ask(service: Service, caller: Principal, tree: str, question: dict[str, Any]) -> None:
    """What can be refused before answering: the token budget, a predicate or prior that does
    not parse (or comes with remember) and a tree that is not there."""
    check_request_tokens(
        question["max_new_tokens"], service.limits.max_request_tokens, "max_new_tokens"
    )
    from megacontext.apps.knowledge import parse_partition_prior, parse_predicate

    for field, parse in (("where", parse_predicate), ("prior", parse_partition_prior)):
        if question.get(field) is None:
            continue
        if question.get("remember"):
            raise InvalidInputError(
                f"{field} shapes how one question is answered; it cannot be combined with remember"
            )
        parse(question[field])
    service.trees.found(caller.tenant, tree)


def _answer_body(answer: Any, usage: s.Usage) -> s.Answer:
    from megacontext.apps.knowledge import KnowledgeAnswer

    restricted = isinstance(answer, KnowledgeAnswer)  # asked with ``where`` or ``prior``
    citations = [
        s.Citation(
            source=c.source,
            lines=c.lines,
            tokens=c.tokens,
            score=c.score,
            text=c.text,
            label=c.label if restricted else c.label(),
            latest=c.latest if restricted else None,
        )
        for c in answer.citations
    ]
    return s.Answer(
        answer=answer.text,
        citations=citations,
        spans=[tuple(span) for span in answer.spans],
        focus_steps=answer.focus_steps,
        usage=usage,
        seconds=answer.seconds,
    )


def _last_user_message(messages: list[s.ChatMessage]) -> str:
    last = messages[-1]
    if last.role != "user":
        raise InvalidInputError("the last message must be the user's question (role 'user')")
    content = last.content
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    if not content or not content.strip():
        raise InvalidInputError("the last user message is empty; ask something")
    return content


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _sse(
    lane: ModelLane,
    work: Callable[[Callable[[str], None]], str],
    piece: Callable[[str], str],
    final: str | None,
) -> StreamingResponse:
    """Run ``work`` on the lane; stream what it sends (through ``piece``) as server-sent
    events, then its result (as event ``final``, or raw when ``final`` is None)."""

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def run() -> None:
            try:

                def send(text: str) -> None:
                    loop.call_soon_threadsafe(queue.put_nowait, ("t", text))

                result = work(send)
                loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
            except Exception as exc:  # noqa: BLE001  (reported to the client as an error event)
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        lane.submit(run)
        while True:
            kind, value = await queue.get()
            if kind == "t":
                yield piece(value)
            elif kind == "done":
                yield _event(final, json.loads(value)) if final else value
                return
            else:
                status, kind = next(
                    ((c, k) for t, c, k in ERROR_STATUS if isinstance(value, t)),
                    (500, "server_error"),
                )
                body = {"type": kind, "message": str(value), "code": status}
                yield _event("error", {"error": body})
                return

    return StreamingResponse(stream(), media_type="text/event-stream")


class _Completion:
    """One OpenAI-style completion (chat or legacy) of a question asked of a tree."""

    def __init__(self, tree: str, question: dict[str, Any], chat: bool, usage: bool):
        self.tree, self.question, self.chat, self.with_usage = tree, question, chat, usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.role_sent = False

    def finish_reason(self, answer: Any) -> str:
        return "length" if len(answer.ids) >= self.question["max_new_tokens"] else "stop"

    def whole(self, answer: Any, usage: s.Usage) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": self.finish_reason(answer),
            "logprobs": None,
        }
        if self.chat:
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.tree,
            "choices": [choice],
            "usage": usage.model_dump(),
            "citations": _answer_body(answer, usage).model_dump()["citations"],
        }

    def chunk(self, choices: list[dict[str, Any]], usage: s.Usage | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.tree,
            "choices": choices,
        }
        if self.with_usage:  # null in every chunk but the last, as OpenAI sends it
            body["usage"] = usage.model_dump() if usage is not None else None
        return f"data: {json.dumps(body)}\n\n"

    def piece(self, text: str) -> str:
        if not self.chat:
            return self.chunk([{"index": 0, "text": text, "finish_reason": None}])
        delta: dict[str, Any] = {"content": text}
        if not self.role_sent:
            delta["role"] = "assistant"
            self.role_sent = True
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def ending(self, answer: Any, usage: s.Usage) -> str:
        last: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason(answer)}
        if self.chat:
            last["delta"] = {}
        else:
            last["text"] = ""
        out = self.chunk([last])
        if self.with_usage:
            out += self.chunk([], usage)
        return out + "data: [DONE]\n\n"


async def _openai(
    service: Service,
    caller: Principal,
    tree: str,
    question: dict[str, Any],
    stream: bool,
    options: s.StreamOptions | None,
    chat: bool,
) -> Any:
    completion = _Completion(tree, question, chat, bool(options and options.include_usage))
    _check_ask(service, caller, tree, question)  # before a stream starts: errors are statuses
    if not stream:
        asked = await service.lane.run(_asked, service, caller, tree, question, None)
        return completion.whole(*asked)

    def work(send: Callable[[str], None]) -> str:
        if chat:
            send("")  # the role comes first, as OpenAI sends it

        def text(piece: str) -> None:
            if piece:
                send(piece)

        return completion.ending(*_asked(service, caller, tree, question, text))

    return _sse(service.lane, work, completion.piece, None)


__all__ = ["MAX_BODY_BYTES", "create_app", "openapi_document"]
