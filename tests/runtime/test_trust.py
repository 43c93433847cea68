"""Sessions people can trust (issue 15): citations, ephemeral questions, journaled ingest,
read-only sessions beside a writer, and typed errors for bad input — on tiny models."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.errors import InvalidInputError
from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.provenance import plan_spans
from megacontext.store.metadata import COMPLETE, ROLLED_BACK

ALPHA = "".join(f"alpha line {i}: the sky is wide and blue\n" for i in range(1, 41))
BETA = "".join(f"beta row {i}: café prices rose by {i * 7} percent\n" for i in range(1, 41))


@pytest.fixture(scope="module")
def models(tiny_world):  # type: ignore[no-untyped-def]
    return tiny_world.base, tiny_world.bundle_dir


def config(**kw: object) -> SessionConfig:
    options: dict[str, object] = {
        "W_max": 48,
        "protected_recent": 12,
        "refocus_every": 4,
        "query_tokens": 8,
        "focus_steps": 6,
    }
    options.update(kw)
    return SessionConfig(**options)  # type: ignore[arg-type]


def _two_files(mc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, text in (("alpha.txt", ALPHA), ("beta.txt", BETA)):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        mc.ingest(text, source=path.as_uri(), metadata={"path": name})


# ----------------------------------------------------------------------------- provenance


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=st.sampled_from("ab é€😀 \t,."), min_size=0, max_size=30),
        min_size=1,
        max_size=12,
    ),
    first=st.integers(0, 70),
    first_line=st.sampled_from([0, 1, 7]),
)
def test_span_rows_cover_the_source_with_its_bytes_and_lines(
    tiny_world, lines: list[str], first: int, first_line: int
) -> None:  # type: ignore[no-untyped-def]
    base = tiny_world.base
    text = "\n".join(lines) + "x"
    ids, offsets = base.encode_with_offsets(text)
    K = 4
    rows = plan_spans(text, offsets, first, len(ids), K, first_line)
    # The rows tile the source's tokens, each within one LOD1 block of the history.
    assert rows[0].start == first and rows[-1].stop == first + len(ids)
    for row, after in itertools.pairwise(rows):
        assert row.stop == after.start
    for row in rows:
        assert row.start // K == (row.stop - 1) // K
        assert row.bytes is not None and row.lines is not None
        data = text.encode("utf-8")
        piece = data[row.bytes[0] : row.bytes[1]].decode("utf-8")  # whole characters
        lo, hi = row.lines
        # The lines named are the lines the bytes fall on, numbered from ``first_line`` (a
        # header line numbered 0 counts as line 1).
        line = text.encode("utf-8")[: row.bytes[0]].count(b"\n") + first_line
        assert lo == max(1, line)
        assert piece == "" or hi == max(1, line + piece[:-1].count("\n"))


def test_ask_cites_the_file_and_lines_focus_brought_into_view(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        _two_files(mc, tmp_path)
        # The evidence: beta row 20, far outside the recent window.
        char = BETA.index("beta row 20:")
        _ids, offsets = base.encode_with_offsets(BETA)
        alpha_tokens = len(base.encode(ALPHA, add_bos=False))
        target = alpha_tokens + next(i for i, (a, _b) in enumerate(offsets) if a >= char)
        assert target < mc.tree.num_tokens - mc.config.W_max

        def oracle(wc):  # type: ignore[no-untyped-def]
            starts, ends = wc.spans()
            return ((starts <= target) & (target < ends)).astype(float)

        mc.score_override = oracle
        n = mc.tree.num_tokens
        answer = mc.ask("What happened in beta row 20?", max_new_tokens=3)
        assert mc.tree.num_tokens == n  # the question is not history
        assert answer.spans and any(a <= target < b for a, b in answer.spans)
        best = answer.citations[0]
        assert best.source == "beta.txt" and best.lines is not None
        assert best.lines[0] <= 20 <= best.lines[1]
        assert best.score == max(c.score for c in answer.citations)
        assert best.text.strip() and best.text.strip() in BETA.splitlines()[19]
        for (
            citation
        ) in answer.citations:  # every citation lies in the history, none is the question
            assert citation.tokens[1] <= n
            assert "What happened" not in citation.text


def test_ingest_is_idempotent_unless_forced_and_checks_metadata_first(
    models, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        first = mc.ingest(ALPHA, source="file:///alpha.txt", metadata={"path": "alpha.txt"})
        assert first.tokens > 0 and (first.start, first.stop) == (0, mc.tree.num_tokens)
        again = mc.ingest(ALPHA, source="file:///elsewhere/alpha.txt")
        assert again.tokens == 0 and again.duplicate_of == "alpha.txt"
        assert (again.start, again.stop) == (first.start, first.stop)
        n = mc.tree.num_tokens
        forced = mc.ingest(ALPHA, source="file:///alpha.txt", force=True)
        assert forced.tokens == first.tokens and mc.tree.num_tokens == 2 * n
        # Metadata that cannot be stored is refused before a single token is written.
        before = mc.tree.num_tokens
        with pytest.raises(InvalidInputError, match="metadata must be JSON"):
            mc.ingest(BETA, source="file:///beta.txt", metadata={"when": object()})
        with pytest.raises(InvalidInputError, match="string keys"):
            mc.ingest(BETA, metadata={1: "x"})  # type: ignore[dict-item]
        assert mc.tree.num_tokens == before
        # Every token has provenance, and the journal says so.
        journal = mc.metadata.ingests_of(mc.tree_id)
        assert [i.status for i in journal] == [COMPLETE, COMPLETE]
        covered = sum(i.stop - i.start for i in journal)
        assert covered == mc.tree.num_tokens
        rows = mc.metadata.provenance(mc.tree_id, 0, mc.tree.num_tokens)
        assert sum(r.stop_index - r.start_index for r in rows) == mc.tree.num_tokens


def test_an_interrupted_ingest_is_rolled_back_in_place(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(ALPHA, source="file:///alpha.txt")
        kept = mc.tree.tokens(0, mc.tree.num_tokens).copy()
        blocks = mc.lexical.num_blocks

        def interrupt(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            mc.ingest(BETA * 20, source="file:///beta.txt", progress=interrupt)
        np.testing.assert_array_equal(mc.tree.tokens(0, mc.tree.num_tokens), kept)
        assert mc.lexical.num_blocks == blocks
        assert [i.status for i in mc.metadata.ingests_of(mc.tree_id)] == [COMPLETE, ROLLED_BACK]
        mc.wc.check_invariants()
        # Nothing of it is remembered as ingested: the same content goes in afterwards.
        assert mc.ingest(BETA * 20, source="file:///beta.txt").tokens > 0
    with open_session(tmp_path / "s") as reopened:
        assert reopened.recovered == []
        assert reopened.tree.num_tokens > len(kept)


def test_generation_and_remembered_turns_have_provenance(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(ALPHA, source="file:///alpha.txt")
        "".join(mc.generate(" and then", max_new_tokens=5))
        mc.ask("Which line?", max_new_tokens=3, remember=True)
        kinds = [i.source.kind for i in mc.metadata.ingests_of(mc.tree_id)]
        assert kinds == ["text", "generated", "conversation"]
        journal = mc.metadata.ingests_of(mc.tree_id)
        assert all(i.status == COMPLETE for i in journal)
        assert journal[-1].stop == mc.tree.num_tokens
        for before, after in itertools.pairwise(journal):
            assert before.stop == after.start  # no token without a source


def test_traces_are_unique_and_never_empty(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(ALPHA)
    assert not (tmp_path / "s" / "traces").exists() or not any(
        (tmp_path / "s" / "traces").iterdir()
    )
    paths = []
    for _ in range(2):
        with open_session(tmp_path / "s") as mc:
            "".join(mc.generate(" more", max_new_tokens=3))
            paths.append(mc.trace_path)
    assert paths[0] != paths[1]
    for path in paths:
        assert path is not None and path.stat().st_size > 0


# ----------------------------------------------------------------------------- readers


def test_readers_beside_a_writer_see_a_consistent_prefix(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    path = tmp_path / "s"
    texts = [f"document {i}: " + BETA.replace("beta", f"doc{i}") for i in range(6)]
    with open_session(path, base, bundle, config()) as writer:
        writer.ingest(texts[0], source="file:///0")
        with pytest.raises(InvalidInputError, match="read-only"):
            open_session(path, readonly=True, regist=True)
        seen: list[np.ndarray] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(3):
                    with open_session(path, readonly=True) as reader:
                        n = reader.tree.num_tokens
                        seen.append(reader.tree.tokens(0, n).copy())
                        reader.tree.gists(1, 0, reader.tree.count(1))
                        reader.ask("doc3 row 5?", max_new_tokens=2)
                        with pytest.raises(InvalidInputError, match="read-only"):
                            reader.ingest("x")
            except BaseException as exc:  # noqa: BLE001  (reported by the main thread below)
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(2)]
        for thread in readers:
            thread.start()
        for i, text in enumerate(texts[1:], 1):
            writer.ingest(text, source=f"file:///{i}")
        for thread in readers:
            thread.join()
        assert not errors, errors
        final = writer.tree.tokens(0, writer.tree.num_tokens)
        boundaries = {0} | {i.stop for i in writer.metadata.ingests_of(writer.tree_id)}
    assert seen
    for tokens in seen:
        np.testing.assert_array_equal(tokens, final[: len(tokens)])
        assert len(tokens) in boundaries  # whole ingests only, never half of one


def test_a_reader_refuses_a_path_without_a_session(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="holds no MegaContext session"):
        open_session(tmp_path / "typo", readonly=True)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(InvalidInputError, match="holds no MegaContext session"):
        open_session(tmp_path / "typo", create=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    base, bundle = models
    with pytest.raises(InvalidInputError, match="other files in it"):
        open_session(tmp_path / "other", base, bundle, config())
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_are_typed_errors(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with pytest.raises(InvalidInputError, match="W_max"):
        SessionConfig(W_max="512")  # type: ignore[arg-type]
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        with pytest.raises(InvalidInputError, match="NoneType"):
            mc.ingest(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="integers"):
            mc.ingest([1.5, 2.0])
        with pytest.raises(InvalidInputError, match="source must be"):
            mc.ingest("text", source=3)  # type: ignore[arg-type]
        mc.ingest(ALPHA)
        with pytest.raises(InvalidInputError, match="max_new_tokens must be an integer"):
            mc.generate(max_new_tokens=1.5)  # type: ignore[arg-type]  # at the call, not later
        with pytest.raises(InvalidInputError, match="stop must be"):
            mc.generate(max_new_tokens=1, stop="\n")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="max_new_tokens must be >= 1"):
            mc.ask("Q?", max_new_tokens=0)
        with pytest.raises(InvalidInputError, match="focus_steps"):
            mc.ask("Q?", focus_steps=-1)


def test_a_budget_beyond_the_trained_positions_is_refused(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.runtime.opening import PositionLimitError

    base, bundle = models
    trained = base.trained_positions
    assert trained is not None
    with pytest.raises(PositionLimitError, match=f"{trained:,} positions") as caught:
        open_session(tmp_path / "s", base, bundle, SessionConfig(W_max=trained))
    assert caught.value.most < trained and not (tmp_path / "s").exists()


def test_session_record_is_json(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(ALPHA)
    record = json.loads((tmp_path / "s" / "session.json").read_text())
    assert record["config"]["W_max"] == 48


def test_reopening_rolls_back_an_ingest_a_crash_cut_short(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What kill -9 in the middle of an append leaves: a running journal row and part of the
    tokens (gisted, keyed, indexed). The next writer rolls it back; a reader never sees it."""
    base, bundle = models
    path = tmp_path / "s"
    with open_session(path, base, bundle, config()) as mc:
        mc.ingest(ALPHA, source="file:///alpha.txt")
        kept = mc.tree.tokens(0, mc.tree.num_tokens).copy()
        ids = np.asarray(base.encode(BETA * 5, add_bos=False))
        source = mc.metadata.add_source("file:///beta.txt", "text", b"beta")
        first = mc.tree.num_tokens
        mc.metadata.begin_ingest(mc.tree_id, source, first, first + len(ids))
        mc.append_history(ids[: len(ids) // 2])  # the crash comes half-way
    with open_session(path, readonly=True) as reader:  # a reader: only what was complete
        assert reader.tree.num_tokens == len(kept)
    with open_session(path) as reopened:
        assert [s.action for s in reopened.recovered] == ["rolled back"]
        assert "ingest it again" in reopened.recovered[0].describe()
        np.testing.assert_array_equal(reopened.tree.tokens(0, reopened.tree.num_tokens), kept)
        assert reopened.tree.count(1) == len(kept) // 4
        assert reopened.lexical.num_blocks == len(kept) // 4
        statuses = [i.status for i in reopened.metadata.ingests_of(reopened.tree_id)]
        assert statuses == [COMPLETE, ROLLED_BACK]
    with open_session(path) as again:
        assert again.recovered == []


def test_reopening_completes_an_ingest_whose_tokens_were_all_stored(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    path = tmp_path / "s"
    with open_session(path, base, bundle, config()) as mc:
        ids, offsets = base.encode_with_offsets(BETA)
        source = mc.metadata.add_source("file:///beta.txt", "text", BETA.encode())
        rows = plan_spans(BETA, offsets, 0, len(ids), 4)
        planned = [(r.start, r.stop, r.bytes, r.lines) for r in rows]
        mc.metadata.begin_ingest(mc.tree_id, source, 0, len(ids), planned)
        mc.append_history(np.asarray(ids))  # the crash comes after the last token
    with open_session(path) as reopened:
        assert [s.action for s in reopened.recovered] == ["completed"]
        spans = reopened.metadata.provenance(reopened.tree_id, 0, len(ids))
        assert spans[-1].line_range == (40, 40) and len(spans) == len(rows)


@pytest.mark.slow
def test_kill_minus_nine_at_random_moments_loses_and_duplicates_nothing() -> None:
    """The crash test of `megacontext bench crash`, a few kills of the default base (the full
    run kills 60 times; its counts are in BENCHMARKS.md)."""
    from megacontext.bench.crash import crash_test

    outcome = crash_test(5, "default", progress=lambda _msg: None, seed=1)
    assert outcome["failures"] == []
    assert sum(outcome["during"].values()) == 5 and len(outcome["reopen_seconds"]) == 5
