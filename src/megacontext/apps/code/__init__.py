"""The coding assistant: a repository's files in a session, with per-file provenance."""

from megacontext.apps.code.ask import CodeAnswer, CodeCitation, ask_code
from megacontext.apps.code.ingest import CodeSource, RepoIngest, code_sources, ingest_repo
from megacontext.apps.code.repo import RepoFile, RepoScan, scan_repo
from megacontext.apps.code.watch import RepoWatcher

__all__ = [
    "CodeAnswer",
    "CodeCitation",
    "CodeSource",
    "RepoFile",
    "RepoIngest",
    "RepoScan",
    "RepoWatcher",
    "ask_code",
    "code_sources",
    "ingest_repo",
    "scan_repo",
]
