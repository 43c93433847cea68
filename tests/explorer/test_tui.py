"""The terminal explorer driven by its keys, on a real session of the tiny models: drilling
down to tokens, focus playback, search and annotations (stored, edited, refused, in conflict).

Each test runs the app headless with Textual's pilot inside ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Input, Static

from megacontext.core import entries_of_runs
from megacontext.explorer.browse import browse
from megacontext.explorer.tui import (
    TOUCHED_CELL,
    ExplorerApp,
    HelpScreen,
    MoreNodes,
    NodeRef,
    NoteScreen,
    run_terminal,
)
from megacontext.runtime import SessionConfig, open_session

HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(60))
# Rich markup in the text itself: the explorer must show it as typed, not style or drop it.
ORCHARD = "".join(
    f"orchard note {i}: pears ripen in row {i * 3} [b]crates[/b]\n" for i in range(60)
)
# Enough tokens for two top-level nodes, so the top level has pages to load.
LEDGER = "".join(f"ledger entry {i}: {i * 17 % 101} barrels of salt\n" for i in range(120))

SIZE = (120, 40)  # wide enough for one timeline cell per entry (W_max 48)
Scenario = Callable[[ExplorerApp, Pilot[None]], Awaitable[None]]


@dataclass(frozen=True)
class World:
    path: Path
    K: int


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory) -> World:  # type: ignore[no-untyped-def]
    """A session with three sources and one focus trace of four steps."""
    path = tmp_path_factory.mktemp("explore-tui") / "s"
    config = SessionConfig(
        W_max=48, protected_recent=12, refocus_every=4, query_tokens=8, focus_steps=6
    )
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, config) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        mc.ingest(LEDGER, source="file:///ledger.txt", metadata={"path": "ledger.txt"})
        mc.focus_for(mc.base.encode(" pears ripen"), steps=0)  # the query LensNet scores for
        for _ in range(4):
            mc.refocus()
    return World(path, tiny_world.K)


def drive(app: ExplorerApp, scenario: Scenario) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await scenario(app, pilot)

    asyncio.run(main())


def shown(app: ExplorerApp, selector: str) -> str:
    """The plain text a Static of the app shows now."""
    content = app.screen.query_one(selector, Static).content
    return content.plain if isinstance(content, Text) else str(content)


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press(*text)


async def settle(pilot: Pilot[None]) -> None:
    """Let the messages and the after-refresh callbacks (the tree's cursor moves) run."""
    await pilot.pause()
    await pilot.pause()


def test_drill_down_from_the_top_level_to_raw_tokens(world: World) -> None:
    K = world.K
    with browse(world.path) as b:
        top = b.overview()["top_level"]
        app = ExplorerApp(b, "tester")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            overview = shown(app, "#overview")
            assert f"{b.tree.num_tokens:,} tokens" in overview and f"K {K}" in overview
            assert f"LOD{top} {b.tree.count(top)}" in overview and "3 sources" in overview
            tree = app.tree_widget
            node = tree.root.children[0]
            assert node.data == NodeRef(top, 0, 0, K**top)
            assert tree.cursor_node is node and app.current == node.data
            assert shown(app, "#detail").startswith(f"LOD{top} #0  tokens [0, {K**top})")
            assert "harbour log 0" in shown(app, "#detail")
            assert "from harbour.txt lines 1–" in shown(app, "#detail")
            for level in range(top, 0, -1):
                await pilot.press("enter")  # opens the node: its K children load
                await settle(pilot)
                assert node.is_expanded
                expected = b.children(level, node.data.index)["items"]
                assert [c.data for c in node.children] == [NodeRef.of(c) for c in expected]
                for _ in range(K):  # down to the last child
                    await pilot.press("down")
                await settle(pilot)
                node = node.children[-1]
                assert tree.cursor_node is node and app.current == node.data
            token = node.data
            assert token.level == 0 and token.stop == token.start + 1
            assert not node.allow_expand
            assert str(node.label).startswith(f"raw #{token.index} [{token.start}, {token.stop})")
            detail = shown(app, "#detail")
            assert detail.startswith(f"raw #{token.index}  tokens [{token.start}, {token.stop})")
            assert detail.endswith(b.span(0, token.index)["text"])

        drive(app, scenario)


def test_top_level_pages_and_the_tail(world: World) -> None:
    with browse(world.path) as b:
        view = b.overview()
        top, counts = view["top_level"], [lv["nodes"] for lv in view["levels"]]
        assert counts[top] >= 2  # the fixture's point: more than one page of one node
        app = ExplorerApp(b, "tester", page_size=1)

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            root = app.tree_widget.root
            assert [c.data for c in root.children] == [
                NodeRef(top, 0, 0, world.K**top),
                MoreNodes(top, 1),
            ]
            assert "more…" in str(root.children[1].label)
            await pilot.press("down", "enter")  # the "more…" line loads the next page
            await settle(pilot)
            refs = [c.data for c in root.children]
            assert all(isinstance(r, NodeRef) for r in refs)
            # the pages, then the tail: every token once, in order
            assert [r.level for r in refs[: counts[top]]] == [top] * counts[top]
            assert refs[0].start == 0 and refs[-1].stop == b.tree.num_tokens
            assert all(a.stop == z.start for a, z in itertools.pairwise(refs))
            assert app.current == refs[1]  # the cursor went to the first new node

        drive(app, scenario)


def test_markup_in_the_text_is_shown_as_typed(world: World) -> None:
    with browse(world.path) as b:
        hit = b.search("crates")["items"][0]
        parent = b.path_to(hit["start"])[-2]  # the LOD2 node holding the hit
        text = b.span(2, parent["index"])["text"]
        assert "[/b]" in text  # the fixture's point
        app = ExplorerApp(b, "tester")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            app.open_path(hit["start"])
            await settle(pilot)
            await pilot.press("shift+left")  # to the LOD2 parent
            await settle(pilot)
            assert app.current == NodeRef.of(parent)
            assert shown(app, "#detail").endswith(text)
            label = str(app.tree_widget.cursor_node.label)
            assert parent["preview"].replace("\n", "⏎")[:40] in label

        drive(app, scenario)


def test_playback_steps_through_a_trace(world: World) -> None:
    with browse(world.path) as b:
        (trace,) = b.traces()
        steps = b.trace(trace["name"])["steps"]
        top = b.overview()["top_level"]
        app = ExplorerApp(b, "tester")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            timeline = app.timeline
            assert "press t" in timeline.render().plain
            await pilot.press("t")
            await settle(pilot)
            await pilot.press("enter")  # the one trace
            await settle(pilot)
            assert app.playback is not None and app.playback.name == trace["name"]

            async def expect(index: int, side: str) -> None:
                await settle(pilot)
                step = steps[index]
                entries = entries_of_runs(step[side])
                assert timeline.entries == entries
                status = shown(app, "#status")
                assert status.startswith(f"step {index + 1}/{len(steps)} ")
                assert f"expands {step['expands']} · collapses {step['collapses']}" in status
                assert ("after its edits" in status) == (side == "after")
                drawn = timeline.render().plain.splitlines()
                assert len(drawn[0]) == len(entries)  # one cell per entry
                raw = sum(1 for level, _ in entries if level == 0)
                assert f"raw {raw} " in drawn[1] and f"({len(entries)} entries)" in drawn[1]

            await expect(0, "after")
            # step 1 collapses two LOD1 blocks: before, their 2K tokens are shaded; after, the
            # two blocks that replaced them
            edits = steps[0]["edits"]
            assert [kind for kind, _, _ in edits] == ["collapse"] * 2
            assert timeline.render().plain.splitlines()[0].count(TOUCHED_CELL) == 2
            await pilot.press("a")
            await expect(0, "layout")
            assert timeline.render().plain.splitlines()[0].count(TOUCHED_CELL) == 2 * world.K
            await pilot.press("right_square_bracket")
            await expect(1, "layout")
            # step 2 expands one node: before, that entry is shaded; after, its K children
            assert [kind for kind, _, _ in steps[1]["edits"]] == ["expand"]
            assert timeline.render().plain.splitlines()[0].count(TOUCHED_CELL) == 1
            await pilot.press("a")
            await expect(1, "after")
            assert timeline.render().plain.splitlines()[0].count(TOUCHED_CELL) == world.K
            await pilot.press("left_square_bracket", "left_square_bracket")  # stops at step 1
            await expect(0, "after")
            timeline.focus()
            await pilot.press("right")
            await expect(1, "after")
            await pilot.press("end")
            await expect(len(steps) - 1, "after")
            await pilot.press("home")
            await expect(0, "after")
            # the highlighted top-level node is entry 0 of the context the step scored
            step = steps[0]
            assert step["layout"][0][:2] == [top, 0] and app.current == NodeRef(
                top, 0, 0, world.K**top
            )
            evidence = (
                f"step 1/{len(steps)}: entry 0 of the context it scored · "
                f"score {step['scores'][0]:.3f} · lexical {step['lexical'][0]:.3f} · "
                f"key_sim {step['key_sim'][0]:.3f}"
            )
            assert evidence in shown(app, "#detail")

        drive(app, scenario)


def test_search_opens_the_tree_at_the_hit(world: World) -> None:
    with browse(world.path) as b:
        hit = b.search("pears ripen")["items"][0]
        path = [NodeRef.of(n) for n in b.path_to(hit["start"])]
        app = ExplorerApp(b, "tester")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            await pilot.press("slash")
            await settle(pilot)
            await type_text(pilot, "pears ripen")
            await pilot.press("enter")
            await settle(pilot)
            assert "hits" in shown(app, "#search-message")
            await pilot.press("enter")  # the best hit
            await settle(pilot)
            tree = app.tree_widget
            assert app.current == NodeRef.of(hit) == path[-1]
            assert tree.cursor_node is not None and tree.cursor_node.data == path[-1]
            opened, node = [], tree.cursor_node.parent
            while node is not None and not node.is_root:
                assert node.is_expanded
                opened.append(node.data)
                node = node.parent
            assert opened[::-1] == path[:-1]
            assert "pears" in shown(app, "#detail")
            assert f"search hit: LOD1 #{hit['index']}" in shown(app, "#message")

        drive(app, scenario)


def note_count(path: Path) -> int:
    with browse(path) as fresh:
        return len(fresh.list_annotations())


def test_annotate_edit_and_delete_through_the_keys(world: World) -> None:
    with browse(world.path) as b:
        app = ExplorerApp(b, "ana")
        top = b.overview()["top_level"]

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            ref = app.current
            assert ref is not None and ref.level == top
            await pilot.press("n")
            await settle(pilot)
            assert isinstance(app.screen, NoteScreen)
            await type_text(pilot, "ferry times")
            await pilot.press("tab")
            await type_text(pilot, "harbour, log")
            await pilot.press("enter")
            await settle(pilot)
            with browse(world.path) as fresh:  # stored: a new browser finds it
                (stored,) = [
                    a
                    for a in fresh.list_annotations(ref.start, ref.stop)
                    if a["note"] == "ferry times"
                ]
            assert (stored["level"], stored["start"], stored["stop"]) == (top, ref.start, ref.stop)
            assert stored["tags"] == ["harbour", "log"] and stored["created_by"] == "ana"
            assert f"✎ #{stored['id']} v1 [harbour, log] ferry times" in shown(app, "#detail")
            assert "annotation saved" in shown(app, "#message")

            await pilot.press("e")
            await settle(pilot)
            assert app.screen.query_one("#note", Input).value == "ferry times"
            await pilot.press("end")
            await type_text(pilot, ", corrected")
            await pilot.press("enter")
            await settle(pilot)
            with browse(world.path) as fresh:
                history = fresh.annotation_history(stored["id"])
                assert [(h["action"], h["actor"]) for h in history] == [
                    ("create", "ana"),
                    ("edit", "ana"),
                ]
                assert history[-1]["note"] == "ferry times, corrected"
            assert f"#{stored['id']} v2 [harbour, log] ferry times, corrected" in shown(
                app, "#detail"
            )

            before = note_count(world.path)
            await pilot.press("d")
            await settle(pilot)
            await pilot.press("n")  # "no": nothing happens
            await settle(pilot)
            assert note_count(world.path) == before
            await pilot.press("d")
            await settle(pilot)
            await pilot.press("y")
            await settle(pilot)
            assert note_count(world.path) == before - 1
            assert f"✎ #{stored['id']} " not in shown(app, "#detail")

        drive(app, scenario)


def test_a_bad_tag_is_reported_and_the_text_kept(world: World) -> None:
    with browse(world.path) as b:
        app = ExplorerApp(b, "ana")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            before = note_count(world.path)
            await pilot.press("n")
            await settle(pilot)
            await type_text(pilot, "pier notes")
            await pilot.press("tab")
            await type_text(pilot, "no spaces allowed")
            await pilot.press("enter")
            await settle(pilot)
            assert "is not valid" in shown(app, "#message")
            assert app.query_one("#message").has_class("error")
            assert note_count(world.path) == before
            await pilot.press("n")  # the draft comes back
            await settle(pilot)
            assert app.screen.query_one("#note", Input).value == "pier notes"
            assert app.screen.query_one("#tags", Input).value == "no spaces allowed"
            await pilot.press("escape")
            await settle(pilot)
            assert not isinstance(app.screen, NoteScreen)

        drive(app, scenario)


def test_read_only_explorer_refuses_to_annotate(world: World) -> None:
    with browse(world.path, writable=False) as b:
        app = ExplorerApp(b, "ana")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            before = note_count(world.path)
            await pilot.press("n")
            await settle(pilot)
            assert "read-only" in shown(app, "#message")
            assert app.query_one("#message").has_class("error")
            assert not isinstance(app.screen, NoteScreen)  # nothing to type in vain
            assert "read-only" in shown(app, "#overview")
            assert note_count(world.path) == before
            await pilot.press("q")

        drive(app, scenario)


def test_an_edit_of_a_stale_version_is_a_conflict(world: World) -> None:
    K = world.K
    with browse(world.path) as other:  # someone else, in another explorer
        theirs = other.annotate(1, 0, K, "first words", ["harbour"], "ben")
    with browse(world.path) as b:
        app = ExplorerApp(b, "ana")

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            app.open_path(0)  # to LOD1 #0
            await settle(pilot)
            assert app.current == NodeRef(1, 0, 0, K)
            assert f"#{theirs['id']} v1" in shown(app, "#detail")
            with browse(world.path) as other:  # meanwhile, ben edits it
                other.edit_annotation(theirs["id"], 1, "ben's words", ["harbour"], "ben")
            await pilot.press("e")
            await settle(pilot)
            await pilot.press("home", "ctrl+k")
            await type_text(pilot, "ana's words")
            await pilot.press("enter")
            await settle(pilot)
            message = shown(app, "#message")
            assert "changed it meanwhile" in message and "your text is kept" in message
            with browse(world.path) as fresh:
                stored = [a for a in fresh.list_annotations() if a["id"] == theirs["id"]]
                assert [(a["note"], a["version"]) for a in stored] == [("ben's words", 2)]
            assert f"#{theirs['id']} v2 [harbour] ben's words" in shown(app, "#detail")
            await pilot.press("e")  # the draft, applied to the version that won
            await settle(pilot)
            assert app.screen.query_one("#note", Input).value == "ana's words"
            await pilot.press("enter")
            await settle(pilot)
            with browse(world.path) as fresh:
                stored = [a for a in fresh.list_annotations() if a["id"] == theirs["id"]]
                assert [(a["note"], a["version"]) for a in stored] == [("ana's words", 3)]

        drive(app, scenario)


def test_help_lists_the_keys_and_q_quits(world: World) -> None:
    with browse(world.path) as b:
        app = ExplorerApp(b, "ana")
        seen: dict[str, Any] = {}

        async def scenario(app: ExplorerApp, pilot: Pilot[None]) -> None:
            await pilot.press("question_mark")
            await settle(pilot)
            assert isinstance(app.screen, HelpScreen)
            keys = shown(app, "#keys")
            for key, what in [
                ("/", "search"),
                ("t", "trace"),
                ("n", "new annotation"),
                ("q", "quit"),
            ]:
                assert any(
                    line.startswith(key + " ") and what in line for line in keys.splitlines()
                )
            await pilot.press("q")  # closes the help, not the app
            await settle(pilot)
            assert not isinstance(app.screen, HelpScreen) and app.is_running
            await pilot.press("q")
            await settle(pilot)
            seen["running"] = app.is_running

        drive(app, scenario)
        assert seen["running"] is False


def test_run_terminal_opens_the_session_for_the_app(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, bool, int]] = []

    def run(app: ExplorerApp) -> None:  # instead of taking over the terminal
        seen.append((app.actor, app.browser.writable, app.browser.overview()["tokens"]))

    monkeypatch.setattr(ExplorerApp, "run", run)
    monkeypatch.setattr(getpass, "getuser", lambda: "login-name")
    run_terminal(world.path, read_only=True)
    run_terminal(world.path, actor="ana")
    with browse(world.path) as b:
        tokens = b.tree.num_tokens
    assert seen == [("login-name", False, tokens), ("ana", True, tokens)]
