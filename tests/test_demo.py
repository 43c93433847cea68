"""``megacontext demo`` (the main demo) on a tiny random-init base and an untrained stand-in bundle.

What is checked: the document is deterministic per seed, long enough, and every planted fact's
recorded span decodes to the fact; a run writes one JSON row per question × system; the spans it
reports are real LOD0 runs of a working context; bad inputs raise typed errors. The tiny base
answers nothing correctly, so no accuracy is asserted (and no timing, DESIGN §9).
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from megacontext.bench.runtime import stand_in_bundle
from megacontext.cli import demo as cd
from megacontext.data import KV_QUESTION, PASSKEY_QUESTION
from megacontext.errors import InvalidInputError, MegaContextError
from megacontext.eval import demo as ld
from megacontext.models import load_base
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import load_bundle
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.runtime import SessionConfig, open_session

TOKENS = 5000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseAdapter, Path]:
    root = tmp_path_factory.mktemp("longdemo")
    base_dir = make_tiny_model_dir("default", root / "base")
    base = load_base(base_dir)
    return base_dir, base, stand_in_bundle(base, root / "focus")


def test_document_is_seeded_long_enough_and_its_facts_decode(
    tiny: tuple[Path, BaseAdapter, Path],
) -> None:
    _, base, _ = tiny
    doc = ld.build_document(base, TOKENS, facts=5, seed=3)
    again = ld.build_document(base, TOKENS, facts=5, seed=3)
    other = ld.build_document(base, TOKENS, facts=5, seed=4)
    assert np.array_equal(doc.ids, again.ids) and doc.facts == again.facts
    assert not np.array_equal(doc.ids, other.ids)
    assert len(doc.ids) >= TOKENS
    assert [f.kind for f in doc.facts] == ["kv"] * 4 + ["passkey"]
    assert len({f.key for f in doc.facts[:4]}) == 4
    previous_end = 0
    for fact in doc.facts:
        assert base.decode(doc.ids[fact.start : fact.end].tolist()) == fact.text
        assert fact.value in fact.text
        assert previous_end <= fact.start < fact.end
        # Outside the recent window, so recency alone cannot answer.
        assert fact.end < len(doc.ids) - 512
        previous_end = fact.end
    # Questions are in the trained formats: "\n{question} {cue}" in the raw prompt style.
    passkey, kv = doc.facts[-1], doc.facts[0]
    assert f"\n{passkey.question} {passkey.cue}" == PASSKEY_QUESTION
    assert f"\n{kv.question} {kv.cue}" == KV_QUESTION.format(key=kv.key)
    # Held-out prose comes first.
    assert doc.sources[0].startswith("kjv/")


@settings(max_examples=8)
@given(
    facts=st.integers(1, 8),
    extra=st.integers(0, 3000),
    seed=st.integers(0, 10_000),
    w_max=st.sampled_from([64, 256, 512]),
)
def test_facts_decode_and_stay_outside_the_recent_window(
    tiny: tuple[Path, BaseAdapter, Path], facts: int, extra: int, seed: int, w_max: int
) -> None:
    _, base, _ = tiny
    with pytest.raises(InvalidInputError, match="too small"):
        ld.build_document(base, 4 * w_max, facts=facts, seed=seed, w_max=w_max)
    probe = ld.build_document(base, 100_000, facts=facts, seed=seed, w_max=w_max)
    fact_tokens = sum(f.end - f.start for f in probe.facts)
    tokens = ld.minimum_tokens(fact_tokens, w_max) + extra
    doc = ld.build_document(base, tokens, facts=facts, seed=seed, w_max=w_max)
    assert len(doc.ids) == tokens
    assert [(f.key, f.value) for f in doc.facts] == [(f.key, f.value) for f in probe.facts]
    previous_end = 0
    for fact in doc.facts:
        assert base.decode(doc.ids[fact.start : fact.end].tolist()) == fact.text
        assert previous_end <= fact.start
        assert fact.end < tokens - w_max
        previous_end = fact.end


def test_fact_choice_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "import random; from megacontext.eval.demo import _fact_lines; "
        "print(_fact_lines(random.Random('x'), 6))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs == {str(ld._fact_lines(random.Random("x"), 6)) + "\n"}


def test_correctness_finds_the_value_as_a_word(tiny: tuple[Path, BaseAdapter, Path]) -> None:
    _, base, _ = tiny
    fact = ld.build_document(base, TOKENS, facts=2).facts[0]
    assert ld.is_correct(f" {fact.value}.", fact)
    assert ld.is_correct(f"The value is {fact.value}.", fact)  # an instruct model's sentence
    assert ld.is_correct(f" {fact.value}\n", fact)
    assert not ld.is_correct(f" {fact.value}7.", fact)
    assert not ld.is_correct(" the value", fact)


def test_raw_runs_are_the_lod0_runs_of_the_working_context(
    tiny: tuple[Path, BaseAdapter, Path], tmp_path: Path
) -> None:
    _, base, focus = tiny
    doc = ld.build_document(base, TOKENS, facts=3)
    fact = doc.facts[0]
    bundle = load_bundle(focus, fingerprints=base.fingerprints)
    with open_session(
        tmp_path / "s", base=base, focus=bundle, config=SessionConfig(W_max=512, trace=False)
    ) as session:
        session.ingest(doc.ids)
        n = session.tree.num_tokens
        assembled = session.working_context()
        before_raw = {e.start for e in assembled if e.level == 0}
        before = ld.raw_runs(assembled, n)
        assert not any(a < fact.end and b > fact.start for a, b in before)
        session.focus.bring_back(fact.start, fact.end)
        entries = session.working_context()
        runs = ld.raw_runs(entries, n)
        spans = ld.raw_spans(session, entries, before_raw, doc.facts)
    raw = {e.start for e in entries if e.level == 0}
    tail_from = n
    while tail_from - 1 in raw:
        tail_from -= 1
    covered = [t for a, b in runs for t in range(a, b)]
    # The runs tile exactly the raw tokens outside the recent tail, each run maximal.
    assert sorted(covered) == sorted(raw - set(range(tail_from, n)))
    assert len(covered) == len(set(covered))
    for start, end in runs:
        assert 0 <= start < end < tail_from
        assert start - 1 not in raw and end not in raw
    assert any(a <= fact.start and fact.end <= b for a, b in runs)
    # The reported spans are those runs; the fact's run is marked as expanded and as the fact.
    assert [(s.start, s.end) for s in spans] == runs
    (hit,) = [s for s in spans if 0 in s.facts]
    assert hit.expanded and hit.start <= fact.start and fact.end <= hit.end
    assert all(s.expanded == (not set(range(s.start, s.end)) <= before_raw) for s in spans)


def test_the_command_writes_one_row_per_question_and_system(
    tiny: tuple[Path, BaseAdapter, Path], tmp_path: Path
) -> None:
    base_dir, _, focus = tiny
    app = typer.Typer()
    app.command("demo")(cd.demo)
    app.command("other")(lambda: None)  # two commands: typer then expects the name
    out = tmp_path / "demo.json"
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--base",
            str(base_dir),
            "--focus",
            str(focus),
            "--tokens",
            str(TOKENS),
            "--facts",
            "3",
            "--systems",
            "megacontext,recency,rag-bm25",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Side by side" in result.output and "rag-bm25" in result.output
    doc = json.loads(out.read_text())
    assert doc["w_max"] == 512 and doc["document"]["tokens"] >= TOKENS
    facts = doc["document"]["facts"]
    assert len(facts) == 3
    rows = doc["rows"]
    assert sorted((r["question"], r["system"]) for r in rows) == sorted(
        (q, s) for q in range(3) for s in ("megacontext", "recency", "rag-bm25")
    )
    for row in rows:
        assert {"answer", "expected", "correct", "seconds", "text", "kind"} <= set(row)
        assert row["expected"] == facts[row["question"]]["value"]
        assert row["correct"] == ld.is_correct(
            row["answer"], ld.PlantedFact(**facts[row["question"]])
        )
        if row["system"] != "megacontext":
            assert "raw_spans" not in row
            continue
        assert row["entries"] <= 512
        assert row["fact_raw"] == any(row["question"] in span["facts"] for span in row["raw_spans"])
        assert row["fact_expanded"] <= row["fact_raw"]
        previous_end = -1
        for span in row["raw_spans"]:
            # Time-ordered, disjoint, inside the history (document + question + answer).
            assert previous_end < span["start"] < span["end"] < doc["document"]["tokens"] + 64
            assert isinstance(span["expanded"], bool) and isinstance(span["preview"], str)
            for j in span["facts"]:
                assert span["start"] < facts[j]["end"] and span["end"] > facts[j]["start"]
            previous_end = span["end"]
    assert [s["system"] for s in doc["summary"]] == ["megacontext", "recency", "rag-bm25"]
    assert all(s["questions"] == 3 and 0 <= s["accuracy"] <= 1 for s in doc["summary"])


def test_bad_inputs_raise_typed_errors(
    tiny: tuple[Path, BaseAdapter, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, base, focus = tiny
    console = Console(file=io.StringIO())
    with pytest.raises(InvalidInputError, match="too small to hold"):
        ld.build_document(base, 1000, facts=5)
    with pytest.raises(InvalidInputError, match="--facts"):
        ld.build_document(base, TOKENS, facts=0)
    with pytest.raises(InvalidInputError, match="--refocus-steps"):
        cd.run_demo(cd.DemoConfig(refocus_steps=-1), console)
    with pytest.raises(InvalidInputError, match="--w-max"):
        cd.run_demo(cd.DemoConfig(w_max=8), console)
    with pytest.raises(InvalidInputError, match="unknown system"):
        cd.run_demo(cd.DemoConfig(systems=("megacontext", "gpt5")), console)
    # A missing bundle is reported before anything is loaded, and says how to build one.
    with pytest.raises(InvalidInputError, match="make focus-models"):
        cd.run_demo(cd.DemoConfig(focus=str(tmp_path / "nothing")), console)
    monkeypatch.setenv("MEGACONTEXT_FOCUS_BUNDLE", str(tmp_path / "empty"))
    with pytest.raises(InvalidInputError, match="make focus-models"):
        cd.run_demo(cd.DemoConfig(base=str(base_dir)), console)
    with pytest.raises(MegaContextError, match="no model directory or file"):
        cd.run_demo(cd.DemoConfig(base=str(tmp_path / "no-such-base"), focus=str(focus)), console)
    with pytest.raises(InvalidInputError, match="too small to hold"):
        cd.run_demo(cd.DemoConfig(base=str(base_dir), focus=str(focus), tokens=500), console)
