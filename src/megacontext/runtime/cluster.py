"""Ingest on a dask.distributed cluster: workers tokenize and gist, one writer commits.

The writer is the session that owns the tree. It alone appends, journals provenance, indexes and
audits, in source order, through the same :meth:`Session.ingest` a serial run uses, so a tree
ingested on a cluster is the tree a serial ingest makes. The workers do the expensive parts that
do not depend on each other: tokenizing every source, then running GistNet (gists and keys) over
the level-1 blocks of each. Higher levels — 1/32 of the work, each node depending on everything
before it — are gisted by the writer as it commits.

**Byte for byte.** GistNet's floats depend on the batch a block is computed in (CPU kernels
change their reduction order with the batch's shape), so a worker cannot gist its blocks in any
batching it likes. It replays the gister calls the writer's serial path will make for its
source — the same node ranges, from the ingest chunk and the session's gist batch
(:func:`level1_calls`) — and returns each call's output keyed by the exact input it was computed
from. The writer's gister answers a call from those outputs when the input is identical and
computes it itself otherwise (counted in :attr:`ClusterIngest.computed`): a plan that went wrong
(a source that turned out to be a duplicate, say) costs time, never correctness.

Workers need the base model installed (the same fingerprint as the writer's; checked); GistNet's
weights are shipped to them once per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from megacontext.core.tree import GistBatch, gist_batches
from megacontext.errors import InvalidInputError
from megacontext.runtime.session import INGEST_CHUNK, Ingested, Session, Tokenized

if TYPE_CHECKING:
    from distributed import Client

CallKey = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class Document:
    """One source to ingest: its text, URI and metadata (as :meth:`Session.ingest` takes them)."""

    text: str
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterIngest:
    """What :func:`ingest_on_cluster` did.

    ``results``: one per document, in order; ``served``: level-1 gister calls answered by the
    workers; ``computed``: level-1 calls the writer had to compute itself (0 when every plan held).
    """

    results: list[Ingested]
    workers: int
    served: int = 0
    computed: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)


@dataclass(frozen=True)
class _WorkerSetup:
    """What a worker needs to rebuild the writer's tokenizer and GistNet (its cache key)."""

    base: str
    base_fingerprint: str
    key_version: str
    K: int


@dataclass(frozen=True)
class _GistNetWeights:
    config: Any
    state: dict[str, torch.Tensor]


_LOADED: dict[_WorkerSetup, tuple[Any, Any]] = {}


def connect(address: str, timeout_s: float = 30.0) -> Client:
    """A client of the dask scheduler at ``address``, or a typed error that says what to check."""
    from distributed import Client

    try:
        _refused_at_once(address, timeout_s)
        return Client(address, timeout=f"{timeout_s}s")
    except OSError as exc:
        raise InvalidInputError(
            f"cannot reach the dask scheduler at {address} ({exc}); start one (`dask scheduler`, "
            "then `dask worker ADDRESS` on each machine) or check --cluster"
        ) from None


def _refused_at_once(address: str, timeout_s: float) -> None:
    """Raise ``ConnectionRefusedError`` at once when nothing listens at a ``tcp://`` address
    (dask's client would retry a refused connection until its timeout)."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if address.startswith("tcp://") and port.isdigit():
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass


@contextlib.contextmanager
def _client(cluster: str | Client, timeout_s: float) -> Iterator[Client]:
    if not isinstance(cluster, str):
        yield cluster  # the caller's client: the caller closes it
        return
    with connect(cluster, timeout_s) as client:
        yield client


def level1_calls(first: int, count: int, K: int, batch_size: int | None) -> list[tuple[int, int]]:
    """The level-1 node ranges, one gister call each, in the order :meth:`Session.ingest` gists
    them when it appends ``count`` tokens at history position ``first``: chunk by chunk, the
    blocks each chunk completes, in batches of the session's ``gist_batch``."""
    calls: list[tuple[int, int]] = []
    for lo in range(0, count, INGEST_CHUNK):
        stop = first + min(count, lo + INGEST_CHUNK)
        calls += gist_batches((first + lo) // K, stop // K, batch_size)
    return calls


def call_key(inputs: npt.NDArray[np.generic]) -> CallKey:
    """A level-1 gister call's identity: its input token ids, as GistNet reads them."""
    ids = np.ascontiguousarray(inputs, dtype=np.int64)
    return tuple(ids.shape), hashlib.sha256(ids.tobytes()).hexdigest()


class _ServedGister:
    """The writer's gister for a run: level-1 calls a worker already made are answered from
    their outputs; everything else goes to the session's own gister."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.ready: dict[CallKey, GistBatch] = {}
        self.served = 0
        self.computed = 0

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def key_dim(self) -> int:
        return int(self.inner.key_dim)

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> Any:
        if level == 1:
            found = self.ready.pop(call_key(inputs), None)
            if found is not None:
                self.served += 1
                return found
            self.computed += 1
        return self.inner(level, inputs)


def _models(setup: _WorkerSetup, weights: _GistNetWeights) -> tuple[Any, Any]:
    """This worker's base and GistNet gister for ``setup`` (loaded once per worker process)."""
    if setup in _LOADED:
        return _LOADED[setup]
    from megacontext.models.context import GistNetGister
    from megacontext.models.gistnet import GistNet
    from megacontext.models.loading import load_base

    with contextlib.suppress(ValueError):  # ValueError: not inside a dask worker
        from distributed import get_worker

        torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
    base = load_base(setup.base)
    if base.fingerprint != setup.base_fingerprint:
        raise InvalidInputError(
            f"this worker's {setup.base!r} is not the writer's base (fingerprint "
            f"{base.fingerprint} instead of {setup.base_fingerprint}); install the same model "
            "version on every worker"
        )
    gistnet = GistNet(weights.config)
    gistnet.load_state_dict(weights.state)
    if gistnet.key_version() != setup.key_version:
        raise InvalidInputError("GistNet's weights changed on the way to the worker")
    _LOADED.clear()  # one tree's models at a time: a worker's memory holds one base
    _LOADED[setup] = (base, GistNetGister(gistnet, base))
    return _LOADED[setup]


def _tokenize(
    setup: _WorkerSetup, weights: _GistNetWeights, text: str
) -> tuple[np.ndarray, np.ndarray | None]:
    base, _ = _models(setup, weights)
    ids, offsets = base.encode_with_offsets(text)
    pairs = None if offsets is None else np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return np.asarray(ids, dtype=np.int64), pairs


def _gist_level1(
    setup: _WorkerSetup,
    weights: _GistNetWeights,
    tail: np.ndarray,
    tokenized: tuple[np.ndarray, np.ndarray | None],
    first: int,
    calls: list[tuple[int, int]],
) -> dict[CallKey, GistBatch]:
    """The outputs of ``calls`` over a source appended at ``first`` (``tail``: the history's
    tokens since the last block boundary before it)."""
    _, gister = _models(setup, weights)
    tokens = np.concatenate([tail.astype(np.int64), tokenized[0]])
    origin = first - len(tail)  # history position of tokens[0]: a block boundary
    K = setup.K
    out = {}
    for lo, hi in calls:
        inputs = tokens[lo * K - origin : hi * K - origin].reshape(hi - lo, K)
        out[call_key(inputs)] = gister(1, inputs)
    return out


def ingest_on_cluster(
    session: Session,
    documents: Sequence[Document],
    cluster: str | Client,
    *,
    force: bool = False,
    on_committed: Callable[[int, Ingested], None] | None = None,
    connect_timeout_s: float = 30.0,
) -> ClusterIngest:
    """Ingest ``documents`` into ``session`` with the dask cluster ``cluster`` (a scheduler
    address, or a connected ``distributed.Client``) doing the tokenizing and level-1 gisting.

    The result is the history, provenance and audit trail a serial
    ``for d in documents: session.ingest(d.text, d.source, d.metadata, force=force)`` makes,
    byte for byte (see the module docstring). Documents commit in order, each all-or-nothing;
    an error (a worker's included) stops the run there with the earlier documents committed.
    ``on_committed(i, result)`` is called after document ``i`` is in.
    """
    session._check_writable()
    started = time.perf_counter()
    tree = session.tree
    setup = _WorkerSetup(
        base=session.base.source,
        base_fingerprint=session.base.fingerprint,
        key_version=session.gistnet.key_version(),
        K=tree.K,
    )
    state = {k: v.detach().cpu() for k, v in session.gistnet.state_dict().items()}
    weights = _GistNetWeights(session.gistnet.config, state)
    served = _ServedGister(tree.gister)
    with _client(cluster, connect_timeout_s) as client:
        workers = len(client.scheduler_info().get("workers", {}))
        shipped = client.scatter(weights, broadcast=True)
        predicted = _predict_duplicates(session, documents, force)
        tokenized = [
            None if dup else client.submit(_tokenize, setup, shipped, d.text, pure=False)
            for d, dup in zip(documents, predicted, strict=True)
        ]
        gisted = _plan_gists(client, setup, shipped, tree, tokenized)
        results: list[Ingested] = []
        tree.gister = served
        try:
            for i, doc in enumerate(documents):
                results.append(_commit(session, doc, tokenized[i], gisted[i], served, force))
                if on_committed is not None:
                    on_committed(i, results[-1])
        finally:
            tree.gister = served.inner
            for future in [*tokenized, *gisted]:
                if future is not None:
                    future.cancel()
    return ClusterIngest(
        results, workers, served.served, served.computed, time.perf_counter() - started
    )


def _predict_duplicates(session: Session, documents: Sequence[Document], force: bool) -> list[bool]:
    """Which documents :meth:`Session.ingest` will skip as already held: not sent to workers."""
    if force or session.metadata is None:
        return [False] * len(documents)
    seen: set[bytes] = set()
    out = []
    for doc in documents:
        raw = doc.text.encode("utf-8")
        digest = hashlib.sha256(raw).digest()
        out.append(digest in seen or session.duplicate_of(raw) is not None)
        seen.add(digest)
    return out


def _plan_gists(
    client: Client, setup: _WorkerSetup, weights: Any, tree: Any, tokenized: list[Any]
) -> list[Any]:
    """One level-1 gisting task per document, planned at the history position it will take."""
    position = tree.num_tokens
    tail = np.asarray(tree.tail(), dtype=np.int64)
    gisted: list[Any] = []
    for future in tokenized:  # in order: a document's position needs the lengths before it
        if future is None:
            gisted.append(None)
            continue
        ids = future.result()[0]
        calls = level1_calls(position, len(ids), tree.K, tree.gist_batch_size)
        gisted.append(
            client.submit(_gist_level1, setup, weights, tail, future, position, calls, pure=False)
        )
        stream = np.concatenate([tail, ids])
        position += len(ids)
        tail = stream[len(stream) - position % tree.K :] if position % tree.K else stream[:0]
    return gisted


def _commit(
    session: Session,
    doc: Document,
    tokenized: Any,
    gisted: Any,
    served: _ServedGister,
    force: bool,
) -> Ingested:
    if tokenized is None:  # predicted a duplicate; if it is not one after all, tokenize here
        return session.ingest(doc.text, doc.source, doc.metadata, force=force)
    ids, offsets = tokenized.result()
    served.ready = gisted.result()
    try:
        return session.ingest(
            Tokenized(doc.text, ids, offsets), doc.source, doc.metadata, force=force
        )
    finally:
        served.ready = {}


__all__ = [
    "ClusterIngest",
    "Document",
    "connect",
    "ingest_on_cluster",
    "level1_calls",
]
