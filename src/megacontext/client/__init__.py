"""The Python SDK of the MegaContext service (httpx; imports neither torch nor the server).

    >>> from megacontext.client import Client                             # doctest: +SKIP
    >>> mc = Client("http://127.0.0.1:8000", api_key="mck_...")           # doctest: +SKIP
    >>> mc.create_tree("notes"); mc.ingest("notes", open("notes.txt").read())  # doctest: +SKIP
    >>> answer = mc.ask("notes", "What is the pass key?")                 # doctest: +SKIP
    >>> for event in mc.ask_stream("notes", "What is the pass key?"):    # doctest: +SKIP
    ...     print(event.text or "", end="")
    >>> mc.upload("notes", Path("notes.txt"), on_progress=print)          # doctest: +SKIP

Errors mirror the server's (:class:`NotFoundError` for 404, …). Requests that may succeed when
repeated — 408, 409 (another writer), 429, 5xx, a lost connection — are retried up to
``max_retries`` times with exponential backoff and jitter, honouring ``Retry-After``. A stream
is not retried once it has begun. Each POST carries an ``Idempotency-Key``, the same on its
retries, so a retried write whose first try did go through is not applied twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

from megacontext.errors import MegaContextError

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_S = 0.5  # the first retry waits about this long (doubling, with jitter, at most 8 s)


# ----------------------------------------------------------------------------- errors


class APIError(MegaContextError):
    """An error response of the service: ``status``, ``type`` and the server's ``message``."""

    def __init__(self, status: int, type: str, message: str):
        super().__init__(f"{status} {type}: {message}")
        self.status, self.type, self.message = status, type, message


class BadRequestError(APIError):
    """400 or 422: the request was not valid (the message names the field)."""


class AuthenticationError(APIError):
    """401: the key is missing, malformed, unknown or revoked."""


class PermissionDeniedError(APIError):
    """403: the key's scopes do not allow the call."""


class NotFoundError(APIError):
    """404: no such tree or source for this key's tenant."""


class ConflictError(APIError):
    """409: the tree exists (``already_exists``), or another request is writing it
    (``conflict``, retried after ``Retry-After``)."""


class PayloadTooLargeError(APIError):
    """413: the body is over the service's limit; send a large source in parts."""


class RateLimitError(APIError):
    """429: too many requests (retried after ``Retry-After``)."""


class ServerError(APIError):
    """5xx: the service failed (retried)."""


class APIConnectionError(MegaContextError):
    """The service could not be reached (retried)."""


class APITimeoutError(APIConnectionError):
    """The service did not answer within the timeout."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
}


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()["error"]
        kind, message = str(body["type"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "http_error", response.text[:500] or response.reason_phrase
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, kind, message)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Citation:
    source: str | None
    lines: tuple[int, int] | None
    tokens: tuple[int, int]
    score: float
    text: str
    label: str
    latest: bool | None = None  # asked with where or prior: the cited source is the latest version


@dataclass(frozen=True)
class Answer:
    answer: str
    citations: list[Citation]
    spans: list[tuple[int, int]]
    focus_steps: int
    usage: Usage
    seconds: dict[str, float]


@dataclass(frozen=True)
class Tree:
    name: str
    tokens: int
    levels: int
    sources: int


@dataclass(frozen=True)
class Ingested:
    tokens: int
    start: int
    stop: int
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Source:
    id: int
    source: str
    kind: str
    start: int
    stop: int
    tokens: int


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int


@dataclass(frozen=True)
class ContextEntry:
    level: int
    index: int
    start: int
    end: int
    entries: int
    text: str


@dataclass(frozen=True)
class WorkingContext:
    W_max: int
    size: int
    entries: list[ContextEntry]
    focus_steps: int


@dataclass(frozen=True)
class ProvenanceSpan:
    source: str
    kind: str
    start: int
    stop: int
    lines: tuple[int, int] | None
    bytes: tuple[int, int] | None


@dataclass(frozen=True)
class TraceFile:
    """One focus trace of a tree (:meth:`Client.list_traces`): ``steps`` records, ``bytes``."""

    name: str
    steps: int
    bytes: int


@dataclass(frozen=True)
class Trace:
    """The refocus steps of one trace, a JSON object each (:meth:`Client.get_trace`)."""

    name: str
    steps: list[dict[str, Any]]


@dataclass(frozen=True)
class Annotation:
    """A note on a span (:meth:`Client.annotate`): tokens ``[start, stop)``, a node of ``level``
    (level 0: any token range). ``version`` is what an edit or delete must name."""

    id: int
    level: int
    start: int
    stop: int
    note: str
    tags: list[str]
    version: int
    created_by: str
    created_at: str
    updated_by: str
    updated_at: str


@dataclass(frozen=True)
class StreamEvent:
    """One event of :meth:`Client.ask_stream`: a piece of ``text``, or the final ``answer``."""

    text: str | None = None
    answer: Answer | None = field(default=None)


def _answer(body: dict[str, Any]) -> Answer:
    return Answer(
        answer=body["answer"],
        citations=[
            Citation(
                source=c["source"],
                lines=tuple(c["lines"]) if c["lines"] is not None else None,  # type: ignore[arg-type]
                tokens=tuple(c["tokens"]),  # type: ignore[arg-type]
                score=c["score"],
                text=c["text"],
                label=c["label"],
                latest=c.get("latest"),
            )
            for c in body["citations"]
        ],
        spans=[tuple(s) for s in body["spans"]],  # type: ignore[misc]
        focus_steps=body["focus_steps"],
        usage=Usage(**body["usage"]),
        seconds=body["seconds"],
    )


def _of(cls: type[Any], body: dict[str, Any]) -> Any:
    return cls(**{f.name: body[f.name] for f in fields(cls) if f.name in body})


def _context(body: dict[str, Any]) -> WorkingContext:
    return WorkingContext(
        W_max=body["W_max"],
        size=body["size"],
        entries=[_of(ContextEntry, e) for e in body["entries"]],
        focus_steps=body["focus_steps"],
    )


def _spans(body: dict[str, Any]) -> list[ProvenanceSpan]:
    def pair(value: Any) -> tuple[int, int] | None:
        return None if value is None else (int(value[0]), int(value[1]))

    return [
        ProvenanceSpan(
            source=p["source"],
            kind=p["kind"],
            start=p["start"],
            stop=p["stop"],
            lines=pair(p["lines"]),
            bytes=pair(p["bytes"]),
        )
        for p in body["spans"]
    ]


def _notes(tree: str, annotation_id: int | None = None) -> str:
    path = f"/v1/trees/{tree}/explorer/annotations"
    return path if annotation_id is None else f"{path}/{int(annotation_id)}"


def _range(start: int, stop: int | None) -> dict[str, str]:
    return {"start": str(int(start))} | ({} if stop is None else {"stop": str(int(stop))})


def _focus_body(
    question: str | None,
    W_max: int | None,
    focus_steps: int | None,
    pins: list[tuple[int, int]] | None,
    expand: list[tuple[int, int]] | None,
    collapse: list[tuple[int, int]] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"pins": pins or [], "expand": expand or [], "collapse": collapse or []}
    if question is not None:
        body["question"] = question
    if W_max is not None:
        body["W_max"] = W_max
    if focus_steps is not None:
        body["focus_steps"] = focus_steps
    return body


def _ask_body(
    question: str,
    max_new_tokens: int,
    focus_steps: int | None,
    remember: bool,
    stream: bool,
    where: str | None = None,
    prior: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question, "max_new_tokens": max_new_tokens}
    if where is not None:
        body["where"] = where
    if prior is not None:
        body["prior"] = prior
    if focus_steps is not None:
        body["focus_steps"] = focus_steps
    if remember:
        body["remember"] = True
    if stream:
        body["stream"] = True
    return body


class _EventParser:
    """Server-sent events, one line at a time: ``(event, data)`` when an event is complete."""

    def __init__(self) -> None:
        self.event, self.data = "message", ""

    def feed(self, line: str) -> tuple[str, dict[str, Any]] | None:
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data += line[5:].strip()
        elif not line.strip() and self.data:
            done = (self.event, json.loads(self.data))
            self.event, self.data = "message", ""
            return done
        return None


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` of each server-sent event of the service in ``lines``."""
    parser = _EventParser()
    for line in lines:
        parsed = parser.feed(line)
        if parsed is not None:
            yield parsed


def _event_error(data: dict[str, Any]) -> APIError:
    """The typed error of an ``error`` event (``{"error": {"type", "message", "code"}}``)."""
    body = data["error"]
    status = int(body.get("code", 500))
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, str(body.get("type")), str(body.get("message")))


def _stream_event(event: str, data: dict[str, Any]) -> StreamEvent:
    if event == "error":
        raise _event_error(data)
    if event == "answer":
        return StreamEvent(answer=_answer(data))
    return StreamEvent(text=str(data["text"]))


_OCTETS = {"Content-Type": "application/octet-stream"}


def _headers(method: str, content: bytes | None) -> dict[str, str]:
    """One ``Idempotency-Key`` per POST call, the same on each of its retries: a retry of a
    request whose first try did go through gets the first response and changes nothing."""
    headers = dict(_OCTETS) if content is not None else {}
    if method == "POST":
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


def _upload_body(
    data: bytes | str | os.PathLike[str], name: str | None, encoding: str | None
) -> tuple[bytes, str | None]:
    """The bytes to upload and the name citations show: a path is read (its file name is the
    default name); a ``str`` is text, sent in ``encoding`` (default UTF-8)."""
    if isinstance(data, os.PathLike):
        path = Path(data)
        return path.read_bytes(), name if name is not None else path.name
    if isinstance(data, str):
        return data.encode(encoding or "utf-8"), name
    return bytes(data), name


def _upload_query(
    name: str | None, source: str | None, encoding: str | None, force: bool, events: bool
) -> dict[str, str]:
    """The query parameters of ``POST /v1/trees/{tree}/uploads``."""
    query: dict[str, str] = {}
    if name is not None:
        query["name"] = name
    if source is not None:
        query["source"] = source
    if encoding is not None:
        query["encoding"] = encoding
    if force:
        query["force"] = "true"
    if events:
        query["events"] = "true"
    return query


class _Upload:
    """One attempt at an upload's event stream, for both clients: each ``progress`` event is
    passed on, the ``ingested`` one kept, an ``error`` one raised as its typed error."""

    def __init__(self, on_progress: Callable[[int, int], None]):
        self.on_progress, self.parser = on_progress, _EventParser()
        self.begun = False  # a progress event was passed on: no retry from here
        self.done: Ingested | None = None

    def feed(self, line: str) -> Ingested | None:
        """The final :class:`Ingested` once its event is read (``None`` until then)."""
        parsed = self.parser.feed(line)
        if parsed is None:
            return None
        event, data = parsed
        if event == "error":
            raise _event_error(data)
        if event == "ingested":
            self.done = _of(Ingested, data)
        elif event == "progress":
            self.begun = True
            self.on_progress(int(data["tokens"]), int(data["total"]))
        return self.done

    def ended(self, path: str) -> Ingested:
        if self.done is None:
            raise APIConnectionError(f"POST {path}: the event stream ended before its result")
        return self.done

    def failed(self, caught: Exception, path: str, attempt: int, retries: int) -> float:
        """Seconds to wait before sending the upload again after ``caught``, as for any
        request; the typed error instead once progress was passed on (a stream is not retried
        once it has begun), on the last attempt, or when a retry would not help."""
        if isinstance(caught, httpx.TransportError):
            if self.begun:
                if isinstance(caught, httpx.TimeoutException):
                    raise APITimeoutError(f"the upload stream timed out: {caught}") from caught
                raise APIConnectionError(f"the upload stream failed: {caught}") from caught
            wait, _ = _settle("POST", path, attempt, retries, None, caught)
            assert wait is not None
            return wait
        assert isinstance(caught, APIError)
        if self.begun or attempt == retries or not _worth_retrying(caught.status, caught.type):
            raise caught
        return _delay(attempt, None)


def _worth_retrying(status: int, kind: str) -> bool:
    """A status worth retrying; a 409 only for a ``conflict`` (another request is writing the
    tree), not for a tree that ``already_exists`` or an annotation's ``version_conflict``
    (someone changed it: reload it first)."""
    if status == 409:
        return kind == "conflict"
    return status in RETRY_STATUS


def _retryable(response: httpx.Response) -> bool:
    kind = _error(response).type if response.status_code == 409 else ""
    return _worth_retrying(response.status_code, kind)


def _settle(
    method: str,
    path: str,
    attempt: int,
    retries: int,
    response: httpx.Response | None,
    failure: httpx.TransportError | None,
) -> tuple[float | None, Any]:
    """What one attempt comes to, for both clients: ``(seconds to wait, None)`` to retry, or
    ``(None, the decoded body)``; the typed error when no retry is left or it would not help."""
    last = attempt == retries
    if failure is not None:
        if not last:
            return _delay(attempt, None), None
        if isinstance(failure, httpx.TimeoutException):
            raise APITimeoutError(f"{method} {path} timed out: {failure}") from failure
        raise APIConnectionError(f"{method} {path} failed: {failure}") from failure
    assert response is not None
    if _retryable(response) and not last:
        return _delay(attempt, response), None
    if response.status_code >= 400:
        raise _error(response)
    return None, (response.json() if response.content else None)


def _delay(attempt: int, response: httpx.Response | None) -> float:
    if response is not None:
        after = response.headers.get("retry-after", "")
        try:
            return max(0.0, float(after))
        except ValueError:
            pass
    return min(8.0, BACKOFF_S * 2**attempt) * (0.5 + random.random() / 2)


# ----------------------------------------------------------------------------- clients


class Client:
    """A synchronous client of one service (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
    ):
        self.max_retries = max_retries
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = _headers(method, content)
        for attempt in range(self.max_retries + 1):
            response, failure = None, None
            try:
                response = self._http.request(
                    method, path, json=body, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:  # timeouts included
                failure = exc
            wait, value = _settle(method, path, attempt, self.max_retries, response, failure)
            if wait is None:
                return value
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def health(self) -> dict[str, str]:
        return dict(self._request("GET", "/v1/health"))

    def list_trees(self) -> list[Tree]:
        return [_of(Tree, t) for t in self._request("GET", "/v1/trees")["trees"]]

    def create_tree(self, name: str) -> Tree:
        return _of(Tree, self._request("POST", "/v1/trees", {"name": name}))

    def get_tree(self, name: str) -> Tree:
        return _of(Tree, self._request("GET", f"/v1/trees/{name}"))

    def delete_tree(self, name: str) -> None:
        self._request("DELETE", f"/v1/trees/{name}")

    def ingest(
        self,
        tree: str,
        text: str,
        *,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Ingested:
        body = {"text": text, "source": source, "metadata": metadata, "force": force}
        return _of(Ingested, self._request("POST", f"/v1/trees/{tree}/sources", body))

    def upload(
        self,
        tree: str,
        data: bytes | str | os.PathLike[str],
        *,
        name: str | None = None,
        source: str | None = None,
        encoding: str | None = None,
        force: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Ingested:
        """Ingest a file's bytes, in any text encoding (``encoding``, else UTF-8, else
        detected). A path is read, and its file name is the default ``name`` (the path
        citations show); a ``str`` is text. ``on_progress(tokens, total)`` as it is ingested."""
        content, name = _upload_body(data, name, encoding)
        query = _upload_query(name, source, encoding, force, on_progress is not None)
        path = f"/v1/trees/{tree}/uploads"
        if on_progress is None:
            return _of(Ingested, self._request("POST", path, content=content, params=query))
        headers = _headers("POST", content)
        for attempt in range(self.max_retries + 1):
            upload = _Upload(on_progress)
            try:
                with self._http.stream(
                    "POST", path, content=content, params=query, headers=headers
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        wait, _ = _settle("POST", path, attempt, self.max_retries, response, None)
                    else:
                        for line in response.iter_lines():
                            if upload.feed(line) is not None:
                                break
                        return upload.ended(path)
            except (httpx.TransportError, APIError) as exc:
                wait = upload.failed(exc, path, attempt, self.max_retries)
            assert wait is not None
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def list_sources(self, tree: str) -> list[Source]:
        found = self._request("GET", f"/v1/trees/{tree}/sources")["sources"]
        return [_of(Source, s) for s in found]

    def remove_source(self, tree: str, source_id: int) -> int:
        """Erase a source; returns the tokens removed."""
        done = self._request("DELETE", f"/v1/trees/{tree}/sources/{source_id}")
        return int(done["removed_tokens"])

    def ask(
        self,
        tree: str,
        question: str,
        *,
        max_new_tokens: int = 64,
        focus_steps: int | None = None,
        remember: bool = False,
        where: str | None = None,
        prior: str | None = None,
    ) -> Answer:
        """Answer from the tree, with citations. ``where``: a metadata predicate (e.g.
        ``"kind=policy AND version=latest"``) — focus and citations keep to the sources it
        admits, and each citation says whether it is its document's latest version.
        ``prior``: how focus weighs LensNet, lexical and key matching per partition (e.g.
        ``"logs: lexical=1; policies: lens=1, keys=0.5"``)."""
        body = _ask_body(question, max_new_tokens, focus_steps, remember, False, where, prior)
        return _answer(self._request("POST", f"/v1/trees/{tree}/ask", body))

    def ask_stream(
        self,
        tree: str,
        question: str,
        *,
        max_new_tokens: int = 64,
        focus_steps: int | None = None,
        remember: bool = False,
        where: str | None = None,
        prior: str | None = None,
    ) -> Iterator[StreamEvent]:
        """The answer as it is decoded: text pieces, then the whole :class:`Answer`."""
        body = _ask_body(question, max_new_tokens, focus_steps, remember, True, where, prior)
        try:
            with self._http.stream("POST", f"/v1/trees/{tree}/ask", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                for event, data in parse_events(response.iter_lines()):
                    yield _stream_event(event, data)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"the answer stream timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"the answer stream failed: {exc}") from exc

    def generate(
        self,
        tree: str,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 64,
        stop: list[str] | None = None,
    ) -> Generated:
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens, "stop": stop or []}
        return _of(Generated, self._request("POST", f"/v1/trees/{tree}/generate", body))

    def context(
        self,
        tree: str,
        question: str | None = None,
        *,
        W_max: int | None = None,
        focus_steps: int | None = None,
        pins: list[tuple[int, int]] | None = None,
        expand: list[tuple[int, int]] | None = None,
        collapse: list[tuple[int, int]] | None = None,
    ) -> WorkingContext:
        """The working context the base would read, after the edits and the question."""
        body = _focus_body(question, W_max, focus_steps, pins, expand, collapse)
        return _context(self._request("POST", f"/v1/trees/{tree}/context", body))

    def provenance(self, tree: str, start: int, stop: int) -> list[ProvenanceSpan]:
        """Where tokens ``[start, stop)`` come from."""
        path = f"/v1/trees/{tree}/provenance?start={int(start)}&stop={int(stop)}"
        return _spans(self._request("GET", path))

    def list_traces(self, tree: str) -> list[TraceFile]:
        """The tree's focus traces, oldest first (written by sessions that record them)."""
        found = self._request("GET", f"/v1/trees/{tree}/traces")["traces"]
        return [_of(TraceFile, t) for t in found]

    def get_trace(self, tree: str, name: str) -> Trace:
        """The refocus steps of one trace (a name :meth:`list_traces` gave)."""
        return _of(Trace, self._request("GET", f"/v1/trees/{tree}/traces/{name}"))

    def annotations(self, tree: str, start: int = 0, stop: int | None = None) -> list[Annotation]:
        """The notes on spans overlapping tokens ``[start, stop)`` (all by default)."""
        found = self._request("GET", _notes(tree), params=_range(start, stop))
        return [_of(Annotation, a) for a in found]

    def annotate(
        self, tree: str, level: int, start: int, stop: int, note: str, tags: Sequence[str] = ()
    ) -> Annotation:
        """A note on tokens ``[start, stop)``: one node of ``level`` >= 1, or any range at 0."""
        body = {"level": level, "start": start, "stop": stop, "note": note, "tags": list(tags)}
        return _of(Annotation, self._request("POST", _notes(tree), body))

    def edit_annotation(
        self, tree: str, annotation: Annotation, note: str, tags: Sequence[str] = ()
    ) -> Annotation:
        """Change a note; :class:`ConflictError` (``version_conflict``) when someone changed it
        since ``annotation`` was read."""
        body = {"version": annotation.version, "note": note, "tags": list(tags)}
        return _of(Annotation, self._request("PATCH", _notes(tree, annotation.id), body))

    def delete_annotation(self, tree: str, annotation: Annotation) -> None:
        """Delete a note (its history stays), if nobody changed it since it was read."""
        params = {"version": str(annotation.version)}
        self._request("DELETE", _notes(tree, annotation.id), params=params)

    def annotation_history(self, tree: str, annotation_id: int) -> list[dict[str, Any]]:
        """Every change of a note: action, version, note, tags, actor, at."""
        return list(self._request("GET", f"{_notes(tree, annotation_id)}/history"))

    def models(self) -> list[str]:
        """The trees, as the OpenAI-compatible endpoints name them."""
        return [m["id"] for m in self._request("GET", "/v1/models")["data"]]


class AsyncClient:
    """The asynchronous twin of :class:`Client` (the same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = _headers(method, content)
        for attempt in range(self.max_retries + 1):
            response, failure = None, None
            try:
                response = await self._http.request(
                    method, path, json=body, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:  # timeouts included
                failure = exc
            wait, value = _settle(method, path, attempt, self.max_retries, response, failure)
            if wait is None:
                return value
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def health(self) -> dict[str, str]:
        return dict(await self._request("GET", "/v1/health"))

    async def list_trees(self) -> list[Tree]:
        return [_of(Tree, t) for t in (await self._request("GET", "/v1/trees"))["trees"]]

    async def create_tree(self, name: str) -> Tree:
        return _of(Tree, await self._request("POST", "/v1/trees", {"name": name}))

    async def get_tree(self, name: str) -> Tree:
        return _of(Tree, await self._request("GET", f"/v1/trees/{name}"))

    async def delete_tree(self, name: str) -> None:
        await self._request("DELETE", f"/v1/trees/{name}")

    async def ingest(
        self,
        tree: str,
        text: str,
        *,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Ingested:
        body = {"text": text, "source": source, "metadata": metadata, "force": force}
        return _of(Ingested, await self._request("POST", f"/v1/trees/{tree}/sources", body))

    async def upload(
        self,
        tree: str,
        data: bytes | str | os.PathLike[str],
        *,
        name: str | None = None,
        source: str | None = None,
        encoding: str | None = None,
        force: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Ingested:
        content, name = await asyncio.to_thread(_upload_body, data, name, encoding)
        query = _upload_query(name, source, encoding, force, on_progress is not None)
        path = f"/v1/trees/{tree}/uploads"
        if on_progress is None:
            return _of(Ingested, await self._request("POST", path, content=content, params=query))
        headers = _headers("POST", content)
        for attempt in range(self.max_retries + 1):
            upload = _Upload(on_progress)
            try:
                async with self._http.stream(
                    "POST", path, content=content, params=query, headers=headers
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        wait, _ = _settle("POST", path, attempt, self.max_retries, response, None)
                    else:
                        async for line in response.aiter_lines():
                            if upload.feed(line) is not None:
                                break
                        return upload.ended(path)
            except (httpx.TransportError, APIError) as exc:
                wait = upload.failed(exc, path, attempt, self.max_retries)
            assert wait is not None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_sources(self, tree: str) -> list[Source]:
        found = (await self._request("GET", f"/v1/trees/{tree}/sources"))["sources"]
        return [_of(Source, s) for s in found]

    async def remove_source(self, tree: str, source_id: int) -> int:
        done = await self._request("DELETE", f"/v1/trees/{tree}/sources/{source_id}")
        return int(done["removed_tokens"])

    async def ask(
        self,
        tree: str,
        question: str,
        *,
        max_new_tokens: int = 64,
        focus_steps: int | None = None,
        remember: bool = False,
        where: str | None = None,
        prior: str | None = None,
    ) -> Answer:
        """Answer from the tree, with citations. ``where``: a metadata predicate (e.g.
        ``"kind=policy AND version=latest"``) — focus and citations keep to the sources it
        admits, and each citation says whether it is its document's latest version.
        ``prior``: how focus weighs LensNet, lexical and key matching per partition (e.g.
        ``"logs: lexical=1; policies: lens=1, keys=0.5"``)."""
        body = _ask_body(question, max_new_tokens, focus_steps, remember, False, where, prior)
        return _answer(await self._request("POST", f"/v1/trees/{tree}/ask", body))

    async def ask_stream(
        self,
        tree: str,
        question: str,
        *,
        max_new_tokens: int = 64,
        focus_steps: int | None = None,
        remember: bool = False,
        where: str | None = None,
        prior: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        body = _ask_body(question, max_new_tokens, focus_steps, remember, True, where, prior)
        try:
            async with self._http.stream("POST", f"/v1/trees/{tree}/ask", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                parser = _EventParser()
                async for line in response.aiter_lines():
                    parsed = parser.feed(line)
                    if parsed is not None:
                        yield _stream_event(*parsed)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"the answer stream timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"the answer stream failed: {exc}") from exc

    async def context(
        self,
        tree: str,
        question: str | None = None,
        *,
        W_max: int | None = None,
        focus_steps: int | None = None,
        pins: list[tuple[int, int]] | None = None,
        expand: list[tuple[int, int]] | None = None,
        collapse: list[tuple[int, int]] | None = None,
    ) -> WorkingContext:
        body = _focus_body(question, W_max, focus_steps, pins, expand, collapse)
        return _context(await self._request("POST", f"/v1/trees/{tree}/context", body))

    async def provenance(self, tree: str, start: int, stop: int) -> list[ProvenanceSpan]:
        path = f"/v1/trees/{tree}/provenance?start={int(start)}&stop={int(stop)}"
        return _spans(await self._request("GET", path))

    async def list_traces(self, tree: str) -> list[TraceFile]:
        found = (await self._request("GET", f"/v1/trees/{tree}/traces"))["traces"]
        return [_of(TraceFile, t) for t in found]

    async def get_trace(self, tree: str, name: str) -> Trace:
        return _of(Trace, await self._request("GET", f"/v1/trees/{tree}/traces/{name}"))

    async def annotations(
        self, tree: str, start: int = 0, stop: int | None = None
    ) -> list[Annotation]:
        found = await self._request("GET", _notes(tree), params=_range(start, stop))
        return [_of(Annotation, a) for a in found]

    async def annotate(
        self, tree: str, level: int, start: int, stop: int, note: str, tags: Sequence[str] = ()
    ) -> Annotation:
        body = {"level": level, "start": start, "stop": stop, "note": note, "tags": list(tags)}
        return _of(Annotation, await self._request("POST", _notes(tree), body))

    async def edit_annotation(
        self, tree: str, annotation: Annotation, note: str, tags: Sequence[str] = ()
    ) -> Annotation:
        body = {"version": annotation.version, "note": note, "tags": list(tags)}
        return _of(Annotation, await self._request("PATCH", _notes(tree, annotation.id), body))

    async def delete_annotation(self, tree: str, annotation: Annotation) -> None:
        params = {"version": str(annotation.version)}
        await self._request("DELETE", _notes(tree, annotation.id), params=params)

    async def annotation_history(self, tree: str, annotation_id: int) -> list[dict[str, Any]]:
        return list(await self._request("GET", f"{_notes(tree, annotation_id)}/history"))

    async def generate(
        self,
        tree: str,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 64,
        stop: list[str] | None = None,
    ) -> Generated:
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens, "stop": stop or []}
        return _of(Generated, await self._request("POST", f"/v1/trees/{tree}/generate", body))

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._request("GET", "/v1/models"))["data"]]


__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Annotation",
    "Answer",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Citation",
    "Client",
    "ConflictError",
    "ContextEntry",
    "Generated",
    "Ingested",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProvenanceSpan",
    "RateLimitError",
    "ServerError",
    "Source",
    "StreamEvent",
    "Trace",
    "TraceFile",
    "Tree",
    "Usage",
    "WorkingContext",
    "parse_events",
]
