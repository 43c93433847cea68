"""``megacontext bench runtime`` on a tiny random-init base: the pieces run and report sane numbers.

No timing assertions (DESIGN §9): only that results exist, are finite, positive and well named.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.bench import Result
from megacontext.bench import runtime as rt
from megacontext.errors import InvalidInputError
from megacontext.eval.peers import minilm_available
from megacontext.models import load_base
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import load_bundle
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.runtime import ForwardTiming, SessionConfig, StepTelemetry, open_session


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseAdapter, Path]:
    root = tmp_path_factory.mktemp("runtime-bench")
    base_dir = make_tiny_model_dir("default", root / "base")
    base = load_base(base_dir)
    focus = rt.stand_in_bundle(base, root / "focus")
    return base_dir, base, focus


def test_the_stand_in_has_the_shapes_of_the_bases_own_recipe() -> None:
    """What is timed without a trained bundle is what `train focus --base` would train: for
    SmolLM2 a GistNet that runs the base over every block, for other bases the default shape."""
    smol = rt._recipe_shape("gist", "smollm2-135m-instruct")
    assert smol["inputs"] == "hidden" and smol["input_layer"] == 15
    assert rt._recipe_shape("lens", "smollm2-135m-instruct")["width"] == 128
    assert rt._recipe_shape("gist", "tiny").get("inputs", "embeddings") == "embeddings"


def test_largest_rss_size_that_fits_the_budget() -> None:
    # 1e-4 s per token: 10M needs 1000 s, 4M 400 s, 2M 200 s.
    assert rt._largest_that_fits(1e-4, 2000.0, 10_000_000) == 10_000_000
    assert rt._largest_that_fits(1e-4, 450.0, 10_000_000) == 4_000_000
    assert rt._largest_that_fits(1e-4, 100.0, 10_000_000) == 0
    assert rt._largest_that_fits(1e-4, math.inf, 200_000) == 200_000


def test_history_ids_avoid_special_tokens(tiny: tuple[Path, BaseAdapter, Path]) -> None:
    _, base, _ = tiny
    ids = rt.history_ids(base, 5000)
    special = {base.bos_token_id, base.eos_token_id} - {None}
    assert len(ids) == 5000 and not special & set(ids.tolist())
    assert ids.max() < base.vocab_size
    assert np.array_equal(ids, rt.history_ids(base, 5000))  # seeded


def test_session_timing_log_records_steps_and_forwards(
    tiny: tuple[Path, BaseAdapter, Path], tmp_path: Path
) -> None:
    _, base, focus = tiny
    torch.manual_seed(0)
    bundle = load_bundle(focus, fingerprints=base.fingerprints)
    config = SessionConfig(W_max=128, refocus_every=16, trace=False)
    with open_session(tmp_path / "s", base, bundle, config) as session:
        session.ingest(rt.history_ids(base, 3000))
        assert session.timing_log is None  # off unless asked for
        list(session.generate(max_new_tokens=2))
        session.timing_log = []
        per_token = rt.session_decode_seconds(session, 40)
        log = session.timing_log
    assert per_token > 0
    forwards = [x for x in log if isinstance(x, ForwardTiming)]
    steps = [x for x in log if isinstance(x, StepTelemetry)]
    assert len(forwards) >= 40 and steps
    assert all(x.entries >= 1 and x.fetch_s >= 0 and x.forward_s > 0 for x in forwards)
    assert all({"fetch", "lensnet", "allocator", "apply"} <= set(s.seconds) for s in steps)
    split = rt.refocus_split(log)
    assert split.steps == len(steps)
    parts = (split.fetch, split.lensnet, split.allocator, split.apply, split.kv_recompute)
    assert all(math.isfinite(p) and p >= 0 for p in parts)
    assert split.total > 0


def test_refocus_split_rejects_logs_without_steps_or_plain_forwards() -> None:
    plain = ForwardTiming(entries=1, cached=10, fetch_s=0.001, forward_s=0.002)
    with pytest.raises(InvalidInputError, match="no refocus step"):
        rt.refocus_split([plain, plain])
    step = StepTelemetry(1, 100, 10, 1.0, 0, 0, 0.0, 0.0, 10, {"allocator": 0.001})
    with pytest.raises(InvalidInputError, match="no plain decode step"):
        rt.refocus_split([step])


def test_refocus_split_charges_the_recompute_forward_to_its_step() -> None:
    plain = ForwardTiming(entries=1, cached=10, fetch_s=0.0, forward_s=0.010)
    recompute = ForwardTiming(entries=9, cached=2, fetch_s=0.0, forward_s=0.050)
    seconds = {"fetch": 0.001, "lensnet": 0.002, "allocator": 0.003, "apply": 0.004}
    edited = StepTelemetry(1, 100, 10, 1.0, 1, 1, 2.0, 0.0, 2, seconds)
    quiet = StepTelemetry(2, 101, 10, 1.0, 0, 0, 1.0, 0.0, 10, seconds)
    split = rt.refocus_split([plain, plain, edited, recompute, plain, quiet, plain])
    assert split.steps == 2
    assert split.kv_recompute == pytest.approx(20.0)  # median of 40 ms and 0 ms
    assert split.recomputed_entries == 8
    assert split.edits_per_step == 1.0
    assert split.total == pytest.approx(30.0)  # median of 50 ms and 10 ms


def test_bare_decode_and_prefill_measure_positive_rates(
    tiny: tuple[Path, BaseAdapter, Path],
) -> None:
    _, base, _ = tiny
    ids = rt.history_ids(base, 1024)
    assert 0 < rt.bare_decode_seconds(base, ids[:64], 8) < math.inf
    assert 0 < rt.prefill_tokens_per_s(base, ids, window=256) < math.inf
    with pytest.raises(InvalidInputError, match="at least"):
        rt.prefill_tokens_per_s(base, ids[:100], window=256)


def test_rss_probe_runs_in_a_subprocess_and_returns_a_sane_peak(
    tiny: tuple[Path, BaseAdapter, Path],
) -> None:
    base_dir, _, focus = tiny
    # Make this (parent) process big: the child's peak must not inherit it (ru_maxrss does).
    ballast = bytearray(1536 * 2**20)
    ballast[:: 1 << 12] = b"\x01" * len(range(0, len(ballast), 1 << 12))
    parent_rss = rt.peak_rss_bytes()
    probe = rt.rss_probe(2500, focus, str(base_dir))
    del ballast
    assert probe["tokens"] == 2500
    assert probe["seconds"] > 0
    # A Python process with torch loaded: tens of MiB at least, far below 64 GiB.
    assert 50 * 2**20 < probe["rss_after_load"] < 64 * 2**30
    assert 50 * 2**20 < probe["peak_rss"] < parent_rss


def test_decode_breakdown_shares() -> None:
    plain = ForwardTiming(entries=1, cached=10, fetch_s=0.0, forward_s=0.010)
    recompute = ForwardTiming(entries=9, cached=2, fetch_s=0.010, forward_s=0.040)
    step = StepTelemetry(1, 100, 10, 1.0, 1, 1, 2.0, 0.0, 2, {"lensnet": 0.02, "apply": 0.005})
    shares = rt.decode_breakdown([plain, step, recompute, plain], total_s=0.25)
    assert shares["forwards"] == 3 and shares["recompute_forwards"] == 1
    assert shares["recompute_share"] == pytest.approx(0.2)
    assert shares["refocus_share"] == pytest.approx(0.1)


def test_rss_probe_failure_is_a_typed_error(tiny: tuple[Path, BaseAdapter, Path]) -> None:
    base_dir, _, _ = tiny
    with pytest.raises(InvalidInputError, match="RSS probe"):
        rt.rss_probe(100, base_dir / "no-such-bundle", str(base_dir))


@pytest.mark.slow
def test_suite_reports_every_result_finite_and_named(
    tiny: tuple[Path, BaseAdapter, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, _, _ = tiny
    monkeypatch.setenv("MEGACONTEXT_FOCUS_BUNDLE", str(tmp_path / "absent"))
    plan = rt.Plan(
        history_tokens=4096,
        new_tokens=40,
        repeats=1,
        rss_sizes=(2000, 4000),
        rss_budget_s=1e9,
        first_answer_tokens=3000,
    )
    messages: list[str] = []
    results = rt._run(plan, tmp_path, messages.append, str(base_dir))
    by_name: dict[str, Result] = {r.name: r for r in results}
    expected = {
        "ingest_tokens_per_s",
        "ingest_vs_prefill_ratio",
        "decode_overhead_ratio",
        "decode_tokens_per_s",
        "refocus_step_ms",
        "refocus_fetch_ms",
        "refocus_lensnet_ms",
        "refocus_allocator_ms",
        "refocus_apply_ms",
        "refocus_kv_recompute_ms",
        "rss_ratio_4k_vs_2k",
        "ask_process_s",
        "ask_load_s",
        "ask_focus_ms",
        "ask_answer_ms",
        "first_answer_s",
        "first_answer_vs_full_8k_ratio",
    }
    if minilm_available():
        expected.add("first_answer_vs_rag_minilm_ratio")
    assert set(by_name) == expected
    for result in results:
        assert math.isfinite(result.value) and result.value >= 0, result
    for name in expected - {"refocus_kv_recompute_ms", "refocus_apply_ms"}:
        assert by_name[name].value > 0, name
    first = by_name["first_answer_s"].extra or {}
    # Ingest included: the first answer costs the whole history's ingest plus the question.
    assert first["history_tokens"] >= 3000 and isinstance(first["correct"], bool)
    assert by_name["first_answer_s"].value == pytest.approx(first["ingest_s"] + first["answer_s"])
    for name in ("ingest_vs_prefill_ratio", "decode_overhead_ratio", "rss_ratio_4k_vs_2k",
                 "first_answer_vs_full_8k_ratio"):  # fmt: skip
        ratio = by_name[name].ratio
        assert ratio is not None and math.isfinite(ratio) and ratio > 0
    assert "stand-in" in by_name["refocus_step_ms"].note
    breakdown = by_name["decode_overhead_ratio"].extra or {}
    assert 0 <= breakdown["recompute_share"] < 1 and 0 < breakdown["refocus_share"] < 1
    assert any("no focus bundle" in m for m in messages)
