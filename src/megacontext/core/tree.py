"""The MegaContext tree: a logical, append-only index of tokens and gists over a storage backend.

Level 0 holds token ids; level ``ℓ ≥ 1`` holds one gist per complete level-``ℓ`` node: one vector,
or ``G`` of them (the gister's ``gists_per_node``, stored as one record of ``G·dim``). Appending
tokens gists every node that completes — level by level, one batched gister call per level (D5) —
and never an incomplete node (D4). Levels appear as soon as their first node completes.

The tree holds no per-node Python objects: each level is a contiguous run of fixed-width records
in the backend, addressed by index arithmetic (D2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import Node, check_block_size, node_exists, span_tokens
from megacontext.errors import InvalidInputError, InvariantError

TOKEN_DTYPE = np.dtype(np.uint32)
_MAX_TOKEN_ID = int(np.iinfo(np.uint32).max)


class GistBatch(NamedTuple):
    """What a gister may return instead of a bare array: gists and their retrieval keys (D7)."""

    gists: npt.NDArray[np.generic]
    keys: npt.NDArray[np.generic]


@runtime_checkable
class Gister(Protocol):
    """Turns K children into one gist, for many nodes at once.

    ``level == 1``: ``inputs`` are token ids, shape ``(n, K)``, dtype uint32.
    ``level >= 2``: ``inputs`` are child gists, shape ``(n, K, dim)``.
    Returns an array of shape ``(n, dim)``, or a :class:`GistBatch` that adds ``(n, key_dim)``
    keys. A gister must be deterministic: re-gisting a node gives the same result.

    A gister with a ``gists_per_node`` attribute ``G > 1`` writes ``G`` vectors per node: it
    returns ``(n, G, dim)`` gists and reads child gists as ``(n, K, G, dim)``.
    """

    @property
    def dim(self) -> int: ...

    def __call__(
        self, level: int, inputs: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.generic] | GistBatch: ...


@runtime_checkable
class TreeBackend(Protocol):
    """Where the records of a tree live. Level 0: token ids; level ≥ 1: gists of width ``dim``.

    Backends store records in append order per level and never reorder them. Durable backends
    (``megacontext.store``) implement the same protocol as :class:`MemoryBackend`.
    """

    @property
    def dim(self) -> int: ...

    @property
    def gist_dtype(self) -> np.dtype[np.generic]: ...

    def count(self, level: int) -> int:
        """Records stored at ``level`` (0 when the level has none)."""
        ...

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        """Append records (1-D ids at level 0; ``(n, dim)`` gists above)."""
        ...

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Records ``[start, stop)`` of ``level``; the result must not be written to."""
        ...

    def flush(self) -> None:
        """Make every appended record durable (a no-op in memory)."""
        ...

    def truncate(self, level: int, count: int) -> object:
        """Keep only the first ``count`` records of ``level`` (cutting the history back).
        What it returns (a durable store reports its cuts) is the backend's own business."""
        ...

    def close(self) -> None: ...


class _ChunkedRecords:
    """A growable array made of fixed-size chunks: appends never copy what is already stored."""

    def __init__(
        self, record_shape: tuple[int, ...], dtype: np.dtype[np.generic], chunk_bytes: int
    ):
        record_bytes = int(np.prod(record_shape, dtype=np.int64)) * dtype.itemsize
        self.record_shape = record_shape
        self.dtype = dtype
        self.chunk_records = max(1, chunk_bytes // max(1, record_bytes))
        self._chunks: list[npt.NDArray[np.generic]] = []
        self.count = 0

    def append(self, records: npt.NDArray[np.generic]) -> None:
        done = 0
        total = len(records)
        while done < total:
            offset = self.count % self.chunk_records
            if offset == 0:
                # np.empty pages are committed lazily, so a fresh chunk costs RSS only as it fills.
                self._chunks.append(np.empty((self.chunk_records, *self.record_shape), self.dtype))
            take = min(total - done, self.chunk_records - offset)
            self._chunks[-1][offset : offset + take] = records[done : done + take]
            done += take
            self.count += take

    def truncate(self, count: int) -> None:
        if count < self.count:
            self.count = count
            del self._chunks[-(-count // self.chunk_records) :]

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        first, last = start // self.chunk_records, (stop - 1) // self.chunk_records
        if stop <= start:
            return np.empty((0, *self.record_shape), self.dtype)
        if first == last:
            base = first * self.chunk_records
            view = self._chunks[first][start - base : stop - base]
            view.flags.writeable = False
            return view
        parts = []
        for chunk in range(first, last + 1):
            base = chunk * self.chunk_records
            parts.append(
                self._chunks[chunk][
                    max(start, base) - base : min(stop, base + self.chunk_records) - base
                ]
            )
        return np.concatenate(parts)


class MemoryBackend:
    """In-process backend: per level, contiguous chunks of fixed-width records."""

    def __init__(
        self, dim: int, gist_dtype: npt.DTypeLike = np.float16, chunk_bytes: int = 4 << 20
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidInputError(f"gist dimension must be a positive integer, got {dim!r}")
        self._dim = dim
        self._gist_dtype = np.dtype(gist_dtype)
        if self._gist_dtype.kind != "f":
            raise InvalidInputError(f"gist dtype must be a float type, got {self._gist_dtype}")
        self._chunk_bytes = chunk_bytes
        self._levels: list[_ChunkedRecords] = [_ChunkedRecords((), TOKEN_DTYPE, chunk_bytes)]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def gist_dtype(self) -> np.dtype[np.generic]:
        return self._gist_dtype

    def count(self, level: int) -> int:
        return self._levels[level].count if level < len(self._levels) else 0

    def append(self, level: int, records: npt.NDArray[np.generic]) -> None:
        while len(self._levels) <= level:
            self._levels.append(_ChunkedRecords((self._dim,), self._gist_dtype, self._chunk_bytes))
        self._levels[level].append(records)

    def read(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        if level >= len(self._levels):
            shape: tuple[int, ...] = () if level == 0 else (self._dim,)
            return np.empty((0, *shape), TOKEN_DTYPE if level == 0 else self._gist_dtype)
        return self._levels[level].read(start, stop)

    def flush(self) -> None:
        return None

    def truncate(self, level: int, count: int) -> None:
        if level < len(self._levels):
            self._levels[level].truncate(count)

    def close(self) -> None:
        return None


def gists_per_node_of(gister: Gister) -> int:
    """Vectors a gister writes per node (its ``gists_per_node``, 1 when it has none)."""
    G = getattr(gister, "gists_per_node", 1)
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise InvalidInputError(f"a gister's gists_per_node must be an integer >= 1, got {G!r}")
    return G


def gist_batches(first: int, stop: int, batch_size: int | None) -> list[tuple[int, int]]:
    """The node ranges ``[lo, hi)`` a tree gists nodes ``[first, stop)`` of a level in: one
    gister call each (``batch_size`` nodes at most; ``None``: all in one call).

    A gister's floats depend on the batch a node is computed in, so whoever precomputes gists
    for a tree (a cluster worker) must use these same ranges to match it bit for bit.
    """
    step = batch_size or (stop - first)
    return [(lo, min(stop, lo + step)) for lo in range(first, stop, step)] if stop > first else []


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one :meth:`MegaContextTree.append` added: tokens, and new gists per level (1-based)."""

    tokens: int
    new_nodes: tuple[int, ...] = field(default_factory=tuple)


def as_token_ids(ids: object, vocab_size: int | None = None) -> npt.NDArray[np.uint32]:
    """Validate token ids and return them as a 1-D uint32 array.

    Raises :class:`InvalidInputError` for non-integer, negative, too large or out-of-vocab ids.
    """
    if isinstance(ids, np.ndarray):
        array = ids
    elif isinstance(ids, Sequence) and not isinstance(ids, str | bytes):
        try:
            array = np.asarray(ids)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"token ids must be a flat sequence of integers: {exc}"
            ) from None
    else:
        raise InvalidInputError(
            f"token ids must be a numpy array or a sequence of ints, got {type(ids).__name__}; "
            "tokenize text first"
        )
    if array.size == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)
    if array.ndim != 1:
        raise InvalidInputError(f"token ids must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise InvalidInputError(
            f"token ids must be integers, got dtype {array.dtype}; cast with .astype(int) only if "
            "the values really are ids"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0:
        position = int(np.argmax(array < 0))
        raise InvalidInputError(f"token ids must be >= 0; id {low} at position {position}")
    limit = _MAX_TOKEN_ID if vocab_size is None else vocab_size - 1
    if high > limit:
        position = int(np.argmax(array > limit))
        what = "the uint32 range" if vocab_size is None else f"the vocabulary (size {vocab_size})"
        raise InvalidInputError(
            f"token id {high} at position {position} is outside {what}; "
            "was the text tokenized with the tree's tokenizer?"
        )
    return array.astype(TOKEN_DTYPE, copy=False)


class MegaContextTree:
    """The logical tree over a :class:`TreeBackend`, gisting through an injected :class:`Gister`.

    Opening a tree over a backend that already holds tokens first gists any complete node the
    backend lacks (a writer may have stopped between storing tokens and storing their gists).

    With a ``key_backend``, the keys a gister returns (:class:`GistBatch`) are stored there, level
    by level beside the gists (its level 0 is unused); missing keys are recomputed on open.
    """

    def __init__(
        self,
        backend: TreeBackend,
        gister: Gister,
        K: int = 32,
        vocab_size: int | None = None,
        gist_batch_size: int | None = None,
        key_backend: TreeBackend | None = None,
    ):
        self.K = check_block_size(K)
        if vocab_size is not None and (isinstance(vocab_size, bool) or vocab_size < 1):
            raise InvalidInputError(
                f"vocab_size must be a positive integer or None, got {vocab_size!r}"
            )
        self.gists_per_node = gists_per_node_of(gister)
        if gister.dim * self.gists_per_node != backend.dim:
            written = f"{self.gists_per_node} × {gister.dim}" if self.gists_per_node > 1 else ""
            raise InvalidInputError(
                f"gister writes {written or gister.dim}-dim gists, the backend stores "
                f"{backend.dim}-dim ones"
            )
        if gist_batch_size is not None and gist_batch_size < 1:
            raise InvalidInputError(f"gist_batch_size must be >= 1 or None, got {gist_batch_size}")
        self.backend = backend
        self.key_backend = key_backend
        self.gister = gister
        self.vocab_size = vocab_size
        self.gist_batch_size = gist_batch_size
        self._catch_up()

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width of one gist vector (a node stores ``gists_per_node`` of them)."""
        return self.backend.dim // self.gists_per_node

    @property
    def num_tokens(self) -> int:
        """Committed tokens (LOD0 records)."""
        return self.backend.count(0)

    @property
    def blocks(self) -> int:
        """Complete LOD1 blocks (gisted nodes of level 1), 0 before the first one."""
        return self.count(1) if self.num_levels else 0

    @property
    def num_levels(self) -> int:
        """Number of gist levels holding at least one node (0 before the first complete block)."""
        level = 0
        while self.backend.count(level + 1) > 0:
            level += 1
        return level

    def count(self, level: int) -> int:
        """Nodes stored at ``level`` (tokens at level 0)."""
        self._check_level(level)
        return self.backend.count(level)

    # -- writing -------------------------------------------------------------------------------

    def append(self, ids: object) -> AppendResult:
        """Append token ids and gist every node that completes. Returns what was added."""
        tokens = as_token_ids(ids, self.vocab_size)
        if tokens.size:
            self.backend.append(0, tokens)
        return AppendResult(int(tokens.size), self._gist_complete_nodes())

    def flush(self) -> None:
        self.backend.flush()
        if self.key_backend is not None:
            self.key_backend.flush()

    def truncate(self, num_tokens: int) -> None:
        """Cut the history back to its first ``num_tokens`` tokens: the gists (and keys) of every
        node that no longer has all its children go with them, top level first, so that a crash
        in between leaves only derived records missing (reopening re-gists them)."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | np.integer):
            raise InvalidInputError(f"num_tokens must be an integer, got {num_tokens!r}")
        if not 0 <= num_tokens <= self.num_tokens:
            raise InvalidInputError(
                f"cannot truncate to {num_tokens} tokens: the history holds {self.num_tokens}"
            )
        levels = self.num_levels
        for level in range(levels, 0, -1):
            keep = num_tokens // span_tokens(level, self.K)
            if self.key_backend is not None and self.key_backend.count(level) > keep:
                self.key_backend.truncate(level, keep)
            if self.backend.count(level) > keep:
                self.backend.truncate(level, keep)
        self.backend.truncate(0, int(num_tokens))
        self.flush()

    def close(self) -> None:
        self.backend.close()
        if self.key_backend is not None:
            self.key_backend.close()

    def _catch_up(self) -> None:
        self._gist_complete_nodes()

    def _gist_complete_nodes(self) -> tuple[int, ...]:
        added: list[int] = []
        level = 1
        while True:
            children = self.backend.count(level - 1)
            have = self.backend.count(level)
            want = children // self.K
            if have > want:
                raise InvariantError(
                    f"level {level} stores {have} gists but only {want} nodes are complete; "
                    "the store is inconsistent (run `megacontext store verify`)"
                )
            if want == 0:
                break
            keys = self.key_backend.count(level) if self.key_backend is not None else have
            if keys > have:
                raise InvariantError(
                    f"level {level} stores {keys} keys but only {have} gists; the key store is "
                    "inconsistent (run `megacontext store verify`)"
                )
            if keys < have:
                self._gist_range(level, keys, have, store_gists=False)
            if want > have:
                self._gist_range(level, have, want)
            added.append(want - have)
            level += 1
        while added and added[-1] == 0:
            added.pop()
        return tuple(added)

    def _gist_range(self, level: int, first: int, stop: int, store_gists: bool = True) -> None:
        for lo, hi in gist_batches(first, stop, self.gist_batch_size):
            children = self.backend.read(level - 1, lo * self.K, hi * self.K)
            node = self._node_shape
            shape = (hi - lo, self.K) if level == 1 else (hi - lo, self.K, *node)
            output = self.gister(level, children.reshape(shape))
            gists = np.asarray(output.gists if isinstance(output, GistBatch) else output)
            if gists.shape != (hi - lo, *node):
                raise InvariantError(
                    f"gister returned shape {gists.shape} for {hi - lo} level-{level} nodes; "
                    f"expected {(hi - lo, *node)}"
                )
            gists = gists.reshape(hi - lo, self.backend.dim)
            keys = None
            if self.key_backend is not None:
                if not isinstance(output, GistBatch):
                    raise InvalidInputError(
                        "the tree has a key store but the gister returns no keys; use a gister "
                        "that returns GistBatch(gists, keys) or open the tree without keys"
                    )
                keys = np.asarray(output.keys)
                if keys.shape != (hi - lo, self.key_backend.dim):
                    raise InvariantError(
                        f"gister returned keys of shape {keys.shape}; expected "
                        f"{(hi - lo, self.key_backend.dim)}"
                    )
            # Gists before keys: a crash in between leaves keys missing, which reopening repairs.
            if store_gists:
                self.backend.append(level, gists.astype(self.backend.gist_dtype, copy=False))
            if self.key_backend is not None and keys is not None:
                self.key_backend.append(level, keys.astype(self.key_backend.gist_dtype, copy=False))

    # -- reading -------------------------------------------------------------------------------

    def tokens(self, start: int, stop: int) -> npt.NDArray[np.uint32]:
        """Token ids of positions ``[start, stop)``."""
        self._check_range(0, start, stop)
        return self.backend.read(0, start, stop).astype(TOKEN_DTYPE, copy=False)

    @property
    def _node_shape(self) -> tuple[int, ...]:
        return (self.dim,) if self.gists_per_node == 1 else (self.gists_per_node, self.dim)

    def gists(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Gists ``[start, stop)`` of ``level`` (≥ 1), shape ``(stop - start, dim)``, or
        ``(stop - start, gists_per_node, dim)`` when a node stores several vectors."""
        if level < 1:
            raise InvalidInputError(f"gists live at levels >= 1, got level {level}; use tokens()")
        self._check_range(level, start, stop)
        records: npt.NDArray[np.generic] = self.backend.read(level, start, stop)
        if self.gists_per_node > 1:
            records = records.reshape(-1, *self._node_shape)
        return records

    def keys(self, level: int, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Retrieval keys ``[start, stop)`` of ``level`` (≥ 1), one ``(key_dim,)`` row each."""
        if self.key_backend is None:
            raise InvalidInputError("this tree stores no keys; open it with a key_backend")
        if level < 1:
            raise InvalidInputError(f"keys live at levels >= 1, got level {level}")
        self._check_range(level, start, stop)
        return self.key_backend.read(level, start, stop)

    def node(self, level: int, index: int) -> npt.NDArray[np.generic]:
        """The record of one node: a 0-d token id at level 0, a gist above (as :meth:`gists`)."""
        self._check_node(level, index)
        if level == 0:
            token: npt.NDArray[np.generic] = self.backend.read(0, index, index + 1)[0]
            return token
        gist: npt.NDArray[np.generic] = self.gists(level, index, index + 1)[0]
        return gist

    def children(self, level: int, index: int) -> tuple[int, range]:
        """``(child_level, child_indices)`` of a gist node."""
        self._check_node(level, index)
        if level == 0:
            raise InvalidInputError("tokens (level 0) have no children")
        return level - 1, range(index * self.K, (index + 1) * self.K)

    def parent(self, level: int, index: int) -> Node | None:
        """The parent node, or ``None`` while it is incomplete."""
        self._check_node(level, index)
        parent = Node(level, index).parent(self.K)
        return parent if node_exists(parent.level, parent.index, self.K, self.num_tokens) else None

    def tail(self) -> npt.NDArray[np.uint32]:
        """Token ids of the newest, incomplete block (fewer than K tokens; never gisted)."""
        n = self.num_tokens
        return self.tokens(n - n % self.K, n)

    def covered_tokens(self, level: int, index: int) -> tuple[int, int]:
        """``[start, end)`` token positions a node covers."""
        width = span_tokens(level, self.K)
        return index * width, (index + 1) * width

    # -- checks --------------------------------------------------------------------------------

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int | np.integer) or level < 0:
            raise InvalidInputError(f"level must be a non-negative integer, got {level!r}")

    def _check_range(self, level: int, start: int, stop: int) -> None:
        self._check_level(level)
        have = self.backend.count(level)
        if not 0 <= start <= stop <= have:
            raise InvalidInputError(
                f"range [{start}, {stop}) is outside level {level}, which holds {have} records"
            )

    def _check_node(self, level: int, index: int) -> None:
        self._check_level(level)
        have = self.backend.count(level)
        if not 0 <= index < have:
            raise InvalidInputError(
                f"node (level {level}, index {index}) does not exist; level {level} holds {have} "
                "complete nodes"
            )
