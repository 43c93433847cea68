"""``megacontext store``: inspect, verify, repair and compact a tree store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help=(
        "Inspect, verify, repair and compact a MegaContext tree store (a directory with "
        "manifest.json and L0/, L1/, ... segment logs).\n\n"
        "Examples:\n\n"
        "  megacontext store info runs/tree\n\n"
        "  megacontext store verify runs/tree --json   # exit 1 when anything is wrong\n\n"
        "  megacontext store repair runs/tree          # fix bad copies from good replicas"
    ),
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # never break the paths and commands it prints

PathArg = Annotated[Path, typer.Argument(help="Store directory.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")]


def _emit(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(document, indent=2, default=str))


def _replica_health(store: Any) -> dict[str, int]:
    health = {"ok": 0, "missing": 0, "corrupt": 0}
    if store.replicas is None:
        return health
    for level in store.manifest.levels:
        for entry in level.segments:
            for state in store.replicas.check(entry.name, entry.sha256).values():
                health[state] += 1
    return health


@app.command()
def info(path: PathArg, as_json: JsonOpt = False) -> None:
    """Show levels, tokens, segments, bytes per token and replica health.

    Opens the store read-only, so it works while a writer is running.

    Example: megacontext store info runs/tree
    """
    from megacontext.store import LocalStore

    with LocalStore.open(path, readonly=True) as store:
        document = store.info()
        document["replica_health"] = _replica_health(store)
    if as_json:
        _emit(document, True)
        return
    console.print(f"[bold]{document['path']}[/bold]  tree {document['tree_id']}")
    console.print(
        f"K={document['K']}  dim={document['dim']}  gists={document['gist_dtype']}  "
        f"tokens={document['tokens']:,}  bytes={document['bytes']:,}  "
        f"bytes/token={document['bytes_per_token']:.2f}"
    )
    fp = document["fingerprints"]
    console.print(
        f"bound to: base={fp['base'] or '-'} tokenizer={fp['tokenizer'] or '-'} "
        f"gistnet={fp['gistnet'] or '-'}"
    )
    table = Table(
        "level", "dtype", "records", "sealed segments", "open records", "records/segment", "bytes"
    )
    for lv in document["levels"]:
        table.add_row(
            str(lv["level"]),
            lv["dtype"],
            f"{lv['records']:,}",
            str(lv["sealed_segments"]),
            str(lv["open_records"]),
            str(lv["capacity"]),
            f"{lv['bytes']:,}",
        )
    console.print(table)
    rep = document["replication"]
    if rep:
        health = document["replica_health"]
        console.print(
            f"replicas: R={rep['replicas']} quorum={rep['write_quorum']} over "
            f"{len(rep['roots'])} roots; "
            f"copies ok={health['ok']} missing={health['missing']} corrupt={health['corrupt']}"
        )


@app.command()
def verify(
    path: PathArg,
    as_json: JsonOpt = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail on warnings (e.g. a torn tail).")
    ] = False,
) -> None:
    """Check every byte: manifest copies, segment headers, sizes, sha256, replicas, invariants.

    Exits 0 when healthy, 1 when a problem is found (warnings only fail with --strict).

    Example: megacontext store verify runs/tree --json
    """
    from megacontext.errors import StorageCorruptionError
    from megacontext.store import LocalStore, Problem

    try:
        with LocalStore.open(path, readonly=True) as store:
            problems = store.verify()
    except StorageCorruptionError as exc:
        problems = [Problem("error", str(path), str(exc))]
    errors = [p for p in problems if p.severity == "error"]
    failed = bool(errors) or (strict and bool(problems))
    if as_json:
        _emit(
            {"path": str(path), "ok": not failed, "problems": [p.__dict__ for p in problems]}, True
        )
    else:
        for p in problems:
            colour = "red" if p.severity == "error" else "yellow"
            console.print(f"[{colour}]{p.severity}[/{colour}] {p.path}: {p.message}")
        if failed:
            console.print(
                f"[red]{len(errors)} error(s)[/red]; run `megacontext store repair {path}`"
            )
        else:
            console.print(f"[green]ok[/green] {path}")
    if failed:
        raise typer.Exit(1)


@app.command()
def repair(path: PathArg, as_json: JsonOpt = False) -> None:
    """Restore a corrupt manifest copy and replace bad or missing segment copies from good ones.

    Needs the writer lock (stop the writer first). Nothing is ever dropped: a segment with no
    good copy is reported as unrecoverable and the command exits 1.

    Example: megacontext store repair runs/tree
    """
    from megacontext.store import LocalStore, recover_manifest

    manifest_action = recover_manifest(path)
    with LocalStore.open(path) as store:
        report = store.repair()
    document = {
        "path": str(path),
        "manifest": manifest_action,
        "repaired": report.repaired,
        "unrecoverable": report.unrecoverable,
    }
    if as_json:
        _emit(document, True)
    else:
        console.print(f"manifest: {manifest_action}")
        for item in report.repaired:
            console.print(f"[green]repaired[/green] {item}")
        for item in report.unrecoverable:
            console.print(f"[red]unrecoverable[/red] {item} (no good copy anywhere)")
        if not report.repaired and not report.unrecoverable:
            console.print("nothing to repair")
    if report.unrecoverable:
        raise typer.Exit(1)


@app.command()
def compact(path: PathArg, as_json: JsonOpt = False) -> None:
    """Remove what no manifest references: temp files, dropped levels, stray segments and
    replicas outside their placement. Never touches a referenced segment.

    Example: megacontext store compact runs/tree
    """
    from megacontext.store import LocalStore

    with LocalStore.open(path) as store:
        removed = store.compact()
    if as_json:
        _emit({"path": str(path), "removed": removed}, True)
    else:
        for item in removed:
            console.print(f"removed {item}")
        console.print(f"{len(removed)} item(s) removed")
