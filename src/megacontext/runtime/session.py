"""The MegaContext session: ingest → refocus → decode over an unbounded history (DESIGN §1).

A session directory holds everything a history needs::

    session/
      session.json      base model, focus bundle, working-context settings
      tree/             the durable tree store (tokens, gists) + meta.sqlite (provenance)
      keys/             retrieval keys, one per gist, beside the tree (D7)
      lexical.sqlite    BM25 index of LOD1 blocks (D7; in PostgreSQL with a metadata_url there)
      traces/           per-step focus telemetry (JSONL)

The loop: new tokens are appended to the tree (gisted as blocks complete) and to the working
context; every ``refocus_every`` tokens LensNet scores the entries, the allocator plans and the plan
is applied; the base runs with its KV cache reused up to the first edited entry (D10).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.core import (
    AllocatorConfig,
    AllocatorState,
    Edit,
    EditKind,
    EditPlan,
    FocusAllocator,
    MegaContextTree,
    WorkingContext,
    wc_positions,
)
from megacontext.core.positions import PositionPolicy
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import Bundle, default_focus_dir
from megacontext.models.context import GistNetGister, entry_vectors
from megacontext.models.lensnet import LensNet
from megacontext.store.cache import CachedBackend, CacheStats, PageCache
from megacontext.store.lexical import AnyLexicalIndex, open_lexical_index
from megacontext.store.local import LocalStore
from megacontext.store.manifest import Fingerprints


@dataclass
class SessionConfig:
    """Working-context and decoding settings of a session."""

    W_max: int = 512
    protected_recent: int | None = None  # default: a quarter of W_max, at most 128
    policy: PositionPolicy = "compact"
    refocus_every: int = 32
    # Entries freed at once when the working context runs out of room (default W_max // 8, at
    # least refocus_every). A collapse rewrites the KV cache from the collapsed entry on, usually
    # most of the context; freeing room for many tokens at once pays that recompute once per
    # that many tokens instead of once per refocus, at the cost of a slightly emptier context.
    collapse_ahead: int | None = None
    use_lens: bool = True
    max_edits: int = 4
    # Focus thresholds on LensNet's scores (see AllocatorConfig); the eval harness uses these
    # defaults too. The shipped LensNet asks for detail with small positive scores: with the
    # earlier thresholds (expand 0.1, min gain 0.05) the demo's session made no expansion at all.
    # Voluntary collapses are off: only room for new tokens collapses.
    expand_threshold: float = 0.0
    min_gain: float = 0.0
    collapse_threshold: float = 1.0
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    query_tokens: int = 32
    trace: bool = True
    # Read gists through the bundle's LoRA adapters when it has them (co-learning, issue 6 §6);
    # they are attached to the base while the session is open and detached on close.
    use_lora: bool = True
    # Nodes gisted per GistNet forward. Bounds ingest memory: a 64k-token ingest gisted in one
    # batch held about 1 GB of activations; 256 LOD1 nodes are 8k tokens per forward.
    gist_batch: int = 256
    # Pages (256 records each) kept per store in the read cache; bounds its memory (at d_model
    # 256 in float16, 64 gist pages are 8 MiB).
    cache_pages: int = 64

    def __post_init__(self) -> None:
        if self.protected_recent is None:
            self.protected_recent = min(128, self.W_max // 4)
        if self.protected_recent > self.W_max:
            raise BudgetError(
                f"W_max={self.W_max} is smaller than the protected recent window "
                f"({self.protected_recent}); raise W_max or lower protected_recent"
            )
        if self.refocus_every < 1:
            raise InvalidInputError("refocus_every must be >= 1")
        if self.collapse_ahead is None:
            self.collapse_ahead = max(self.refocus_every, self.W_max // 8)
        if not 0 <= self.collapse_ahead <= self.W_max - self.protected_recent:
            raise InvalidInputError(
                f"collapse_ahead must be in [0, W_max - protected_recent = "
                f"{self.W_max - self.protected_recent}], got {self.collapse_ahead}"
            )
        if self.gist_batch < 1:
            raise InvalidInputError(f"gist_batch must be >= 1, got {self.gist_batch}")
        if self.cache_pages < 1:
            raise InvalidInputError(f"cache_pages must be >= 1, got {self.cache_pages}")


@dataclass(frozen=True)
class EntryView:
    """One working-context entry, for people."""

    level: int
    index: int
    start: int
    end: int
    preview: str = ""


@dataclass
class StepTelemetry:
    """What one refocus step did and where its time went."""

    step: int
    tokens: int
    entries: int
    utilization: float
    expands: int
    collapses: int
    swap_rate: float
    mean_residency: float
    first_changed: int
    # "fetch" (LensNet's input vectors), "lensnet" (features + forward), "allocator", "apply".
    seconds: dict[str, float] = field(default_factory=dict)
    cache_hit_ratio: float = 0.0  # of the tree's page cache since the session opened
    # The base's forwards (decoding, and the KV recomputes after edits) since the previous step.
    base_seconds: float = 0.0


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


class Focus:
    """Manual focus control, still subject to legality and the budget."""

    def __init__(self, session: Session):
        self._s = session
        self.pinned: list[tuple[int, int]] = []

    def expand(self, level: int, index: int) -> None:
        """Open gist ``(level, index)``, paying with the least useful collapse if needed."""
        s = self._s
        pos = s.wc.entry_of(level, index)
        if pos is None or level < 1:
            s._apply(EditPlan(s.wc.version, (Edit.expand(level, index),)))  # raises, names why
            return
        if s.wc.size + s.wc.K - 1 <= s.wc.W_max:
            s._apply(EditPlan(s.wc.version, (Edit.expand(level, index),)))
            return
        # One plan: this expansion, paid by the lowest-scoring group that does not contain it.
        scores = s._with_pins(np.zeros(s.wc.size))
        scores[pos] = 1.0
        plan = s.allocator.plan(s.wc, scores, s.state)
        wanted = Edit.expand(level, index)
        if wanted not in plan.edits:
            raise BudgetError(
                f"no legal collapse can pay for expanding (level {level}, index {index}) within "
                f"W_max={s.wc.W_max}; unpin something or raise W_max"
            )
        s._apply(
            EditPlan(
                plan.wc_version,
                tuple(e for e in plan.edits if e == wanted or e.kind is EditKind.COLLAPSE),
            )
        )

    def collapse(self, level: int, index: int) -> None:
        """Replace the K children of node ``(level, index)`` by the node."""
        s = self._s
        s._apply(EditPlan(s.wc.version, (Edit.collapse(level, index),)))

    def pin(self, start: int, end: int) -> None:
        """Bring tokens ``[start, end)`` back to raw detail and keep them there.

        Gists covering the range are expanded (paid for by collapses elsewhere); pinned entries
        score as high as possible afterwards, so the allocator gives them up last.
        """
        s = self._s
        if not 0 <= start < end <= s.tree.num_tokens:
            raise InvalidInputError(
                f"pin range [{start}, {end}) is outside the history [0, {s.tree.num_tokens})"
            )
        self.pinned.append((start, end))
        self.bring_back(start, end)

    def bring_back(self, start: int, end: int) -> None:
        """Expand every gist that covers tokens ``[start, end)``, coarsest first."""
        s = self._s
        while True:
            starts, ends = s.wc.spans()
            covering = np.flatnonzero((ends > start) & (starts < end) & (s.wc.levels > 0))
            if not covering.size:
                return
            pos = int(covering[np.argmax(s.wc.levels[covering])])
            self.expand(int(s.wc.levels[pos]), int(s.wc.indices[pos]))

    def pinned_mask(self, wc: WorkingContext) -> np.ndarray:
        starts, ends = wc.spans()
        mask = np.zeros(wc.size, dtype=bool)
        for lo, hi in self.pinned:
            mask |= (ends > lo) & (starts < hi)
        return mask


class Session:
    """An open history: the tree on disk, its working context, and the models that read it."""

    def __init__(
        self,
        path: Path,
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
        self.allocator = FocusAllocator(
            AllocatorConfig(
                max_edits=config.max_edits,
                expand_threshold=config.expand_threshold,
                min_gain=config.min_gain,
                collapse_threshold=config.collapse_threshold,
            )
        )
        self.state = AllocatorState()
        self.focus = Focus(self)
        self.wc = self._assemble()
        self._kv: Any = None
        self._kv_entries = 0
        self._since_refocus = 0
        self._base_seconds = 0.0  # base forwards since the last refocus step (telemetry)
        self._focused: tuple[WorkingContext, int] | None = None  # the WC version last refocused
        # Where the latest input (an ingest call or a prompt) starts: LensNet's query is read
        # from there on, so a question is not diluted by the document text before it.
        self._query_start = 0
        self._rng = torch.Generator().manual_seed(config.seed)
        self._trace_file = None
        if config.trace:
            traces = path / "traces"
            traces.mkdir(exist_ok=True)
            self.trace_path: Path | None = (
                traces / f"session-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
            )
            self._trace_file = self.trace_path.open("a", encoding="utf-8")
        else:
            self.trace_path = None
        self.lora: Any = None
        if config.use_lora and bundle.lora is not None:
            _check_lora_free(base)
            self.lora = bundle.attach_lora(base)
        self.closed = False
        # Set to a list to record every refocus step and decoding forward, in order (benchmarks).
        self.timing_log: list[StepTelemetry | ForwardTiming] | None = None

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
        first = self.tree.num_tokens
        blocks_before = self.tree.count(1) if self.tree.num_levels else 0
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
        from megacontext.core import as_token_ids

        return as_token_ids(np.asarray(ids), self.base.vocab_size).astype(np.int64)

    def _index_new_blocks(self, blocks_before: int) -> None:
        blocks = self.tree.count(1) if self.tree.num_levels else 0
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
        tokens.
        """
        self._check_open()
        if max_new_tokens < 0:
            raise InvalidInputError("max_new_tokens must be >= 0")
        if prompt:
            self._query_start = self.tree.num_tokens
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
            generated.append(token)
            self._append(np.asarray([token], dtype=np.int64), refocus=True)
            text = self.base.decode(generated)
            if text.startswith(shown) and len(text) > len(shown):
                piece, shown = text[len(shown) :], text
                yield piece
            if self.base.eos_token_id is not None and token == self.base.eos_token_id:
                break
            if any(s and s in shown for s in stop):
                break
        self.tree.flush()

    def _append(self, ids: np.ndarray, refocus: bool) -> None:
        """Append tokens to the tree and the working context (collapsing to make room)."""
        blocks_before = self.tree.count(1) if self.tree.num_levels else 0
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
                return self.allocator.plan(self.wc, scores, self.state, reserve=reserve)
            except BudgetError:
                pass  # not enough collapsible history yet: plan without the reserve
        return self.allocator.plan(self.wc, scores, self.state)

    def _make_room(self, entries: int) -> None:
        """Collapse the least useful groups until ``entries`` more fit (oldest first on ties)."""
        if self.wc.size + entries <= self.wc.W_max:
            return
        scores = self._with_pins(np.zeros(self.wc.size))
        reserve = max(self._room_to_free(entries), entries)
        try:
            plan = self.allocator.plan(self.wc, scores, self.state, reserve=reserve)
        except BudgetError:
            if reserve == entries:
                raise
            plan = self.allocator.plan(self.wc, scores, self.state, reserve=entries)
        self._apply(plan)

    def _reassemble(self) -> None:
        self.wc = self._assemble()
        self._drop_cache()
        for start, end in self.focus.pinned:
            self.focus.bring_back(start, end)

    def _apply(self, plan: EditPlan) -> None:
        if not plan.edits:
            return
        result = self.wc.apply(plan)
        self.state.record(plan, self.wc, self.allocator.config.cooldown_steps)
        self._crop(result.first_changed)

    def _crop(self, first_changed: int) -> None:
        if self._kv is not None and first_changed < self._kv_entries:
            self.base.crop_cache(self._kv, first_changed)
            self._kv_entries = first_changed

    def _drop_cache(self) -> None:
        self._kv, self._kv_entries = None, 0

    @torch.no_grad()
    def _next_token(self) -> int:
        wc = self.wc
        if self._kv is None:
            self._kv, self._kv_entries = self.base.new_cache(), 0
        start = self._kv_entries
        clock = time.perf_counter()
        vectors = entry_vectors(wc, self.tree, self.base, start)[None]
        fetched = time.perf_counter()
        positions = wc_positions(wc, self.config.policy)
        ids = torch.as_tensor(positions.position_ids[start:], device=self.base.device)[None]
        extra: dict[str, torch.Tensor] = {}
        if self.config.policy != "compact" and self.base.quirks.position_kind == "rope":
            extra["mu"] = torch.as_tensor(positions.mu[start:], device=self.base.device)[None]
            if self.config.policy == "gaussian":
                extra["sigma"] = torch.as_tensor(positions.sigma[start:], device=self.base.device)[
                    None
                ]
        out = self.base.forward(vectors, ids, self._kv, **extra)
        self._base_seconds += time.perf_counter() - fetched
        if self.timing_log is not None:
            self.timing_log.append(
                ForwardTiming(
                    wc.size - start, start, fetched - clock, time.perf_counter() - fetched
                )
            )
        self._kv, self._kv_entries = out.cache, wc.size
        logits = out.logits[0, -1].float()
        if self.config.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / self.config.temperature
        if self.config.top_k:
            kth = torch.topk(logits, self.config.top_k).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, -torch.inf), logits)
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self._rng))

    # ----------------------------------------------------------------------------- focus

    def refocus(self) -> StepTelemetry:
        """One refocus step: score (LensNet), plan (allocator), apply; telemetry to the trace."""
        self._check_open()
        times: dict[str, float] = {}
        start = time.perf_counter()
        if self.lensnet is not None and self.config.use_lens and self.wc.size:
            scores = self._scores(times)
        else:
            scores = np.zeros(self.wc.size)
        times["lensnet"] = time.perf_counter() - start - times.setdefault("fetch", 0.0)
        start = time.perf_counter()
        plan = self._plan_with_room(self._with_pins(scores))
        times["allocator"] = time.perf_counter() - start
        start = time.perf_counter()
        first = self.wc.size
        if plan.edits:
            result = self.wc.apply(plan)
            first = result.first_changed
            self._crop(first)
        self.state.record(plan, self.wc, self.allocator.config.cooldown_steps)
        times["apply"] = time.perf_counter() - start
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
            first_changed=first,
            cache_hit_ratio=self.cache_stats.hit_ratio,
            seconds=times,
            base_seconds=self._base_seconds,
        )
        self._base_seconds = 0.0
        if self._trace_file is not None:
            self._trace_file.write(
                json.dumps(
                    {
                        **asdict(step),
                        "edits": [[e.kind.value, e.level, e.index] for e in plan.edits],
                    }
                )
                + "\n"
            )
            self._trace_file.flush()
        if self.timing_log is not None:
            self.timing_log.append(step)
        return step

    def _with_pins(self, scores: np.ndarray) -> np.ndarray:
        if not self.focus.pinned:
            return scores
        scores = scores.copy()
        scores[self.focus.pinned_mask(self.wc)] = 1.0
        return scores

    @torch.no_grad()
    def _scores(self, times: dict[str, float] | None = None) -> np.ndarray:
        if self.lensnet is None:
            return np.zeros(self.wc.size)
        wc = self.wc
        start = time.perf_counter()
        entries = entry_vectors(wc, self.tree, self.base).float()[None]
        if times is not None:
            times["fetch"] = time.perf_counter() - start
        query_ids = self.query_ids()
        query = self.base.embed(torch.as_tensor(query_ids, device=self.base.device)).float()[None]
        feats = self._features(wc, query_ids)
        levels = torch.tensor(wc.levels, device=self.base.device)[None]
        return (
            self.lensnet(
                entries, levels, torch.as_tensor(feats, device=self.base.device)[None], query
            )[0]
            .cpu()
            .numpy()
        )

    @property
    def cache_stats(self) -> CacheStats:
        """Hits and misses of the tree's page cache (tokens and gists) since the session opened."""
        backend = self.tree.backend
        return backend.cache.stats if isinstance(backend, CachedBackend) else CacheStats()

    def query_ids(self) -> np.ndarray:
        """The tokens LensNet focuses for: the last ``query_tokens`` tokens, but none from before
        the latest input (the last ``ingest`` call or ``generate`` prompt) while it is shorter."""
        n = self.tree.num_tokens
        start = max(n - self.config.query_tokens, 0)
        if self._query_start < n:
            start = max(start, self._query_start)
        return self.tree.tokens(start, n).astype(np.int64)

    def _features(self, wc: WorkingContext, query_ids: np.ndarray) -> np.ndarray:
        from megacontext.train.lens import LensSample, entry_features

        K = wc.K
        key = np.zeros(self.gistnet.config.key_dim, dtype=np.float32)
        if len(query_ids) >= K:
            with torch.no_grad():
                block = self.base.embed(torch.as_tensor(query_ids[-K:], device=self.base.device))[
                    None
                ]
                key = self.gistnet(block.float(), 1)[1][0].cpu().numpy()
        view = LensSample(
            kind="live",
            tree=self.tree,
            lexical=self.lexical,
            wc=wc,
            recency=wc,
            query_ids=query_ids,
            query_text=self.base.decode(query_ids.tolist()),
            query_key=key,
            scored=np.zeros(0, dtype=np.int64),
        )
        return entry_features(view, wc)

    # ----------------------------------------------------------------------------- views

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


SESSION_FILE = "session.json"


def open_session(
    path: str | Path,
    base: str | BaseAdapter = "default",
    focus: str | Path | Bundle = "default",
    config: SessionConfig | None = None,
    regist: bool = False,
    metadata_url: str | None = None,
) -> Session:
    """Create or reopen the session directory ``path`` (see the module docstring).

    ``base``: a model name/path or a loaded adapter. ``focus``: the GistNet/LensNet bundle —
    ``"default"`` (the packaged one for the default base), a bundle directory, or a loaded bundle.
    Reopening with another base, tokenizer or GistNet raises ``FingerprintMismatchError`` unless
    ``regist=True`` (D13). ``metadata_url``: where a new tree keeps its metadata, provenance
    and lexical index (a PostgreSQL URL for shared deployments; default: SQLite files in
    ``path``); a reopened tree keeps the one it was created with.
    """
    from megacontext.models.bundle import load_bundle
    from megacontext.models.loading import load_base

    root = Path(path)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{root} exists and is not a directory; choose another --tree path")
    adapter = load_base(base) if isinstance(base, str) else base
    if isinstance(focus, Bundle):
        bundle = focus
    else:
        bundle_dir = _default_focus_dir() if str(focus) == "default" else Path(focus)
        bundle = load_bundle(bundle_dir, fingerprints=adapter.fingerprints)
    gistnet = bundle.get("gistnet")
    cfg = config or SessionConfig()
    if cfg.use_lora and bundle.lora is not None:
        _check_lora_free(adapter)  # before anything is created or locked
    fingerprints = Fingerprints(
        base=adapter.fingerprint,
        tokenizer=adapter.tokenizer_fingerprint,
        gistnet=gistnet.weights_version(),
    )
    # Keys also depend on the key head: a retrained head re-keys the tree (keys are derived).
    key_fingerprints = Fingerprints(
        base=adapter.fingerprint,
        tokenizer=adapter.tokenizer_fingerprint,
        gistnet=gistnet.key_version(),
    )
    root.mkdir(parents=True, exist_ok=True)
    tree_dir, keys_dir = root / "tree", root / "keys"
    if (tree_dir / "manifest.json").is_file():
        store = LocalStore.open(tree_dir, fingerprints=fingerprints, regist=regist)
        recorded = store.manifest.metadata_url
        if metadata_url is not None and metadata_url != recorded:
            store.close()
            raise InvalidInputError(
                f"{root} keeps its metadata in {recorded or 'its own SQLite files'}, not "
                f"{metadata_url}; reopen it without metadata_url (a tree stays where it was made)"
            )
        keys = LocalStore.open(keys_dir, fingerprints=key_fingerprints, regist=True)
    else:
        store = LocalStore.create(
            tree_dir,
            dim=adapter.d_model,
            K=gistnet.config.K,
            fingerprints=fingerprints,
            metadata_url=metadata_url,
        )
        keys = LocalStore.create(
            keys_dir,
            dim=gistnet.config.key_dim,
            K=gistnet.config.K,
            gist_dtype="float32",
            fingerprints=key_fingerprints,
            role="keys",
        )
    # Reads (the working context's tokens and gists, expanded children, keys) go through a
    # bounded page cache; appends go straight to the stores.
    tree = MegaContextTree(
        CachedBackend(store, PageCache(store, capacity_pages=cfg.cache_pages)),
        GistNetGister(gistnet, adapter),
        K=gistnet.config.K,
        vocab_size=adapter.vocab_size,
        gist_batch_size=cfg.gist_batch,
        key_backend=CachedBackend(keys, PageCache(keys, capacity_pages=cfg.cache_pages)),
    )
    lexical = open_lexical_index(
        root / "lexical.sqlite",
        K=gistnet.config.K,
        metadata_url=store.manifest.metadata_url,
        tree_id=store.manifest.tree_id,
    )
    (root / SESSION_FILE).write_text(
        json.dumps(
            {"base": str(base) if isinstance(base, str) else adapter.source, "config": asdict(cfg)},
            indent=2,
        )
        + "\n"
    )
    session = Session(root, adapter, bundle, tree, [store, keys], lexical, cfg)
    # The lexical index is derived data: rebuild what it lacks (a crash, or a fresh session).
    if lexical.num_blocks > (tree.count(1) if tree.num_levels else 0):
        raise InvalidInputError(
            f"{root / 'lexical.sqlite'} indexes more blocks than the tree holds; delete it "
            "and reopen to rebuild it"
        )
    session._index_new_blocks(lexical.num_blocks)
    return session


def _check_lora_free(base: BaseAdapter) -> None:
    if hasattr(base.model, "peft_config"):
        raise InvalidInputError(
            "the base already carries LoRA adapters (another open session with a LoRA bundle?); "
            "close that session, or open this one with SessionConfig(use_lora=False)"
        )


def _default_focus_dir() -> Path:
    path = default_focus_dir()
    if not (path / "manifest.json").is_file():
        raise InvalidInputError(
            f"no focus bundle at {path}: the default GistNet/LensNet are not built; run "
            "`make focus-models` or pass focus=PATH to a bundle trained for this base"
        )
    return path
