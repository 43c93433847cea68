"""The explorers' data: overview, drill-down to raw text, spans, search, focus playback from
traces and annotations — on a real session of the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from megacontext.core import layout_runs
from megacontext.errors import InvalidInputError
from megacontext.explorer.browse import SpanNotFoundError, TraceNotFoundError, browse
from megacontext.runtime import SessionConfig, open_session
from megacontext.store.annotations import AnnotationConflictError

HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(60))
ORCHARD = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(60))


@pytest.fixture(scope="module")
def tree(tiny_world, tmp_path_factory) -> tuple[Path, list[list[list[int]]]]:  # type: ignore[no-untyped-def]
    """A session with two sources and one trace; the layouts after each refocus step."""
    path = tmp_path_factory.mktemp("explore") / "s"
    config = SessionConfig(
        W_max=48, protected_recent=12, refocus_every=4, query_tokens=8, focus_steps=6
    )
    afters = []
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, config) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        mc.focus_for(mc.base.encode(" pears ripen"), steps=0)  # the query LensNet scores for
        for _ in range(4):
            mc.refocus()
            afters.append(layout_runs(mc.wc.levels, mc.wc.indices))
    return path, afters


def test_overview_and_sources(tree) -> None:  # type: ignore[no-untyped-def]
    path, _ = tree
    with browse(path) as b:
        view = b.overview()
        assert view["tokens"] == b.tree.num_tokens > 0
        assert view["top_level"] == b.tree.num_levels >= 2
        assert [lv["nodes"] for lv in view["levels"]][1:] == [
            b.tree.count(level) for level in range(1, b.tree.num_levels + 1)
        ]
        sources = view["sources"]["items"]
        assert [s["source"] for s in sources] == ["harbour.txt", "orchard.txt"]
        assert sources[0]["start"] == 0 and sources[0]["stop"] == sources[1]["start"]
        assert b.sources(1, 1)["items"][0]["source"] == "orchard.txt"


def test_drill_down_from_the_top_to_raw_text(tree) -> None:  # type: ignore[no-untyped-def]
    path, _ = tree
    with browse(path) as b:
        K, level = b.tree.K, b.tree.num_levels
        top = b.nodes(level)["items"][0]
        texts = []
        node = top
        while node["level"] >= 1:
            page = b.children(node["level"], node["index"])
            assert page["total"] >= len(page["items"]) == K
            assert [c["start"] for c in page["items"]] == [
                node["start"] + k * (node["stop"] - node["start"]) // K for k in range(K)
            ]
            node = page["items"][-1]
            texts.append(node["preview"])
        assert node["level"] == 0 and node["stop"] == node["start"] + 1  # a token
        whole = b.span(level, top["index"])
        assert whole["text"].startswith("harbour log 0")
        assert whole["provenance"][0]["source"] == "harbour.txt"
        assert whole["provenance"][0]["lines"][0] == 1
        assert whole["norm"] > 0
        # path_to walks the same nodes back down
        assert [n["level"] for n in b.path_to(node["start"])] == list(range(level, 0, -1))


def test_search_finds_the_block_with_the_words(tree) -> None:  # type: ignore[no-untyped-def]
    path, _ = tree
    with browse(path) as b:
        hits = b.search("pears ripen")["items"]
        assert hits and "pears" in b.text(hits[0]["start"], hits[0]["stop"])
        assert all(h["level"] == 1 for h in hits)
        with pytest.raises(InvalidInputError, match="search is empty"):
            b.search("  ")


def test_playback_replays_every_step_to_the_context_the_session_had(tree) -> None:  # type: ignore[no-untyped-def]
    path, afters = tree
    with browse(path) as b:
        (trace,) = b.traces()
        steps = b.trace(trace["name"])["steps"]
        assert len(steps) == trace["steps"] == len(afters)
        assert [s["after"] for s in steps] == afters
        for step in steps:
            entries = sum(count for _, _, count in step["layout"])
            assert len(step["scores"]) == len(step["lexical"]) == len(step["key_sim"]) == entries
        # the query "pears ripen": lexical evidence lands on entries of the orchard source only
        lexical = steps[0]["lexical"]
        assert max(lexical) == 1.0 and min(lexical) == 0.0
        assert any(s["expands"] for s in steps)  # focus moved: playback has something to show
        page = b.trace(trace["name"], first=1, limit=2)  # paged: a long trace is read in parts
        assert (page["total"], page["first"]) == (4, 1)
        assert [s["after"] for s in page["steps"]] == afters[1:3]
        assert b.trace(trace["name"], first=9, limit=2)["steps"] == []
        with pytest.raises(TraceNotFoundError, match="no trace named 'nope'"):
            b.trace("nope")


def test_annotations_round_trip_and_bad_spans(tree) -> None:  # type: ignore[no-untyped-def]
    path, _ = tree
    with browse(path) as b:
        K = b.tree.K
        note = b.annotate(1, K, 2 * K, "ferry times", ["harbour"], "ana")
        assert b.span(1, 1)["annotations"][0]["note"] == "ferry times"
        b.edit_annotation(note["id"], 1, "ferry times, corrected", ["harbour"], "ben")
        with pytest.raises(AnnotationConflictError):
            b.edit_annotation(note["id"], 1, "stale", [], "cy")
        free = b.annotate(0, 3, 7, "a phrase", [], "ana")
        assert free["level"] == 0
        for level, start, stop, message in [
            (1, 1, K + 1, "not a level-1 node"),
            (0, 5, 5, "not a span of the history"),
            (0, 0, 10**9, "not a span of the history"),
            (9, 0, K**9, "level 9 does not exist"),
        ]:
            with pytest.raises(SpanNotFoundError, match=message):
                b.annotate(level, start, stop, "x", [], "ana")
    with browse(path) as again:  # stored: a new browser (a reload) finds them
        found = again.list_annotations()
        assert [(a["note"], a["version"]) for a in found] == [
            ("a phrase", 1),
            ("ferry times, corrected", 2),
        ]
        history = again.annotation_history(note["id"])
        assert [(h["action"], h["actor"]) for h in history] == [("create", "ana"), ("edit", "ben")]
        again.delete_annotation(free["id"], 1, "ana")
        assert len(again.list_annotations()) == 1
    with browse(path, writable=False) as reader:
        assert len(reader.list_annotations()) == 1
        with pytest.raises(InvalidInputError, match="read-only"):
            reader.annotate(0, 0, 1, "x", [], "ana")


def test_bad_paths_and_nodes(tree, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = tree
    with pytest.raises(InvalidInputError, match="not a session directory"), browse(tmp_path):
        pass
    with browse(path) as b:
        with pytest.raises(SpanNotFoundError, match="no node"):
            b.span(1, b.tree.count(1))
        with pytest.raises(SpanNotFoundError, match="a token has no children"):
            b.children(0, 0)
        with pytest.raises(InvalidInputError, match="limit must be"):
            b.nodes(1, 0, 0)
