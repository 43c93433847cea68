"""Sharding and replication of sealed segments over fsspec roots.

Every sealed segment is copied to ``R`` of the configured roots (any fsspec URL: ``file://``,
``memory://``; ``s3://`` / ``gs://`` once s3fs / gcsfs are installed). Placement is rendezvous
(highest-random-weight) hashing of ``tree_id/segment`` against each root, so it is deterministic,
spreads segments evenly, and adding a root moves only the segments whose top-``R`` set now
includes it (about ``R / roots`` of them). A segment is sealed when at least ``write_quorum``
copies were written; reads check sha256 and fall back to the next copy.

A copy lives at ``{root}/{tree_id}/L{level}/{seq:08d}.seg`` — the same bytes as the local file.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

from megacontext.store.errors import InvalidInputError, ReplicaError, StorageCorruptionError
from megacontext.store.manifest import Replication


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
            fs, path = fsspec.core.url_to_fs(root)
            self._fs[root] = (fs, path.rstrip("/"))
        return self._fs[root]

    def _path(self, root: str, name: str) -> tuple[Any, str]:
        fs, base = self._resolve(root)
        return fs, f"{base}/{self.tree_id}/{name}"

    def write(self, root: str, name: str, data: bytes) -> None:
        """Write one copy: to a temp name, then move into place (no half-written copy is seen)."""
        fs, path = self._path(root, name)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = path + ".tmp"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)

    def read(self, root: str, name: str) -> bytes | None:
        """One copy's bytes, or ``None`` when it is missing or unreadable."""
        fs, path = self._path(root, name)
        try:
            return bytes(fs.cat_file(path))
        except OSError:
            return None

    def put(self, name: str, data: bytes) -> list[str]:
        """Write ``data`` to the placement of ``name``; return the roots that took it.

        Raises :class:`ReplicaError` when fewer than ``write_quorum`` copies were written.
        """
        written, errors = [], []
        for root in self.placement(name):
            try:
                self.write(root, name, data)
                written.append(root)
            except OSError as exc:
                errors.append(f"{root}: {exc}")
        if len(written) < self.config.write_quorum:
            raise ReplicaError(
                f"sealing {name}: only {len(written)} of {self.config.replicas} replicas written, "
                f"write quorum is {self.config.write_quorum} ({'; '.join(errors)}); fix the roots "
                "and append again (the segment is sealed on the next write)"
            )
        return written

    def fetch(self, name: str, sha256: str, size: int) -> tuple[bytes, list[str]]:
        """The first copy (in placement order) whose sha256 matches, and the roots found bad."""
        bad: list[str] = []
        for root in self.placement(name):
            data = self.read(root, name)
            if (
                data is not None
                and len(data) == size
                and hashlib.sha256(data).hexdigest() == sha256
            ):
                return data, bad
            bad.append(root)
        raise StorageCorruptionError(
            f"segment {name}: no replica with the right sha256 among {self.placement(name)}; "
            "run `megacontext store verify` to see every copy's state"
        )

    def check(self, name: str, sha256: str) -> dict[str, str]:
        """State of each placed copy: ``ok``, ``missing`` or ``corrupt``."""
        states = {}
        for root in self.placement(name):
            data = self.read(root, name)
            if data is None:
                states[root] = "missing"
            elif hashlib.sha256(data).hexdigest() != sha256:
                states[root] = "corrupt"
            else:
                states[root] = "ok"
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
            except OSError:
                continue
            for path in found:
                name = path[len(prefix) :] if path.startswith(prefix) else path.split(prefix, 1)[-1]
                if (root, name) not in wanted:
                    fs.rm_file(path)
                    removed.append(f"{root}/{self.tree_id}/{name}")
        return removed
