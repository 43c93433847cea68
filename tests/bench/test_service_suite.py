"""`megacontext bench service` against a real `megacontext serve` process (shipped tiny base)."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from megacontext.bench import service


@pytest.mark.slow
def test_the_service_suite_measures_and_loses_nothing(tmp_path: Path) -> None:
    key = service.create_key(tmp_path)
    process, url = service.start_server(tmp_path, "default")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            http.post("/v1/trees", json={"name": "bench"}).raise_for_status()
            text = "".join(f"line {i}: the tide turned at {i}.\n" for i in range(300))
            http.post("/v1/trees/bench/sources", json={"text": text}).raise_for_status()
        session = tmp_path / "tenants" / "bench" / "trees" / "bench"
        results = {r.name: r for r in service.ask_latency(url, key, session, "default", 1, print)}
        assert set(results) == {
            "ask_p50_ms_service",
            "ask_p99_ms_service",
            "ask_p50_ms_inprocess",
            "service_overhead_ratio_p50",
        }
        assert all(math.isfinite(r.value) and r.value > 0 for r in results.values())
        load = {r.name: r.value for r in service.load_test(url, key, 4, 4.0, print)}
        assert load["load_requests"] > 0
        assert load["load_errors"] == 0 and load["load_lost_ingests"] == 0
    finally:
        process.terminate()
        process.wait(timeout=60)
