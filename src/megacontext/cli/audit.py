"""``megacontext audit``: read, verify, export and anchor the audit trail of a tree (a session
directory) or of a service (its root)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from megacontext.cli.output import console, emit_json
from megacontext.store.audit import AuditLog

app = typer.Typer(
    help=(
        "The audit trail: a hash-chained log of what happened to a tree (ingests, removals, "
        "questions with the spans placed in the model's context, notes) or to a service (trees "
        "and keys created or removed). `verify` finds any edited, deleted, inserted or "
        "reordered event and names the first; `anchor` signs the chain's head with a secret "
        "kept elsewhere, so that cutting the newest events is found too.\n\n"
        "Example: megacontext audit verify runs/notes --anchors anchors.jsonl --key-file k"
    ),
    no_args_is_help=True,
)

PathArg = Annotated[
    Path,
    typer.Argument(help="A session directory (its tree's chain) or a service root (--root)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(help="A service's PostgreSQL metadata URL (a service root's chain is there)."),
]


@contextmanager
def opened(path: Path, metadata_url: str | None = None) -> Iterator[AuditLog]:
    """The chain of ``path``: a session directory's tree, or a service root's service chain."""
    from megacontext.runtime.opening import is_session
    from megacontext.runtime.opening import metadata_url as tree_url
    from megacontext.server.audit import SERVICE_AUDIT_DB, service_audit_url
    from megacontext.store.audit import SERVICE_CHAIN
    from megacontext.store.manifest import read_manifest
    from megacontext.store.metadata import MetadataDB

    if is_session(path):
        url, chain = tree_url(path), read_manifest(path / "tree").tree_id
    elif (path / "keys.sqlite").is_file() or (path / SERVICE_AUDIT_DB).is_file():
        url, chain = service_audit_url(path, metadata_url), SERVICE_CHAIN
    else:
        raise typer.BadParameter(
            f"{path} is neither a session directory (no tree/manifest.json) nor a service "
            "root (no keys.sqlite): give the directory `megacontext ingest --tree` or "
            "`megacontext serve --root` uses",
            param_hint="'PATH'",
        )
    db = MetadataDB(url, readonly=True)
    try:
        yield AuditLog(db, chain)
    finally:
        db.close()


def _key(key_file: Path) -> bytes:
    try:
        key = key_file.read_bytes().strip()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {key_file}: {exc}", param_hint="--key-file"
        ) from None
    if len(key) < 16:
        raise typer.BadParameter(
            f"{key_file} holds {len(key)} bytes; an anchor key needs at least 16 (make one "
            "with: head -c 32 /dev/urandom > audit.key)",
            param_hint="--key-file",
        )
    return key


@app.command()
def verify(
    path: PathArg,
    anchors: Annotated[
        Path | None, typer.Option(help="A JSONL file of anchors (`audit anchor` wrote it).")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="The secret the anchors were signed with.")
    ] = None,
    metadata_url: UrlOpt = None,
    lineage: Annotated[
        bool,
        typer.Option(help="Also recompute every gist's lineage hash from the stored tokens."),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Check the whole chain: every event hashes to its hash and links to the one before; and
    for a tree, that every gist's lineage hash recomputes from the tokens in the store. Exits 1
    and names the first bad event or gist when one does not hold."""
    from megacontext.store.audit import read_anchors

    if anchors is not None and key_file is None:
        raise typer.BadParameter(
            "anchors need the key they were signed with", param_hint="--key-file"
        )
    found = read_anchors(anchors) if anchors is not None else None
    with opened(path, metadata_url) as log:
        verdict = log.verify(found, _key(key_file) if key_file is not None else None)
    checked, mismatches = _lineage_check(path) if lineage else (0, [])
    if as_json:
        emit_json(
            {
                **verdict.to_json(),
                "lineage": {
                    "checked": checked,
                    "mismatches": [m.__dict__ for m in mismatches],
                },
            }
        )
    else:
        if verdict.ok:
            anchored = (
                f", {verdict.anchors_checked} anchor(s) hold" if verdict.anchors_checked else ""
            )
            console.print(
                f"[green]the audit chain holds[/green]: {verdict.events:,} events{anchored}; "
                f"head {verdict.head[:16]}"
            )
        else:
            console.print(
                f"[bold red]the audit chain is broken[/bold red]: {escape(verdict.problem)}"
            )
        if lineage and checked and not mismatches:
            console.print(f"[green]lineage holds[/green]: {checked:,} gists hash as recorded")
        for m in mismatches:
            what = "no recorded hash" if m.problem == "missing" else "does not hash as recorded"
            console.print(f"[bold red]lineage[/bold red]: LOD{m.level} node {m.index} {what}")
    if not verdict.ok or mismatches:
        raise typer.Exit(1)


def _lineage_check(path: Path) -> tuple[int, list[Any]]:
    """Recompute the lineage of a session directory's tree (nothing for a service root)."""
    from megacontext.runtime import open_session
    from megacontext.runtime.opening import is_session

    if not is_session(path):
        return 0, []
    with open_session(path, readonly=True, create=False) as session:
        lineage = session.lineage()
        return lineage.verify(session.tree) if lineage is not None else (0, [])


@app.command("lineage")
def lineage_of(
    path: Annotated[Path, typer.Argument(help="A session directory.")],
    level: Annotated[int, typer.Argument(min=1, help="The gist's level (1 = LOD1).")],
    index: Annotated[int, typer.Argument(min=0, help="The gist's index in its level.")],
    as_json: JsonOpt = False,
) -> None:
    """What a gist was computed from: its token range, its recorded lineage hash (and whether
    the tokens still hash to it), and the sources and lines of every part of its range."""
    from megacontext.explorer.browse import provenance_json
    from megacontext.runtime import open_session
    from megacontext.runtime.opening import is_session

    if not is_session(path):
        raise typer.BadParameter(f"{path} is not a session directory", param_hint="'PATH'")
    with open_session(path, readonly=True, create=False) as session:
        tree = session.tree
        if level > tree.num_levels or index >= tree.count(level):
            count = tree.count(level) if level <= tree.num_levels else 0
            raise typer.BadParameter(
                f"no gist {index} at level {level}: the tree holds levels 1-{tree.num_levels}"
                + (f" and {count:,} nodes at level {level}" if count else ""),
                param_hint="'INDEX'",
            )
        width = tree.K**level
        start, stop = index * width, (index + 1) * width
        lineage = session.lineage()
        recorded = lineage.hash_of(level, index) if lineage is not None else None
        recomputed = _node_hash(tree, level, index)
        sources = provenance_json(session, start, stop, limit=100)
    document = {
        "level": level,
        "index": index,
        "tokens": [start, stop],
        "recorded_hash": recorded,
        "holds": recorded == recomputed,
        "sources": sources,
    }
    if as_json:
        emit_json(document)
        return
    state = "[green]holds[/green]" if document["holds"] else "[bold red]does not hold[/bold red]"
    console.print(
        f"LOD{level} gist {index}: tokens {start:,}-{stop:,}; lineage {(recorded or 'none')[:16]} "
        f"{state}"
    )
    for row in sources:
        lines = f" lines {row['lines'][0]}-{row['lines'][1]}" if row["lines"] else ""
        console.print(f"  {escape(row['source'])}{lines} (tokens {row['start']:,}-{row['stop']:,})")
    if not document["holds"]:
        raise typer.Exit(1)


def _node_hash(tree: Any, level: int, index: int) -> str:
    """The lineage hash of one node, recomputed from its tokens alone."""
    from megacontext.store.lineage import block_hashes, parent_hashes

    width = tree.K**level
    hashes = block_hashes(tree.tokens(index * width, (index + 1) * width), tree.K)
    for _ in range(level - 1):
        hashes = parent_hashes(hashes, tree.K)
    return hashes[0].hex()


@app.command()
def log(
    path: PathArg,
    last: Annotated[int, typer.Option(min=1, help="Show the newest N events.")] = 20,
    metadata_url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the newest events: when, who, what, on which subject."""
    with opened(path, metadata_url) as chain:
        head = chain.head()
        first = max(1, head.seq - last + 1) if head is not None else 1
        events = list(chain.events(first))
    if as_json:
        emit_json([e.to_json() for e in events])
        return
    table = Table(title=f"audit trail — last {len(events)} events", title_justify="left")
    for column in ("seq", "at", "actor", "action", "subject"):
        table.add_column(column, overflow="fold")
    for e in events:
        table.add_row(str(e.seq), e.at[:19], escape(e.actor), e.action, escape(e.subject[:80]))
    console.print(table)


@app.command()
def export(
    path: PathArg,
    out: Annotated[Path, typer.Option(help="The JSONL file to write (one event per line).")],
    metadata_url: UrlOpt = None,
) -> None:
    """Write the whole chain as JSONL, in order, hashes included (a verifier can recompute
    them from the file alone; see the docs)."""
    with opened(path, metadata_url) as chain:
        count = chain.export(out)
    console.print(f"wrote {count:,} events to {out}")


@app.command()
def anchor(
    path: PathArg,
    key_file: Annotated[Path, typer.Option(help="A secret of 16 bytes or more, kept elsewhere.")],
    out: Annotated[Path, typer.Option(help="The JSONL file anchors are appended to.")],
    metadata_url: UrlOpt = None,
) -> None:
    """Sign the chain's head with the secret and append it to OUT. Keep OUT and the key away
    from the database: run it on a schedule (cron, a systemd timer)."""
    with opened(path, metadata_url) as chain:
        signed = chain.anchor(_key(key_file))
    with out.open("a", encoding="utf-8") as anchors:
        anchors.write(json.dumps(signed.to_json()) + "\n")
    console.print(f"anchored event {signed.seq:,} ({signed.hash[:16]}) in {out}")
