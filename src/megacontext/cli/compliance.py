"""``megacontext compliance``: legal holds, retention, labels, erasure proofs and the report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from megacontext.cli.output import console, emit_json
from megacontext.cli.session import DEFAULT_TREE, JsonOpt, TreeOpt, _opened
from megacontext.cli.sources import SourceArg
from megacontext.errors import InvalidInputError

app = typer.Typer(
    help=(
        "Compliance for long-lived memory: legal holds (a held source cannot be erased), "
        "retention (erase a source after a date; `apply-retention` erases what is due, for a "
        "scheduler), access labels, proofs that an erasure left nothing behind, and a report "
        "of what is stored.\n\n"
        "Examples:\n\n"
        "  megacontext compliance hold contract.pdf --reason 'case 2026-114' --tree runs/mc\n\n"
        "  megacontext compliance retain chat.log --days 30 --tree runs/mc\n\n"
        "  megacontext compliance apply-retention --tree runs/mc\n\n"
        "  megacontext compliance report --tree runs/mc --out report.md"
    ),
    no_args_is_help=True,
)


def _source(mc: Any, wanted: str) -> Any:
    from megacontext.cli.sources import _find
    from megacontext.store.metadata import COMPLETE

    found = [i for i in _find(mc.metadata.ingests_of(mc.tree_id), wanted) if i.status == COMPLETE]
    if not found:
        raise InvalidInputError(f"{wanted!r} is not a source the history holds now")
    return found[-1]


def _policies(mc: Any) -> Any:
    from megacontext.store.policies import Policies

    if mc.metadata is None:
        raise InvalidInputError("this session keeps no metadata database: it has no sources")
    return Policies(mc.metadata, mc.tree_id)


@app.command()
def hold(
    source: SourceArg,
    reason: Annotated[str, typer.Option(help="Why (a case or ticket reference).")],
    tree: TreeOpt = DEFAULT_TREE,
) -> None:
    """Put a source under legal hold: neither retention nor `sources remove` erases it."""
    with _opened(tree, None, None, None) as mc:
        ingest = _source(mc, source)
        _policies(mc).hold(ingest.id, reason, mc.actor)
    console.print(f"source #{ingest.id} is under legal hold: {escape(reason)}")


@app.command()
def release(source: SourceArg, tree: TreeOpt = DEFAULT_TREE) -> None:
    """Release a source's legal hold."""
    with _opened(tree, None, None, None) as mc:
        ingest = _source(mc, source)
        _policies(mc).release(ingest.id, mc.actor)
    console.print(f"source #{ingest.id} is no longer under legal hold")


@app.command()
def retain(
    source: SourceArg,
    days: Annotated[
        float | None, typer.Option(min=0, help="Erase it this many days after ingest.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Erase it after this moment (ISO 8601 with a zone).")
    ] = None,
    forever: Annotated[bool, typer.Option("--forever", help="Keep it: no retention.")] = False,
    tree: TreeOpt = DEFAULT_TREE,
) -> None:
    """Set how long a source is kept; `apply-retention` erases it once that has passed."""
    if sum(x is not None and x is not False for x in (days, until, forever or None)) != 1:
        raise typer.BadParameter("give exactly one of --days, --until, --forever")
    with _opened(tree, None, None, None) as mc:
        ingest = _source(mc, source)
        moment: dt.datetime | None = None
        if until is not None:
            try:
                moment = dt.datetime.fromisoformat(until)
            except ValueError:
                raise typer.BadParameter(
                    f"{until!r} is not an ISO 8601 time, e.g. 2027-01-31T00:00:00+00:00",
                    param_hint="--until",
                ) from None
        elif days is not None:
            started = ingest.started_at
            started = started if started.tzinfo else started.replace(tzinfo=dt.UTC)
            moment = started + dt.timedelta(days=days)
        policy = _policies(mc).retain_until(ingest.id, moment, mc.actor)
    kept = policy.retain_until.isoformat(timespec="seconds") if policy.retain_until else "forever"
    console.print(f"source #{ingest.id} is kept until {kept}")


@app.command()
def label(
    source: SourceArg,
    labels: Annotated[str, typer.Option(help="Comma-separated access labels (empty: none).")],
    tree: TreeOpt = DEFAULT_TREE,
) -> None:
    """Set a source's access labels (who may see it)."""
    with _opened(tree, None, None, None) as mc:
        ingest = _source(mc, source)
        policy = _policies(mc).set_labels(ingest.id, labels.split(","), mc.actor)
    console.print(f"source #{ingest.id} labels: {', '.join(policy.labels) or 'none'}")


@app.command("apply-retention")
def apply_retention(
    tree: TreeOpt = DEFAULT_TREE,
    now: Annotated[
        str | None, typer.Option(help="Act as if it were this moment (ISO 8601; tests, drills).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase every source whose retention has passed and that no legal hold covers. Safe to
    run from a scheduler (cron, a systemd timer): nothing due, nothing done."""
    from megacontext.runtime.erasure import apply_retention as apply

    moment = dt.datetime.fromisoformat(now) if now else None
    with _opened(tree, None, None, None) as mc:
        erasure = apply(mc, moment)
    if as_json:
        emit_json(
            {"erasure": None if erasure is None else erasure.__dict__ | {"at": str(erasure.at)}}
        )
    elif erasure is None:
        console.print("nothing is due for erasure")
    else:
        names = ", ".join(s["source"] for s in erasure.sources)
        console.print(f"erased {escape(names)} ({erasure.tokens:,} tokens): erasure #{erasure.id}")


@app.command("verify-erasure")
def verify_erasure(
    tree: TreeOpt = DEFAULT_TREE,
    erasure: Annotated[
        int | None, typer.Option(help="One erasure's number (default: every erasure).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prove erasures held: every remaining gist's lineage recomputes from the stored tokens,
    no provenance points into an erased source, and a byte scan of every file of the session
    finds none of the erased token sequences. Exits 1 when one did not hold."""
    from megacontext.runtime import open_session
    from megacontext.runtime.erasure import erasures
    from megacontext.runtime.erasure import verify_erasure as verify

    with open_session(tree, readonly=True, create=False) as mc:
        if mc.metadata is None:
            raise InvalidInputError(f"{tree} keeps no metadata database: it has no erasures")
        wanted = (
            [erasure] if erasure is not None else [e.id for e in erasures(mc.metadata, mc.tree_id)]
        )
        verdicts = [verify(mc, i) for i in wanted]
    if as_json:
        emit_json([v.to_json() for v in verdicts])
    else:
        if not verdicts:
            console.print("this tree has no erasures")
        for v in verdicts:
            if v.ok:
                console.print(
                    f"[green]erasure #{v.erasure} holds[/green]: {v.lineage_checked:,} gists' "
                    f"lineage recomputed, {v.files_scanned} files ({v.bytes_scanned:,} bytes) "
                    "scanned, no erased tokens found"
                )
            for problem in v.problems:
                console.print(f"[bold red]erasure #{v.erasure}[/bold red]: {escape(problem)}")
    if not all(v.ok for v in verdicts):
        raise typer.Exit(1)


@app.command()
def report(
    tree: TreeOpt = DEFAULT_TREE,
    out: Annotated[Path | None, typer.Option(help="Write the Markdown report here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What the tree stores (by source, label and age), its legal holds, retention due,
    erasures done, and whether its audit chain and lineage hold — Markdown or JSON."""
    from megacontext.runtime import open_session
    from megacontext.runtime.compliance import compliance_report, report_markdown

    with open_session(tree, readonly=True, create=False) as mc:
        document = compliance_report(mc)
    if as_json:
        emit_json(document)
        return
    text = report_markdown(document)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        console.print(text, markup=False, highlight=False)
