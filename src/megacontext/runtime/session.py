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

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.core import (
    AllocatorConfig,
    EditPlan,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
    as_token_ids,
    wc_positions,
)
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.focus import FocusEngine, FocusQuery, LensScorer, StepTelemetry
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import Bundle
from megacontext.models.context import GistNetGister, entry_vectors
from megacontext.models.generation import choose_token, decode
from megacontext.models.lensnet import LensNet
from megacontext.models.prompting import PromptFormat
from megacontext.runtime.config import SessionConfig
from megacontext.runtime.focus_control import Focus
from megacontext.store.cache import CachedBackend, CacheStats
from megacontext.store.lexical import AnyLexicalIndex, LexicalIndex
from megacontext.store.local import LocalStore

Scores = Callable[[WorkingContext], np.ndarray]


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
    """What :meth:`Session.ask` returns."""

    text: str
    ids: list[int]
    focus_steps: int  # refocus steps that edited the working context for this question
    seconds: dict[str, float]  # "focus", "decode"


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

    def __init__(
        self,
        path: Path | None,
        base: BaseAdapter,
        bundle: Bundle,
        tree: MegaContextTree,
        stores: Sequence[LocalStore],
        lexical: AnyLexicalIndex,
        config: SessionConfig,
    ):
        self.path = path
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
        self._focused: tuple[WorkingContext, int] | None = None  # the WC version last refocused
        # Where the latest input (an ingest call or a prompt) starts: LensNet's query is read
        # from there on, so a question is not diluted by the document text before it.
        self._query_start = 0
        self._query: np.ndarray | None = None  # an explicit query (focus_for), not in the tree
        self._focus_query: FocusQuery | None = None  # cached for the query ids it was built for
        self._rng = torch.Generator().manual_seed(config.seed)
        self._trace_file = None
        self.trace_path: Path | None = None
        if config.trace and path is not None:
            traces = path / "traces"
            traces.mkdir(exist_ok=True)
            self.trace_path = traces / f"session-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
            self._trace_file = self.trace_path.open("a", encoding="utf-8")
        self.lora: Any = None
        if config.use_lora and bundle.lora is not None:
            check_lora_free(base)
            self.lora = bundle.attach_lora(base)
        self.closed = False
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
            MemoryBackend(base.d_model, np.float32),
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
        content: str | Sequence[int] | np.ndarray,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Append text (tokenized with the base's tokenizer) or token ids to the history.

        Records provenance when ``source`` is given. Returns the number of tokens appended.
        """
        self._check_open()
        ids = self._tokens(content)
        if source is not None and not self._stores:
            raise InvalidInputError("an in-memory session keeps no provenance; drop source=")
        first = self.tree.num_tokens
        blocks_before = self.tree.blocks
        self.tree.append(ids)
        self._index_new_blocks(blocks_before)
        self.tree.flush()
        self._reassemble()
        self._query_start = first
        if source is not None:
            raw = content.encode("utf-8") if isinstance(content, str) else np.asarray(ids).tobytes()
            db = self._stores[0].metadata()
            try:
                source_id = db.add_source(
                    source, "text" if isinstance(content, str) else "tokens", raw, metadata
                )
                db.add_span(
                    self._stores[0].manifest.tree_id,
                    0,
                    first,
                    first + len(ids),
                    source_id,
                    gist_version=self.gistnet.weights_version(),
                )
            finally:
                db.close()
        return len(ids)

    def _tokens(self, content: str | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(content, bytes | bytearray):
            raise InvalidInputError("ingest takes text (str) or token ids; decode bytes first")
        if isinstance(content, str):
            if not content:
                raise InvalidInputError("cannot ingest empty text")
            if "\x00" in content:
                raise InvalidInputError("text contains NUL characters: is this a binary file?")
            ids = self.base.encode(content, add_bos=False)
        else:
            ids = list(np.asarray(content).tolist())
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

    def _assemble(self) -> WorkingContext:
        return WorkingContext.assemble(
            self.tree.num_tokens,
            self.config.W_max,
            K=self.tree.K,
            protected_recent=int(self.config.protected_recent or 0),
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
        tokens. Decoding stops at the base's end-of-turn tokens, at a string of ``stop``, or
        after ``max_new_tokens``.
        """
        self._check_open()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InvalidInputError(
                f"max_new_tokens must be an integer, got {type(max_new_tokens).__name__}"
            )
        if max_new_tokens < 0:
            raise InvalidInputError("max_new_tokens must be >= 0")
        if prompt:
            self._query_start = self.tree.num_tokens
            self._query = None
            self._append(self._tokens(prompt), refocus=False)
        if self.tree.num_tokens == 0:
            raise InvalidInputError("the history is empty: ingest something or give a prompt")
        focused = self._focused
        if focused is None or focused[0] is not self.wc or focused[1] != self.wc.version:
            self.refocus()  # (an unchanged context was focused already: nothing new to plan)
        generated: list[int] = []
        shown = ""
        for _ in range(max_new_tokens):
            token = self._next_token()
            if token in self.prompt.stop_ids:
                break
            generated.append(token)
            self._append(np.asarray([token], dtype=np.int64), refocus=True)
            text = self.base.decode(generated)
            if text.startswith(shown) and len(text) > len(shown):
                piece, shown = text[len(shown) :], text
                yield piece
            if any(s and s in shown for s in stop):
                break
        self.tree.flush()

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
            self._crop(self.wc.extend(step).first_changed)
            remaining -= step
            self._since_refocus += step
            if refocus and self._since_refocus >= self.config.refocus_every:
                self.refocus()

    def _room_to_free(self, needed: int) -> int:
        """Entries to keep free after a plan that must make room for ``needed`` more."""
        most = self.wc.W_max - self.wc.protected_recent - 1
        if self.wc.size + needed > self.wc.W_max:
            needed = max(needed, int(self.config.collapse_ahead or 0))
        return min(needed, most)

    def _plan_with_room(self, scores: np.ndarray) -> EditPlan:
        """The refocus plan, also freeing room for the tokens until the next refocus.

        Collapses that make room rewrite the KV cache from the collapsed entry on, just as the
        refocus edits do; taking them in the same plan costs one suffix recompute per refocus
        instead of two (decode would otherwise collapse again a few tokens later). When room
        runs out, ``collapse_ahead`` entries are freed at once, so the following refocus steps
        need no collapse.
        """
        reserve = self._room_to_free(self.config.refocus_every)
        if reserve > 0:
            try:
                return self.engine.plan(self.wc, scores, reserve)
            except BudgetError:
                pass  # not enough collapsible history yet: plan without the reserve
        return self.engine.plan(self.wc, scores)

    def _make_room(self, entries: int) -> None:
        """Collapse the least useful groups until ``entries`` more fit (oldest first on ties)."""
        if self.wc.size + entries <= self.wc.W_max:
            return
        scores = self._with_pins(np.zeros(self.wc.size))
        reserve = max(self._room_to_free(entries), entries)
        try:
            plan = self.engine.plan(self.wc, scores, reserve)
        except BudgetError:
            if reserve == entries:
                raise
            plan = self.engine.plan(self.wc, scores, entries)
        self._apply(plan)

    def _reassemble(self) -> None:
        self.wc = self._assemble()
        self._drop_cache()
        for start, end in self.focus.pinned:
            self.focus.bring_back(start, end)

    def _apply(self, plan: EditPlan) -> None:
        if plan.edits:
            self.engine.apply(self.wc, plan)

    def _crop(self, first_changed: int) -> None:
        """The working context changed from entry ``first_changed`` on: drop that KV suffix."""
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
        parts.append(entry_vectors(wc, self.tree, self.base, max(0, start - P)))
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
        if self.timing_log is not None:
            self.timing_log.append(
                ForwardTiming(
                    P + wc.size - start, start, fetched - clock, time.perf_counter() - fetched
                )
            )
        self._kv, self._kv_entries = out.cache, P + wc.size
        return choose_token(
            out.logits[0, -1], self.config.temperature, self.config.top_k, self._rng
        )

    # ----------------------------------------------------------------------------- focus

    def refocus(self, *, make_room: bool = True) -> StepTelemetry:
        """One refocus step: score (LensNet), plan and apply (the engine); telemetry to the trace.

        With ``make_room`` the plan also frees room for the tokens until the next refocus.
        """
        self._check_open()
        times: dict[str, float] = {}
        scores = self._with_pins(self._scores(times))
        start = time.perf_counter()
        plan = self._plan_with_room(scores) if make_room else self.engine.plan(self.wc, scores)
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
        if self._trace_file is not None:
            edits = [[e.kind.value, e.level, e.index] for e in plan.edits]
            self._trace_file.write(json.dumps({**asdict(step), "edits": edits}) + "\n")
            self._trace_file.flush()
        if self.timing_log is not None:
            self.timing_log.append(step)
        return step

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
    ) -> Answer:
        """Answer ``question`` from the whole history.

        The working context is refocused for the question (up to ``focus_steps`` steps), then
        the base reads ``[prompt prefix][working context][question]`` in the session's prompt
        style and the answer is decoded. The question is not written into the history unless
        ``remember``, in which case the question and the answer are appended to it afterwards.
        ``cue`` starts the answer in the ``raw`` and ``chat-cue`` styles.
        """
        self._check_open()
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("the question is empty; ask something")
        if self.tree.num_tokens == 0:
            raise InvalidInputError("the history is empty: ingest something before asking")
        started = time.perf_counter()
        asked = f"{question} {cue}".strip()
        steps = self.focus_for(self.base.encode(asked, add_bos=False))
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
        )
        seconds = {"focus": focused - started, "decode": time.perf_counter() - focused}
        self._query = None
        if remember:
            spoken = self.prompt.question_text(question, cue) + decoded.text
            self._query_start = self.tree.num_tokens
            self._append(self._tokens(spoken), refocus=False)
            self.tree.flush()
        return Answer(decoded.text, decoded.ids, steps, seconds)

    def _with_pins(self, scores: np.ndarray) -> np.ndarray:
        if not self.focus.pinned:
            return scores
        scores = scores.copy()
        scores[self.focus.pinned_mask(self.wc)] = 1.0
        return scores

    def _scores(self, times: dict[str, float]) -> np.ndarray:
        """Scores of the entries: the override, LensNet's, or zeros (recency focus)."""
        start = time.perf_counter()
        if self.score_override is not None:
            scores = self.score_override(self.wc)
            times["fetch"], times["lensnet"] = 0.0, time.perf_counter() - start
            return scores
        if self.lensnet is None or not self.config.use_lens or not self.wc.size:
            times["fetch"] = times["lensnet"] = 0.0
            return np.zeros(self.wc.size)
        inputs = self.scorer.inputs(self.wc, self.focus_query())
        fetched = time.perf_counter()
        with torch.no_grad():
            scores = self.lensnet(*inputs)[0].float().cpu().numpy()
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
        """``(W, d)`` input vectors of the working context (token embeddings and gists)."""
        with torch.no_grad():
            return entry_vectors(self.wc, self.tree, self.base)

    def working_context(self) -> list[EntryView]:
        """The entries of the working context, oldest first, with text previews of raw tokens."""
        starts, ends = self.wc.spans()
        out = []
        for pos in range(self.wc.size):
            level, index = int(self.wc.levels[pos]), int(self.wc.indices[pos])
            preview = ""
            if level == 0:
                preview = self.base.decode([int(self.tree.tokens(index, index + 1)[0])])
            out.append(EntryView(level, index, int(starts[pos]), int(ends[pos]), preview))
        return out

    # ----------------------------------------------------------------------------- lifecycle

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidInputError("this session is closed; open it again with megacontext.open")

    def close(self) -> None:
        if self.closed:
            return
        self.tree.flush()
        for store in self._stores:
            store.close()
        self.lexical.close()
        if self._trace_file is not None:
            self._trace_file.close()
        if self.lora is not None:
            self.lora.detach()  # the base is bit-identical again
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_lora_free(base: BaseAdapter) -> None:
    """Refuse a second LoRA bundle on one loaded base (adapters cannot be stacked)."""
    if hasattr(base.model, "peft_config"):
        raise InvalidInputError(
            "the base already carries LoRA adapters (another open session with a LoRA bundle?); "
            "close that session, or open this one with SessionConfig(use_lora=False)"
        )


__all__ = ["Answer", "EntryView", "ForwardTiming", "Session", "check_lora_free"]
