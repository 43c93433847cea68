"""``megacontext sources list | show | remove``: what a session's history holds, and erasing it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from megacontext.cli.output import console, emit_json, err_console
from megacontext.cli.session import DEFAULT_TREE, JsonOpt, TreeOpt, _check_session, _opened
from megacontext.errors import InvalidInputError

app = typer.Typer(
    help=(
        "What a session's history holds, source by source (files, conversations, generations), "
        "and removing one.\n\n"
        "Examples:\n\n"
        "  megacontext sources list --tree runs/mc\n\n"
        "  megacontext sources show notes.txt --tree runs/mc\n\n"
        "  megacontext sources remove notes.txt --tree runs/mc --yes"
    ),
    no_args_is_help=True,
)

SourceArg = Annotated[
    str,
    typer.Argument(
        help="A source: its number in `sources list`, the path it was ingested from, or its URI.",
        show_default=False,
    ),
]


def _journal(tree: Path) -> tuple[Any, str, int]:
    """The session's metadata (read-only), its tree id and the tokens its history holds."""
    from megacontext.store import LocalStore
    from megacontext.store.metadata import MetadataDB, default_url

    _check_session(tree)
    with LocalStore.open(tree / "tree", readonly=True) as store:
        url = store.manifest.metadata_url or default_url(str(store.root))
        tree_id, tokens = store.manifest.tree_id, store.count(0)
        has_db = store.manifest.metadata_url is not None or (store.root / "meta.sqlite").is_file()
    return (MetadataDB(url, readonly=True) if has_db else None), tree_id, tokens


def _row(ingest: Any) -> dict[str, Any]:
    from megacontext.runtime.journal import label

    return {
        "id": ingest.source.id,
        "source": label(ingest),
        "uri": ingest.source.uri,
        "kind": ingest.source.kind,
        "status": ingest.status,
        "tokens": None if ingest.stop is None else ingest.stop - ingest.start,
        "start": ingest.start,
        "stop": ingest.stop,
        "sha256": ingest.source.content_hash,
        "meta": ingest.source.meta,
        "ingested_at": ingest.started_at,
    }


@app.command("list")
def list_sources(
    tree: TreeOpt = DEFAULT_TREE,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list rolled-back and removed sources.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the sources in the history, oldest first, with the token range each occupies.

    Tokens no source accounts for (appended by versions before the journal) are counted at the
    end. Reads beside a writer.

    Example: megacontext sources list --tree runs/mc
    """
    from megacontext.store.metadata import COMPLETE, RUNNING

    db, tree_id, tokens = _journal(tree)
    ingests = db.ingests_of(tree_id) if db is not None else []
    if db is not None:
        db.close()
    shown = [i for i in ingests if show_all or i.status in (COMPLETE, RUNNING)]
    covered = sum((i.stop or i.start) - i.start for i in ingests if i.status == COMPLETE)
    document = {
        "tree": str(tree),
        "history_tokens": tokens,
        "unattributed_tokens": max(tokens - covered, 0),
        "sources": [_row(i) for i in shown],
    }
    if as_json:
        emit_json(document)
        return
    table = Table(title=f"sources in {tree}")
    for column in ("#", "source", "kind", "tokens", "range", "status", "ingested"):
        table.add_column(column, justify="right" if column in ("#", "tokens") else "left")
    for row in document["sources"]:
        span = f"{row['start']:,}–{row['stop']:,}" if row["stop"] is not None else "running"
        table.add_row(
            str(row["id"]),
            escape(row["source"]),
            row["kind"],
            f"{row['tokens']:,}" if row["tokens"] is not None else "—",
            span,
            row["status"],
            row["ingested_at"].strftime("%Y-%m-%d %H:%M") if row["ingested_at"] else "",
        )
    console.print(table)
    console.print(f"{len(shown)} source(s); history: {tokens:,} tokens")
    if document["unattributed_tokens"]:
        console.print(
            f"[yellow]{document['unattributed_tokens']:,} tokens have no recorded source[/yellow] "
            "(appended before the journal existed)"
        )


def _find(ingests: list[Any], wanted: str) -> list[Any]:
    """The complete ingests ``wanted`` names: a source number, a path or a URI, or a bare file
    name that only one source has."""
    from megacontext.runtime.journal import label
    from megacontext.store.metadata import COMPLETE

    live = [i for i in ingests if i.status == COMPLETE]
    if wanted.isdigit():
        found = [i for i in live if i.source.id == int(wanted)]
    else:
        names: set[str] = {wanted}
        with contextlib.suppress(OSError, ValueError):
            names.add(Path(wanted).resolve().as_uri())  # a path, as ingest recorded it
        found = [i for i in live if label(i) in names or i.source.uri in names]
        if not found:  # a bare file name, when it names one source
            found = [i for i in live if Path(label(i)).name == wanted]
            if len({i.source.uri for i in found}) > 1:
                options = ", ".join(sorted({label(i) for i in found}))
                raise InvalidInputError(f"{wanted!r} names several sources ({options}); give one")
    if not found:
        known = ", ".join(sorted({label(i) for i in live})[:8]) or "none"
        raise InvalidInputError(
            f"no source {wanted!r} in the history; `megacontext sources list` shows them "
            f"(e.g. {known})"
        )
    return found


@app.command("show")
def show(source: SourceArg, tree: TreeOpt = DEFAULT_TREE, as_json: JsonOpt = False) -> None:
    """Show one source: where it came from, its metadata and where it sits in the history.

    Example: megacontext sources show notes.txt --tree runs/mc
    """
    db, tree_id, _tokens = _journal(tree)
    if db is None:
        raise InvalidInputError(f"{tree} has recorded no sources yet")
    try:
        found = _find(db.ingests_of(tree_id), source)
        spans = [db.provenance(tree_id, i.start, i.stop or i.start) for i in found]
    finally:
        db.close()
    rows = [_row(i) for i in found]
    for row, provenance in zip(rows, spans, strict=True):
        lines = [p.line_range for p in provenance if p.line_range]
        row["lines"] = [min(a for a, _ in lines), max(b for _, b in lines)] if lines else None
        row["spans"] = len(provenance)
    if as_json:
        emit_json({"tree": str(tree), "appends": rows})
        return
    for row in rows:
        console.print(f"[bold]{escape(row['source'])}[/bold] (source #{row['id']}, {row['kind']})")
        console.print(f"  uri       {escape(row['uri'])}")
        console.print(f"  tokens    {row['tokens']:,} at {row['start']:,}–{row['stop']:,}")
        if row["lines"]:
            console.print(
                f"  lines     {row['lines'][0]}–{row['lines'][1]} in {row['spans']} spans"
            )
        console.print(f"  sha256    {row['sha256']}")
        console.print(f"  ingested  {row['ingested_at']}")
        for key, value in row["meta"].items():
            console.print(f"  {escape(key):<9} {escape(str(value))}")


@app.command("remove")
def remove(
    sources: Annotated[list[str], typer.Argument(help="Sources to remove (number, path or URI).")],
    tree: TreeOpt = DEFAULT_TREE,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Erase sources from the history: their tokens, and the gists, keys and lexical rows built
    on them (rebuilt from what remains). Later provenance moves down with the history.

    The history after the first removed token is rewritten (re-gisted); a crash part-way is
    finished when the session is next opened. Needs the session to itself: no `ask` reading it.

    Example: megacontext sources remove notes.txt --tree runs/mc --yes
    """
    from megacontext.runtime.erasure import erase_sources
    from megacontext.runtime.journal import label

    db, tree_id, tokens = _journal(tree)
    if db is None:
        raise InvalidInputError(f"{tree} has recorded no sources yet")
    try:
        journal = db.ingests_of(tree_id)
        found = {i.id: i for wanted in sources for i in _find(journal, wanted)}
    finally:
        db.close()
    doomed = sum((i.stop or i.start) - i.start for i in found.values())
    names = ", ".join(sorted({label(i) for i in found.values()}))
    if not yes:
        first = min(i.start for i in found.values())
        typer.confirm(
            f"remove {names} ({doomed:,} tokens) and re-gist the {tokens - first:,} tokens after "
            "the first of them?",
            abort=True,
        )
    with _opened(tree, None, None, None) as mc:
        journal = {i.id: i for i in mc.metadata.ingests_of(mc.tree_id)}
        with err_console.status(f"removing {escape(names)} and re-gisting what follows"):
            erasure = erase_sources(mc, [journal[i] for i in found])
        remaining = mc.tree.num_tokens
    if as_json:
        emit_json(
            {
                "removed": sorted({label(i) for i in found.values()}),
                "tokens": erasure.tokens,
                "history_tokens": remaining,
                "erasure": erasure.id,
            }
        )
        return
    console.print(
        f"removed {escape(names)}: {erasure.tokens:,} tokens; history: {remaining:,} tokens "
        f"(erasure #{erasure.id}: `megacontext compliance verify-erasure {tree}` proves it)"
    )


__all__ = ["app"]
