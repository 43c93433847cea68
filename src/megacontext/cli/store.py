"""``megacontext store``: inspect, verify, repair, migrate and compact a tree store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help=(
        "Inspect, verify, repair, migrate and compact a MegaContext tree store (a directory "
        "with manifest.json and L0/, L1/, ... segment logs; a session keeps its tree in "
        "SESSION/tree and its retrieval keys in SESSION/keys). info, verify and repair also "
        "take a session directory and check all of it: tree, keys, lexical index, metadata.\n\n"
        "Examples:\n\n"
        "  megacontext store info runs/mc/tree\n\n"
        "  megacontext store verify runs/mc --json        # a whole session; exit 1 on errors\n\n"
        "  megacontext store repair runs/mc/tree          # fix what verify found\n\n"
        "  megacontext store migrate runs/mc/tree         # storage format v1 -> v2"
    ),
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # never break the paths and commands it prints

PathArg = Annotated[Path, typer.Argument(help="Store directory.", show_default=False)]
TargetArg = Annotated[
    Path,
    typer.Argument(
        help="Store directory, or a session directory (checks all of it).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")]


def _emit(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(document, indent=2, default=str))


def _not_a_store(path: Path) -> Exception:
    """The CLI's words for a path that holds no store (the Python API names Python calls)."""
    from megacontext.store import NotAStoreError

    if (path / "tree" / "manifest.json").is_file():
        return NotAStoreError(
            f"{path} is a session directory, not a store: its tree store is {path / 'tree'} "
            f"(and its retrieval keys {path / 'keys'}); e.g. `megacontext store info "
            f"{path / 'tree'}`"
        )
    if path.exists() and not path.is_dir():
        return NotAStoreError(f"{path} is a file, not a store directory")
    where = "does not exist" if not path.exists() else "holds no store (no manifest.json)"
    return NotAStoreError(
        f"{path} {where}; a store is made by ingesting text, e.g. "
        f"`megacontext ingest FILE --tree SESSION`, which keeps it in SESSION/tree"
    )


def _open(path: Path, readonly: bool) -> Any:
    from megacontext.store import LocalStore, NotAStoreError

    try:
        return LocalStore.open(path, readonly=readonly)
    except NotAStoreError:
        raise _not_a_store(path) from None


def _check_store_path(path: Path) -> None:
    from megacontext.store.manifest import BACKUP, MANIFEST

    if not ((path / MANIFEST).exists() or (path / BACKUP).exists()):
        raise _not_a_store(path)


def _replica_health(store: Any) -> dict[str, int]:
    health = {"ok": 0, "missing": 0, "corrupt": 0, "unreadable": 0}
    if store.replicas is None:
        return health
    for level in store.manifest.levels:
        for entry in level.segments:
            for state in store.replicas.check(entry.name, entry.sha256).values():
                health[state.split(" ", 1)[0]] += 1  # "unreadable (why)": counted as unreadable
    return health


@app.command()
def info(path: TargetArg, as_json: JsonOpt = False) -> None:
    """Show levels, tokens, segments, bytes per token and replica health; for a session also
    its keys, lexical index, sources and journal.

    Opens everything read-only, so it works while a writer is running.

    Example: megacontext store info runs/mc
    """
    from megacontext.runtime.checkup import session_info
    from megacontext.runtime.opening import is_session

    session = session_info(path) if is_session(path) else None
    with _open(path / "tree" if session else path, readonly=True) as store:
        document = store.info()
        document["replica_health"] = _replica_health(store)
    if session is not None:
        session["tree"] = document
        document = session
    if as_json:
        _emit(document, True)
        return
    if session is not None:
        _print_store_info(document["tree"])
        keys = document["keys"]
        console.print(
            "keys: "
            + (
                ", ".join(f"L{lv} {n:,}" for lv, n in keys.items())
                if keys
                else "missing or damaged"
            )
        )
        lexical = document["lexical_blocks"]
        console.print(
            f"lexical index: {'missing or damaged' if lexical is None else f'{lexical:,}'} "
            f"of {document['tree_blocks']:,} blocks"
        )
        journal = ", ".join(f"{k} {v}" for k, v in sorted(document["journal"].items()))
        console.print(f"sources: {document['sources']:,}  journal: {journal or 'empty'}")
        return
    _print_store_info(document)


def _print_store_info(document: dict[str, Any]) -> None:
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
            f"copies ok={health['ok']} missing={health['missing']} corrupt={health['corrupt']} "
            f"unreadable={health['unreadable']}"
        )


@app.command()
def verify(
    path: TargetArg,
    as_json: JsonOpt = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail on warnings (e.g. a torn tail).")
    ] = False,
) -> None:
    """Check every byte: manifest copies, segment headers, sizes, sha256, checksums, replicas,
    invariants. For a session directory also: one gist per K tokens per level, one key per
    gist, one lexical row per block, the metadata database's integrity, provenance for every
    token, no append or removal left unfinished.

    Exits 0 when healthy, 1 when an error is found (warnings — what the next open for writing
    fixes by itself — only fail with --strict).

    Example: megacontext store verify runs/mc --json
    """
    from megacontext.runtime.checkup import verify_session
    from megacontext.runtime.opening import is_session
    from megacontext.store import LocalStore

    if is_session(path):
        problems = verify_session(path)
    else:
        _check_store_path(path)
        problems = LocalStore.verify_path(path)
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
def repair(
    path: TargetArg,
    as_json: JsonOpt = False,
    base: Annotated[
        str | None,
        typer.Option(
            help="For a session: the base to reopen it with (default: the one it recorded)."
        ),
    ] = None,
) -> None:
    """Fix every problem `verify` reports. Needs the writer lock and no readers open.

    Restores a corrupt manifest copy from the other, rewrites damaged headers, replaces bad or
    missing segment copies from good replicas, rebuilds lost checksum files, and cuts torn
    tails. What has no good copy anywhere is dropped with everything after it on its level:
    gists are recomputed when the tree is next opened for writing; lost tokens are listed
    (their files are kept in PATH/salvage/) and the command exits 1.

    For a session directory it repairs the tree and key stores, then opens the session for
    writing (loading its base model): missing gists and keys are recomputed, the lexical index
    is rebuilt, an interrupted append or removal is settled; then it verifies again.

    Example: megacontext store repair runs/mc
    """
    from megacontext.runtime.checkup import repair_session
    from megacontext.runtime.opening import is_session
    from megacontext.store import LocalStore

    if is_session(path):
        outcome = repair_session(path, base=base)
        report, ok = outcome.tree, outcome.ok
        extra: dict[str, Any] = {
            "keys": _report_json(outcome.keys) if outcome.keys is not None else None,
            "reopened": outcome.reopened,
            "remaining": [p.__dict__ for p in outcome.remaining],
        }
    else:
        if base is not None:
            raise typer.BadParameter(
                "--base only applies to a session directory", param_hint="--base"
            )
        _check_store_path(path)
        report = LocalStore.repair_path(path)
        ok, extra = report.ok, {}
    document = {"path": str(path), **_report_json(report), "ok": ok, **extra}
    if as_json:
        _emit(document, True)
    else:
        _print_report(report)
        keys = extra.get("keys")
        if keys:
            for item in keys["repaired"] + keys["dropped"]:
                console.print(f"[green]keys[/green] {item}")
        if "reopened" in extra:
            console.print(
                "session reopened for writing: gists, keys and lexical index rebuilt where they "
                "disagreed"
            )
        for item in extra.get("reopened", []):
            console.print(f"[green]settled[/green] {item}")
        for problem in extra.get("remaining", []):
            colour = "red" if problem["severity"] == "error" else "yellow"
            console.print(f"[{colour}]still {problem['severity']}[/{colour}] {problem['message']}")
    if not ok:
        raise typer.Exit(1)


def _report_json(report: Any) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "repaired": report.repaired,
        "dropped": report.dropped,
        "lost": report.lost,
        "unverified": report.unverified,
        "unrecoverable": report.unrecoverable,
        "salvage": report.salvage,
    }


def _print_report(report: Any) -> None:
    for item in report.repaired:
        console.print(f"[green]repaired[/green] {item}")
    for item in report.unverified:
        console.print(f"[yellow]unverified[/yellow] {item}")
    for item in report.dropped:
        console.print(f"[yellow]dropped[/yellow] {item}")
    for item in report.lost:
        console.print(f"[red]lost[/red] {item}")
    for item in report.unrecoverable:
        console.print(f"[red]unrecoverable[/red] {item}")
    changes = (
        report.repaired,
        report.dropped,
        report.lost,
        report.unverified,
        report.unrecoverable,
    )
    if not any(changes):
        console.print("tree store: nothing to repair")


@app.command()
def migrate(path: PathArg, as_json: JsonOpt = False) -> None:
    """Migrate a store to the current storage format (v1 -> v2: checksums for the records of
    every open segment). Needs the writer lock; the next writer would do the same on open.

    Sealed segments are not rewritten (their sha256 already covers them). Read-only opens of a
    v1 store keep working without migrating.

    Example: megacontext store migrate runs/mc/tree --json
    """
    from megacontext.store import LocalStore

    _check_store_path(path)
    report = LocalStore.migrate(path)
    if as_json:
        _emit(report.to_json(), True)
        return
    console.print(report.summary())
    if report.migrated:
        table = Table("level", "records", "sealed segments", "checksummed records")
        for lv in report.levels:
            table.add_row(
                str(lv["level"]),
                f"{lv['records']:,}",
                str(lv["sealed_segments"]),
                f"{lv['checksummed_records']:,}",
            )
        console.print(table)


@app.command()
def compact(path: PathArg, as_json: JsonOpt = False) -> None:
    """Remove what no manifest references: temp files, dropped levels, stray segments and
    replicas outside their placement. Never touches a referenced segment.

    Example: megacontext store compact runs/tree
    """
    with _open(path, readonly=False) as store:
        removed = store.compact()
    if as_json:
        _emit({"path": str(path), "removed": removed}, True)
    else:
        for item in removed:
            console.print(f"removed {item}")
        console.print(f"{len(removed)} item(s) removed")
