"""Prometheus metrics of the service: requests, limits, usage delivery, trees (issue 19).

Served at ``GET /metrics`` (an admin key: with per-tree series it names tenants' trees) in
Prometheus's text format, beside the sessions' metrics (:mod:`megacontext.runtime.metrics`) and
the process's own (``process_resident_memory_bytes``, …). Routes are labelled by their template
(``/v1/trees/{tree}/ask``), never by a tree's name; per-tree series (``tenant`` and ``tree``
labels) only when the deployment opts in (``serve --metrics-per-tree``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

# The alert rules shipped with the package (memory growth, gist drift, focus thrash, budget
# violations, quality drift, the ask latency SLO); docs/observability.md is their runbook.
ALERT_RULES = Path(__file__).with_name("alerts.yml")

REQUESTS = Counter(
    "megacontext_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "megacontext_http_request_duration_seconds",
    "Seconds from a request's arrival to its response's start (a stream's first byte), by "
    "route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
LIMITED = Counter(
    "megacontext_requests_limited",
    "Requests refused with 429: by a key's rate limit or a tenant's daily token budget.",
    ["reason"],
)
USAGE_FAILURES = Counter(
    "megacontext_usage_events_failed",
    "Usage events a sink could not deliver after its retries (kept in its dead-letter file,"
    " if any).",
)

CANARY_NLL = Gauge(
    "megacontext_canary_answer_nll",
    "Mean NLL (nats per token) of the quality canary's expected answers, read after the "
    "service's own focused working context (server/canary.py); rising means quality drift.",
)
CANARY_SECONDS = Gauge(
    "megacontext_canary_duration_seconds", "Seconds the latest quality canary took."
)
CANARY_FAILURES = Counter("megacontext_canary_failures", "Quality canary runs that failed.")

CATALOGUE: tuple[MetricWrapperBase, ...] = (
    REQUESTS,
    REQUEST_SECONDS,
    LIMITED,
    USAGE_FAILURES,
    CANARY_NLL,
    CANARY_SECONDS,
    CANARY_FAILURES,
)

# The series TreeCollector yields, described for the catalogue (name, type, labels, help).
TREE_SERIES = (
    ("megacontext_trees", "gauge", "", "Trees the service holds."),
    (
        "megacontext_tree_bytes",
        "gauge",
        "tenant, tree (opt-in)",
        "Bytes on disk of the trees (all of them; per tree with --metrics-per-tree).",
    ),
    (
        "megacontext_tree_tokens",
        "gauge",
        "tenant, tree (opt-in)",
        "Tokens the trees hold (all of them; per tree with --metrics-per-tree).",
    ),
    (
        "megacontext_tree_sources",
        "gauge",
        "tenant, tree (opt-in)",
        "Sources ingested into the trees (all of them; per tree with --metrics-per-tree).",
    ),
    (
        "megacontext_tree_levels",
        "gauge",
        "tenant, tree (opt-in)",
        "Gist levels of the deepest tree (per tree with --metrics-per-tree).",
    ),
)


@dataclass(frozen=True)
class TreeStats:
    """What one tree holds, as ``/metrics`` reports it."""

    bytes: int
    tokens: int
    sources: int
    levels: int


class TreeCollector(Collector):
    """Trees, their bytes on disk, tokens, sources and levels, measured at each scrape from
    the stores alone (no model work: a scrape never waits for the model lane)."""

    def __init__(
        self,
        trees: Callable[[], Iterable[tuple[str, str, Path]]],
        measure: Callable[[Path], TreeStats | None],
        per_tree: bool,
    ):
        self.trees, self.measure, self.per_tree = trees, measure, per_tree

    def collect(self) -> Iterator[Metric]:
        measured = [(tenant, tree, self.measure(path)) for tenant, tree, path in self.trees()]
        found = [(tenant, tree, stats) for tenant, tree, stats in measured if stats is not None]
        count = GaugeMetricFamily(TREE_SERIES[0][0], TREE_SERIES[0][3])
        count.add_metric([], len(found))
        yield count
        labels = ["tenant", "tree"] if self.per_tree else []
        for (name, _, _, meaning), field, overall in zip(
            TREE_SERIES[1:],
            ("bytes", "tokens", "sources", "levels"),
            (sum, sum, sum, lambda levels: max(levels, default=0)),
            strict=True,
        ):
            family = GaugeMetricFamily(name, meaning, labels=labels)
            values = [(tenant, tree, getattr(stats, field)) for tenant, tree, stats in found]
            if self.per_tree:
                for tenant, tree, value in values:
                    family.add_metric([tenant, tree], value)
            else:
                family.add_metric([], overall([value for _, _, value in values]))
            yield family


def catalogue_markdown() -> str:
    """The metric catalogue of the docs (docs/observability.md), from the metrics themselves;
    a test keeps the page in step with it."""
    from megacontext.runtime.metrics import CATALOGUE as SESSION_METRICS

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in (*SESSION_METRICS, *CATALOGUE):
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = ", ".join(getattr(metric, "_labelnames", ()))
        rows.append(f"| `{name}` | {family.type} | {labels} | {family.documentation} |")
    for name, kind, labels, meaning in TREE_SERIES:
        rows.append(f"| `{name}` | {kind} | {labels} | {meaning} |")
    rows.append(
        "| `process_resident_memory_bytes`, `process_cpu_seconds_total`, … | gauge, counter | "
        "| The process (prometheus-client's process collector). |"
    )
    return "\n".join(rows) + "\n"


_registered: list[TreeCollector] = []


def register_trees(collector: TreeCollector) -> None:
    """Make ``collector`` the registry's tree collector (one service per process serves; a
    process that builds another, as tests do, replaces the previous one's)."""
    while _registered:
        REGISTRY.unregister(_registered.pop())
    REGISTRY.register(collector)
    _registered.append(collector)


def unregister_trees(collector: TreeCollector) -> None:
    if collector in _registered:
        _registered.remove(collector)
        REGISTRY.unregister(collector)


__all__ = [
    "ALERT_RULES",
    "CANARY_FAILURES",
    "CANARY_NLL",
    "CANARY_SECONDS",
    "CATALOGUE",
    "LIMITED",
    "REQUESTS",
    "REQUEST_SECONDS",
    "TREE_SERIES",
    "USAGE_FAILURES",
    "TreeCollector",
    "TreeStats",
    "catalogue_markdown",
    "register_trees",
    "unregister_trees",
]
