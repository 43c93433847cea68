"""`megacontext code ask`: focus keeps superseded versions closed, citations say what is live."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from megacontext.apps.code import ask_code, ingest_repo, scan_repo
from megacontext.apps.code.ask import superseded_ranges
from megacontext.cli import app
from megacontext.errors import InvalidInputError
from megacontext.runtime import SessionConfig, open_session

CONFIG = SessionConfig(W_max=96, protected_recent=8, trace=False, focus_steps=6)
OLD = "def rate(x):\n    return x * 3  # the old rate\n" * 2
NEW = "def rate(x):\n    return x * 7  # the new rate\n" * 2


@pytest.fixture
def session_with_two_versions(tiny_world, tmp_path: Path):  # type: ignore[no-untyped-def]
    repo = tmp_path / "pricing"
    repo.mkdir()
    (repo / "rate.py").write_text(OLD)
    (repo / "notes.md").write_text("Pricing notes. " * 5)
    with open_session(tmp_path / "mc", tiny_world.base, tiny_world.bundle, CONFIG) as mc:
        ingest_repo(mc, scan_repo(repo))
        (repo / "rate.py").write_text(NEW)
        ingest_repo(mc, scan_repo(repo))
        (repo / "tail.md").write_text("Recent text. " * 12)  # pushes both versions into gists
        ingest_repo(mc, scan_repo(repo))
        yield mc


def test_focus_never_opens_superseded_versions(session_with_two_versions) -> None:  # type: ignore[no-untyped-def]
    mc = session_with_two_versions
    (old,) = superseded_ranges(mc)
    old_text = mc.base.decode(mc.tree.tokens(*old).tolist())
    assert "the old rate" in old_text and "the new rate" not in old_text

    def raw_tokens_in(lo: int, hi: int) -> int:
        """Raw tokens of the LOD1 blocks wholly inside ``[lo, hi)``: a block that straddles the
        version's edge also holds live text, so focus may open it."""
        K = mc.tree.K
        lo, hi = -(-lo // K) * K, hi // K * K
        assert hi > lo  # the test needs at least one whole superseded block
        starts, ends = mc.wc.spans()
        raw = (mc.wc.levels == 0) & (starts >= lo) & (ends <= hi)
        return int(raw.sum())

    def want_the_old_version(wc):  # type: ignore[no-untyped-def]
        starts, ends = wc.spans()
        return np.where((starts < old[1]) & (ends > old[0]) & (wc.levels > 0), 1.0, -1.0)

    mc.score_override = want_the_old_version
    mc.focus.avoid([old])
    for _ in range(6):
        mc.refocus(make_room=False)
    assert raw_tokens_in(*old) == 0  # never opened, however much focus wanted it
    mc.focus.avoid([])
    for _ in range(6):
        mc.refocus(make_room=False)
    assert raw_tokens_in(*old) > 0  # the same scores open it once it is not avoided
    with pytest.raises(InvalidInputError, match="outside the history"):
        mc.focus.avoid([(0, mc.tree.num_tokens + 1)])


def test_answers_cite_the_live_version(session_with_two_versions) -> None:  # type: ignore[no-untyped-def]
    mc = session_with_two_versions
    (old,) = superseded_ranges(mc)

    def want_the_old_version(wc):  # type: ignore[no-untyped-def]
        starts, ends = wc.spans()
        return np.where((starts < old[1]) & (ends > old[0]), 1.0, -1.0)

    # The old version's whole blocks; the blocks at its edges also hold live text (the next
    # file's header, the previous file's end), so focus may open those.
    K = mc.tree.K
    whole = (-(-old[0] // K) * K, old[1] // K * K)

    def in_whole_old_blocks(citation) -> bool:  # type: ignore[no-untyped-def]
        return whole[0] <= citation.tokens[0] < whole[1]

    mc.score_override = want_the_old_version
    answer = ask_code(mc, "What does rate return?", max_new_tokens=4)
    assert answer.avoided_tokens == old[1] - old[0]
    assert answer.citations and not any(in_whole_old_blocks(c) for c in answer.citations)
    stale = [c.live for c in answer.citations]
    assert stale == sorted(stale, reverse=True)  # live citations first
    assert not mc.focus.avoided  # the restriction was for this question only
    # The same question asked plainly: focus opens the old version and the answer cites it.
    plain = mc.ask("What does rate return?", max_new_tokens=4)
    assert any(in_whole_old_blocks(c) for c in plain.citations)


def test_the_ask_command(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    repo = tmp_path / "pricing"
    repo.mkdir()
    (repo / "rate.py").write_text(OLD)
    common = ["--tree", str(tmp_path / "mc"), "--base", str(tiny_world.base_dir)]
    common += ["--focus", str(tiny_world.bundle_dir), "--w-max", "64"]
    result = runner.invoke(app, ["code", "ingest", str(repo), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["code", "ask", "What is the rate?", *common, "--max-new-tokens", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["avoided_tokens"] == 0 and isinstance(report["answer"], str)
    missing = runner.invoke(app, ["code", "ask", "Why?", "--tree", str(tmp_path / "none")])
    assert isinstance(missing.exception, InvalidInputError)
    assert "holds no MegaContext session" in str(missing.exception)


def test_the_prompt_style_flag(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    repo = tmp_path / "pricing"
    repo.mkdir()
    (repo / "rate.py").write_text(OLD)
    common = ["--tree", str(tmp_path / "mc"), "--base", str(tiny_world.base_dir)]
    common += ["--focus", str(tiny_world.bundle_dir), "--w-max", "64"]
    bogus = runner.invoke(app, ["code", "ingest", str(repo), *common, "--prompt", "poem"])
    assert isinstance(bogus.exception, InvalidInputError)
    assert "--prompt 'poem' is not a prompt style; choose one of: raw, chat, chat-cue" in str(
        bogus.exception
    )
    assert not (tmp_path / "mc").exists()  # refused before anything was created
    # The tiny base has no chat template: the chat style is refused, naming the way out.
    chat = runner.invoke(app, ["code", "ingest", str(repo), *common, "--prompt", "chat"])
    assert isinstance(chat.exception, InvalidInputError) and "--prompt raw" in str(chat.exception)
    raw = runner.invoke(app, ["code", "ingest", str(repo), *common, "--prompt", "raw", "--json"])
    assert raw.exit_code == 0, raw.output
    recorded = json.loads((tmp_path / "mc" / "session.json").read_text())
    assert recorded["config"]["prompt"] == "raw"  # a new session keeps the style
