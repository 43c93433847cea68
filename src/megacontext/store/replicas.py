"""Sharding and replication of sealed segments over fsspec roots.

Every sealed segment is copied to ``R`` of the configured roots (any fsspec URL: ``file://`` or a
plain path, ``memory://``, ``s3://``; ``gs://`` once gcsfs is installed). Placement is rendezvous
(highest-random-weight) hashing of ``tree_id/segment`` against each root, so it is deterministic,
spreads segments evenly, and adding a root moves only the segments whose top-``R`` set now
includes it (about ``R / roots`` of them). A segment is sealed when at least ``write_quorum``
copies were written; reads check sha256 and fall back to the next copy.

A copy lives at ``{root}/{tree_id}/L{level}/{seq:08d}.seg`` — the same bytes as the local file.

Why each kind of root is written the way it is (:meth:`ReplicaSet.write`):

- A local filesystem root gets what the store's own files get: temp file, fsync, rename, fsync of
  the directory (and of each directory created for it). The manifest records a copy as written
  once ``write`` returns, and with ``keep_local=False`` the local file is deleted right after the
  seal, so an unsynced copy would be the only one and a power loss could leave it empty or torn.
- An object store (``s3://``, ``gs://``, ``az://``) gets one PUT to the final key. A PUT is atomic
  (a reader sees the whole object or none of it) and durable once acknowledged, so a temp key
  adds nothing; a "move" there is a server-side copy plus a delete, twice the requests, and a
  failure between them leaves a stray temp object behind.
- Other filesystems (``memory://``) keep temp-then-move: no half-written copy is ever visible,
  and there is nothing to fsync.

No credentials or endpoints are stored: the manifest holds root URLs only, and s3fs (through
botocore) takes the rest from the environment — ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` (or any other source in botocore's credential chain), and for an
S3-compatible server other than AWS, ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``, or fsspec's
``FSSPEC_S3_ENDPOINT_URL``, read when fsspec is imported). See docs/storage.md, "Object-store
tiers".
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from megacontext.store.errors import (
    InvalidInputError,
    ReplicaError,
    StorageCorruptionError,
    StoreError,
)
from megacontext.store.manifest import Replication
from megacontext.store.segment import atomic_write, fsync_dir, os_error

# Protocols whose writes are single atomic PUTs (see the module docstring).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
S3_SETTINGS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (and AWS_ENDPOINT_URL_S3 "
    "for an S3-compatible server other than AWS); the manifest holds no credentials"
)


class ReplicaSet:
    """The replica roots of one tree, with deterministic placement."""

    def __init__(self, config: Replication, tree_id: str):
        self.check_config(config)
        self.config = config
        self.tree_id = tree_id
        self.roots = [r.rstrip("/") for r in config.roots]
        self._fs: dict[str, tuple[Any, str]] = {}

    @staticmethod
    def check_config(config: Replication) -> None:
        """Raise :class:`InvalidInputError` for an impossible replication setting."""
        roots = [r.rstrip("/") for r in config.roots]
        if not roots:
            raise InvalidInputError("replication needs at least one root URL")
        if len(set(roots)) != len(roots):
            raise InvalidInputError(f"replication roots must be distinct, got {config.roots}")
        for root in roots:
            protocol = _protocol(root)
            if protocol not in fsspec.available_protocols():
                raise InvalidInputError(
                    f"replica root {root}: fsspec knows no {protocol!r} filesystem; use a "
                    "file://, s3:// or other fsspec URL"
                )
        if not 1 <= config.replicas <= len(roots):
            raise InvalidInputError(
                f"replicas must be between 1 and the number of roots ({len(roots)}), got "
                f"{config.replicas}"
            )
        if not 1 <= config.write_quorum <= config.replicas:
            raise InvalidInputError(
                f"write_quorum must be between 1 and replicas ({config.replicas}), got "
                f"{config.write_quorum}"
            )

    def placement(self, name: str) -> list[str]:
        """The ``R`` roots that hold segment ``name``, best first (rendezvous hashing)."""

        def weight(root: str) -> bytes:
            return hashlib.sha256(f"{self.tree_id}/{name}@{root}".encode()).digest()

        return sorted(self.roots, key=weight, reverse=True)[: self.config.replicas]

    def url(self, root: str, name: str) -> str:
        return f"{root}/{self.tree_id}/{name}"

    def _resolve(self, root: str) -> tuple[Any, str]:
        if root not in self._fs:
            try:
                fs, path = fsspec.core.url_to_fs(root)
            except ImportError as exc:  # e.g. gs:// without gcsfs
                raise InvalidInputError(
                    f"replica root {root} needs a package that is not installed: {exc}"
                ) from None
            self._fs[root] = (fs, path.rstrip("/"))
        return self._fs[root]

    def _path(self, root: str, name: str) -> tuple[Any, str]:
        fs, base = self._resolve(root)
        return fs, f"{base}/{self.tree_id}/{name}"

    def write(self, root: str, name: str, data: bytes) -> None:
        """Write one copy so that it is whole and durable when this returns (how depends on the
        kind of root: see the module docstring).

        Raises :class:`~megacontext.store.errors.StoreError` (:class:`ReplicaError` for an error
        of the root's backend) naming the copy.
        """
        fs, path = self._path(root, name)
        try:
            if isinstance(fs, LocalFileSystem):
                _write_local(Path(path), data)
            elif OBJECT_STORES.intersection(_protocols(fs)):
                fs.pipe_file(path, data)  # one PUT to the final key: atomic, durable when done
            else:
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                tmp = path + ".tmp"
                fs.pipe_file(tmp, data)
                fs.mv(tmp, path)
        except _backend_errors() as exc:
            raise ReplicaError(f"writing {self.url(root, name)}: {_describe(root, exc)}") from exc

    def read(self, root: str, name: str) -> bytes | None:
        """One copy's bytes, or ``None`` when it is missing or unreadable."""
        return self._load(root, name)[0]

    def _load(self, root: str, name: str) -> tuple[bytes | None, str]:
        """One copy's bytes (and ``"ok"``), or ``None`` and ``"missing"`` / ``"unreadable
        (why)"``."""
        fs, path = self._path(root, name)
        try:
            return bytes(fs.cat_file(path)), "ok"
        except (FileNotFoundError, NotADirectoryError):  # no such path: there is no copy
            return None, "missing"
        except _backend_errors() as exc:
            return None, f"unreadable ({_describe(root, exc)})"

    def put(self, name: str, data: bytes) -> list[str]:
        """Write ``data`` to the placement of ``name``; return the roots that took it.

        Raises :class:`ReplicaError` when fewer than ``write_quorum`` copies were written.
        """
        written, errors = [], []
        for root in self.placement(name):
            try:
                self.write(root, name, data)
                written.append(root)
            except StoreError as exc:
                errors.append(str(exc))
        if len(written) < self.config.write_quorum:
            raise ReplicaError(
                f"sealing {name}: only {len(written)} of {self.config.replicas} replicas written, "
                f"write quorum is {self.config.write_quorum} ({'; '.join(errors)}); fix the roots "
                "and append again (the segment is sealed on the next write)"
            )
        return written

    def fetch(self, name: str, sha256: str, size: int) -> tuple[bytes, list[str]]:
        """The first copy (in placement order) whose sha256 matches, and the roots passed over
        whose copy is missing or corrupt (to repair). A root that could not be read at all (down,
        no credentials) is skipped and not reported: there is nothing to repair it with.

        Raises :class:`ReplicaError` when no good copy was found and some root could not be
        read (retry once it is back), else :class:`StorageCorruptionError`.
        """
        bad: list[str] = []
        states: list[str] = []
        for root in self.placement(name):
            data, state = self._load(root, name)
            if data is not None and _matches(data, sha256, size):
                return data, bad
            if data is not None:
                state = "corrupt"
            if state in ("missing", "corrupt"):
                bad.append(root)
            states.append(f"{self.url(root, name)}: {state}")
        detail = "; ".join(states)
        if len(bad) < len(states):
            raise ReplicaError(
                f"segment {name}: no good copy could be read ({detail}); make the roots "
                "reachable and read again"
            )
        raise StorageCorruptionError(
            f"segment {name}: no replica with the right sha256 ({detail}); run "
            "`megacontext store verify` to see every copy's state"
        )

    def check(self, name: str, sha256: str) -> dict[str, str]:
        """State of each placed copy: ``ok``, ``missing``, ``corrupt`` or ``unreadable (why)``."""
        states = {}
        for root in self.placement(name):
            data, state = self._load(root, name)
            if data is not None and hashlib.sha256(data).hexdigest() != sha256:
                state = "corrupt"
            states[root] = state
        return states

    def remove_strays(self, names: list[str]) -> list[str]:
        """Delete copies that are not in their segment's placement (or of unknown segments)."""
        wanted = {(root, name) for name in names for root in self.placement(name)}
        removed = []
        for root in self.roots:
            fs, base = self._resolve(root)
            prefix = f"{base}/{self.tree_id}/"
            try:
                found = fs.find(prefix)
            except _backend_errors():
                continue
            for path in found:
                name = path[len(prefix) :] if path.startswith(prefix) else path.split(prefix, 1)[-1]
                if (root, name) not in wanted:
                    fs.rm_file(path)
                    removed.append(f"{root}/{self.tree_id}/{name}")
        return removed


def _matches(data: bytes, sha256: str, size: int) -> bool:
    return len(data) == size and hashlib.sha256(data).hexdigest() == sha256


def _protocol(root: str) -> str:
    protocol, _ = fsspec.core.split_protocol(root)
    return protocol or "file"


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a backend raises for a failed operation.

    s3fs turns S3's error responses into ``OSError`` but lets botocore's client-side errors
    through (no credentials, endpoint unreachable). botocore is loaded only by an ``s3://`` root,
    and none of its errors can be raised before, so it is never imported here.
    """
    botocore = sys.modules.get("botocore.exceptions")
    return (OSError,) if botocore is None else (OSError, botocore.BotoCoreError)


def _describe(root: str, exc: BaseException) -> str:
    """The error, and for an ``s3://`` root what to set when the cause is configuration."""
    text = f"{type(exc).__name__}: {exc}"
    if _protocol(root) not in ("s3", "s3a"):
        return text
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "NoCredentialsError" in kinds or isinstance(exc, PermissionError):
        return f"{text}; {S3_SETTINGS}"
    if "EndpointConnectionError" in kinds:
        return (
            f"{text}; is the S3 server up? An S3-compatible server is chosen with "
            "AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL)"
        )
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        return f"{text}; create the bucket of {root} first (the store never creates buckets)"
    return text


def _write_local(path: Path, data: bytes) -> None:
    """A durable copy on a local filesystem: new directories, then temp, fsync, rename, fsync."""
    _make_dirs(path.parent)
    atomic_write(path, data)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, fsyncing each parent that gained an entry
    (else a power loss could drop the new directory, and the copy with it)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir(exist_ok=True)
            fsync_dir(new.parent)
        except OSError as exc:
            raise os_error(exc, new, "creating the replica directory") from exc
