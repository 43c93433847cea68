"""``megacontext port-model`` and ``megacontext models``: bring a base model to MegaContext.

Register in ``megacontext.cli``::

    from megacontext.cli import models as models_cli
    app.command("port-model")(models_cli.port_model)
    app.add_typer(models_cli.app, name="models")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()

app = typer.Typer(
    help=(
        "Base models behind the MegaContext adapter: shipped adapter configs and model info.\n\n"
        "Examples:\n\n"
        "  megacontext models list                 # shipped adapter configs\n\n"
        "  megacontext models info default         # family, sizes, policies, fingerprint\n\n"
        "  megacontext port-model ./my-llama       # check a model and write its adapter config"
    ),
    no_args_is_help=True,
)


def port_model(
    target: Annotated[
        str,
        typer.Argument(
            help=(
                "A local HF model directory, a hub id (where the network allows), a config.json "
                "or config-only directory, an adapter-config YAML, or a shipped config name."
            ),
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Directory for NAME.yaml, NAME.report.json and NAME.report.md."),
    ] = Path("ported"),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report JSON to this path.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the adapter config (default: derived).")
    ] = None,
    hub_id: Annotated[
        str | None, typer.Option("--hub-id", help="Hub id to record in the adapter config.")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Where the config values come from (recorded).")
    ] = None,
) -> None:
    """Inspect a model, pick its quirks and position policies, run the portability checks.

    Writes an adapter config (YAML) and a compatibility report (JSON and a readable summary).
    With weights, the checks run on the checkpoint itself, in fp32 and then bf16. With only a
    config (no weights here), they run on a random-init model of that config scaled down in depth
    and width, and the report lists every scaled field. Exits 1 when a check fails, 2 on bad
    input (missing files, not a causal LM, unsupported architecture).

    Examples:

      megacontext port-model ./checkpoints/Qwen2.5-0.5B --out ported/

      megacontext port-model meta-llama/Llama-3.2-1B --json report.json

      megacontext port-model qwen3-0.6b   # re-check a shipped config
    """
    from megacontext.models.porting import port_model as run_port
    from megacontext.models.porting import write_outputs

    label = escape(target)
    with console.status(f"porting {label}") as status:
        report = run_port(
            target,
            name=name,
            hub_id=hub_id,
            source=source,
            progress=lambda msg: status.update(f"porting {label}: {escape(msg)}"),
        )
    written = write_outputs(report, out, json_path)
    table = Table(title=f"port-model {report.name}: {'PASS' if report.passed else 'FAIL'}")
    for column in ("check", "result", "measured", "tolerance"):
        table.add_column(column, justify="left" if column in ("check", "result") else "right")
    for check in report.checks:
        verdict = "skipped" if check.skipped else ("pass" if check.passed else "[red]FAIL[/red]")
        table.add_row(
            check.name,
            verdict,
            "" if check.measured is None else f"{check.measured:.3g}",
            "" if check.tolerance is None else f"{check.tolerance:.3g}",
        )
    console.print(table)
    cfg = report.adapter_config
    console.print(
        f"family [bold]{cfg['family']}[/bold]; policies {', '.join(cfg['position_policies'])}; "
        f"checked on {escape(report.checked_on)}"
    )
    if report.scaled_down:
        scaled = ", ".join(f"{k} {a}→{b}" for k, (a, b) in report.scaled_down.items())
        console.print(f"[dim]scaled down: {scaled}[/dim]")
    for path in written:
        console.print(f"wrote {escape(str(path))}")
    if not report.passed:
        raise typer.Exit(1)


@app.command("list")
def list_configs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the adapter configs shipped with MegaContext.

    Example: megacontext models list
    """
    from megacontext.models.porting import load_adapter_config, shipped_configs

    rows = []
    for name in shipped_configs():
        doc = load_adapter_config(name)
        rows.append(
            {
                "name": name,
                "hub_id": doc.get("hub_id"),
                "family": doc["family"],
                "d_model": doc.get("d_model"),
                "layers": doc.get("num_layers"),
                "policies": doc.get("position_policies"),
                "passed": (doc.get("portability") or {}).get("passed"),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="shipped adapter configs")
    for column in ("name", "hub_id", "family", "d_model", "layers", "policies", "checks"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            str(row["hub_id"]),
            row["family"],
            str(row["d_model"]),
            str(row["layers"]),
            ", ".join(row["policies"] or []),
            "pass" if row["passed"] else "fail",
        )
    console.print(table)


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="'default', a model directory, or a hub id.", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Load a base model and show its family, sizes, position policies and fingerprint.

    Example: megacontext models info ./checkpoints/Qwen2.5-0.5B
    """
    from megacontext.models import load_base

    base = load_base(model)
    document = {**base.describe(), "fingerprint": base.fingerprint, **base.fingerprints}
    if as_json:
        typer.echo(json.dumps(document, indent=2, default=str))
        return
    table = Table(title=f"base model {escape(model)}")
    table.add_column("field")
    table.add_column("value")
    for key, value in document.items():
        table.add_row(key, escape(", ".join(value) if isinstance(value, list) else str(value)))
    console.print(table)


__all__ = ["app", "info", "list_configs", "port_model"]
