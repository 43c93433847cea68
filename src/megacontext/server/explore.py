"""The web explorer: its HTTP API (``/v1/trees/{tree}/explorer/...``) and its page (``/explorer/``).

The API answers what :class:`~megacontext.explorer.browse.TreeBrowser` answers — overview,
nodes level by level, span details, search, focus playback, annotations — with the caller's key
and in the caller's namespace, like every other route. The page is plain HTML, CSS and JavaScript
shipped in the package (``megacontext/explorer/web``): no CDN, nothing fetched at run time. It
takes the key from the URL's fragment (``#key=...``, never sent to a server) or asks for it.

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
time.)
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from megacontext.explorer.browse import MAX_PAGE, PAGE, TreeBrowser
from megacontext.runtime.opening import metadata_url
from megacontext.server.keys import Principal, ScopeError
from megacontext.store.annotations import Annotations
from megacontext.store.metadata import MetadataDB

WEB = Path(str(files("megacontext.explorer") / "web"))
ASSETS = {"explorer.js": "text/javascript", "explorer.css": "text/css"}
MAX_INDEX = 2**53
T = TypeVar("T")

Index = Annotated[int, Query(ge=0, le=MAX_INDEX)]
Level = Annotated[int, Query(ge=0, le=64)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
AnnotationId = Annotated[int, PathParam(ge=1, le=MAX_INDEX)]
Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=32)]


class AnnotationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = Field(ge=0, le=64, description="0: any token range; >= 1: exactly one node.")
    start: int = Field(ge=0, le=MAX_INDEX, description="The first token of the span.")
    stop: int = Field(ge=1, le=MAX_INDEX, description="One past its last token.")
    note: str = Field(max_length=10_000)
    tags: Tags = Field(default_factory=list)


class AnnotationEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="The version edited (a stale one is a 409).")
    note: str = Field(max_length=10_000)
    tags: Tags = Field(default_factory=list)


class Annotation(BaseModel):
    """A note on a span, as stored (``version``: what an edit or delete must name)."""

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


def explorer_routes(app: FastAPI, service: Any, reader: Any, writer: Any) -> None:  # noqa: C901
    """Add the explorer's API and page to ``app`` (``reader``/``writer``: the ``Depends`` that
    authenticate a read and a write, as the other routes do)."""
    Reader = Annotated[Principal, reader]
    Writer = Annotated[Principal, writer]
    trees, lane = service.trees, service.lane

    @contextmanager
    def browsing(caller: Principal, tree: str, write: bool = False) -> Iterator[TreeBrowser]:
        caller.require("write" if write else "read")
        if caller.labels is not None:
            raise ScopeError(
                "this key holds access labels, and the explorer shows a tree's text unfiltered: "
                "explore with a key made without --labels"
            )
        with trees.reader(caller.tenant, tree, caller) as session:
            if not write:
                yield TreeBrowser(session)
                return
            # Annotations live in the metadata database only: written beside any tree writer.
            db = MetadataDB(metadata_url(trees.found(caller.tenant, tree)))
            try:
                yield TreeBrowser(session, Annotations(db, session.tree_id))
            finally:
                db.close()

    async def read(caller: Principal, tree: str, view: Callable[[TreeBrowser], T]) -> T:
        def work() -> T:
            with browsing(caller, tree) as browser:
                return view(browser)

        # On the model lane, like every route that opens a session (the base's tokenizer is
        # shared by all of them).
        return await lane.run(work)

    async def write(caller: Principal, tree: str, change: Callable[[TreeBrowser], T]) -> T:
        def work() -> T:
            with browsing(caller, tree, write=True) as browser:
                return change(browser)

        return await lane.run(work)

    base = "/v1/trees/{tree}/explorer"
    tags: list[str | Enum] = ["explorer"]

    @app.get(base + "/overview", tags=tags)
    async def overview(tree: str, caller: Reader) -> dict[str, Any]:
        """Tokens, levels and their node counts, the base, the first page of sources."""
        return await read(caller, tree, lambda b: b.overview())

    @app.get(base + "/sources", tags=tags)
    async def sources(
        tree: str, caller: Reader, offset: Index = 0, limit: Limit = PAGE
    ) -> dict[str, Any]:
        """The ingest timeline, a page at a time."""
        return await read(caller, tree, lambda b: b.sources(offset, limit))

    @app.get(base + "/nodes", tags=tags)
    async def nodes(
        tree: str, level: Level, caller: Reader, first: Index = 0, limit: Limit = PAGE
    ) -> dict[str, Any]:
        """A page of the nodes of one level (level 0: tokens)."""
        return await read(caller, tree, lambda b: b.nodes(level, first, limit))

    @app.get(base + "/children", tags=tags)
    async def children(tree: str, level: Level, index: Index, caller: Reader) -> dict[str, Any]:
        """The children of one node: gists one level down, or a LOD1 block's tokens."""
        return await read(caller, tree, lambda b: b.children(level, index))

    @app.get(base + "/span", tags=tags)
    async def span(tree: str, level: Level, index: Index, caller: Reader) -> dict[str, Any]:
        """One node in detail: text, gist norm, sources and lines, annotations."""
        return await read(caller, tree, lambda b: b.span(level, index))

    @app.get(base + "/path", tags=tags)
    async def path_to(tree: str, token: Index, caller: Reader) -> list[dict[str, Any]]:
        """The nodes a drill-down opens, from the top level down to the block of ``token``."""
        return await read(caller, tree, lambda b: b.path_to(token))

    @app.get(base + "/search", tags=tags)
    async def search(
        tree: str,
        caller: Reader,
        q: Annotated[str, Query(max_length=1000)],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """LOD1 blocks matching the words of ``q`` (the lexical index), best first."""
        return await read(caller, tree, lambda b: b.search(q, limit))

    @app.get(base + "/traces/{name}", tags=tags)
    async def playback(
        tree: str, name: str, caller: Reader, first: Index = 0, limit: Limit = PAGE
    ) -> dict[str, Any]:
        """A page of a focus trace ready for playback: each step's context before and after
        its edits, the scores and evidence it was planned with; ``total``: the trace's steps."""
        return await read(caller, tree, lambda b: b.trace(name, first, limit))

    @app.get(base + "/annotations", tags=tags)
    async def annotations(
        tree: str, caller: Reader, start: Index = 0, stop: Index | None = None
    ) -> list[Annotation]:
        """The annotations overlapping tokens ``[start, stop)`` (all by default)."""
        found = await read(caller, tree, lambda b: b.list_annotations(start, stop))
        return [Annotation(**a) for a in found]

    @app.post(base + "/annotations", tags=tags, status_code=201)
    async def annotate(tree: str, body: AnnotationCreate, caller: Writer) -> Annotation:
        """Annotate a span: a node of ``level`` (>= 1), or any token range (level 0)."""
        made = await write(
            caller,
            tree,
            lambda b: b.annotate(
                body.level, body.start, body.stop, body.note, body.tags, caller.name
            ),
        )
        return Annotation(**made)

    @app.patch(base + "/annotations/{annotation_id}", tags=tags)
    async def edit(
        tree: str,
        annotation_id: AnnotationId,
        body: AnnotationEdit,
        caller: Writer,
    ) -> Annotation:
        """Change an annotation's note and tags; 409 when ``version`` is not the latest."""
        edited = await write(
            caller,
            tree,
            lambda b: b.edit_annotation(
                annotation_id, body.version, body.note, body.tags, caller.name
            ),
        )
        return Annotation(**edited)

    @app.delete(base + "/annotations/{annotation_id}", tags=tags, status_code=204)
    async def delete(
        tree: str,
        annotation_id: AnnotationId,
        version: Annotated[int, Query(ge=1, le=MAX_INDEX)],
        caller: Writer,
    ) -> Response:
        """Delete an annotation (its history stays); 409 when ``version`` is not the latest."""
        await write(
            caller, tree, lambda b: b.delete_annotation(annotation_id, version, caller.name)
        )
        return Response(status_code=204)

    @app.get(base + "/annotations/{annotation_id}/history", tags=tags)
    async def history(
        tree: str, annotation_id: AnnotationId, caller: Reader
    ) -> list[dict[str, Any]]:
        """Every change of an annotation: who, when, what."""
        return await read(caller, tree, lambda b: b.annotation_history(annotation_id))

    @app.get("/explorer", include_in_schema=False)
    def explorer_root() -> Response:
        return RedirectResponse("/explorer/")

    @app.get("/explorer/", include_in_schema=False)
    def explorer_page() -> Response:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/explorer/{asset}", include_in_schema=False)
    def explorer_asset(asset: str) -> Response:
        if asset not in ASSETS:
            return Response(status_code=404)
        return FileResponse(WEB / asset, media_type=ASSETS[asset])


__all__ = ["Annotation", "AnnotationCreate", "AnnotationEdit", "explorer_routes"]
