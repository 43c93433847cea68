"""``megacontext knowledge``: documents in partitions, questions restricted by their metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from megacontext.cli.output import console, emit_json
from megacontext.cli.session import (
    DEFAULT_TREE,
    BaseOpt,
    FocusOpt,
    FocusStepsOpt,
    JsonOpt,
    MaxNewOpt,
    PromptOpt,
    TreeOpt,
    WMaxOpt,
    _check_session,
    _config,
    _opened,
)
from megacontext.errors import InvalidInputError

app = typer.Typer(
    help=(
        "Knowledge workflows: documents in named partitions (policies, tickets, logs) with "
        "metadata, and questions restricted by it.\n\n"
        "Examples:\n\n"
        "  megacontext knowledge add refunds.md --partition policies --kind policy "
        "--time 2026-01-10 --tree runs/kb --base smollm2\n\n"
        "  megacontext knowledge add refunds-v2.md --partition policies --doc refunds.md "
        "--kind policy --time 2026-06-01 --tree runs/kb\n\n"
        '  megacontext knowledge ask "How long is the refund window?" --where '
        '"kind=policy AND version=latest" --tree runs/kb\n\n'
        '  megacontext knowledge sources --where "partition=logs AND time>=2026-06-01" '
        "--tree runs/kb"
    ),
    no_args_is_help=True,
)

WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        help="A metadata predicate: FIELD OP VALUE terms joined by AND / OR / NOT, with "
        "parentheses. Fields: partition, kind, doc, owner, path (= !=), version (a number or "
        "'latest'), time (ISO 8601; = != < <= > >=), tag. Example: \"kind=policy AND "
        'version=latest".',
        show_default=False,
    ),
]

PriorOpt = Annotated[
    str | None,
    typer.Option(
        "--prior",
        help="How focus weighs LensNet's score against lexical (BM25) and key matching, per "
        "partition: 'PARTITION: SIGNAL=WEIGHT, …' clauses joined by ';', '*' for the rest; "
        'signals lexical, keys, lens (one left out weighs 0). Example: "logs: lexical=1; '
        'policies: lens=1,keys=0.5". Default: LensNet alone.',
        show_default=False,
    ),
]


@app.command()
def add(
    paths: Annotated[list[Path], typer.Argument(help="Text files to add, one document each.")],
    partition: Annotated[
        str, typer.Option("--partition", help="The collection: policies, tickets, logs, …")
    ],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="What it is: policy, spec, ticket, log, …")
    ] = None,
    doc: Annotated[
        str | None,
        typer.Option(
            "--doc",
            help="The document's identity across versions (default: the file's name). Adding "
            "a changed file under the same --doc appends its next version.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            help="The version number (default: one above the document's latest).",
            show_default=False,
        ),
    ] = None,
    time: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="When it was written or took effect, ISO 8601 (default: now, UTC).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A label (repeat for several).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Who answers for the document.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add documents to a partition, each with its metadata (a new version when it changed).

    The session is created when the directory holds none. The history is append-only: a new
    version of a document is appended and the old one stays (`--where version=latest` leaves
    it out); adding a document unchanged appends nothing.
    """
    from megacontext.apps.knowledge import add_document
    from megacontext.runtime.reading import SourceFile, read_text

    if doc is not None and len(paths) > 1:
        raise InvalidInputError("--doc names one document: give one file with it")
    if version is not None and len(paths) > 1:
        raise InvalidInputError("--version numbers one document: give one file with it")
    texts = []
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"{path} is not a file; give text files to add")
        read = read_text(SourceFile(path, path.resolve()), None)
        if read is None:
            raise InvalidInputError(f"{path} is binary or empty: nothing to add")
        texts.append((path, read.text))
    config = _config(tree, w_max, None, prompt)
    report = []
    with _opened(tree, base, focus, config) as mc:
        for path, text in texts:
            added, done = add_document(
                mc,
                text,
                partition=partition,
                doc=doc or path.name,
                path=str(path),
                kind=kind,
                version=version,
                time=time,
                tags=tag or [],
                owner=owner,
            )
            report.append(
                {
                    "path": str(path),
                    "added": added.label() if added else None,
                    "unchanged": added is None,
                    "tokens": done.tokens,
                }
            )
    if as_json:
        emit_json({"tree": str(tree), "documents": report})
        return
    for row in report:
        if row["unchanged"]:
            console.print(f"{escape(row['path'])}: unchanged (its latest version has this text)")
        else:
            console.print(
                f"{escape(row['path'])} → {escape(row['added'])}: {row['tokens']:,} tokens"
            )


@app.command()
def sources(
    tree: TreeOpt = DEFAULT_TREE,
    where: WhereOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the documents (every source, or those --where admits) with their metadata."""
    from megacontext.apps.knowledge import parse_predicate, select_sources
    from megacontext.runtime.opening import open_session

    predicate = parse_predicate(where) if where is not None else None  # before any model loads
    _check_session(tree)
    with open_session(tree, readonly=True, create=False) as mc:
        chosen, _ = select_sources(mc, predicate)
    rows = [_source_json(s) for s in chosen]
    if as_json:
        emit_json({"where": where, "sources": rows})
        return
    table = Table(title=f"{len(rows)} source(s)" + (f" where {where}" if where else ""))
    for column in ("source", "kind", "time", "tags", "owner", "tokens", "latest"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            escape(r["label"]),
            escape(str(r["meta"].get("kind", ""))),
            escape(str(r["meta"].get("time", ""))),
            escape(", ".join(r["meta"].get("tags", []))),
            escape(str(r["meta"].get("owner", ""))),
            f"{r['tokens'][1] - r['tokens'][0]:,}",
            "" if r["latest"] is None else ("yes" if r["latest"] else "superseded"),
        )
    console.print(table)


def _source_json(s: Any) -> dict[str, Any]:
    return {
        "label": s.label(),
        "uri": s.uri,
        "meta": s.meta,
        "tokens": [s.start, s.stop],
        "latest": None if not s.is_document else not s.superseded,
    }


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    tree: TreeOpt = DEFAULT_TREE,
    base: BaseOpt = None,
    focus: FocusOpt = None,
    w_max: WMaxOpt = None,
    prompt: PromptOpt = None,
    where: WhereOpt = None,
    prior: PriorOpt = None,
    focus_steps: FocusStepsOpt = None,
    max_new_tokens: MaxNewOpt = 64,
    as_json: JsonOpt = False,
) -> None:
    """Answer from the documents --where admits, citing them (and saying if one is stale).

    Focus never expands the text of other sources, and only admitted sources are cited; a
    citation of a superseded version is marked. --prior sets how focus finds text in each
    partition (exact words in logs, meaning in prose). Reads beside a writer.
    """
    from megacontext.apps.knowledge import ask_where, parse_partition_prior, parse_predicate

    # Both parsed before any model loads, so a typo costs nothing.
    predicate = parse_predicate(where) if where is not None else None
    weighting = parse_partition_prior(prior) if prior is not None else None
    _check_session(tree)
    config = _config(tree, w_max, focus_steps, prompt)
    with _opened(tree, base, focus, config, readonly=True) as mc:
        answer = ask_where(mc, question, predicate, max_new_tokens=max_new_tokens, prior=weighting)
    if as_json:
        emit_json(
            {
                "answer": answer.text,
                "where": answer.where,
                "prior": answer.prior,
                "admitted_sources": answer.admitted_sources,
                "withheld_citations": answer.withheld,
                "stale_citations": answer.stale_citations,
                "citations": [
                    {
                        "label": c.label,
                        "source": c.source,
                        "lines": list(c.lines) if c.lines else None,
                        "latest": c.latest,
                        "score": c.score,
                    }
                    for c in answer.citations
                ],
            }
        )
        return
    console.print(escape(answer.text.strip()) or "[dim](no answer)[/dim]")
    for c in answer.citations[:8]:
        mark = "" if c.latest else " [yellow](superseded version)[/yellow]"
        console.print(f"[dim]  {escape(c.source)} {escape(c.label)}{mark}[/dim]")
    if answer.where:
        console.print(
            f"[dim]where {escape(answer.where)}: {answer.admitted_sources} source(s) admitted"
            + (f", {answer.withheld} citation(s) outside them withheld" if answer.withheld else "")
            + "[/dim]"
        )
    if answer.prior:
        console.print(f"[dim]focus prior: {escape(answer.prior)}[/dim]")


__all__ = ["app"]
