"""The storage benchmark's pieces, on small inputs (no timings asserted)."""

from __future__ import annotations

from pathlib import Path

from megacontext.bench.storage import K, _build_tree, focus_trace, ingest_probe, replay
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
