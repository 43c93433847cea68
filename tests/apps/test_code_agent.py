"""`megacontext code agent`: search, open, ask, follow what the answer names; within a budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext.apps.code import ingest_repo, scan_repo
from megacontext.apps.code.agent import CodeAgent, code_names
from megacontext.apps.code.ask import CodeAnswer, superseded_ranges
from megacontext.cli import app
from megacontext.errors import InvalidInputError
from megacontext.runtime import SessionConfig, open_session

CONFIG = SessionConfig(W_max=640, protected_recent=8, trace=False, focus_steps=2)
FILLER = "".join(f"# note {i}: nothing about prices here\n" for i in range(30))
PRICES = (
    "class PriceError(Exception):\n    pass\n\n\n"
    "def zebra_total(items):\n    if not items:\n        raise PriceError('empty')\n"
    "    return sum(items)\n"
)
CART = "def checkout(cart):\n    return zebra_total(cart.items)\n"


@pytest.fixture
def shop(tiny_world, wide_bundle, tmp_path: Path):  # type: ignore[no-untyped-def]
    repo = tmp_path / "shop"
    repo.mkdir()
    (repo / "a_notes.py").write_text(FILLER)
    (repo / "cart.py").write_text(CART)
    (repo / "prices.py").write_text(PRICES)
    (repo / "z_more_notes.py").write_text(FILLER.replace("note", "remark"))
    with open_session(tmp_path / "mc", tiny_world.base, wide_bundle, CONFIG) as mc:
        ingest_repo(mc, scan_repo(repo))
        yield mc, repo


class ScriptedAgent(CodeAgent):
    """The real loop and the real ``ask_code``, with the base's words replaced by a script (the
    tiny test base cannot name code), and what was raw in the context at each ask recorded."""

    def __init__(self, session, script: list[str], **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(session, **kwargs)
        self.script = script
        self.raw_at_ask: list[set[int]] = []
        self.pinned_at_ask: list[list[tuple[int, int]]] = []

    def _ask(self, question: str) -> CodeAnswer:
        answer = super()._ask(question)
        wc = self.session.wc
        self.raw_at_ask.append(set(wc.indices[wc.levels == 0].tolist()))
        self.pinned_at_ask.append(list(self.session.focus.pinned))
        return dataclasses.replace(answer, text=self.script[len(self.raw_at_ask) - 1])


def test_names_that_look_like_code() -> None:
    text = "It returns zebra_total(cart.items), raising `PriceError`; see check2 and main() too."
    assert code_names(text) == ["zebra_total", "PriceError", "check2", "main"]
    assert code_names("The total of the items, in plain words.") == []


def test_search_finds_live_versions_only(shop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mc, repo = shop
    (repo / "prices.py").write_text(PRICES.replace("zebra_total", "zebra_total_v2"))
    # (a file changed after it, so that the new version's blocks are complete and indexed)
    (repo / "z_more_notes.py").write_text(FILLER.replace("note", "aside"))
    ingest_repo(mc, scan_repo(repo))
    stale = superseded_ranges(mc)
    assert len(stale) == 2  # the old prices.py and the old notes
    hits = CodeAgent(mc).search("zebra_total")
    assert hits and all(not a <= h.tokens[0] < b for h in hits for a, b in stale)
    assert any(h.label.startswith("prices.py:") for h in hits), [(h.label, h.text) for h in hits]


def test_the_loop_opens_what_it_found_and_follows_what_the_answer_names(shop) -> None:  # type: ignore[no-untyped-def]
    mc, _repo = shop
    pins_before = list(mc.focus.pinned)
    agent = ScriptedAgent(
        mc, ["It returns zebra_total(cart.items).", "It returns zebra_total(cart.items)."]
    )
    run = agent.run("What does the function checkout return?")
    tools = [s.tool for s in run.steps]
    assert tools[0] == "search" and "ask" in tools
    first_ask = tools.index("ask")
    assert set(tools[1:first_ask]) == {"open"}  # the question's hits, opened before asking
    # The follow-up: `zebra_total` searched, its definition (not its call) opened, asked again.
    follow = run.steps[first_ask + 1]
    assert (follow.tool, follow.argument) == ("search", "zebra_total")
    opened_next = run.steps[first_ask + 2]
    assert opened_next.tool == "open" and opened_next.argument.startswith("prices.py:")
    assert tools[first_ask + 3] == "ask" and run.stopped == "the answer stopped changing"
    # What was opened was raw in the working context when the question was asked, and the
    # second ask read `zebra_total`'s definition.
    for raw, pinned in zip(agent.raw_at_ask, agent.pinned_at_ask, strict=True):
        assert pinned and all(set(range(a, b)) <= raw for a, b in pinned)
    merged: list[list[int]] = []
    for a, b in sorted(agent.pinned_at_ask[1]):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    texts = [mc.base.decode(mc.tree.tokens(a, b).tolist()) for a, b in merged]
    assert any("def zebra_total" in t for t in texts), texts
    assert mc.focus.pinned == pins_before  # the pins are lifted when the loop ends
    record = run.transcript()
    assert record["steps"][0]["tool"] == "search" and record["opened"] == run.opened


def test_the_step_budget_is_kept(shop) -> None:  # type: ignore[no-untyped-def]
    mc, _repo = shop
    agent = ScriptedAgent(
        mc, [f"Answer {i} names other_name_{i}()." for i in range(20)], max_steps=4
    )
    run = agent.run("What does the function checkout return?")
    assert len(run.steps) <= 4 and run.steps[-1].tool == "ask"
    assert "step budget (4)" in run.stopped
    with pytest.raises(InvalidInputError, match="step budget"):
        CodeAgent(mc, max_steps=2)
    with pytest.raises(InvalidInputError, match="question is empty"):
        CodeAgent(mc).run("  ")


def test_the_agent_command(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    repo = tmp_path / "shop"
    repo.mkdir()
    (repo / "cart.py").write_text(CART)
    (repo / "prices.py").write_text(PRICES)
    common = ["--tree", str(tmp_path / "mc"), "--base", str(tiny_world.base_dir)]
    common += ["--focus", str(tiny_world.bundle_dir), "--w-max", "96"]
    result = runner.invoke(app, ["code", "ingest", str(repo), *common])
    assert result.exit_code == 0, result.output
    transcript = tmp_path / "out" / "agent.json"
    args = ["code", "agent", "What does checkout return?", *common, "--max-new-tokens", "3"]
    result = runner.invoke(app, [*args, "--transcript", str(transcript), "--json"])
    assert result.exit_code == 0, result.output
    printed, written = json.loads(result.stdout), json.loads(transcript.read_text())
    assert printed == written and printed["steps"][0]["tool"] == "search"
    assert len(printed["steps"]) <= 8 and printed["stopped"]
    bad = runner.invoke(app, [*args, "--max-steps", "2"])
    assert isinstance(bad.exception, InvalidInputError) and "--max-steps" in str(bad.exception)


def test_a_name_in_the_question_opens_its_definition_first(shop) -> None:  # type: ignore[no-untyped-def]
    mc, _repo = shop
    agent = ScriptedAgent(mc, ["It adds them up."])
    run = agent.run("What does `zebra_total` return?")
    assert (run.steps[0].tool, run.steps[0].argument) == ("search", "zebra_total")
    assert run.steps[1].tool == "open" and run.steps[1].argument.startswith("prices.py:")
    (a, b) = agent.pinned_at_ask[0][0]
    assert "def zebra_total" in mc.base.decode(mc.tree.tokens(a, b).tolist())
