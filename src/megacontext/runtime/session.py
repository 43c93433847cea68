"""The MegaContext session: ingest → refocus → decode over an unbounded history (DESIGN §1).

A session holds the tree (tokens, gists, keys), its lexical index, the working context over it,
and the models that read it. Open one on a directory with :func:`megacontext.open` (see
:mod:`megacontext.runtime.opening` for the layout on disk), or in memory with
:meth:`Session.in_memory` (the evaluation's MegaContext systems do, so that every leaderboard
number is a number of the product).

The loop: new tokens are appended to the tree (gisted as blocks complete) and to the working
context; every ``refocus_every`` tokens LensNet scores the entries (:class:`LensScorer`), and the
engine plans, applies and records the step (:class:`FocusEngine`); the base runs with its KV
cache reused up to the first edited entry (D10). The base reads ``[prompt prefix][working
context]``: the prompt's fixed prefix (a chat template's system turn and user header, or BOS) is
never part of the tree and never collapsed.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.core import (
    AllocatorConfig,
    EditKind,
    EditPlan,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
    as_token_ids,
    entry_costs,
    layout_runs,
    wc_positions,
)
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.focus import FocusEngine, FocusQuery, LensScorer, StepTelemetry
from megacontext.focus.access import (
    NEVER_EXPAND,
    REDACTION_TEXT,
    AccessFilter,
    redact,
    redaction_vector,
)
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import Bundle
from megacontext.models.context import GistNetGister, input_vectors
from megacontext.models.generation import choose_token, decode
from megacontext.models.lensnet import FEATURES, LensNet
from megacontext.models.prompting import PromptFormat
from megacontext.runtime import metrics
from megacontext.runtime.config import SessionConfig
from megacontext.runtime.focus_control import Focus
from megacontext.runtime.provenance import Citation, cite, plan_spans, raw_runs
from megacontext.store.audit import AuditLog
from megacontext.store.cache import CachedBackend, CacheStats
from megacontext.store.lexical import AnyLexicalIndex, LexicalIndex
from megacontext.store.lineage import Lineage
from megacontext.store.local import LocalStore
from megacontext.store.metadata import COMPLETE, ROLLED_BACK, MetadataDB, audit_table
from megacontext.store.policies import Policies

Scores = Callable[[WorkingContext], np.ndarray]
Progress = Callable[[int, int], None]  # (tokens done, tokens in all)
INGEST_CHUNK = 16384  # tokens appended between progress reports (a multiple of every K)


@dataclass(frozen=True)
class EntryView:
    """One working-context entry, for people."""

    level: int
    index: int
    start: int
    end: int
    preview: str = ""


@dataclass(frozen=True)
class Answer:
    """What :meth:`Session.ask` returns.

    ``citations``: where the raw spans that focus brought into view for this question come
    from (source and lines), most relevant first; ``spans``: those spans as token ranges of the
    history, in order; ``seconds``: ``focus`` and ``decode``.
    """

    text: str
    ids: list[int]
    focus_steps: int  # refocus steps that edited the working context for this question
    seconds: dict[str, float]
    citations: list[Citation] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Ingested:
    """What :meth:`Session.ingest` did: ``tokens`` appended at ``[start, stop)`` of the history.

    ``duplicate_of`` names the source already in the history with the same content when nothing
    was appended for that reason (``force=True`` appends it again).
    """

    tokens: int
    start: int
    stop: int
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Tokenized:
    """Text tokenized elsewhere with this session's tokenizer (a cluster worker: see
    :mod:`megacontext.runtime.cluster`): its ids and per-token ``[start, end)`` characters (from
    :meth:`~megacontext.models.adapter.BaseAdapter.encode_with_offsets`), which ingest takes in
    place of tokenizing the text again."""

    text: str
    ids: np.ndarray
    offsets: np.ndarray | None  # (len(ids), 2), or None when the tokenizer cannot say


@dataclass(frozen=True)
class ForwardTiming:
    """One base forward while decoding: what it computed and where its time went.

    ``entries`` is 1 for a plain decode step; after an edit cropped the KV cache it is the whole
    recomputed suffix (D10) plus the new entry.
    """

    entries: int
    cached: int
    fetch_s: float
    forward_s: float


class Session:
    """An open history: the tree, its working context, and the models that read it."""

    def __init__(  # noqa: PLR0913  (the parts of a session, assembled by opening.py)
        self,
        path: Path | None,
        base: BaseAdapter,
        bundle: Bundle,
        tree: MegaContextTree,
        stores: Sequence[LocalStore],
        lexical: AnyLexicalIndex,
        config: SessionConfig,
        *,
        metadata: MetadataDB | None = None,
        readonly: bool = False,
        audit_url: str | None = None,
    ):
        self.path = path
        self.readonly = readonly
        # Sources, provenance and the append journal (None in memory).
        self.metadata = metadata
        # Who the audit trail records as acting through this session (a service sets its
        # caller); where a read-only session writes its audit events (its metadata is read-only).
        self.actor = default_actor()
        self._audit_url = audit_url
        self._audit: AuditLog | None = None
        self._audit_db: MetadataDB | None = None
        # What the principal may not see (restrict()); None: everything is open.
        self.access: AccessFilter | None = None
        self._redaction: torch.Tensor | None = None
        self.tree_id = stores[0].manifest.tree_id if stores else ""
        self.base = base
        self.bundle = bundle
        self.gistnet = bundle.get("gistnet")
        self.lensnet: LensNet | None = bundle.modules.get("lensnet")  # type: ignore[assignment]
        self.tree = tree
        self._stores = list(stores)
        self.lexical = lexical
        self.config = config
        self.prompt = PromptFormat.for_base(base, config.prompt or PromptFormat.default_style(base))
        self.scorer = LensScorer(base, tree, lexical)
        # The KV cache is cropped through a late-bound call, so _crop can be observed (tests).
        self.engine = FocusEngine(self._allocator_config(), on_change=lambda f: self._crop(f))
        # Replaces LensNet's scores when set (an oracle that knows where the evidence is).
        self.score_override: Scores | None = None
        self.focus = Focus(self)
        self.wc = self._assemble()
        self._prefix = np.asarray(self.prompt.prefix, dtype=np.int64)
        self._kv: Any = None
        self._kv_entries = 0  # cached positions, the prompt prefix included
        self._since_refocus = 0
        self._base_seconds = 0.0  # base forwards since the last refocus step (telemetry)
        self._cache_seen = (0, 0)  # page-cache hits and misses already counted (metrics)
        # LensNet's lexical and key evidence per entry at the last scoring (for the trace).
        self._evidence: dict[str, list[float]] = {}
        self._focused: tuple[WorkingContext, int] | None = None  # the WC version last refocused
        # The WC version right after the last generated token: a continuation from there has
        # only its own tokens to refocus for, so it refocuses as generation does (locally).
        self._generated: tuple[WorkingContext, int] | None = None
        # Where the latest input (an ingest call or a prompt) starts: LensNet's query is read
        # from there on, so a question is not diluted by the document text before it.
        self._query_start = 0
        self._query: np.ndarray | None = None  # an explicit query (focus_for), not in the tree
        self._focus_query: FocusQuery | None = None  # cached for the query ids it was built for
        self._rng = torch.Generator().manual_seed(config.seed)
        self._trace_file: Any = None  # opened at the first refocus step (no empty traces)
        self.trace_path: Path | None = None
        if config.trace and path is not None and not readonly:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            # Unique among sessions opened in the same second, in this process or another.
            self.trace_path = path / "traces" / f"session-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        self.lora: Any = None
        if config.use_lora and bundle.lora is not None:
            check_lora_free(base)
            self.lora = bundle.attach_lora(base)
        self.closed = False
        # What opening the session settled of an append a crash left unfinished (journal).
        self.recovered: list[Any] = []
        # Set to a list to record every refocus step and decoding forward, in order (benchmarks).
        self.timing_log: list[StepTelemetry | ForwardTiming] | None = None

    @classmethod
    def in_memory(
        cls, base: BaseAdapter, bundle: Bundle, config: SessionConfig | None = None
    ) -> Session:
        """A session whose tree, keys and lexical index live in memory (nothing on disk, no
        provenance, no trace): the same loop as a session on disk."""
        config = (config or SessionConfig()).with_changes(trace=False)
        gistnet = bundle.get("gistnet")
        K = gistnet.config.K
        tree = MegaContextTree(
            MemoryBackend(base.d_model * gistnet.config.gists_per_block, np.float32),
            GistNetGister(gistnet, base),
            K=K,
            vocab_size=base.vocab_size,
            gist_batch_size=config.gist_batch,
            key_backend=MemoryBackend(gistnet.config.key_dim, np.float32),
        )
        return cls(None, base, bundle, tree, [], LexicalIndex(K=K), config)

    def _allocator_config(self) -> AllocatorConfig:
        c = self.config
        return AllocatorConfig(
            max_edits=c.max_edits,
            expand_threshold=c.expand_threshold,
            min_gain=c.min_gain,
            collapse_threshold=c.collapse_threshold,
        )

    @property
    def allocator(self) -> Any:
        return self.engine.allocator

    @property
    def state(self) -> Any:
        """The focus state: cooldowns and the swap-rate / residency / utilization counters."""
        return self.engine.state

    # ----------------------------------------------------------------------------- history

    def ingest(
        self,
        content: str | Sequence[int] | np.ndarray | Tokenized,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        force: bool = False,
        progress: Progress | None = None,
        first_line: int = 1,
    ) -> Ingested:
        """Append text (tokenized with the base's tokenizer) or token ids to the history.

        On disk every append is journaled with its provenance — ``source`` (a URI; default: an
        ``inline:`` URI of the content's hash), ``metadata`` (JSON-able; ``"path"`` names the
        source for people), and the bytes and lines of every span — and is all-or-nothing: an
        interrupted ingest is rolled back, here or when the session is next opened. Content
        already in the history is not appended again unless ``force``. ``progress(done,
        total)`` is called as tokens are appended. ``first_line`` numbers the text's first line
        in the spans' provenance: 0 when the text opens with a header line that is not part of
        the source (``code ingest`` puts each file's path there).
        """
        self._check_writable()
        if source is not None and (not isinstance(source, str) or not source):
            raise InvalidInputError(f"source must be a non-empty string (a URI), got {source!r}")
        if source is not None and self.metadata is None:
            raise InvalidInputError("an in-memory session keeps no provenance; drop source=")
        if isinstance(first_line, bool) or not isinstance(first_line, int) or first_line < 0:
            raise InvalidInputError(f"first_line must be an integer >= 0, got {first_line!r}")
        meta = _checked_metadata(metadata)
        ids, text, offsets = self._tokens_with_offsets(content)
        first = self.tree.num_tokens
        if self.metadata is None:
            self._append_blocks(ids, progress)
            return Ingested(len(ids), first, first + len(ids))
        raw = text.encode("utf-8") if text is not None else ids.astype("<u4").tobytes()
        if not force:
            duplicate = self.duplicate_of(raw)
            if duplicate is not None:
                return duplicate
        uri = source or f"inline:{hashlib.sha256(raw).hexdigest()[:16]}"
        rows = plan_spans(text, offsets, first, len(ids), self.tree.K, first_line)
        kind = "text" if text is not None else "tokens"
        with self._journaled(uri, kind, raw, meta, first, first + len(ids), rows):
            self._append_blocks(ids, progress)
        return Ingested(len(ids), first, first + len(ids))

    def duplicate_of(self, content: bytes) -> Ingested | None:
        """Where the history already holds a source with exactly these bytes (UTF-8 text, or
        little-endian uint32 token ids) — what :meth:`ingest` returns instead of appending them
        again — or ``None``. In memory nothing is remembered: always ``None``."""
        if self.metadata is None:
            return None
        found = self.metadata.ingested_content(self.tree_id, hashlib.sha256(content).hexdigest())
        if found is None or found.stop is None:
            return None
        name = str(found.source.meta.get("path") or found.source.uri)
        return Ingested(0, found.start, found.stop, duplicate_of=name)

    def _append_blocks(self, ids: np.ndarray, progress: Progress | None) -> None:
        """Append a whole input: gisted, indexed, then the working context assembled anew."""
        first = self.tree.num_tokens
        total = len(ids)
        started = time.perf_counter()
        counts = {level: self.tree.count(level) for level in range(1, self.tree.num_levels)}
        for lo in range(0, total, INGEST_CHUNK):
            blocks_before = self.tree.blocks
            self.tree.append(ids[lo : lo + INGEST_CHUNK])
            self._index_new_blocks(blocks_before)
            if progress is not None:
                progress(min(total, lo + INGEST_CHUNK), total)
        self.tree.flush()
        new_gists = {}  # per level: how many, and the latest (a bounded sample) for their norms
        for level in range(1, self.tree.num_levels):
            before, after = counts.get(level, 0), self.tree.count(level)
            sample_from = max(before, after - metrics.GIST_SAMPLE)
            new_gists[level] = (after - before, self.tree.gists(level, sample_from, after))
        metrics.record_ingest(total, time.perf_counter() - started, new_gists)
        self._reassemble()
        self._query_start = first

    @contextlib.contextmanager
    def _journaled(
        self,
        uri: str,
        kind: str,
        raw: bytes,
        meta: dict[str, Any],
        first: int,
        stop: int | None,
        rows: list[Any],
        keep_on_error: bool = False,
    ) -> Iterator[None]:
        """Journal an append (see :mod:`megacontext.runtime.journal`): begun before the first
        token is stored, completed with its spans after the last is flushed. On any error —
        Ctrl-C included — the tokens are rolled back, or kept (``keep_on_error``, generations)."""
        db = self.metadata
        if db is None:
            yield
            return
        source_id = db.add_source(uri, kind, raw, meta)
        planned = [(r.start, r.stop, r.bytes, r.lines) for r in rows]
        ingest_id = db.begin_ingest(self.tree_id, source_id, first, stop, planned or None)
        gist_version = self.gistnet.weights_version()
        try:
            yield
        except BaseException:
            if keep_on_error and self.tree.num_tokens > first:
                self.tree.flush()
                n = self.tree.num_tokens
                db.complete_ingest(ingest_id, n, [(first, n, None, None)], gist_version)
            else:
                self.cut_history(first)
                db.set_ingest_status(ingest_id, ROLLED_BACK)
            raise
        self.tree.flush()
        n = self.tree.num_tokens
        if stop is None:  # an open-ended append (a generation): its text is known only now
            if n == first:
                db.set_ingest_status(ingest_id, ROLLED_BACK)
                return
            text = self.base.decode(self.tree.tokens(first, n).tolist())
            raw = text.encode("utf-8")
            db.set_source_content(source_id, raw)
            planned = [(first, n, None, None)]
        db.complete_ingest(ingest_id, n, planned, gist_version)
        detail = {
            "ingest": ingest_id,
            "kind": kind,
            "start": first,
            "stop": n,
            "content_sha256": hashlib.sha256(raw).hexdigest(),
        }
        self.record("ingest", uri, detail)

    def release_trace(self) -> None:
        """Close the trace file (the next refocus step reopens it): before it is rewritten."""
        if self._trace_file is not None:
            self._trace_file.close()
            self._trace_file = None

    def audit(self) -> AuditLog | None:
        """The tree's audit trail (:mod:`megacontext.store.audit`); ``None`` for a session with
        no metadata database (in memory)."""
        if self._audit is None:
            if self.metadata is not None and not self.metadata.readonly:
                self._audit = AuditLog(self.metadata, self.tree_id)
            elif self._audit_url is not None:
                # Per request in a service: create the one table it writes, not the schema.
                self._audit_db = MetadataDB(self._audit_url, create=False)
                audit_table.create(self._audit_db.engine, checkfirst=True)
                self._audit = AuditLog(self._audit_db, self.tree_id)
        return self._audit

    def record(self, action: str, subject: str, detail: dict[str, Any]) -> None:
        """Append an event to the tree's audit trail as :attr:`actor` (nothing in memory)."""
        log = self.audit()
        if log is not None:
            log.record(action, self.actor, subject, detail)

    def cut_history(self, num_tokens: int) -> None:
        """Cut the history back to its first ``num_tokens`` tokens (gists, keys and lexical rows
        above them too) and assemble the working context anew. The journal's tool: an append is
        undone this way; provenance is the caller's to settle."""
        self._check_writable()
        if num_tokens < self.tree.num_tokens:
            self.tree.truncate(num_tokens)
            self.lexical.truncate(num_tokens // self.tree.K)
            lineage = self.lineage()
            if lineage is not None:
                lineage.truncate(num_tokens)
            self._query_start = min(self._query_start, num_tokens)
            self._focus_query = None
            self._reassemble()

    def append_history(self, ids: np.ndarray) -> None:
        """Append token ids without journaling them (the journal's tool for rewrites)."""
        self._check_writable()
        if len(ids):
            self._append_blocks(as_token_ids(np.asarray(ids), self.base.vocab_size), None)

    def _tokens_with_offsets(
        self, content: str | Sequence[int] | np.ndarray | Tokenized
    ) -> tuple[np.ndarray, str | None, Sequence[tuple[int, int]] | np.ndarray | None]:
        """Checked token ids of ``content``; for text, also the text and per-token offsets."""
        if isinstance(content, Tokenized):
            self._check_text(content.text)
            if content.offsets is not None and len(content.offsets) != len(content.ids):
                raise InvalidInputError(
                    f"tokenized text has {len(content.ids)} ids but {len(content.offsets)} "
                    "offsets; tokenize it again with this session's base"
                )
            return self._checked_ids(list(content.ids.tolist())), content.text, content.offsets
        if isinstance(content, str):
            self._check_text(content)
            ids, offsets = self.base.encode_with_offsets(content)
            return self._checked_ids(ids), content, offsets
        return self._tokens(content), None, None

    def _tokens(self, content: str | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(content, str):
            self._check_text(content)
            return self._checked_ids(self.base.encode(content, add_bos=False))
        if isinstance(content, bytes | bytearray):
            raise InvalidInputError("ingest takes text (str) or token ids; decode bytes first")
        if not isinstance(content, Sequence | np.ndarray):
            raise InvalidInputError(
                f"ingest takes text (str) or token ids (a list or numpy array), got "
                f"{type(content).__name__}"
            )
        return self._checked_ids(list(np.asarray(content).tolist()))

    @staticmethod
    def _check_text(text: str) -> None:
        if not text:
            raise InvalidInputError("cannot ingest empty text")
        if "\x00" in text:
            raise InvalidInputError("text contains NUL characters: is this a binary file?")

    def _checked_ids(self, ids: list[int]) -> np.ndarray:
        if not ids:
            raise InvalidInputError("nothing to ingest: the content has no tokens")
        return as_token_ids(np.asarray(ids), self.base.vocab_size).astype(np.int64)

    def _index_new_blocks(self, blocks_before: int) -> None:
        blocks = self.tree.blocks
        if blocks <= blocks_before:
            return
        K = self.tree.K
        ids = self.tree.tokens(blocks_before * K, blocks * K).reshape(-1, K)
        self.lexical.add_blocks(blocks_before, [self.base.decode(row.tolist()) for row in ids])
        lineage = self.lineage()
        if lineage is not None:
            lineage.extend(self.tree)

    def lineage(self) -> Lineage | None:
        """The tree's lineage hashes (:mod:`megacontext.store.lineage`); ``None`` without a
        metadata database."""
        if self.metadata is None:
            return None
        return Lineage(self.metadata, self.tree_id, self.tree.K)

    def _assemble(self) -> WorkingContext:
        return WorkingContext.assemble(
            self.tree.num_tokens,
            self.config.W_max,
            K=self.tree.K,
            protected_recent=int(self.config.protected_recent or 0),
            gists_per_node=self.tree.gists_per_node,
        )

    def reset_focus(self) -> None:
        """Start focus afresh: the working context assembled anew (recency), counters reset."""
        self._check_open()
        self.engine.state = type(self.engine.state)()
        self._reassemble()

    def resize(self, W_max: int) -> None:
        """Change the working-context budget and assemble the context anew for it.

        The protected recent window and ``collapse_ahead`` follow the new budget unless they
        were set explicitly when the session was opened.
        """
        self._check_open()
        self.config = self.config.resized(W_max)
        self.engine.state = type(self.engine.state)()  # cooldowns name entries of the old WC
        self._reassemble()

    # ----------------------------------------------------------------------------- decoding

    def generate(
        self,
        prompt: str | Sequence[int] | None = None,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """Stream the continuation of the history (after appending ``prompt`` to it).

        The prompt goes into the tree like everything else, however long it is. Each generated
        token is appended too, and the working context is refocused every ``refocus_every``
        tokens; refocus steps while generating edit only the last ``refocus_reach`` positions,
        and so does the first one of a call without a prompt that continues the last
        generation (with a prompt, or after an ingest, it reaches everywhere). Decoding stops
        at the base's end-of-turn tokens, at a string of ``stop``, or after
        ``max_new_tokens``. On disk the prompt and the generated tokens are recorded as one
        source (kind ``generated``), kept even when generation is interrupted.
        """
        self._check_writable()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InvalidInputError(
                f"max_new_tokens must be an integer, got {type(max_new_tokens).__name__} "
                f"{max_new_tokens!r}"
            )
        if max_new_tokens < 0:
            raise InvalidInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if isinstance(stop, str) or not all(isinstance(x, str) for x in stop):
            raise InvalidInputError("stop must be a list of strings, e.g. stop=['\\n\\n']")
        ids = self._tokens(prompt) if prompt else None
        if ids is None and self.tree.num_tokens == 0:
            raise InvalidInputError("the history is empty: ingest something or give a prompt")
        # Checked above, at the call; the tokens are appended as the caller iterates.
        return self._journaled_generation(ids, max_new_tokens, stop)

    def _journaled_generation(
        self, prompt: np.ndarray | None, max_new_tokens: int, stop: Sequence[str]
    ) -> Iterator[str]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        uri = f"megacontext:generated/{stamp}/{uuid.uuid4().hex[:8]}"
        first = self.tree.num_tokens
        with self._journaled(uri, "generated", b"", {}, first, None, [], keep_on_error=True):
            yield from self._generate(prompt, max_new_tokens, stop)

    def _generate(
        self, prompt: np.ndarray | None, max_new_tokens: int, stop: Sequence[str]
    ) -> Iterator[str]:
        if prompt is not None:
            self._query_start = self.tree.num_tokens
            self._query = None
            self._append(prompt, refocus=False)
        if not self._is_current(self._focused):  # (else focused already: nothing new to plan)
            self.refocus(local=prompt is None and self._is_current(self._generated))
        generated: list[int] = []
        shown = ""
        for _ in range(max_new_tokens):
            token = self._next_token()
            if token in self.prompt.stop_ids:
                break
            generated.append(token)
            self._append(np.asarray([token], dtype=np.int64), refocus=True)
            self._generated = (self.wc, self.wc.version)
            text = self.base.decode(generated)
            if text.startswith(shown) and len(text) > len(shown):
                piece, shown = text[len(shown) :], text
                yield piece
            if any(s and s in shown for s in stop):
                break
        self.tree.flush()

    def _is_current(self, mark: tuple[WorkingContext, int] | None) -> bool:
        """Whether ``mark`` (a working context and its version) is the context as it is now."""
        return mark is not None and mark[0] is self.wc and mark[1] == self.wc.version

    def _append(self, ids: np.ndarray, refocus: bool) -> None:
        """Append tokens to the tree and the working context (collapsing to make room)."""
        blocks_before = self.tree.blocks
        self.tree.append(ids)
        self._index_new_blocks(blocks_before)
        if len(ids) > self.wc.W_max - self.wc.protected_recent:
            # More new tokens than the WC can take raw: re-assemble it over the whole history.
            self._reassemble()
            return
        remaining = len(ids)
        while remaining:
            step = min(remaining, self.wc.K - 1)
            self._make_room(step)
            self._crop(self.wc.extend(step).first_position)
            remaining -= step
            self._since_refocus += step
            if refocus and self._since_refocus >= int(self.config.refocus_every or 1):
                self.refocus(local=True)

    def _room_to_free(self, needed: int) -> int:
        """Positions to keep free after a plan that must make room for ``needed`` more."""
        most = self.wc.W_max - self.wc.protected_recent - 1
        if self.wc.length + needed > self.wc.W_max:
            needed = max(needed, int(self.config.collapse_ahead or 0))
        return min(needed, most)

    def _plan_with_room(self, scores: np.ndarray, local: bool) -> EditPlan:
        """The refocus plan, also freeing room for the tokens until the next refocus; with
        ``local``, editing only the last ``refocus_reach`` positions when that can free it.

        Collapses that make room rewrite the KV cache from the collapsed entry on, just as the
        refocus edits do; taking them in the same plan costs one suffix recompute per refocus
        instead of two (decode would otherwise collapse again a few tokens later). When room
        runs out, ``collapse_ahead`` entries are freed at once, so the following refocus steps
        need no collapse.
        """
        reserve = self._room_to_free(int(self.config.refocus_every or 1))
        return self._plan_within_reach(scores, (reserve, 0) if reserve > 0 else (0,), local)

    def _plan_within_reach(
        self, scores: np.ndarray, reserves: tuple[int, ...], local: bool
    ) -> EditPlan:
        """The plan for the first of ``reserves`` that can be kept free, tried within
        ``refocus_reach`` first (when ``local``) and then over the whole context: room for many
        tokens at once recomputes less per token, even over the whole context, than room for a
        few made again and again near the end. The last failure is raised."""
        reaches = (self._editable_from(), 0) if local else (0,)
        failure: BudgetError | None = None
        for reserve in reserves:
            for editable_from in dict.fromkeys(reaches):  # (0 once when the reach is whole)
                try:
                    return self.engine.plan(self.wc, scores, reserve, editable_from)
                except BudgetError as error:
                    failure = error
        assert failure is not None
        raise failure

    def _editable_from(self) -> int:
        """The first entry within ``refocus_reach`` positions of the working context's end."""
        assert self.config.refocus_reach is not None
        start = self.wc.length - self.config.refocus_reach
        return int(np.searchsorted(self.wc.offsets(), start, side="left")) if start > 0 else 0

    def _make_room(self, entries: int) -> None:
        """Collapse the least useful groups until ``entries`` more tokens fit (oldest first on
        ties, within ``refocus_reach`` of the end when they free enough there)."""
        if self.wc.length + entries <= self.wc.W_max:
            return
        scores = self._with_pins(np.zeros(self.wc.size))
        reserve = max(self._room_to_free(entries), entries)
        self._apply(self._plan_within_reach(scores, tuple(dict.fromkeys((reserve, entries))), True))

    def _reassemble(self) -> None:
        self.wc = self._assemble()
        self._drop_cache()
        for start, end in self.focus.pinned:
            self.focus.bring_back(start, end)

    def _apply(self, plan: EditPlan) -> None:
        if plan.edits:
            self.engine.apply(self.wc, plan)

    def _crop(self, first_changed: int) -> None:
        """The working context changed from input position ``first_changed`` on: drop that KV
        suffix."""
        keep = len(self._prefix) + first_changed
        if self._kv is not None and keep < self._kv_entries:
            self.base.crop_cache(self._kv, keep)
            self._kv_entries = keep

    def _drop_cache(self) -> None:
        self._kv, self._kv_entries = None, 0

    @torch.no_grad()
    def _next_token(self) -> int:
        wc, prefix = self.wc, self._prefix
        P = len(prefix)
        if self._kv is None:
            self._kv, self._kv_entries = self.base.new_cache(), 0
        start = self._kv_entries
        clock = time.perf_counter()
        device = self.base.device
        parts = []
        if start < P:
            parts.append(self.base.embed(torch.as_tensor(prefix[start:], device=device)))
        parts.append(self._vectors(wc, max(0, start - P)))
        vectors = torch.cat([p.to(self.base.dtype) for p in parts])[None]
        fetched = time.perf_counter()
        positions = wc_positions(wc, self.config.policy, offset=P)
        ids = np.concatenate([np.arange(P), positions.position_ids])[start:]
        extra: dict[str, torch.Tensor] = {}
        if self.config.policy != "compact" and self.base.quirks.position_kind == "rope":
            mu = np.concatenate([np.arange(P, dtype=np.float64), positions.mu])[start:]
            extra["mu"] = torch.as_tensor(mu, device=device)[None]
            if self.config.policy == "gaussian":
                sigma = np.concatenate([np.zeros(P), positions.sigma])[start:]
                extra["sigma"] = torch.as_tensor(sigma, device=device)[None]
        position_ids = torch.as_tensor(ids, device=device)[None]
        out = self.base.forward(vectors, position_ids, self._kv, **extra)
        self._base_seconds += time.perf_counter() - fetched
        metrics.record_forward(time.perf_counter() - fetched, P + wc.length - start, start)
        if self.timing_log is not None:
            self.timing_log.append(
                ForwardTiming(
                    P + wc.length - start, start, fetched - clock, time.perf_counter() - fetched
                )
            )
        self._kv, self._kv_entries = out.cache, P + wc.length
        return choose_token(
            out.logits[0, -1], self.config.temperature, self.config.top_k, self._rng
        )

    # ----------------------------------------------------------------------------- focus

    def refocus(self, *, make_room: bool = True, local: bool = False) -> StepTelemetry:
        """One refocus step: score (LensNet), plan and apply (the engine); telemetry to the trace.

        With ``make_room`` the plan also frees room for the tokens until the next refocus. With
        ``local`` (the steps taken while generating) it edits only the last ``refocus_reach``
        positions, unless room can be made nowhere else.
        """
        self._check_open()
        times: dict[str, float] = {}
        scores = self._with_pins(self._scores(times))
        before = layout_runs(self.wc.levels, self.wc.indices) if self.trace_path else None
        start = time.perf_counter()
        plan = (
            self._plan_with_room(scores, local)
            if make_room
            else self._plan_within_reach(scores, (0,), local)
        )
        times["allocator"] = time.perf_counter() - start
        done = self.engine.apply(self.wc, plan)
        times.update(done.seconds)
        self._since_refocus = 0
        self._focused = (self.wc, self.wc.version)
        stats = self.state.stats
        step = StepTelemetry(
            step=stats.steps,
            tokens=self.tree.num_tokens,
            entries=self.wc.size,
            utilization=self.wc.utilization,
            expands=plan.expands,
            collapses=plan.collapses,
            swap_rate=stats.swap_rate,
            mean_residency=stats.mean_residency,
            first_changed=done.first_changed,
            cache_hit_ratio=self.cache_stats.hit_ratio,
            seconds=times,
            base_seconds=self._base_seconds,
        )
        self._base_seconds = 0.0
        lens_scores = None if self.score_override is not None or not scores.any() else scores
        metrics.record_refocus(step, self.wc.W_max, lens_scores)
        cache = self.cache_stats
        metrics.record_page_cache(
            cache.hits - self._cache_seen[0], cache.misses - self._cache_seen[1]
        )
        self._cache_seen = (cache.hits, cache.misses)
        if self.trace_path is not None:
            assert before is not None
            self._trace(step, plan, before, scores)
        if self.timing_log is not None:
            self.timing_log.append(step)
        return step

    def _trace(
        self, step: StepTelemetry, plan: EditPlan, layout: list[list[int]], scores: np.ndarray
    ) -> None:
        if self._trace_file is None:
            assert self.trace_path is not None
            self.trace_path.parent.mkdir(exist_ok=True)
            self._trace_file = self.trace_path.open("a", encoding="utf-8")
        edits = [[e.kind.value, e.level, e.index] for e in plan.edits]
        # The text that came into view, so a trace can be read without the tree beside it.
        shown = []
        for e in plan.edits:
            if e.kind is EditKind.EXPAND and e.level == 1:
                a, b = e.index * self.tree.K, (e.index + 1) * self.tree.K
                text = self.base.decode(self.tree.tokens(a, b).tolist())
                shown.append({"level": e.level, "index": e.index, "tokens": [a, b], "text": text})
        # The context the step scored (runs of [level, first index, count]), the scores the
        # allocator planned with and LensNet's lexical and key evidence, one per entry:
        # explorers replay focus from them.
        record = {
            **asdict(step),
            "edits": edits,
            "expanded_text": shown,
            "layout": layout,
            "scores": [round(float(v), 3) for v in scores],
            **self._evidence,
        }
        self._trace_file.write(json.dumps(record) + "\n")
        self._trace_file.flush()

    def focus_for(
        self,
        query: Sequence[int] | np.ndarray,
        steps: int | None = None,
        until: Callable[[WorkingContext], bool] | None = None,
    ) -> int:
        """Refocus for an explicit ``query`` (token ids that are not appended to the history),
        up to ``steps`` times (default ``focus_steps``), stopping when a step plans nothing or
        ``until(wc)`` holds. Returns the number of steps that edited the context."""
        self._check_open()
        self._query = np.asarray(query, dtype=np.int64)
        edited = 0
        for _ in range(self.config.focus_steps if steps is None else steps):
            if until is not None and until(self.wc):
                break
            step = self.refocus(make_room=False)
            if not step.expands and not step.collapses:
                break
            edited += 1
        return edited

    def ask(
        self,
        question: str,
        *,
        cue: str = "",
        max_new_tokens: int = 64,
        remember: bool = False,
        focus_steps: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer ``question`` from the whole history, with citations.

        The working context is refocused for the question until focus converges (a step that
        plans nothing), at most ``focus_steps`` steps (default: the session's); then the base
        reads ``[prompt prefix][working context][question]`` in the session's prompt style and
        the answer is decoded. The answer cites the raw spans that focus brought into view for
        it (source and lines), most relevant first.

        The question is ephemeral: it occupies the working context's tail, not the history —
        unless ``remember``, in which case the question and the answer are appended afterwards
        (on disk, as a source of kind ``conversation``). A read-only session can ask, but not
        remember. ``cue`` starts the answer in the ``raw`` and ``chat-cue`` styles.
        ``on_text`` receives the answer as it is decoded, piece by piece (for streaming).
        """
        self._check_open()
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("the question is empty; ask something")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InvalidInputError(
                f"max_new_tokens must be an integer, got {type(max_new_tokens).__name__}"
            )
        if max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if focus_steps is not None and (
            isinstance(focus_steps, bool) or not isinstance(focus_steps, int) or focus_steps < 0
        ):
            raise InvalidInputError(f"focus_steps must be an integer >= 0, got {focus_steps!r}")
        if remember:
            self._check_writable()
        if self.tree.num_tokens == 0:
            raise InvalidInputError("the history is empty: ingest something before asking")
        started = time.perf_counter()
        raw_before = self._raw_positions()
        asked = f"{question} {cue}".strip()
        steps = self.focus_for(self.base.encode(asked, add_bos=False), steps=focus_steps)
        citations, spans = self._citations(raw_before)
        # What the base reads for this question, and what the answer cites: the audit trail's
        # record of which spans were placed into a model's context (and by whom).
        self.record(
            "ask",
            question[:200],
            {
                "question": question,
                "context": layout_runs(self.wc.levels, self.wc.indices),
                "new_raw_spans": [list(span) for span in spans],
                "citations": [c.label() for c in citations],
                "remember": remember,
            },
        )
        focused = time.perf_counter()
        question_ids = self.prompt.question_ids(self.base, question, cue)
        device = self.base.device
        with torch.no_grad():
            prefix = self.base.embed(torch.as_tensor(self._prefix, device=device))
            tail = self.base.embed(torch.as_tensor(question_ids, device=device))
            inputs = torch.cat([prefix, self.context_vectors().to(prefix.dtype), tail])
        decoded = decode(
            self.base,
            inputs,
            max_new_tokens,
            stop_ids=self.prompt.stop_ids,
            stop_text=self.prompt.stop_text,
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            generator=self._rng,
            on_text=on_text,
            on_forward=metrics.record_forward,
        )
        seconds = {"focus": focused - started, "decode": time.perf_counter() - focused}
        self._query = None
        if remember:
            self._remember(self.prompt.question_text(question, cue) + decoded.text)
        return Answer(decoded.text, decoded.ids, steps, seconds, citations, spans)

    def _remember(self, spoken: str) -> None:
        """Append a question and its answer to the history (a ``conversation`` source)."""
        ids, text, offsets = self._tokens_with_offsets(spoken)
        first = self.tree.num_tokens
        rows = plan_spans(text, offsets, first, len(ids), self.tree.K)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        uri = f"megacontext:conversation/{stamp}/{uuid.uuid4().hex[:8]}"
        with self._journaled(
            uri, "conversation", spoken.encode("utf-8"), {}, first, first + len(ids), rows
        ):
            self._query_start = first
            self._append(ids, refocus=False)
            self.tree.flush()

    def _raw_positions(self) -> set[int]:
        raw = self.wc.levels == 0
        return set(self.wc.indices[raw].tolist())

    def _citations(self, raw_before: set[int]) -> tuple[list[Citation], list[tuple[int, int]]]:
        """The raw spans in view now that were not in ``raw_before``, cited, best score first."""
        raw = self.wc.levels == 0
        spans = raw_runs(raw_before, sorted(self.wc.indices[raw].tolist()))
        if self.access is not None:  # a restricted span is never cited (it was not shown)
            spans = [
                (a, b)
                for a, b in spans
                if not self.access.overlaps(np.array([a]), np.array([b]))[0]
            ]
        if not spans:
            return [], []
        scores = self._with_pins(self._scores({}))
        position = {int(i): p for p, i in enumerate(self.wc.indices) if self.wc.levels[p] == 0}
        citations: list[Citation] = []
        for a, b in spans:
            score = float(np.mean([scores[position[t]] for t in range(a, b)]))
            text = self.base.decode(self.tree.tokens(a, b).tolist())
            citations += cite(self.metadata, self.tree_id, a, b, score, text)
        citations.sort(key=lambda c: (-c.score, c.tokens[0]))
        return citations, spans

    def _with_pins(self, scores: np.ndarray) -> np.ndarray:
        """The scores the allocator plans with: pinned entries wanted, and LOD1 blocks that
        touch restricted text (their tokens could only be redactions) or lie in avoided text
        (``focus.avoid``) never expanded."""
        if self.focus.avoided:
            avoided = self.focus.avoided_mask(self.wc)
            if avoided.any():
                scores = scores.copy()
                scores[avoided] = NEVER_EXPAND
        if self.focus.pinned:
            scores = scores.copy()
            scores[self.focus.pinned_mask(self.wc)] = 1.0
        if self.access is not None and not self.access.empty:
            frozen = self.access.mask(self.wc) & (self.wc.levels == 1)
            if frozen.any():
                scores = scores.copy()
                scores[frozen] = NEVER_EXPAND
        return scores

    def _scores(self, times: dict[str, float]) -> np.ndarray:
        """Scores of the entries: the override; else LensNet's (zeros without one: recency
        focus), blended with the lexical and key evidence when ``focus.prior`` is set."""
        start = time.perf_counter()
        self._evidence = {}
        if self.score_override is not None:
            scores = self.score_override(self.wc)
            times["fetch"], times["lensnet"] = 0.0, time.perf_counter() - start
            return scores
        use_lens = self.lensnet is not None and self.config.use_lens
        prior = self.focus.prior
        if not self.wc.size or (not use_lens and prior is None):
            times["fetch"] = times["lensnet"] = 0.0
            return np.zeros(self.wc.size)
        query = self.focus_query()
        if use_lens:
            inputs = self.scorer.inputs(self.wc, query)
            features = inputs.features[0].cpu().numpy()
        else:
            features = self.scorer.features(self.wc, query)
        fetched = time.perf_counter()
        if self.trace_path is not None:
            self._evidence = {
                name: [round(float(v), 3) for v in features[:, FEATURES.index(name)]]
                for name in ("lexical", "key_sim")
            }
        scores = np.zeros(self.wc.size)
        if use_lens:
            assert self.lensnet is not None
            with torch.no_grad():
                scores = self.lensnet(*inputs)[0].float().cpu().numpy()
        if prior is not None:
            scores = prior.blend(
                self.wc.spans()[0],
                scores,
                features[:, FEATURES.index("lexical")],
                features[:, FEATURES.index("key_sim")],
            )
        times["fetch"], times["lensnet"] = fetched - start, time.perf_counter() - fetched
        return scores

    def query_ids(self) -> np.ndarray:
        """The tokens LensNet focuses for: an explicit query given to :meth:`focus_for`, else the
        last ``query_tokens`` tokens, but none from before the latest input (the last ``ingest``
        call or ``generate`` prompt) while it is shorter."""
        if self._query is not None:
            return self._query
        n = self.tree.num_tokens
        start = max(n - self.config.query_tokens, 0)
        if self._query_start < n:
            start = max(start, self._query_start)
        return self.tree.tokens(start, n).astype(np.int64)

    def focus_query(self) -> FocusQuery:
        """The :class:`FocusQuery` of :meth:`query_ids` (text and key included)."""
        ids = self.query_ids()
        cached = self._focus_query
        if cached is None or not np.array_equal(cached.ids, ids):
            cached = self._focus_query = FocusQuery.of(self.base, self.gistnet, ids)
        return cached

    @property
    def cache_stats(self) -> CacheStats:
        """Hits and misses of the tree's page cache (tokens and gists) since the session opened."""
        backend = self.tree.backend
        return backend.cache.stats if isinstance(backend, CachedBackend) else CacheStats()

    # ----------------------------------------------------------------------------- views

    def context_vectors(self) -> torch.Tensor:
        """``(length, d)`` input vectors of the working context (token embeddings and gists;
        the redaction vector for entries the principal may not see)."""
        with torch.no_grad():
            return self._vectors(self.wc, 0)

    def _vectors(self, wc: WorkingContext, start: int) -> torch.Tensor:
        """What the base reads of ``wc`` from input position ``start`` on: every base input of
        the context comes through here, so the access filter cannot be bypassed."""
        vectors = input_vectors(wc, self.tree, self.base, start)
        if self.access is None:
            return vectors
        if self._redaction is None:
            self._redaction = redaction_vector(self.base)
        hidden = self.access.mask(wc)
        if wc.gists_per_node > 1:  # one flag per input position
            hidden = np.repeat(hidden, entry_costs(wc.levels, wc.gists_per_node))
        return redact(vectors, hidden[start:], self._redaction)

    def restrict(self, labels: Iterable[str] | None) -> int:
        """Show the history as a principal holding ``labels`` sees it: sources with an access
        label it lacks are restricted (:mod:`megacontext.focus.access`). ``None`` lifts the
        restriction. Returns the number of restricted sources. Sources labelled after this
        call are restricted at the next call."""
        self._check_open()
        self._drop_cache()
        if labels is None:
            self.access = self.scorer.access = None
            return 0
        if self.metadata is None:
            raise InvalidInputError("an in-memory session has no sources to restrict")
        held = {label for label in labels if label}
        policies = Policies(self.metadata, self.tree_id).all()
        ranges = [
            (i.start, i.stop)
            for i in self.metadata.ingests_of(self.tree_id, COMPLETE)
            if i.stop is not None and i.id in policies and not set(policies[i.id].labels) <= held
        ]
        self.access = self.scorer.access = AccessFilter(ranges)
        return len(ranges)

    def working_context(self) -> list[EntryView]:
        """The entries of the working context, oldest first, with text previews of raw tokens."""
        starts, ends = self.wc.spans()
        hidden = self.access.mask(self.wc) if self.access is not None else None
        out = []
        for pos in range(self.wc.size):
            level, index = int(self.wc.levels[pos]), int(self.wc.indices[pos])
            preview = ""
            if hidden is not None and hidden[pos]:
                preview = REDACTION_TEXT.strip()
            elif level == 0:
                preview = self.base.decode([int(self.tree.tokens(index, index + 1)[0])])
            out.append(EntryView(level, index, int(starts[pos]), int(ends[pos]), preview))
        return out

    # ----------------------------------------------------------------------------- lifecycle

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidInputError("this session is closed; open it again with megacontext.open")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise InvalidInputError(
                "this session was opened read-only (beside a writer): it can ask, but not "
                "ingest, generate or remember; open it without readonly=True to change it"
            )

    def close(self) -> None:
        if self.closed:
            return
        if not self.readonly:
            self.tree.flush()
        for store in self._stores:
            store.close()
        self.lexical.close()
        if self.metadata is not None:
            self.metadata.close()
        if self._audit_db is not None:
            self._audit_db.close()
        if self._trace_file is not None:
            self._trace_file.close()
        if self.lora is not None:
            self.lora.detach()  # the base is bit-identical again
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_actor() -> str:
    """Who acts through a session opened on this machine: ``local:`` and the login name."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"local:uid-{os.getuid()}"


def _checked_metadata(metadata: object) -> dict[str, Any]:
    """``metadata`` as stored: a dict with string keys that JSON can hold (checked before a
    single token is written)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInputError(
            f"metadata must be a dict with string keys, got {type(metadata).__name__}"
        )
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"metadata must be JSON (strings, numbers, lists, dicts): {exc}"
        ) from None
    return dict(metadata)


def check_lora_free(base: BaseAdapter) -> None:
    """Refuse a second LoRA bundle on one loaded base (adapters cannot be stacked)."""
    if hasattr(base.model, "peft_config"):
        raise InvalidInputError(
            "the base already carries LoRA adapters (another open session with a LoRA bundle?); "
            "close that session, or open this one with SessionConfig(use_lora=False)"
        )


__all__ = ["Answer", "EntryView", "ForwardTiming", "Ingested", "Session", "check_lora_free"]
