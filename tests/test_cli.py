"""The megacontext command line: commands run, errors are one line with exit 2, docs list them."""

from __future__ import annotations

import argparse as _argparse_module_for_its_source
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from megacontext import __version__
from megacontext.cli import app
from megacontext.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_commands_and_every_command_is_documented() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    names.discard(None)
    documented = set(
        re.findall(r"^## `megacontext ([a-z-]+)", (ROOT / "docs/cli.md").read_text(), re.M)
    )
    for name in names:
        assert name in result.stdout
        assert name in documented, f"docs/cli.md lacks a section for `megacontext {name}`"


def test_bench_unknown_suite_is_a_clear_error() -> None:
    result = runner.invoke(app, ["bench", "nope"])
    assert result.exit_code != 0
    assert "unknown suite" in result.output


def test_bench_core_quick_writes_the_result_contract(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, "-m", "megacontext.cli", "bench", "core", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["suite"] == "core" and doc["machine"] and doc["date"] and doc["command"]
    names = {r["name"] for r in doc["results"]}
    for expected in (
        "allocator_step_s_W512",
        "allocator_step_s_W8192",
        "allocator_step_s_W32768",
        "tree_append_tokens_per_s",
        "tree_memory_overhead_ratio",
    ):
        assert expected in names
    for row in doc["results"]:
        assert row["value"] > 0
        if "baseline" in row:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]["value"])


def test_demo_tree_on_a_text_file_reaches_its_target() -> None:
    source = Path(_argparse_module_for_its_source.__file__)
    result = runner.invoke(
        app,
        ["demo-tree", "--text", str(source), "--query", "class HelpFormatter", "--w-max", "512"],
    )
    assert result.exit_code == 0, result.output
    assert "class HelpFormatter" in result.output
    assert re.search(r";\s+reached\s+the\s+target\s+in\s+\d+\s+refocus\s+steps", result.output)


def test_demo_tree_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 4000)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megacontext.cli",
            "demo-tree",
            "--text",
            str(text),
            "--query",
            "zebra",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not occur in the text" in proc.stderr


def test_dashboards_write_is_the_committed_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dashboards", "write", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shipped = ROOT / "src/megacontext/server/dashboards"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["focus.json", "overview.json", "service.json", "storage.json"]
    for name in written:
        assert (tmp_path / name).read_text() == (shipped / name).read_text()


def test_dashboards_render_names_a_bad_prometheus(tmp_path: Path) -> None:
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    class NotPrometheus(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>a web page</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cases = {
            f"http://127.0.0.1:{closed}": "cannot reach Prometheus",
            f"http://127.0.0.1:{server.server_port}": "is not a Prometheus",
        }
        for url, message in cases.items():
            args = ["dashboards", "render", "--prometheus", url, "--out", str(tmp_path / "png")]
            proc = subprocess.run(
                [sys.executable, "-m", "megacontext.cli", *args],
                capture_output=True,
                text=True,
            )
            said = " ".join(proc.stderr.split())  # the console wraps long lines
            assert proc.returncode == 2, proc.stderr
            assert message in said and "--prometheus" in said
            assert "Traceback" not in said
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "command",
    [
        ["ask", "Why?"],
        ["chat"],
        ["knowledge", "ask", "Why?"],
        ["code", "ask", "Why?"],
        ["code", "agent", "Why?"],
    ],
)
def test_max_new_tokens_below_one_is_refused_before_anything_opens(
    command: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-tree"
    result = CliRunner().invoke(app, [*command, "--tree", str(missing), "--max-new-tokens", "0"])
    assert isinstance(result.exception, InvalidInputError), result.output
    assert str(result.exception) == "--max-new-tokens must be >= 1, got 0"
    assert not missing.exists()
