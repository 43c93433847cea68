"""Memory systems behind one interface (DESIGN §8, D14): what a user would pick instead.

Every system sees the same token stream through :meth:`MemorySystem.observe`, and for a query
returns at most ``budget`` input vectors for the **same frozen base** through
:meth:`MemorySystem.build_context`, with provenance (which token ranges each piece came from).
The harness appends the query and scores the answer, so systems differ only in what they keep.

Implemented here: full context (where it fits), recency (truncation), StreamingLLM (attention
sinks + recent window), RAG-BM25 (32-token chunks ranked by BM25 against the query, kept in time
order, plus the recent window), Compressive-lite (mean-pooled chunk embeddings, no focus), and
MegaContext — a real session, with recency-only focus, with LensNet, or with LensNet on gists
only; plus :class:`MegaContextOracle`, the upper bound whose focus expands the evidence the
answer needs.
The published peers (RAG with MiniLM, RETRO-lite, MemGPT-lite, LLMLingua-style pruning) live in
:mod:`megacontext.eval.peers`.

A system that may read where the evidence is (only an oracle should) implements
:class:`EvidenceAware`; the harness then hands it the sample's evidence ranges after the history.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from megacontext.core import MegaContextTree, WorkingContext
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import Bundle
from megacontext.models.lensnet import LensNet
from megacontext.runtime import Session, SessionConfig
from megacontext.store.lexical import LexicalIndex


@dataclass
class BuiltContext:
    """What a system hands the base: ``(W, d)`` vectors and where each came from."""

    vectors: torch.Tensor
    provenance: list[tuple[int, int]]  # token range [start, end) of each vector
    # ``"ranked"``: a retriever's chosen chunks as token ranges, best first (what it would cite)
    extra: dict[str, Any] = field(default_factory=dict)


class MemorySystem(Protocol):
    name: str

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None: ...

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext: ...

    def stats(self) -> dict[str, Any]: ...


@runtime_checkable
class EvidenceAware(Protocol):
    """A system that is told where the answer-bearing tokens are (an oracle, not a peer).

    The harness calls :meth:`observe_evidence` once per sample, after the whole history was
    observed and before :meth:`MemorySystem.build_context`.
    """

    def observe_evidence(self, ranges: tuple[tuple[int, int], ...]) -> None: ...


class _TokenMemory:
    """Shared by systems that keep raw tokens: the full history as one array."""

    name = "tokens"

    def __init__(self, base: BaseAdapter):
        self.base = base
        self.tokens = np.zeros(0, dtype=np.int64)

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        self.tokens = np.concatenate([self.tokens, np.asarray(tokens, dtype=np.int64)])

    def _context(self, positions: np.ndarray) -> BuiltContext:
        ids = torch.as_tensor(self.tokens[positions], device=self.base.device)
        vectors = self.base.embed(ids) if len(positions) else torch.zeros(0, self.base.d_model)
        return BuiltContext(vectors, [(int(p), int(p) + 1) for p in positions])

    def stats(self) -> dict[str, Any]:
        return {"tokens": int(self.tokens.size)}


class FullContext(_TokenMemory):
    """Everything, when it fits in the budget; refuses otherwise (it is the ceiling, not a peer)."""

    name = "full"

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        if self.tokens.size > budget:
            raise BudgetError(f"full context needs {self.tokens.size} entries, budget is {budget}")
        return self._context(np.arange(self.tokens.size))


class Recency(_TokenMemory):
    """The most recent ``budget`` tokens (plain truncation)."""

    name = "recency"

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        n = self.tokens.size
        return self._context(np.arange(max(0, n - budget), n))


class StreamingLLM(_TokenMemory):
    """Attention sinks (the first ``sinks`` tokens) plus the most recent tokens."""

    name = "streamingllm"

    def __init__(self, base: BaseAdapter, sinks: int = 4):
        super().__init__(base)
        self.sinks = sinks

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        n = self.tokens.size
        if n <= budget:
            return self._context(np.arange(n))
        sinks = min(self.sinks, budget)
        return self._context(np.concatenate([np.arange(sinks), np.arange(n - (budget - sinks), n)]))


class RagBM25(_TokenMemory):
    """BM25 over 32-token chunks (the lexical index): best chunks in time order + recent tokens."""

    name = "rag-bm25"

    def __init__(self, base: BaseAdapter, chunk: int = 32, recent: int = 64):
        super().__init__(base)
        self.chunk = chunk
        self.recent = recent
        self.index = LexicalIndex(K=chunk)

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        done = self.tokens.size // self.chunk
        super().observe(tokens)
        complete = self.tokens.size // self.chunk
        if complete > done:
            rows = self.tokens[done * self.chunk : complete * self.chunk].reshape(-1, self.chunk)
            self.index.add_blocks(done, [self.base.decode(r.tolist()) for r in rows])

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        n = self.tokens.size
        recent = min(self.recent, budget, n)
        recent_from = n - recent
        slots = (budget - recent) // self.chunk
        chosen: list[int] = []
        for block in self.index.block_scores(self.base.decode(query.tolist())):
            if len(chosen) >= slots:
                break
            if (block + 1) * self.chunk <= recent_from:
                chosen.append(block)
        positions = [np.arange(b * self.chunk, (b + 1) * self.chunk) for b in sorted(chosen)]
        positions.append(np.arange(recent_from, n))
        built = self._context(np.concatenate(positions))
        built.extra["ranked"] = [(b * self.chunk, (b + 1) * self.chunk) for b in chosen]
        return built


class CompressiveLite(_TokenMemory):
    """Mean-pooled embeddings of 32-token chunks for the past, raw recent tokens; no focus."""

    name = "compressive"

    def __init__(self, base: BaseAdapter, chunk: int = 32):
        super().__init__(base)
        self.chunk = chunk

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        n, c = self.tokens.size, self.chunk
        if n <= budget:
            return self._context(np.arange(n))
        # r recent raw tokens + ceil((n - r) / c) pooled chunks <= budget.
        recent = max(0, min(n, budget - (n + c - 1) // c))
        while recent and recent + (n - recent + c - 1) // c > budget:
            recent -= 1
        past = n - recent
        chunks = (past + c - 1) // c
        if chunks + recent > budget:
            raise BudgetError(f"compressive memory needs {chunks + recent} entries for {n} tokens")
        ids = torch.as_tensor(self.tokens[:past], device=self.base.device)
        emb = self.base.embed(ids)
        pooled = [emb[i * c : min(past, (i + 1) * c)].mean(dim=0) for i in range(chunks)]
        raw = self.base.embed(torch.as_tensor(self.tokens[past:], device=self.base.device))
        vectors = torch.cat([torch.stack(pooled) if pooled else emb[:0], raw])
        provenance = [(i * c, min(past, (i + 1) * c)) for i in range(chunks)]
        provenance += [(p, p + 1) for p in range(past, n)]
        return BuiltContext(vectors, provenance)


class MegaContextMemory:
    """MegaContext as users run it: a real :class:`~megacontext.runtime.Session` (in memory).

    ``observe`` ingests; ``build_context`` sets the budget, refocuses for the query as a session
    does for a question (up to ``focus_steps`` steps, the query not written into the history)
    and returns the working context's vectors. With ``lensnet`` the session focuses with that
    LensNet; without one, by recency only. Every setting is the session's default unless
    ``config`` says otherwise: what is measured is what runs.
    """

    def __init__(
        self,
        base: BaseAdapter,
        bundle: Bundle,
        lensnet: LensNet | None = None,
        name: str = "megacontext",
        config: SessionConfig | None = None,
    ):
        self.name = name
        modules = {"gistnet": bundle.get("gistnet")}
        if lensnet is not None:
            modules["lensnet"] = lensnet
        focus = dataclasses.replace(bundle, modules=modules)
        self.session = Session.in_memory(base, focus, config)
        self.edits = 0

    @property
    def tree(self) -> MegaContextTree:
        return self.session.tree

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        self.session.ingest(np.asarray(tokens, dtype=np.int64))

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        check_budget(budget)
        session = self.session
        session.resize(budget)
        before = session.state.stats.expands + session.state.stats.collapses
        self._focus(np.asarray(query, dtype=np.int64))
        stats = session.state.stats
        self.edits += stats.expands + stats.collapses - before
        starts, ends = session.wc.spans()
        return BuiltContext(
            session.context_vectors(), list(zip(starts.tolist(), ends.tolist(), strict=True))
        )

    def _focus(self, query: np.ndarray) -> None:
        self.session.focus_for(query)

    def stats(self) -> dict[str, Any]:
        tree = self.session.tree
        return {"tokens": tree.num_tokens, "levels": tree.num_levels, "edits": self.edits}


class MegaContextOracle(MegaContextMemory):
    """MegaContext whose focus is told the answer: the upper bound of any focus model.

    Instead of LensNet's scores, an entry scores 1 when its span (for a raw token: its whole
    K-token block) overlaps an evidence range and 0 elsewhere. The session's own engine then
    expands evidence gists level by level down to LOD0, paying with the lowest-scoring
    (evidence-free) sibling collapses its rules allow, until every evidence token is raw, nothing
    legal is left, or ``max_steps`` refocus steps ran. The budget, protected recent window and
    legality rules are exactly those of the other MegaContext variants; only the scores differ.
    """

    def __init__(
        self,
        base: BaseAdapter,
        bundle: Bundle,
        name: str = "megacontext-oracle",
        max_steps: int = 64,
        config: SessionConfig | None = None,
    ):
        super().__init__(base, bundle, None, name=name, config=config)
        self.max_steps = max_steps
        self.evidence: tuple[tuple[int, int], ...] = ()
        self.steps = 0
        self.last_wc: WorkingContext | None = None  # the focused WC of the last query
        self.session.score_override = self.evidence_scores

    def observe_evidence(self, ranges: tuple[tuple[int, int], ...]) -> None:
        """Remember the evidence ranges ``[start, end)`` of the history observed so far."""
        n = self.session.tree.num_tokens
        checked = []
        for start, end in ranges:
            if not 0 <= int(start) < int(end) <= n:
                raise InvalidInputError(
                    f"evidence range [{start}, {end}) is empty or outside the history [0, {n})"
                )
            checked.append((int(start), int(end)))
        self.evidence = tuple(sorted(checked))

    def evidence_scores(self, wc: WorkingContext) -> np.ndarray:
        """1 for entries overlapping the evidence (raw tokens: their block), else 0."""
        starts, ends = wc.spans()
        K = wc.K
        raw = wc.levels == 0
        lo = np.where(raw, (starts // K) * K, starts)
        hi = np.where(raw, (starts // K + 1) * K, ends)
        scores = np.zeros(wc.size, dtype=np.float64)
        for a, b in self.evidence:
            scores[(lo < b) & (hi > a)] = 1.0
        return scores

    def _evidence_raw(self, wc: WorkingContext) -> bool:
        for a, b in self.evidence:
            first, last = wc.entry_at(a), wc.entry_at(b - 1)
            if np.any(wc.levels[first : last + 1] > 0):
                return False
        return True

    def _focus(self, query: np.ndarray) -> None:
        self.steps += self.session.focus_for(query, self.max_steps, until=self._evidence_raw)
        self.last_wc = self.session.wc

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "focus_steps": self.steps}


def check_budget(budget: int) -> int:
    if budget < 1:
        raise InvalidInputError(f"budget must be >= 1, got {budget}")
    return budget
