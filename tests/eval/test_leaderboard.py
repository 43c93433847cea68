"""The long-context leaderboard over synthetic ``bench longctx --json`` documents."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from megacontext.cli.leaderboard import leaderboard
from megacontext.errors import InvalidInputError
from megacontext.eval.leaderboard import (
    build_leaderboard,
    cell_text,
    length_label,
    parse_length,
    rank_systems,
    read_document,
    read_documents,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEMS = ("full", "recency", "rag-bm25", "megacontext")
LENGTHS = (4096, 100_000, 1_000_000)
BUDGETS = (256, 512)
# Accuracy per system rises with the budget and falls with the length; megacontext is best.
SKILL = {"full": 0.9, "recency": 0.2, "rag-bm25": 0.6, "megacontext": 0.8}


def accuracy(system: str, length: int, budget: int) -> float:
    return round(SKILL[system] * (budget / 512) ** 0.5 / (1 + math.log10(length / 4096)), 4)


def nll(system: str, length: int, budget: int) -> float:
    return round(4.0 - SKILL[system] - 0.1 * math.log2(budget / 256) + 0.01 * length / 1e6, 4)


def row(task: str, length: int, budget: int, system: str, value: float) -> dict[str, Any]:
    return {
        "name": f"{task}@{length_label(length)}/{budget}/{system}",
        "value": value,
        "unit": "nats" if task == "longdoc" else "accuracy",
        "extra": {
            "task": task,
            "length": length,
            "budget": budget,
            "system": system,
            "ci95": [round(value - 0.05, 4), round(value + 0.05, 4)],
            "samples": 20,
            "skipped": 0,
            "tokens_processed": 20 * length,
            "seconds": 1.5,
        },
    }


# One well-formed result; the bad-input cases each break one field of it.
CELL = row("passkey", 4096, 512, "x", 1.0)


def document(results: list[dict[str, Any]], quick: bool = False) -> dict[str, Any]:
    return {
        "suite": "longctx",
        "date": "2026-11-25T12:00:00+00:00",
        "machine": "Linux x86_64, 2 cores, test CPU",
        "command": "megacontext bench longctx --json r.json",
        "quick": quick,
        "results": results,
    }


def synthetic() -> list[dict[str, Any]]:
    rows = []
    for task in ("passkey", "needle", "longdoc"):
        for length in LENGTHS:
            for budget in BUDGETS:
                for system in SYSTEMS:
                    if system == "full" and length > 4096:
                        # Full context does not fit: every sample skipped, value NaN.
                        skipped = row(task, length, budget, system, 0.0)
                        skipped["value"] = float("nan")
                        skipped["extra"].update(ci95=[float("nan")] * 2, samples=0, skipped=20)
                        rows.append(skipped)
                        continue
                    f = nll if task == "longdoc" else accuracy
                    rows.append(row(task, length, budget, system, f(system, length, budget)))
    return rows


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write(tmp_path / "longctx.json", document(synthetic()))


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The leaderboard of the synthetic document, built once (plots take a few seconds)."""
    root = tmp_path_factory.mktemp("board")
    markdown = build_leaderboard(
        [write(root / "longctx.json", document(synthetic()))], root / "out"
    )
    assert markdown == root / "out" / "leaderboard.md"
    return markdown.parent


def test_lengths_round_trip_the_harness_labels() -> None:
    for n in (4096, 16384, 100_000, 1_000_000, 10_000_000):
        assert parse_length(length_label(n)) == n
    assert parse_length("1.5M") == 1_500_000
    # The one label helper: result names, runtime result names and tables all use it.
    labels = [length_label(n) for n in (10_000, 200_000, 1_000_000, 10_000_000, 4096)]
    assert labels == ["10k", "200k", "1M", "10M", "4096"]


def test_tables_hold_every_system_and_value(board: Path) -> None:
    text = (board / "leaderboard.md").read_text()
    for task in ("passkey", "needle", "longdoc"):
        assert f"## {task}" in text
    for system in SYSTEMS:
        assert f"| {system} |" in text
    for r in synthetic():
        if math.isfinite(r["value"]):
            lo, hi = r["extra"]["ci95"]
            assert f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}]" in text, r["name"]
    assert "skipped (20)" in text
    for length in LENGTHS:
        for budget in BUDGETS:
            assert f"{length_label(length)} / W{budget}" in text


def test_bests_are_bold_and_longdoc_is_lower_is_better(board: Path) -> None:
    text = (board / "leaderboard.md").read_text()
    section = lambda task: text.split(f"## {task}\n")[1].split("\n## ")[0]  # noqa: E731
    # At 4096 tokens full context is best at QA; beyond it megacontext is.
    passkey = section("passkey")
    best_full = accuracy("full", 4096, 512)
    assert f"**{best_full:.3f} [" in passkey
    best_mc = accuracy("megacontext", 100_000, 512)
    assert f"**{best_mc:.3f} [" in passkey
    # longdoc: the lowest NLL is bold, the highest is not.
    longdoc = section("longdoc")
    assert "lower is better" in longdoc
    assert f"**{nll('full', 4096, 512):.3f} [" in longdoc
    assert f"**{nll('recency', 4096, 512):.3f} [" not in longdoc


def test_summary_ranks_systems_by_mean_rank(results: Path) -> None:
    ranking = rank_systems(read_document(results))
    order = [r.system for r in ranking]
    assert order == ["megacontext", "rag-bm25", "full", "recency"]
    full = next(r for r in ranking if r.system == "full")
    # Full context fits only 4096 tokens: measured there, ranked last (skipped) elsewhere.
    assert full.measured == 3 * len(BUDGETS) and full.cells == 3 * len(BUDGETS) * len(LENGTHS)
    assert full.mean_rank == pytest.approx((6 * 1 + 12 * 4) / 18)
    assert all(r.cells > 0 and r.mean_rank >= 1 for r in ranking)
    mc = ranking[0]
    assert not math.isnan(mc.mean_accuracy) and not math.isnan(mc.mean_nll)


def test_html_is_self_contained_and_embeds_every_plot(board: Path) -> None:
    out = board
    page = (out / "leaderboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # No external assets: no src/href to anything but inline data.
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    plots = sorted(out.glob("*.png"))
    assert len(images) == len(plots)
    assert {base64.b64decode(i) for i in images} == {p.read_bytes() for p in plots}
    for system in SYSTEMS:
        assert f"<td>{system}</td>" in page


def test_plots_exist_and_are_valid_pngs(board: Path) -> None:
    out = board
    expected = {f"{task}_W{b}.png" for task in ("passkey", "needle", "longdoc") for b in BUDGETS}
    expected |= {f"longdoc_nll_vs_budget_{length_label(n)}.png" for n in LENGTHS}
    assert {p.name for p in out.glob("*.png")} == expected
    for name in expected:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 300 and height >= 200
    markdown = (out / "leaderboard.md").read_text()
    assert all(f"]({name})" in markdown for name in expected)


def test_later_files_replace_the_same_cells(results: Path, tmp_path: Path) -> None:
    newer = row("passkey", 4096, 512, "recency", 0.987)
    second = write(tmp_path / "rerun.json", document([newer], quick=True))
    cells = read_documents([results, second])
    mine = [
        c
        for c in cells
        if (c.task, c.length, c.budget, c.system) == ("passkey", 4096, 512, "recency")
    ]
    assert len(mine) == 1 and mine[0].value == 0.987 and mine[0].source == str(second)
    text = build_leaderboard([results, second], tmp_path / "out").read_text()
    assert "0.987 [" in text and "(--quick)" in text


def test_cell_text() -> None:
    cells = read_document_from_rows([row("passkey", 4096, 512, "x", 0.5)])
    assert cell_text(cells[0]) == "0.500 [0.450, 0.550]"
    assert cell_text(None) == ""


def read_document_from_rows(rows: list[dict[str, Any]]) -> list[Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return read_document(write(Path(tmp) / "r.json", document(rows)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON document"),
        (json.dumps([1, 2]), "not a benchmark document"),
        (json.dumps({"suite": "core", "results": [{"name": "x", "value": 1}]}), "not 'longctx'"),
        (json.dumps(document([])), "no results"),
        (json.dumps(document([{"name": "passkey@4k/512/x", "value": 1.0}])), "extra lacks"),
        (json.dumps(document([{**CELL, "extra": {**CELL["extra"], "length": "4k"}}])), "length"),
        (json.dumps(document([{**CELL, "extra": {**CELL["extra"], "system": ""}}])), "system"),
        (json.dumps(document([{"value": 1.0}])), "expected an object with a 'name'"),
        (json.dumps(document([{**CELL, "value": "high"}])), "number"),
        (json.dumps(document([{**CELL, "extra": {**CELL["extra"], "ci95": [1]}}])), "ci95"),
        (json.dumps(document([{**CELL, "extra": {**CELL["extra"], "ci95": [2, 1]}}])), "exceeds"),
        (json.dumps(document([{**CELL, "extra": {**CELL["extra"], "samples": -3}}])), "count"),
    ],
)
def test_bad_inputs_raise_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=re.escape(message)) as info:
        build_leaderboard([path], tmp_path / "out")
    assert str(path) in str(info.value)
    assert not (tmp_path / "out" / "leaderboard.md").exists()


def test_missing_file_and_no_files_raise(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        build_leaderboard([tmp_path / "absent.json"], tmp_path / "out")
    with pytest.raises(InvalidInputError, match="no result files"):
        build_leaderboard([], tmp_path / "out")


def test_cli_writes_the_leaderboard_and_teaches(results: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(leaderboard)
    runner = CliRunner()
    help_text = runner.invoke(app, ["--help"]).output
    assert "megacontext leaderboard" in help_text and "--out" in help_text
    out = tmp_path / "board"
    done = runner.invoke(app, [str(results), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "leaderboard.md").is_file() and (out / "leaderboard.html").is_file()
    bad = write(tmp_path / "core.json", {"suite": "core", "results": [{"name": "a", "value": 1}]})
    failed = runner.invoke(app, [str(bad), "--out", str(out)])
    assert failed.exit_code != 0 and isinstance(failed.exception, InvalidInputError)


def test_answer_nll_gets_its_own_table_and_is_not_ranked(tmp_path: Path) -> None:
    rows = []
    # Accuracy ties at 0 for both systems; the answer NLL tells them apart.
    for system, answer_nll in (("recency", 5.0), ("megacontext", 2.5)):
        r = row("vartrack", 4096, 512, system, 0.0)
        r["extra"].update(
            answer_nll=answer_nll, answer_nll_ci95=[answer_nll - 0.5, answer_nll + 0.5]
        )
        rows.append(r)
    rows += [row("longdoc", 4096, 512, system, 4.0) for system in ("recency", "megacontext")]
    rows.append(row("longdoc", 4096, 512, "full", 5.0))
    cells = read_document(write(tmp_path / "a.json", document(rows)))
    derived = {c.system: c for c in cells if c.task == "vartrack.nll"}
    assert derived["megacontext"].value == 2.5 and derived["megacontext"].ci == (2.0, 3.0)
    assert derived["recency"].lower_is_better and derived["recency"].derived
    assert not any(c.task == "longdoc.nll" for c in cells)
    # Ranked by accuracy only: the tie stays a tie. Both tied systems win longdoc (full is
    # worse there); nobody wins vartrack, where every system scores 0.
    ranking = {r.system: r for r in rank_systems(cells)}
    assert ranking["megacontext"].mean_rank == ranking["recency"].mean_rank
    assert ranking["megacontext"].wins == ranking["recency"].wins == 1
    assert ranking["full"].wins == 0
    out = build_leaderboard([tmp_path / "a.json"], tmp_path / "out")
    text = out.read_text()
    assert text.index("vartrack.nll") > text.index("vartrack")
    assert "**2.500 [2.000, 3.000]**" in text
    bad = row("vartrack", 4096, 512, "recency", 0.0)
    bad["extra"]["answer_nll"] = "low"
    with pytest.raises(InvalidInputError, match="answer_nll"):
        read_document(write(tmp_path / "b.json", document([bad])))
