"""Dashboards as code: Grafana dashboards of the service's metrics, generated with grafanalib.

Four dashboards — overview, focus, storage, service — each a list of :class:`Panel` (a title,
PromQL queries, a unit). :func:`write_dashboards` writes their Grafana JSON (committed under
``megacontext/server/dashboards/``; a test fails when the committed files and this module
differ, and another runs every query against a real Prometheus after real traffic).
:func:`render` draws the same panels from a Prometheus's query API with matplotlib, for the
docs and for machines without Grafana: a stand-in for Grafana's own rendering, not a copy of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError

DASHBOARD_DIR = Path(__file__).with_name("dashboards")
DATASOURCE = "${DS_PROMETHEUS}"  # chosen when the dashboard is imported


class PrometheusError(InvalidInputError):
    """The Prometheus to draw from cannot be reached, is not one, or refused a query."""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[str, ...]
    unit: str = "short"  # Grafana's unit id: short, s, bytes, percentunit, ops
    legend: str = ""  # Grafana's legend format, e.g. "{{kind}}"


_ASK = '{route="/v1/trees/{tree}/ask"}'

DASHBOARDS: dict[str, tuple[Panel, ...]] = {
    "overview": (
        Panel(
            "Ingest throughput (tokens/s)",
            (
                "sum(rate(megacontext_ingest_tokens_total[5m])) / "
                "sum(rate(megacontext_ingest_seconds_total[5m]))",
            ),
        ),
        Panel("Decoded tokens/s", ("sum(rate(megacontext_decode_tokens_total[5m]))",)),
        Panel(
            "Ask latency p50 / p99",
            tuple(
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(megacontext_http_request_duration_seconds_bucket{_ASK}[5m])))"
                for q in (0.5, 0.99)
            ),
            unit="s",
        ),
        Panel("Resident memory", ("process_resident_memory_bytes",), unit="bytes"),
        Panel("Canary answer NLL (nats)", ("megacontext_canary_answer_nll",)),
        Panel(
            "Budget violations (must be 0)",
            ("sum(increase(megacontext_focus_budget_violations_total[1h]))",),
        ),
    ),
    "focus": (
        Panel(
            "Focus edits per second",
            ("sum by (kind) (rate(megacontext_focus_edits_total[5m]))",),
            unit="ops",
            legend="{{kind}}",
        ),
        Panel("Refocus steps per second", ("sum(rate(megacontext_refocus_steps_total[5m]))",)),
        Panel(
            "Working-context utilization (median)",
            (
                "histogram_quantile(0.5, sum by (le) "
                "(rate(megacontext_working_context_utilization_ratio_bucket[5m])))",
            ),
            unit="percentunit",
        ),
        Panel(
            "Swap rate (median)",
            (
                "histogram_quantile(0.5, sum by (le) "
                "(rate(megacontext_focus_swap_rate_ratio_bucket[5m])))",
            ),
        ),
        Panel(
            "LensNet score entropy (median, over log n)",
            (
                "histogram_quantile(0.5, sum by (le) "
                "(rate(megacontext_lens_score_entropy_ratio_bucket[5m])))",
            ),
            unit="percentunit",
        ),
        Panel(
            "KV entries recomputed per second",
            ("sum(rate(megacontext_kv_recompute_tokens_total[5m]))",),
        ),
    ),
    "storage": (
        Panel("Trees", ("sum(megacontext_trees)",)),
        Panel("Bytes on disk", ("sum(megacontext_tree_bytes)",), unit="bytes"),
        Panel("Tokens held", ("sum(megacontext_tree_tokens)",)),
        Panel("Sources ingested", ("sum(megacontext_tree_sources)",)),
        Panel(
            "Gists computed per second",
            ("sum by (level) (rate(megacontext_gists_computed_total[5m]))",),
            legend="LOD{{level}}",
        ),
        Panel(
            "Gist norm, mean by level",
            ("avg by (level) (megacontext_gist_norm_mean)",),
            legend="LOD{{level}}",
        ),
        Panel(
            "Gist norm, variance by level",
            ("avg by (level) (megacontext_gist_norm_variance)",),
            legend="LOD{{level}}",
        ),
        Panel(
            "Gist norm drift against the previous day",
            ("megacontext:gist_norm_mean:drift_ratio", "megacontext:gist_norm_spread:drift"),
            unit="percentunit",
            legend="LOD{{level}}",
        ),
        Panel(
            "Page-cache hit ratio",
            (
                "sum(rate(megacontext_page_cache_hits_total[5m])) / "
                "(sum(rate(megacontext_page_cache_hits_total[5m])) + "
                "sum(rate(megacontext_page_cache_misses_total[5m])))",
            ),
            unit="percentunit",
        ),
    ),
    "service": (
        Panel(
            "Requests per second by route",
            ("sum by (route) (rate(megacontext_http_requests_total[5m]))",),
            unit="ops",
            legend="{{route}}",
        ),
        Panel(
            "Errors per second (5xx) by route",
            ('sum by (route) (rate(megacontext_http_requests_total{status=~"5.."}[5m]))',),
            unit="ops",
            legend="{{route}}",
        ),
        Panel(
            "Request latency p99 by route",
            (
                "histogram_quantile(0.99, sum by (le, route) "
                "(rate(megacontext_http_request_duration_seconds_bucket[5m])))",
            ),
            unit="s",
            legend="{{route}}",
        ),
        Panel(
            "Requests refused with 429",
            ("sum by (reason) (rate(megacontext_requests_limited_total[5m]))",),
            unit="ops",
            legend="{{reason}}",
        ),
        Panel(
            "Usage events not delivered",
            ("sum(increase(megacontext_usage_events_failed_total[1h]))",),
        ),
    ),
}


def grafana_json(name: str) -> dict[str, Any]:
    """The Grafana dashboard ``name`` (one of :data:`DASHBOARDS`) as JSON-ready data."""
    from grafanalib._gen import DashboardEncoder
    from grafanalib.core import Dashboard, DataSourceInput, GridPos, Target, TimeSeries

    panels = []
    for i, panel in enumerate(DASHBOARDS[name]):
        panels.append(
            TimeSeries(
                title=panel.title,
                dataSource=DATASOURCE,
                targets=[
                    Target(expr=expr, legendFormat=panel.legend, refId=chr(ord("A") + j))
                    for j, expr in enumerate(panel.queries)
                ],
                unit=panel.unit,
                gridPos=GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2)),
            )
        )
    dashboard = Dashboard(
        title=f"MegaContext — {name}",
        uid=f"megacontext-{name}",
        tags=["megacontext"],
        timezone="utc",
        inputs=[
            DataSourceInput(
                name="DS_PROMETHEUS",
                label="Prometheus",
                pluginId="prometheus",
                pluginName="Prometheus",
                description="The Prometheus that scrapes megacontext serve",
            )
        ],
        panels=panels,
    ).auto_panel_ids()
    data: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return data


def write_dashboards(out: Path = DASHBOARD_DIR) -> list[Path]:
    """Write every dashboard's JSON into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = out / f"{name}.json"
        path.write_text(json.dumps(grafana_json(name), indent=2, sort_keys=True) + "\n", "utf-8")
        written.append(path)
    return written


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[Any]:
    """The series of ``expr`` from a Prometheus's HTTP API (``[{"metric", "values"}]``).

    Raises :class:`PrometheusError` when ``prometheus`` is unreachable, is not a Prometheus
    query API, or refuses the query."""
    import httpx

    try:
        reply = httpx.get(
            f"{prometheus.rstrip('/')}/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step},
            timeout=30,
        )
    except httpx.TransportError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {prometheus} ({exc})") from None
    try:
        body = reply.json()
    except ValueError:
        raise PrometheusError(
            f"{prometheus} answered HTTP {reply.status_code} without JSON: it is not a "
            "Prometheus (give its base URL, e.g. http://127.0.0.1:9090)"
        ) from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", body) if isinstance(body, dict) else body
        raise PrometheusError(f"Prometheus at {prometheus} refused {expr!r}: {error}")
    result: list[Any] = body["data"]["result"]
    return result


def render(prometheus: str, out: Path, start: float, end: float, step: float = 5.0) -> list[Path]:
    """Draw every dashboard's panels from ``prometheus`` over ``[start, end]`` (Unix seconds)
    into ``out/NAME.png`` with matplotlib, one figure per dashboard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panels in DASHBOARDS.items():
        rows = (len(panels) + 1) // 2
        fig, axes = plt.subplots(rows, 2, figsize=(12, 3 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            for expr in panel.queries:
                for series in query_range(prometheus, expr, start, end, step):
                    times = [float(t) - start for t, _ in series["values"]]
                    values = [float(v) for _, v in series["values"]]
                    label = _legend(panel.legend, series["metric"]) or None
                    ax.plot(times, values, label=label)
            ax.set_title(panel.title, fontsize=10)
            ax.set_xlabel("seconds", fontsize=8)
            if panel.legend and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"MegaContext — {name} (matplotlib stand-in for Grafana)")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


__all__ = [
    "DASHBOARDS",
    "DASHBOARD_DIR",
    "Panel",
    "PrometheusError",
    "grafana_json",
    "query_range",
    "render",
    "write_dashboards",
]
