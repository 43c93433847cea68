"""The issue-15 reproductions from the command line: `ask` that answers and cites, ingest that
can be re-run, readers beside a writer, sources, and errors in the user's terms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext.cli import app

runner = CliRunner()
ALPHA = "".join(f"alpha line {i}: the sky is wide and blue\n" for i in range(1, 41))


@pytest.fixture(scope="module")
def tiny(tiny_world) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--base", str(tiny_world.base_dir), "--focus", str(tiny_world.bundle_dir)]


def _run(*args: str) -> object:
    return runner.invoke(app, list(args))


def _error(result: object) -> str:
    assert result.exit_code != 0  # type: ignore[attr-defined]
    return str(result.exception)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- the pass key


@pytest.fixture(scope="module")
def pass_key_docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Ten held-out documents (~37k tokens of the tiny base), a pass key planted in the fourth
    at line 200; returns the directory and that line."""
    from megacontext.data import PASSKEY_NEEDLE, heldout_texts

    texts = heldout_texts()[:10]
    docs = tmp_path_factory.mktemp("passkey-docs")
    lines = texts[3].split("\n")
    lines.insert(199, PASSKEY_NEEDLE.format(key="71234").strip("\n"))
    texts[3] = "\n".join(lines)
    for number, text in enumerate(texts):
        (docs / f"doc{number:03d}.txt").write_text(text, encoding="utf-8")
    return docs, 200


def test_ask_answers_the_pass_key_and_cites_its_line(
    pass_key_docs: tuple[Path, int], tmp_path: Path
) -> None:
    """The shipped tiny base and focus bundle (the default): a pass key far behind 37k tokens
    of held-out text is answered, and the top citation is the file and line that hold it."""
    docs, line = pass_key_docs
    tree = str(tmp_path / "mc")
    made = _run("ingest", str(docs), "--tree", tree, "--base", "tiny", "--json")
    assert made.exit_code == 0, made.output
    report = json.loads(made.stdout)
    assert report["history"]["tokens"] > 30_000
    needle = next(f for f in report["files"] if f["path"].endswith("doc003.txt"))
    assert needle["stop"] < report["history"]["tokens"] - 20_000  # far behind the recent text
    asked = _run("ask", "What is the pass key?", "--tree", tree, "--json")
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout)
    assert "71234" in answer["answer"]
    top = answer["citations"][0]
    assert top["source"].endswith("doc003.txt")
    assert top["lines"][0] <= line <= top["lines"][1]
    assert "What is the pass key" not in top["text"]
    assert set(answer["seconds"]) == {"load", "focus", "decode", "total"}
    assert 1 <= answer["focus_steps"] <= 8
    # Asking does not grow the history.
    listed = json.loads(_run("sources", "list", "--tree", tree, "--json").stdout)
    assert listed["history_tokens"] == report["history"]["tokens"]
    assert listed["unattributed_tokens"] == 0


# ----------------------------------------------------------------------------- ingest


def test_ingest_reruns_detects_encodings_and_reads_symlinks_once(
    tiny: list[str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "alpha.txt").write_text(ALPHA, encoding="utf-8")
    latin = "Les élèves étudient à l'école. Ça coûte très cher, garçon!\n" * 30
    (docs / "latin.txt").write_bytes(latin.encode("latin-1"))
    (docs / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (docs / "link.txt").symlink_to(docs / "alpha.txt")
    tree = ["--tree", str(tmp_path / "mc")]
    first = _run("ingest", str(docs), *tree, *tiny, "--w-max", "64", "--json")
    assert first.exit_code == 0, first.output
    files = {Path(f["path"]).name: f for f in json.loads(first.stdout)["files"]}
    assert files["alpha.txt"]["status"] == "ingested"
    assert files["latin.txt"]["status"] == "ingested" and files["latin.txt"]["detected"]
    assert files["blob.bin"]["status"] == "skipped" and "binary" in files["blob.bin"]["reason"]
    assert files["link.txt"]["status"] == "skipped" and "same file" in files["link.txt"]["reason"]
    tokens = json.loads(first.stdout)["history"]["tokens"]
    # The Latin-1 text reads back as written.
    listed = json.loads(_run("sources", "list", *tree, "--json").stdout)
    assert [Path(s["source"]).name for s in listed["sources"]] == ["alpha.txt", "latin.txt"]
    # Re-running adds nothing; --force adds again.
    again = _run("ingest", str(docs), *tree, "--json")
    report = json.loads(again.stdout)
    assert report["history"]["tokens"] == tokens and report["tokens"] == 0
    assert all(f["status"] == "skipped" for f in report["files"])
    forced = _run("ingest", str(docs / "alpha.txt"), *tree, "--force", "--json")
    assert json.loads(forced.stdout)["tokens"] > 0
    # A wrong --encoding is an error that names the file; an unknown one names the flag.
    assert "not ascii text" in _error(
        _run("ingest", str(docs / "latin.txt"), *tree, "--encoding", "ascii")
    )
    assert "unknown text encoding" in _error(
        _run("ingest", str(docs), *tree, "--encoding", "klingon")
    )


def test_ingest_refuses_a_directory_of_other_files(tiny: list[str], tmp_path: Path) -> None:
    other = tmp_path / "project"
    other.mkdir()
    (other / "main.py").write_text("print('mine')\n")
    (tmp_path / "a.txt").write_text(ALPHA)
    message = _error(_run("ingest", str(tmp_path / "a.txt"), "--tree", str(other), *tiny))
    assert "not a MegaContext session" in message and "--tree" in message
    assert sorted(p.name for p in other.iterdir()) == ["main.py"]


# ----------------------------------------------------------------------------- errors


def test_commands_refuse_a_tree_that_is_not_a_session(tmp_path: Path) -> None:
    typo = str(tmp_path / "tpyo")
    for args in (["ask", "Q?"], ["generate", "x"], ["chat"], ["sources", "list"]):
        message = _error(_run(*args, "--tree", typo))
        assert "holds no MegaContext session" in message and "megacontext ingest" in message
    assert not Path(typo).exists()


def test_flags_are_named_in_errors(tiny: list[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ALPHA)
    tree = ["--tree", str(tmp_path / "mc")]
    assert _run("ingest", str(tmp_path / "a.txt"), *tree, *tiny, "--w-max", "64").exit_code == 0
    for value in ("0", "-5"):
        assert "--w-max must be >= 1" in _error(_run("ask", "Q?", *tree, "--w-max", value))
    huge = _error(_run("ask", "Q?", *tree, "--w-max", "1000000000"))
    assert "--w-max 1,000,000,000" in huge and "positions" in huge and "or less" in huge
    assert "--max-new-tokens" in _error(_run("ask", "Q?", *tree, "--max-new-tokens", "-1"))
    assert "--focus-steps" in _error(_run("ask", "Q?", *tree, "--focus-steps", "-1"))
    assert "--max-new-tokens" in _error(_run("generate", "x", *tree, "--max-new-tokens", "-1"))


def test_a_writer_lock_is_explained_in_cli_terms(tiny: list[str], tmp_path: Path) -> None:
    from megacontext.runtime import open_session

    (tmp_path / "a.txt").write_text(ALPHA)
    tree = ["--tree", str(tmp_path / "mc")]
    assert _run("ingest", str(tmp_path / "a.txt"), *tree, *tiny, "--w-max", "64").exit_code == 0
    with open_session(tmp_path / "mc"):
        message = _error(_run("generate", "x", *tree, "--max-new-tokens", "1"))
        assert "another megacontext command is writing" in message
        assert "readonly=True" not in message
        # A question without --remember reads beside the writer.
        assert _run("ask", "Which line?", *tree, "--max-new-tokens", "2").exit_code == 0


def test_trace_show_refuses_json_that_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\n')
    message = _error(_run("trace", "show", str(path)))
    assert "x.jsonl:1 is not a focus trace step" in message


# ----------------------------------------------------------------------------- chat, generate


def test_chat_remembers_turns_and_generate_prints_json(tiny: list[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ALPHA)
    tree = ["--tree", str(tmp_path / "mc")]
    assert _run("ingest", str(tmp_path / "a.txt"), *tree, *tiny, "--w-max", "64").exit_code == 0
    chatted = runner.invoke(
        app, ["chat", *tree, "--max-new-tokens", "3"], input="Which line?\nAnd then?\n\n"
    )
    assert chatted.exit_code == 0, chatted.output
    assert "2 turn(s) remembered" in chatted.output
    kinds = [
        s["kind"] for s in json.loads(_run("sources", "list", *tree, "--json").stdout)["sources"]
    ]
    assert kinds == ["text", "conversation", "conversation"]
    made = _run("generate", "Once", *tree, "--max-new-tokens", "4", "--json")
    assert made.exit_code == 0, made.output
    document = json.loads(made.stdout)
    assert document["tokens"] >= 1 and isinstance(document["text"], str)
    if document["trace"] is not None:
        shown = _run("trace", "show", document["trace"])
        assert shown.exit_code == 0 and "focus timeline" in shown.output
        assert max(len(line) for line in shown.output.splitlines()) <= 80


# ----------------------------------------------------------------------------- sources


def test_sources_remove_erases_a_file_and_keeps_the_rest(tiny: list[str], tmp_path: Path) -> None:
    from megacontext.runtime import open_session

    beta = "".join(f"beta row {i}: prices rose by {i * 7} percent\n" for i in range(1, 41))
    gamma = "".join(f"gamma entry {i}: the river runs north\n" for i in range(1, 41))
    tree = ["--tree", str(tmp_path / "mc")]
    for name, text in (("alpha.txt", ALPHA), ("beta.txt", beta), ("gamma.txt", gamma)):
        (tmp_path / name).write_text(text)
    made = _run("ingest", *(str(tmp_path / n) for n in ("alpha.txt", "beta.txt", "gamma.txt")),
                *tree, *tiny, "--w-max", "64")  # fmt: skip
    assert made.exit_code == 0, made.output
    shown = json.loads(_run("sources", "show", "beta.txt", *tree, "--json").stdout)
    assert shown["appends"][0]["lines"] == [1, 40]
    assert "no source 'delta.txt'" in _error(_run("sources", "remove", "delta.txt", *tree, "--yes"))
    removed = _run("sources", "remove", str(tmp_path / "beta.txt"), *tree, "--yes", "--json")
    assert removed.exit_code == 0, removed.output
    with open_session(tmp_path / "mc", readonly=True) as mc:
        text = mc.base.decode(mc.tree.tokens(0, mc.tree.num_tokens).tolist())
        assert text == ALPHA + gamma  # beta is gone, the rest reads back whole
        journal = mc.metadata.ingests_of(mc.tree_id)
        live = [i for i in journal if i.status == "complete"]
        assert [Path(i.source.meta["path"]).name for i in live] == ["alpha.txt", "gamma.txt"]
        assert live[1].start == live[0].stop and live[1].stop == mc.tree.num_tokens
        # Provenance moved with the tokens: gamma's line 1 is where gamma now starts.
        rows = mc.metadata.provenance(mc.tree_id, live[1].start, live[1].start + 1)
        assert rows[0].line_range is not None and rows[0].line_range[0] == 1
        assert mc.lexical.num_blocks == mc.tree.blocks
        found = mc.lexical.block_scores("beta prices")
        assert not found  # no lexical row of beta is left
    listed = json.loads(_run("sources", "list", *tree, "--all", "--json").stdout)
    assert [s["status"] for s in listed["sources"]] == ["complete", "removed", "complete"]


# ----------------------------------------------------------------------------- two processes


def test_two_asks_at_once_both_answer(tiny: list[str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ALPHA)
    tree = ["--tree", str(tmp_path / "mc")]
    assert _run("ingest", str(tmp_path / "a.txt"), *tree, *tiny, "--w-max", "64").exit_code == 0
    command = [sys.executable, "-m", "megacontext.cli", "ask", "Which line?", *tree, "--json"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    for process in running:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()
        assert "answer" in json.loads(out)
