"""``megacontext serve`` and ``megacontext keys``: the HTTP service and its API keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from megacontext.cli.output import console

RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        help="The service's directory: its trees (ROOT/tenants/T/trees/NAME) and keys.sqlite.",
    ),
]
DEFAULT_ROOT = Path("runs/service")
# How often a served process runs the quality canary (megacontext.server.canary) by default.
DEFAULT_CANARY_INTERVAL_S = 3600.0

keys_app = typer.Typer(
    help=(
        "Create, list and revoke the service's API keys. A key belongs to a tenant (who sees "
        "only its own trees) and has scopes: read (ask, list), write (ingest, generate, remove, "
        "create and delete trees), admin (everything). Only a hash of each key is stored: a new "
        "key is printed once.\n\n"
        "Example: megacontext keys create --tenant acme --scopes read,write"
    ),
    no_args_is_help=True,
)


def serve(
    root: RootOpt = DEFAULT_ROOT,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    base: Annotated[str, typer.Option(help="Base model every tree uses.")] = "default",
    focus: Annotated[str, typer.Option(help="Focus bundle (GistNet, LensNet).")] = "default",
    w_max: Annotated[
        int | None, typer.Option("--w-max", min=1, help="Working-context budget of every tree.")
    ] = None,
    rate_limit: Annotated[
        str,
        typer.Option(
            help="Requests per minute per key and route class, e.g. read=600,write=120,ask=120."
        ),
    ] = "read=600,write=120,ask=120",
    max_request_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens one request may add or generate.")
    ] = 1_000_000,
    tokens_per_day: Annotated[
        int | None, typer.Option(min=1, help="Tokens a tenant may process per UTC day.")
    ] = None,
    usage: Annotated[
        str | None,
        typer.Option(help="Where usage events go: jsonl:PATH, or an http(s):// webhook URL."),
    ] = None,
    storage_interval: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds between storage metering ticks (byte-hours per tree, with --usage).",
        ),
    ] = 3600.0,
    metadata_url: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL URL where new trees keep metadata (several serve processes)."
        ),
    ] = None,
    metrics_per_tree: Annotated[
        bool,
        typer.Option(
            help="Label /metrics tree series by tenant and tree (one series per tree).",
        ),
    ] = False,
    canary_interval: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between quality-canary runs (megacontext_canary_answer_nll); 0: none.",
        ),
    ] = DEFAULT_CANARY_INTERVAL_S,
    grpc_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Also serve gRPC (megacontext.proto) on this port."),
    ] = None,
) -> None:
    """Serve trees over HTTP: REST (/v1/trees/...), OpenAI-compatible (/v1/chat/completions,
    /v1/completions, /v1/models; the model names the tree), the OpenAPI document (/docs,
    /openapi.json) and the web explorer (/explorer/). Requests carry an API key (`megacontext
    keys create`).

    Example: megacontext serve --root runs/service --port 8000
    """
    import uvicorn

    from megacontext.runtime import SessionConfig
    from megacontext.server import create_app
    from megacontext.server.limits import Limits

    config = (
        SessionConfig(trace=False) if w_max is None else SessionConfig(W_max=w_max, trace=False)
    )
    limits = Limits(_per_minute(rate_limit), max_request_tokens, tokens_per_day)
    app = create_app(
        root,
        base=base,
        focus=focus,
        config=config,
        limits=limits,
        usage=usage,
        storage_interval_s=storage_interval,
        metadata_url=metadata_url,
        metrics_per_tree=metrics_per_tree,
        canary_interval_s=canary_interval or None,
    )
    console.print(
        f"serving {root} on http://{host}:{port} (OpenAPI: http://{host}:{port}/docs; "
        f"web explorer: http://{host}:{port}/explorer/)"
    )
    if grpc_port is not None:
        from megacontext.server.grpc_service import grpc_server

        grpc = grpc_server(app.state.service, f"{host}:{grpc_port}")
        app.state.service.on_close.append(lambda: grpc.stop(grace=10).wait())  # calls finish
        console.print(f"gRPC (megacontext.v1.MegaContext) on {host}:{grpc_port}")
    # On shutdown (SIGINT, SIGTERM) the app waits for in-flight requests, then closes the
    # service: gRPC stops, storage is billed up to that moment and usage events are flushed.
    uvicorn.run(app, host=host, port=port, log_level="info")


def _per_minute(spec: str) -> dict[str, int]:
    from megacontext.server.limits import ROUTE_CLASSES

    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in ROUTE_CLASSES or not value.isdigit() or int(value) < 1:
            raise typer.BadParameter(
                f"{part!r}: use CLASS=N with CLASS one of {', '.join(ROUTE_CLASSES)} and N >= 1",
                param_hint="--rate-limit",
            )
        out[name] = int(value)
    return out


AuditUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--metadata-url",
        help="The PostgreSQL URL the service was started with, if any: its audit chain is there.",
    ),
]


def _audited(
    root: Path, metadata_url: str | None, action: str, key_id: str, **detail: object
) -> None:
    """Put a key change on the service's audit chain, as the local user."""
    from megacontext.runtime.session import default_actor
    from megacontext.server.audit import service_audit

    log = service_audit(root, metadata_url)
    try:
        log.record(action, default_actor(), key_id, dict(detail))
    finally:
        log.db.close()


@keys_app.command("create")
def create_key(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read, write, admin.")] = "read",
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    labels: Annotated[
        str | None,
        typer.Option(
            help="Access labels the key holds (comma-separated; '' for none): it then sees only "
            "sources whose labels it all holds. Default: it sees every source."
        ),
    ] = None,
    root: RootOpt = DEFAULT_ROOT,
    metadata_url: AuditUrlOpt = None,
) -> None:
    """Create a key and print it (once: only its hash is stored)."""
    from megacontext.server.keys import KeyStore

    held = None if labels is None else labels.split(",")
    key, info = KeyStore(root / "keys.sqlite").create(tenant, scopes, name, held)
    _audited(
        root,
        metadata_url,
        "key.create",
        info.id,
        tenant=info.tenant,
        scopes=list(info.scopes),
        labels=None if info.labels is None else list(info.labels),
    )
    console.print(f"key {info.id} for tenant {info.tenant} ({', '.join(info.scopes)}):")
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    root: RootOpt = DEFAULT_ROOT,
) -> None:
    """List keys (ids, tenants, scopes; never secrets)."""
    from megacontext.server.keys import KeyStore

    for info in KeyStore(root / "keys.sqlite").list(tenant):
        state = "revoked" if info.revoked_at else "active"
        held = "all sources" if info.labels is None else "labels: " + (",".join(info.labels) or "-")
        typer.echo(
            f"{info.id}  {info.tenant}  {','.join(info.scopes)}  {state}  {held}  {info.name}"
        )


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (the 12 hex digits after mck_).")],
    root: RootOpt = DEFAULT_ROOT,
    metadata_url: AuditUrlOpt = None,
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from megacontext.server.keys import KeyStore

    KeyStore(root / "keys.sqlite").revoke(key_id)
    _audited(root, metadata_url, "key.revoke", key_id)
    console.print(f"revoked {key_id}")


dashboards_app = typer.Typer(
    help=(
        "Grafana dashboards of the service's metrics (overview, focus, storage, service), as "
        "code. `write` writes their JSON for Grafana's import; `render` draws the same panels "
        "from a Prometheus with matplotlib, where no Grafana runs.\n\n"
        "Example: megacontext dashboards render --prometheus http://127.0.0.1:9090 --minutes 30"
    ),
    no_args_is_help=True,
)


@dashboards_app.command("write")
def write_dashboards(
    out: Annotated[
        Path | None,
        typer.Option(help="Directory for NAME.json (default: the copies shipped in the package)."),
    ] = None,
) -> None:
    """Write the dashboards' Grafana JSON (import with the Prometheus data source)."""
    from megacontext.server.dashboards import DASHBOARD_DIR
    from megacontext.server.dashboards import write_dashboards as write

    for path in write(out or DASHBOARD_DIR):
        console.print(f"wrote {path}")


@dashboards_app.command("render")
def render_dashboards(
    prometheus: Annotated[
        str,
        typer.Option(help="The Prometheus that scrapes the service, e.g. http://127.0.0.1:9090."),
    ],
    minutes: Annotated[
        float, typer.Option(min=0.5, help="How far back to draw, in minutes.")
    ] = 15.0,
    step: Annotated[float, typer.Option(min=1, help="Seconds between points.")] = 5.0,
    out: Annotated[Path, typer.Option(help="Directory for NAME.png.")] = Path("runs/dashboards"),
) -> None:
    """Draw every dashboard from a Prometheus's query API into PNGs (matplotlib: a stand-in
    for Grafana's own rendering)."""
    import time

    from megacontext.server.dashboards import PrometheusError, render

    end = time.time()
    try:
        written = render(prometheus, out, end - minutes * 60, end, step)
    except PrometheusError as exc:
        raise PrometheusError(f"{exc}; check --prometheus") from None
    for path in written:
        console.print(f"wrote {path}")
