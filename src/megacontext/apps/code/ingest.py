"""A repository into a session's history: one source per file version, re-runs incremental.

Each file goes in whole, as one source (its blocks contiguous in the history), in the sorted
order :func:`~megacontext.apps.code.repo.scan_repo` gives, under the URI
``repo://NAME/PATH``; its metadata names the repository, the path, the sha256 of its bytes, its
line count and its version. The session records the bytes and lines of every span, so a
citation reads ``PATH:LINE-LINE``.

Run again over the same repository, only what changed is appended: a file whose bytes are those
of its latest version is skipped; a changed file is appended as a new version whose metadata
``supersedes`` the previous one (the earlier version stays in the history — nothing already
stored is lost — but it is marked superseded, see :func:`code_sources`); a file gone from the
repository gets a **deletion record**: a one-line version (``PATH was deleted from NAME``) with
``deleted`` in its metadata that supersedes its last version — the history remembers that the
file went away, and its text stays until ``megacontext sources remove`` erases it. A rename is a
deletion and a new file. A file that is still there but skipped now (newly ignored, grown too
large) is not recorded as deleted: its last version stays as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from megacontext.apps.code.repo import RepoScan
from megacontext.errors import InvalidInputError

KIND = "code"  # the ``kind`` in a file version's metadata


def file_header(path: str) -> str:
    """The line put before a file's text in the history, so that the base reads which file it
    is in (where is X defined, which module holds Y); provenance keeps the file's own line
    numbers (it is line 0)."""
    return f"# File: {path}\n"


def file_uri(repo: str, path: str) -> str:
    """The source URI of ``path`` in repository ``repo``."""
    return f"repo://{quote(repo, safe='')}/{quote(path)}"


@dataclass(frozen=True)
class CodeSource:
    """One version of a file in a session's history."""

    id: int
    repo: str
    path: str
    version: int
    sha256: str
    superseded: bool
    deleted: bool  # a deletion record: the file was gone at this version

    @property
    def live(self) -> bool:
        """The file's current text: neither superseded nor a deletion record."""
        return not self.superseded and not self.deleted


def code_sources(session: Any, repo: str | None = None) -> list[CodeSource]:
    """Every file version ingested from ``repo`` (every repository when ``None``), oldest
    first, with whether a later version supersedes it."""
    found = [
        s
        for s in _metadata(session).list_sources()
        if s.meta.get("kind") == KIND and (repo is None or s.meta.get("repo") == repo)
    ]
    replaced = {int(s.meta["supersedes"]) for s in found if s.meta.get("supersedes") is not None}
    return [
        CodeSource(
            s.id,
            str(s.meta["repo"]),
            str(s.meta["path"]),
            int(s.meta.get("version", 1)),
            str(s.meta.get("sha256", "")),
            s.id in replaced,
            bool(s.meta.get("deleted", False)),
        )
        for s in found
    ]


@dataclass
class RepoIngest:
    """What one ``code ingest`` run did, path by path."""

    repo: str
    root: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # gone: a deletion record was appended
    skipped: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "root": self.root,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": self.skipped,
            "tokens": self.tokens,
            "seconds": self.seconds,
        }


def ingest_repo(
    session: Any,
    scan: RepoScan,
    name: str | None = None,
    on_file: Callable[[int, int, str], None] | None = None,
    *,
    require_files: bool = True,
) -> RepoIngest:
    """Append the files of ``scan`` that are new or changed since the last run to ``session``.

    ``name`` names the repository in URIs and metadata (default: its directory's name);
    ``on_file(number, total, path)`` is called before each file is read. Without
    ``require_files`` a repository with nothing left to read is accepted (the watcher: every
    file was deleted).

    Raises:
        InvalidInputError: the session keeps no provenance (in memory), or the repository has
            no text file to read (with ``require_files``).
    """
    _metadata(session)
    repo = name or scan.root.name
    if not repo:
        raise InvalidInputError("the repository needs a name; give one with --name")
    if require_files:
        scan.check_readable()
    latest = {s.path: s for s in code_sources(session, repo)}  # oldest first: the last wins
    report = RepoIngest(repo, str(scan.root), skipped=dict(scan.skipped))
    started = time.perf_counter()

    def append(path: str, text: str, prior: CodeSource | None, header: bool, **meta: Any) -> None:
        meta.update(path=path, repo=repo, kind=KIND)
        meta["version"] = 1 if prior is None else prior.version + 1
        if prior is not None:
            meta["supersedes"] = prior.id
        # Identical bytes at two paths (empty __init__.py files, copied configs) are two files:
        # the history's content de-duplication must not drop the second.
        done = session.ingest(
            file_header(path) + text if header else text,
            source=file_uri(repo, path),
            metadata=meta,
            force=True,
            first_line=0 if header else 1,
        )
        report.tokens += done.tokens

    for number, file in enumerate(scan.files, 1):
        if on_file is not None:
            on_file(number, len(scan.files), file.path)
        prior = latest.get(file.path)
        if prior is not None and not prior.deleted and prior.sha256 == file.sha256:
            report.unchanged.append(file.path)
            continue
        append(
            file.path,
            file.text,
            prior,
            True,
            sha256=file.sha256,
            encoding=file.encoding,
            lines=file.lines,
        )
        new = prior is None or prior.deleted
        (report.added if new else report.changed).append(file.path)
    # A file still there but skipped now (newly ignored, grown too large) was not deleted: its
    # last version stays as it is.
    present = {f.path for f in scan.files} | set(scan.skipped)
    for path, prior in sorted(latest.items()):
        if path not in present and not prior.deleted:
            append(path, f"{path} was deleted from {repo}\n", prior, False, deleted=True, lines=1)
            report.removed.append(path)
    report.seconds = time.perf_counter() - started
    return report


def _metadata(session: Any) -> Any:
    if getattr(session, "metadata", None) is None:
        raise InvalidInputError(
            "an in-memory session keeps no provenance, and a coding assistant cites files: "
            "open a session on disk (megacontext.open(PATH, ...))"
        )
    return session.metadata


__all__ = [
    "KIND",
    "CodeSource",
    "RepoIngest",
    "code_sources",
    "file_header",
    "file_uri",
    "ingest_repo",
]
