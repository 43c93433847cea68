"""`/metrics`: the sessions' and the service's Prometheus metrics, moved by real traffic,
bounded labels, and a scrape that `promtool check metrics` passes."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from megacontext.runtime.metrics import score_entropy
from megacontext.server.usage import tree_bytes

from .conftest import World, tree_with_text


def _scrape(world: World) -> str:
    admin, _ = world.client.app.state.service.keys.create("acme", "admin")  # type: ignore[attr-defined]
    response = world.client.get("/metrics", headers=world.headers(admin))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(values: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(values.get((name, tuple(sorted(labels.items()))), 0.0))


def test_traffic_moves_the_metrics_and_no_label_names_a_tree(world: World) -> None:
    before = _values(_scrape(world))
    tree_with_text(world)
    h = world.headers(world.writer)
    asked = world.client.post(
        "/v1/trees/notes/ask",
        json={"question": "Which ship at dusk?", "max_new_tokens": 4},
        headers=h,
    )
    assert asked.status_code == 200
    missing = world.client.get("/v1/trees/nowhere", headers=h)
    assert missing.status_code == 404
    text = _scrape(world)
    after = _values(text)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    tree = world.client.get("/v1/trees/notes", headers=h).json()
    tokens = tree["tokens"]
    assert moved("megacontext_ingest_tokens_total") == tokens
    K = world.client.app.state.service.trees.bundle.get("gistnet").config.K  # type: ignore[attr-defined]
    assert moved("megacontext_gists_computed_total", level="1") == tokens // K
    assert moved("megacontext_gists_computed_total", level="2") == tokens // K**2
    assert _value(after, "megacontext_gist_norm_mean", level="1") > 0
    assert moved("megacontext_ingest_seconds_total") > 0
    assert moved("megacontext_refocus_steps_total") >= 1
    assert moved("megacontext_decode_tokens_total") >= asked.json()["usage"]["completion_tokens"]
    assert moved("megacontext_base_forward_seconds_count") >= 1
    assert _value(after, "megacontext_focus_budget_violations_total") == 0
    ask = {"route": "/v1/trees/{tree}/ask", "method": "POST", "status": "200"}
    assert moved("megacontext_http_requests_total", **ask) == 1
    lost = {"route": "/v1/trees/{tree}", "method": "GET", "status": "404"}
    assert moved("megacontext_http_requests_total", **lost) == 1
    assert _value(after, "megacontext_trees") == 1
    path = world.root / "tenants" / "acme" / "trees" / "notes"
    assert _value(after, "megacontext_tree_bytes") == pytest.approx(tree_bytes(path), rel=0.05)
    assert _value(after, "megacontext_tree_tokens") == tokens
    assert _value(after, "megacontext_tree_sources") == tree["sources"] == 1
    assert _value(after, "megacontext_tree_levels") == tree["levels"] >= 2
    assert _value(after, "process_resident_memory_bytes") > 0
    # bounded labels: routes by template, trees by nothing unless the deployment opts in
    assert "notes" not in text and "nowhere" not in text


def test_metrics_need_an_admin_key(world: World) -> None:
    assert world.client.get("/metrics").status_code == 401
    assert world.client.get("/metrics", headers=world.headers(world.writer)).status_code == 403


def test_per_tree_series_are_opt_in(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from megacontext.server import create_app

    from .conftest import TEXT, config

    app = create_app(
        tmp_path / "svc",
        base=tiny_world.base,
        focus=tiny_world.bundle,
        config=config(),
        metrics_per_tree=True,
    )
    client = TestClient(app)
    admin, _ = app.state.service.keys.create("acme", "admin")
    h = {"Authorization": f"Bearer {admin}"}
    for name in ("alpha", "beta"):
        assert client.post("/v1/trees", json={"name": name}, headers=h).status_code == 201
    for i in range(2):  # two sources into alpha; beta stays empty
        body = {"text": TEXT * (i + 1), "source": f"file:///a{i}.txt"}
        assert client.post("/v1/trees/alpha/sources", json=body, headers=h).status_code == 200
    values = _values(client.get("/metrics", headers=h).text)
    for name in ("alpha", "beta"):
        path = tmp_path / "svc" / "tenants" / "acme" / "trees" / name
        tree = client.get(f"/v1/trees/{name}", headers=h).json()
        labels = {"tenant": "acme", "tree": name}
        assert _value(values, "megacontext_tree_bytes", **labels) == tree_bytes(path)
        assert _value(values, "megacontext_tree_tokens", **labels) == tree["tokens"]
        assert _value(values, "megacontext_tree_sources", **labels) == tree["sources"]
        assert _value(values, "megacontext_tree_levels", **labels) == tree["levels"]
    assert _value(values, "megacontext_tree_sources", tenant="acme", tree="alpha") == 2
    assert _value(values, "megacontext_tree_tokens", tenant="acme", tree="beta") == 0


def test_a_tree_deleted_while_scraped_is_left_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.server.metrics import TreeCollector, TreeStats
    from megacontext.server.trees import tree_stats

    gone = tmp_path / "gone"
    assert tree_stats(gone) is None
    here = TreeStats(bytes=10, tokens=64, sources=1, levels=2)
    trees = [("acme", "here", tmp_path / "here"), ("acme", "gone", gone)]
    collector = TreeCollector(
        lambda: trees, lambda path: here if path.name == "here" else None, per_tree=False
    )
    samples = {f.name: [s.value for s in f.samples] for f in collector.collect()}
    assert samples == {
        "megacontext_trees": [1],
        "megacontext_tree_bytes": [10],
        "megacontext_tree_tokens": [64],
        "megacontext_tree_sources": [1],
        "megacontext_tree_levels": [2],
    }


@pytest.mark.skipif(
    shutil.which("promtool") is None and os.environ.get("CI", "").lower() != "true",
    reason="no promtool (install the Debian package prometheus)",
)
def test_promtool_passes_the_scrape(world: World) -> None:
    tree_with_text(world)
    world.client.post(
        "/v1/trees/notes/ask",
        json={"question": "Which ship?", "max_new_tokens": 2},
        headers=world.headers(world.writer),
    )
    assert shutil.which("promtool"), "CI must lint metrics: install the Debian package prometheus"
    done = subprocess.run(
        ["promtool", "check", "metrics"],
        input=_scrape(world),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=64))
def test_lens_score_entropy_is_a_ratio(scores: list[float]) -> None:
    value = score_entropy(np.array(scores))
    assert 0.0 <= value <= 1.0
    assert score_entropy(np.zeros(len(scores))) == pytest.approx(1.0)  # all alike
    peaked = np.zeros(len(scores))
    peaked[0] = 100.0
    assert score_entropy(peaked) < 0.01  # one entry stands out


def test_the_docs_catalogue_is_the_codes() -> None:
    from pathlib import Path

    from megacontext.server.metrics import catalogue_markdown

    page = (Path(__file__).parents[2] / "docs" / "observability.md").read_text("utf-8")
    start, end = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"
    documented = page[page.index(start) + len(start) : page.index(end)]
    assert documented == catalogue_markdown(), (
        "docs/observability.md's catalogue differs from the metrics: paste "
        "megacontext.server.metrics.catalogue_markdown() between its markers"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None and os.environ.get("CI", "").lower() != "true",
    reason="no prometheus (install the Debian package prometheus)",
)
def test_a_real_prometheus_scrapes_the_service(world: World, live: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Debian's Prometheus, on loopback with a generated config, scrapes the live service with
    an admin key; its query API shows the series and how a focus-heavy ask moves them."""
    import time

    import httpx

    assert shutil.which("prometheus"), "CI must run a real Prometheus: install Debian's prometheus"
    admin, _ = world.client.app.state.service.keys.create("ops", "admin")  # type: ignore[attr-defined]
    (tmp_path / "key").write_text(admin)
    target = live.removeprefix("http://")
    from megacontext.server.metrics import ALERT_RULES

    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ALERT_RULES}']\n"
        "scrape_configs:\n"
        "  - job_name: megacontext\n"
        "    metrics_path: /metrics\n"
        f"    authorization: {{type: Bearer, credentials_file: {tmp_path / 'key'}}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(promql: str) -> float | None:
        try:
            reply = httpx.get(f"{api}/query", params={"query": promql}, timeout=5)
        except httpx.TransportError:
            return None
        if "json" not in reply.headers.get("content-type", ""):  # still starting (503 text)
            return None
        body = reply.json()
        assert body["status"] == "success", body
        found = body["data"]["result"]
        return float(found[0]["value"][1]) if found else None

    def settled(promql: str, done: object, seconds: float = 60) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = query(promql)
            if value is not None and done(value):  # type: ignore[operator]
                return value
            time.sleep(0.5)
        raise AssertionError(f"{promql} never satisfied the test (last {query(promql)})")

    try:
        assert settled('up{job="megacontext"}', lambda v: v == 1) == 1  # scraped, key accepted
        tree_with_text(world)
        steps = settled("sum(megacontext_refocus_steps_total)", lambda v: v >= 0)
        expands = query('sum(megacontext_focus_edits_total{kind="expand"})') or 0.0
        h = world.headers(world.writer)
        for question in ("Which ship at dusk?", "What did the keeper log for line 40?"):
            asked = httpx.post(
                f"{live}/v1/trees/notes/ask",
                json={"question": question, "max_new_tokens": 3, "focus_steps": 4},
                headers=h,
                timeout=120,
            )
            assert asked.status_code == 200, asked.text
        settled("sum(megacontext_refocus_steps_total)", lambda v: v > steps)
        settled('sum(megacontext_focus_edits_total{kind="expand"})', lambda v: v > expands)
        ask_route = 'megacontext_http_requests_total{route="/v1/trees/{tree}/ask",status="200"}'
        settled(f"sum({ask_route})", lambda v: v >= 2)
        assert query("sum(megacontext_focus_budget_violations_total)") == 0
        assert (query('megacontext_trees{job="megacontext"}') or 0) >= 1
        _every_dashboard_query_answers(api, tmp_path)
        # the shipped rules load and evaluate: recorded series appear, every rule is healthy
        settled("count(megacontext:gist_norm_spread:ratio)", lambda v: v >= 1)
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        assert "MegaContextGistSpreadDrift" in health and len(health) == 10, health
        assert set(health.values()) == {"ok"}, health
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.skipif(
    shutil.which("promtool") is None and os.environ.get("CI", "").lower() != "true",
    reason="no promtool (install the Debian package prometheus)",
)
def test_the_shipped_alert_rules_pass_their_promtool_unit_tests() -> None:
    from pathlib import Path

    from megacontext.server.metrics import ALERT_RULES

    assert shutil.which("promtool"), "CI must test the alert rules: install Debian's prometheus"
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    here = Path(__file__).parent
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_quality_canary_is_deterministic_and_served(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time

    from fastapi.testclient import TestClient

    from megacontext.runtime import SessionConfig
    from megacontext.server import create_app
    from megacontext.server.canary import Canary

    config = SessionConfig(W_max=256, protected_recent=32, query_tokens=8, trace=False)
    canary = Canary(tiny_world.base, tiny_world.bundle, config)
    first = canary.measure()
    assert np.isfinite(first) and first > 0
    assert canary.measure() == first  # nothing but the models and settings moves it

    app = create_app(
        tmp_path / "svc",
        base=tiny_world.base,
        focus=tiny_world.bundle,
        config=config,
        canary_interval_s=3600,
    )
    admin, _ = app.state.service.keys.create("ops", "admin")
    client = TestClient(app)
    deadline = time.monotonic() + 120
    while True:  # the first run starts with the service, on its model lane
        values = _values(client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text)
        if _value(values, "megacontext_canary_duration_seconds") > 0:
            break
        assert time.monotonic() < deadline, "the canary never ran"
        time.sleep(0.2)
    assert _value(values, "megacontext_canary_answer_nll") == first
    app.state.service.close()


def test_a_failing_canary_is_counted_and_the_next_run_still_comes() -> None:
    import threading

    from prometheus_client import REGISTRY

    from megacontext.server.canary import every

    def failures() -> float:
        return REGISTRY.get_sample_value("megacontext_canary_failures_total") or 0.0

    before = failures()
    runs: list[int] = []
    stop = threading.Event()

    def flaky() -> None:
        runs.append(1)
        if len(runs) == 3:
            stop.set()
        raise RuntimeError("the base is gone")

    every(0.01, flaky, stop).join(timeout=10)
    assert len(runs) == 3 and failures() - before == 3


# Panels the test's traffic cannot feed: no request fails with a 5xx and none is rate limited,
# and drift compares with a day of history the test's Prometheus does not have.
QUIET_PANELS = {
    "Errors per second (5xx) by route",
    "Requests refused with 429",
    "Gist norm drift against the previous day",
}


def _every_dashboard_query_answers(api: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every dashboard query parses and, but for QUIET_PANELS, returns data; render draws."""
    import time

    import httpx

    from megacontext.server.dashboards import DASHBOARDS, render

    def answers(expr: str) -> bool:
        body = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)  # it parses and runs
        return bool(body["data"]["result"])

    empty = []
    deadline = time.monotonic() + 30  # a rate needs two scrapes of a series the traffic made
    for panels in DASHBOARDS.values():
        for panel in panels:
            for expr in panel.queries:
                while not answers(expr) and panel.title not in QUIET_PANELS:
                    if time.monotonic() > deadline:
                        empty.append(panel.title)
                        break
                    time.sleep(0.5)
    assert not empty, f"panels without data after the traffic: {empty}"
    end = time.time()
    drawn = render(api.removesuffix("/api/v1"), tmp_path / "png", end - 60, end, 2.0)
    assert sorted(p.name for p in drawn) == sorted(f"{name}.png" for name in DASHBOARDS)
    assert all(p.stat().st_size > 10_000 for p in drawn)


def test_the_committed_dashboards_are_the_code() -> None:
    import json

    from megacontext.server.dashboards import DASHBOARD_DIR, DASHBOARDS, grafana_json

    for name in DASHBOARDS:
        committed = json.loads((DASHBOARD_DIR / f"{name}.json").read_text("utf-8"))
        assert committed == grafana_json(name), (
            f"{name}.json differs from megacontext/server/dashboards.py: run "
            "`megacontext dashboards write`"
        )
        exprs = [t["expr"] for p in committed["panels"] for t in p["targets"]]
        assert exprs == [q for panel in DASHBOARDS[name] for q in panel.queries]
