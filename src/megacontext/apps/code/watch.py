"""Keep a session current with a repository as it is edited (``megacontext code watch``).

File-system events (watchdog: inotify, FSEvents, ReadDirectoryChangesW, or polling) only say
*that* something changed; what changed is decided by content, the same way a re-run of
``code ingest`` decides it: once the repository has been quiet for ``debounce_s`` seconds the
watcher scans it again and appends what :func:`~megacontext.apps.code.ingest.ingest_repo` finds
new, changed or deleted (a rescan reads only the files whose size, modification time or inode
changed: :class:`~megacontext.apps.code.repo.ReadCache`). So an editor's save patterns — write
a temporary file and rename it over the original, several writes in a burst, delete and
recreate — end in one update with the file's final content, and a file saved unchanged
appends nothing. Events inside ``.git`` are ignored (a commit changes no working file).

The session is only touched from the thread that calls :meth:`RepoWatcher.run`; the observer's
thread only notes the time of the last event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from megacontext.apps.code.ingest import RepoIngest, ingest_repo
from megacontext.apps.code.repo import MAX_FILE_BYTES, ReadCache, repo_root, scan_repo
from megacontext.errors import InvalidInputError

DEBOUNCE_S = 0.5  # quiet seconds after the last event before the repository is scanned
POLL_S = 0.05


class _Changes(FileSystemEventHandler):
    """Notes when the last event outside ``.git`` came (the observer's thread)."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()
        self.last: float | None = None

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if all(_inside_git(self.root, str(p)) for p in paths if p):
            return
        with self.lock:
            self.last = time.monotonic()

    def quiet_since(self, seconds: float) -> bool:
        """Whether there were events, the last of them at least ``seconds`` ago (then the
        record is cleared)."""
        with self.lock:
            if self.last is None or time.monotonic() - self.last < seconds:
                return False
            self.last = None
            return True


def _inside_git(root: Path, path: str) -> bool:
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return False
    return bool(relative.parts) and relative.parts[0] == ".git"


class RepoWatcher:
    """Appends a repository's changes to ``session`` as they happen.

    ``on_update(report)`` is called after each scan that appended something (the first scan,
    which brings the session up to date, always reports).
    """

    def __init__(
        self,
        session: Any,
        repo: str | Path,
        name: str | None = None,
        max_bytes: int = MAX_FILE_BYTES,
        debounce_s: float = DEBOUNCE_S,
        on_update: Callable[[RepoIngest], None] | None = None,
    ):
        if debounce_s < 0:
            raise InvalidInputError(f"the debounce must be >= 0 seconds, got {debounce_s}")
        self.session = session
        self.root = repo_root(repo)
        self.name = name or self.root.name
        self.max_bytes = max_bytes
        self.debounce_s = debounce_s
        self.on_update = on_update
        self.updates = 0
        self.reads = ReadCache()  # what the scans read, so that a rescan reads only changes

    def sync(self) -> RepoIngest:
        """Scan the repository now and append what changed (also a repository emptied of
        code: its files are recorded as deleted).

        Raises:
            InvalidInputError: the repository directory is gone.
        """
        try:
            scan = scan_repo(self.root, self.max_bytes, self.reads)
        except InvalidInputError:
            self._check_present()  # (gone before or during the scan: say so in its words)
            raise
        self._check_present()  # a scan of a directory removed midway would find files deleted
        report = ingest_repo(self.session, scan, self.name, require_files=False)
        if self.on_update is not None and (report.tokens or not self.updates):
            self.on_update(report)
        self.updates += 1
        return report

    def _check_present(self) -> None:
        if not self.root.is_dir():
            raise InvalidInputError(
                f"{self.root} vanished while it was watched; what was ingested stays in the "
                "session (watch it again once it is back)"
            )

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Sync once, then watch until ``stop()`` is true (or Ctrl-C in the caller).

        Raises:
            InvalidInputError: the repository directory vanished while it was watched.
        """
        # Events are watched before the first sync, so that no change made during it is lost.
        changes = _Changes(self.root)
        observer = Observer()
        observer.schedule(changes, str(self.root), recursive=True)
        observer.start()
        try:
            self.sync()
            checked = time.monotonic()
            while not stop():
                time.sleep(POLL_S)
                if changes.quiet_since(self.debounce_s):
                    self.sync()
                    checked = time.monotonic()
                elif time.monotonic() - checked > 1.0:
                    checked = time.monotonic()
                    if not self.root.is_dir():  # gone without an event the observer passed on
                        self.sync()  # raises, naming it
        finally:
            observer.stop()
            observer.join(timeout=5)


__all__ = ["DEBOUNCE_S", "RepoWatcher"]
