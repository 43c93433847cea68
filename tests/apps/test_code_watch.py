"""`megacontext code watch`: real file-system events (watchdog) keep a session current through
editors' save patterns, deletions and renames; a vanishing repository is a clear error."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from megacontext.apps.code import RepoIngest, RepoWatcher, code_sources
from megacontext.errors import InvalidInputError
from megacontext.runtime import SessionConfig, open_session

CONFIG = SessionConfig(W_max=64, protected_recent=8, trace=False)
WAIT_S = 20.0  # longest wait for one update (events are usually seen within a second)


def live(session) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The live files and their versions."""
    return {s.path: s.version for s in code_sources(session) if s.live}


def run_watcher(
    watcher: RepoWatcher, reports: list[RepoIngest], steps: list[Callable[[], None]]
) -> None:
    """Run ``watcher`` in this thread while another thread performs ``steps``, each after the
    update the previous one caused has been seen (the first after the initial sync)."""
    seen = threading.Semaphore(0)
    watcher.on_update = lambda report: (reports.append(report), seen.release())
    done = threading.Event()
    failure: list[BaseException] = []

    def edit() -> None:
        try:
            for step in steps:
                assert seen.acquire(timeout=WAIT_S), "no update was seen"
                step()
            assert seen.acquire(timeout=WAIT_S), "no update was seen"
        except BaseException as exc:  # noqa: BLE001  (reported in the test's thread)
            failure.append(exc)
        finally:
            done.set()

    editor = threading.Thread(target=edit)
    editor.start()
    deadline = time.monotonic() + WAIT_S * (len(steps) + 2)
    watcher.run(stop=lambda: done.is_set() or time.monotonic() > deadline)
    editor.join()
    if failure:
        raise failure[0]


def test_saves_deletions_and_renames_become_versions(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "calc"
    (repo / "calc").mkdir(parents=True)
    (repo / "calc" / "ops.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "calc" / "util.py").write_text("PI = 3.14\n")
    (repo / "README.md").write_text("# calc\n")

    def atomic_save() -> None:
        # The editor pattern: write a temporary file beside the original, rename it over it.
        temporary = repo / "calc" / ".ops.py.swp"
        temporary.write_text("def add(a, b):\n    return a + b + 0\n")
        os.replace(temporary, repo / "calc" / "ops.py")

    def burst() -> None:
        for n in range(5):  # several writes in quick succession: one update, the last content
            (repo / "calc" / "util.py").write_text(f"PI = 3.14{n}\n")
            time.sleep(0.02)

    def delete_and_rename() -> None:
        (repo / "README.md").unlink()
        os.rename(repo / "calc" / "util.py", repo / "calc" / "constants.py")

    reports: list[RepoIngest] = []
    with open_session(tmp_path / "mc", tiny_world.base, tiny_world.bundle, CONFIG) as mc:
        watcher = RepoWatcher(mc, repo, debounce_s=0.3)
        run_watcher(watcher, reports, [atomic_save, burst, delete_and_rename])
        assert [sorted(r.added) for r in reports] == [
            ["README.md", "calc/ops.py", "calc/util.py"],
            [],
            [],
            ["calc/constants.py"],
        ]
        assert [r.changed for r in reports[1:3]] == [["calc/ops.py"], ["calc/util.py"]]
        assert reports[3].removed == ["README.md", "calc/util.py"]
        assert live(mc) == {"calc/ops.py": 2, "calc/constants.py": 1}
        util = [s for s in code_sources(mc) if s.path == "calc/util.py"]
        assert [(s.version, s.superseded, s.deleted) for s in util] == [
            (1, True, False),
            (2, True, False),
            (3, False, True),
        ]
        # The burst ended in one version holding the last write; the swap file never got in.
        texts = [s.meta for s in mc.metadata.list_sources() if s.meta["path"] == "calc/util.py"]
        assert len(texts) == 3
        assert not any(".swp" in s.meta["path"] for s in mc.metadata.list_sources())
        newest = mc.tree.tokens(0, mc.tree.num_tokens).tolist()
        assert "PI = 3.144" in mc.base.decode(newest)


def test_a_vanishing_repository_stops_the_watch_with_a_clear_error(
    tiny_world, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "gone"
    repo.mkdir()
    (repo / "main.py").write_text("print('hello')\n")
    with open_session(tmp_path / "mc", tiny_world.base, tiny_world.bundle, CONFIG) as mc:
        watcher = RepoWatcher(mc, repo, debounce_s=0.1)
        removed = threading.Timer(0.5, shutil.rmtree, args=(repo,))
        removed.start()
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(InvalidInputError, match="vanished while it was watched"):
            watcher.run(stop=lambda: time.monotonic() > deadline)
        removed.join()
        assert live(mc) == {"main.py": 1}  # what was ingested stays
    with pytest.raises(InvalidInputError, match="debounce"):
        RepoWatcher(None, tmp_path, debounce_s=-1)


def test_the_watch_command_refuses_bad_input_before_loading_a_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from megacontext.cli import app

    runner = CliRunner()
    tree = ["--tree", str(tmp_path / "mc")]
    for args, message in [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path), "--debounce", "-1"], "--debounce must be >= 0 seconds"),
        ([str(tmp_path), "--max-file-bytes", "0"], "--max-file-bytes must be >= 1"),
    ]:
        result = runner.invoke(app, ["code", "watch", *args, *tree])
        assert isinstance(result.exception, InvalidInputError), result.output
        assert message in str(result.exception)
    assert not (tmp_path / "mc").exists()  # nothing was created
