"""The storage benchmark's pieces, on small inputs (no timings asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megacontext.bench.storage import (
    S3_ENV,
    K,
    _build_tree,
    bench_object_store,
    focus_trace,
    ingest_probe,
    replay,
)
from megacontext.store import LocalStore


def test_prefetch_wins_on_a_replayed_focus_trace(tmp_path: Path) -> None:
    _build_tree(tmp_path / "t", 400_000, lambda _msg: None)
    store = LocalStore.open(tmp_path / "t", readonly=True)
    trace = focus_trace(store.count(0), steps=120, w_max=1024)
    assert sum(len(expands) for expands, _ in trace) > 50
    assert all(level >= 1 for expands, _ in trace for level, _ in expands)
    assert focus_trace(store.count(0), steps=120, w_max=1024) == trace  # seeded
    with_prefetch = replay(store, trace, prefetch=True, pages=64)
    without = replay(store, trace, prefetch=False, pages=64)
    assert with_prefetch > without
    store.close()
    assert K == 32


def test_ingest_probe_reports_rss(tmp_path: Path) -> None:
    probe = ingest_probe(200_000)
    assert probe["tokens"] == 200_000 and probe["peak_rss"] > 1 << 20


def test_object_store_reads_are_measured_against_local_reads(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    before = {name: os.environ.get(name) for name in S3_ENV}
    results = {r.name: r for r in bench_object_store(tmp_path, True, lambda _msg: None)}
    assert set(results) == {
        "s3_segment_read_p50_ms",
        "s3_segment_read_p99_ms",
        "s3_segment_read_p99_ratio_vs_local",
    }
    p99 = results["s3_segment_read_p99_ms"]
    assert p99.baseline_name == "local p99" and p99.baseline_value
    assert results["s3_segment_read_p99_ratio_vs_local"].value == p99.value / p99.baseline_value
    assert "20 reads per root" in p99.note  # 4 segments x 5 rounds, from each root
    assert {name: os.environ.get(name) for name in S3_ENV} == before  # its server is gone
