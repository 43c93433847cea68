"""A consistent, read-only prefix of a tree that a writer may still be appending to.

A writer stores tokens first, then the gists of the nodes they complete, then their keys. A
reader that looks at the stores in between sees tokens whose gists are not stored yet.
:func:`consistent_tokens` finds the longest prefix of the history whose every complete node has
its gist (and key) stored; :class:`SnapshotBackend` shows a backend cut to that prefix, and
refuses writes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import span_tokens
from megacontext.core.tree import TreeBackend
from megacontext.errors import InvalidInputError


def consistent_tokens(
    backend: TreeBackend, K: int, key_backend: TreeBackend | None = None, limit: int | None = None
) -> int:
    """The most tokens ``n`` (at most ``limit``) such that every node complete within the first
    ``n`` tokens has its gist — and key, with a ``key_backend`` — stored."""
    n = backend.count(0) if limit is None else min(limit, backend.count(0))
    level = 1
    while span_tokens(level, K) <= n:
        stored = backend.count(level)
        if key_backend is not None:
            stored = min(stored, key_backend.count(level))
        # Node stored+1 is not: the prefix must end before it completes.
        n = min(n, (stored + 1) * span_tokens(level, K) - 1)
        level += 1
    return n


class SnapshotBackend:
    """``backend`` as it was at one consistent prefix of ``num_tokens`` tokens, read-only."""

    def __init__(self, backend: TreeBackend, K: int, num_tokens: int, what: str = "tree"):
        self.backend = backend
        self.K = K
        self.num_tokens = num_tokens
        self._what = what

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return self.backend.gist_dtype

    def count(self, level: int) -> int:
        if level == 0:
            return self.num_tokens
        return min(self.backend.count(level), self.num_tokens // span_tokens(level, self.K))

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        if stop > self.count(level):
            raise InvalidInputError(
                f"records [{start}, {stop}) of level {level} are beyond this read-only "
                f"snapshot of the {self._what} ({self.count(level)} records)"
            )
        return self.backend.read(level, start, stop)

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        raise self._readonly()

    def truncate(self, level: int, count: int) -> None:
        raise self._readonly()

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.backend.close()

    def _readonly(self) -> InvalidInputError:
        return InvalidInputError(
            f"this {self._what} was opened read-only; open the session without readonly=True "
            "to change it"
        )


__all__ = ["SnapshotBackend", "consistent_tokens"]
