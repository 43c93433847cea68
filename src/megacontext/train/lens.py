"""LensNet training from counterfactual focus labels (DESIGN D7, D8; issue 6 §5).

A *sample* is a working context over a history much longer than ``W_max``, plus the tokens that
come next (the *scored* tokens: a task's answer, or the next ``horizon`` tokens of natural text):

* **Labels (D8).** For every legal single edit — expand a gist, collapse a sibling group — the
  frozen base scores the continuation with that edit applied; ``ΔNLL`` is the change against the
  unedited WC. All candidates of a kind have one length, so each kind is one batched forward.
  An entry's label is the *value of its detail* per unit of budget: ``−ΔNLL_expand / (K−1)`` for a
  gist (positive when opening it helps), ``+ΔNLL_collapse / (K−1)`` for each member of a
  collapsible group (positive when giving it back hurts). Other entries are masked (legality).
* **Evidence-path labels.** Opening a level-ℓ gist (ℓ ≥ 2) shows K child *gists*, and a detail
  such as a pass key's digits only comes back once a path down to raw tokens is open: the single
  edit's ΔNLL is ~0 for every ancestor of a needle, so single-edit labels teach LensNet never to
  open them. With ``descent_labels``, a retrieval sample's gist at level ≥ 2 that covers evidence
  (the generator knows where the needle, the asked line, the chain's statements are) is also
  labelled with the ΔNLL of opening the path to every evidence block in it down to raw tokens,
  per unit of the budget that spends (``n_expansions · (K−1)``); its label is the better of that
  and its single edit. The evidence only chooses which counterfactual to measure; LensNet never
  sees it.
* **Inputs (D7).** Entry vectors (token embeddings, gists), level, ``log span``, age, is-tail, the
  node's BM25 score against the query (:class:`~megacontext.store.lexical.LexicalIndex`) and its
  key·query similarity (GistNet's key head on the node and on the query block).
* **Loss.** Pairwise ranking (logistic, over label-ordered pairs within a sample) plus regression
  to ``tanh(label / scale)``, on legal entries only.
* **Keys.** GistNet's key head is trained contrastively from the same labels: the query key should
  pick out the key of the gist whose expansion helps most (InfoNCE over a sample's gists).

Evaluation reports, separately for natural text and for retrieval tasks: Spearman(score, −ΔNLL)
over expand candidates, top-1 agreement with the oracle's best expansion, and **focus gain** —
at equal budget, the fraction of the NLL gap between the recency-only WC and oracle-driven focus
that LensNet-driven focus closes (both through the same allocator, ``focus_steps`` refocus steps).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.core import (
    AllocatorConfig,
    AllocatorState,
    Edit,
    EditPlan,
    FocusAllocator,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
    sibling_groups,
)
from megacontext.errors import InvalidInputError, StaleLabelError
from megacontext.models.adapter import BaseAdapter
from megacontext.models.context import GistNetGister, entry_vectors
from megacontext.models.gistnet import GistNet
from megacontext.models.lensnet import FEATURES, LensNet, LensNetConfig
from megacontext.store.lexical import AnyLexicalIndex, LexicalIndex
from megacontext.train.tasks import GENERATORS, FillerSource

RETRIEVAL_KINDS = ("passkey", "kv", "vartrack")


@dataclass
class LensTrainConfig:
    """Sampling, labelling and optimisation settings of a LensNet run."""

    seed: int = 0
    W_max: int = 128
    protected_recent: int = 32
    history_tokens: tuple[int, int] = (1024, 4096)
    horizon: int = 32
    max_answer_tokens: int = 16
    query_tokens: int = 32
    retrieval_fraction: float = 0.5
    task_kinds: tuple[str, ...] = RETRIEVAL_KINDS
    perturb_edits: int = 4
    label_batch: int = 32
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    rank_weight: float = 1.0
    regression_weight: float = 1.0
    key_epochs: int = 10
    key_lr: float = 1e-3
    key_temperature: float = 0.1
    focus_steps: int = 3
    focus_max_edits: int = 2
    descent_labels: bool = True
    lensnet: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protected_recent < self.query_tokens:
            raise InvalidInputError(
                "protected_recent must be >= query_tokens: the query must stay raw in the WC"
            )
        unknown = set(self.task_kinds) - set(GENERATORS)
        if unknown:
            raise InvalidInputError(
                f"unknown task kinds {sorted(unknown)}; use {sorted(GENERATORS)}"
            )
        if not 0 <= self.retrieval_fraction <= 1:
            raise InvalidInputError("retrieval_fraction must be in [0, 1]")


@dataclass
class LensSample:
    """One labelled working context."""

    kind: str  # "text" or a task kind
    tree: MegaContextTree
    lexical: AnyLexicalIndex
    wc: WorkingContext
    recency: WorkingContext  # the unperturbed assembly, for focus-gain evaluation
    query_ids: np.ndarray
    query_text: str
    query_key: np.ndarray
    scored: np.ndarray
    gist_version: str = ""  # GistNet weights the labels were computed with
    # Token ranges [start, end) of the history that hold what the answer needs (retrieval tasks).
    evidence: tuple[tuple[int, int], ...] = ()
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per entry; NaN = illegal
    expand_gain: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # per entry; NaN if no gist
    # NLLs that do not depend on the scorer under evaluation (recency; the oracle at a label
    # scale), kept so that evaluating several LensNets on one sample labels it only once.
    reference_nll: dict[str, float] = field(default_factory=dict)

    @property
    def retrieval(self) -> bool:
        return self.kind != "text"


# --------------------------------------------------------------------------- scoring


def _scored_nll(base: BaseAdapter, prefixes: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean NLL of ``scored`` (H,) after each prefix ``(B, W, d)``; compact positions."""
    b, w, _ = prefixes.shape
    tail = base.embed(scored[:-1].to(base.device))[None].expand(b, -1, -1)
    seq = torch.cat([prefixes, tail.to(prefixes.dtype)], dim=1)
    positions = torch.arange(seq.shape[1], device=base.device)[None].expand(b, -1)
    logits = base.forward(seq, positions, use_cache=False).logits[:, w - 1 :].float()
    targets = scored.to(base.device)[None].expand(b, -1)
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(b, -1).mean(dim=1)


@torch.no_grad()
def wc_nll(
    base: BaseAdapter, tree: MegaContextTree, wc: WorkingContext, scored: np.ndarray
) -> float:
    vectors = entry_vectors(wc, tree, base)[None]
    return float(_scored_nll(base, vectors, torch.as_tensor(scored, dtype=torch.long))[0])


@torch.no_grad()
def counterfactual_labels(
    base: BaseAdapter,
    sample: LensSample,
    wc: WorkingContext | None = None,
    batch: int = 32,
    descent: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-entry labels and expand gains of every legal single edit on ``wc`` (default: the
    sample's). Returns ``(labels, expand_gain, nll_unedited)``; both arrays are per entry.

    With ``descent``, a gist at level ≥ 2 that covers some of the sample's evidence is valued by
    the better of its single expansion and opening the paths to its evidence blocks down to raw
    tokens (:func:`evidence_path`), each per unit of budget spent.
    """
    wc = wc or sample.wc
    K = wc.K
    scored = torch.as_tensor(sample.scored, dtype=torch.long)
    nll0 = wc_nll(base, sample.tree, wc, sample.scored)
    labels = np.full(wc.size, np.nan)
    gain = np.full(wc.size, np.nan)
    gist_positions = np.flatnonzero(wc.levels > 0)
    groups = sibling_groups(wc, np.zeros(wc.size))
    edits: list[tuple[str, int, Edit]] = [
        ("expand", int(p), Edit.expand(int(wc.levels[p]), int(wc.indices[p])))
        for p in gist_positions
    ]
    edits += [
        ("collapse", int(first), Edit.collapse(int(lv), int(ix)))
        for first, lv, ix in zip(groups.first, groups.level, groups.index, strict=True)
    ]
    for kind in ("expand", "collapse"):
        todo = [(pos, edit) for k, pos, edit in edits if k == kind]
        for lo in range(0, len(todo), batch):
            chunk = todo[lo : lo + batch]
            prefixes = []
            for _, edit in chunk:
                edited = _with_budget_room(wc, K)
                edited.apply(EditPlan(edited.version, (edit,)))
                prefixes.append(entry_vectors(edited, sample.tree, base))
            nll = _scored_nll(base, torch.stack(prefixes), scored).cpu().numpy()
            for (pos, _), value in zip(chunk, nll, strict=True):
                delta = (float(value) - nll0) / (K - 1)
                if kind == "expand":
                    gain[pos] = -delta
                    labels[pos] = -delta
                else:
                    labels[pos : pos + K] = delta
    if descent and sample.evidence:
        # (WC position of the gist, the WC with its evidence opened, expansions it took); paths
        # of one length share a batched forward.
        by_size: dict[int, list[tuple[int, WorkingContext, int]]] = {}
        for gist_pos in gist_positions.tolist():
            level = int(wc.levels[gist_pos])
            if level < 2:
                continue
            opened = evidence_path(wc, level, int(wc.indices[gist_pos]), sample.evidence)
            if opened is not None:
                by_size.setdefault(opened[0].size, []).append((gist_pos, *opened))
        for group in by_size.values():
            for lo in range(0, len(group), batch):
                part = group[lo : lo + batch]
                vectors = [entry_vectors(edited, sample.tree, base) for _, edited, _ in part]
                nlls = _scored_nll(base, torch.stack(vectors), scored).cpu().numpy()
                for (gist_pos, _, expansions), value in zip(part, nlls, strict=True):
                    per_entry = (nll0 - float(value)) / (expansions * (K - 1))
                    gain[gist_pos] = labels[gist_pos] = max(gain[gist_pos], per_entry)
    return labels, gain, nll0


def evidence_path(
    wc: WorkingContext, level: int, index: int, evidence: Sequence[tuple[int, int]]
) -> tuple[WorkingContext, int] | None:
    """``wc`` with gist ``(level, index)`` opened down to raw tokens over every evidence block it
    covers, and the number of expansions that took; ``None`` if it covers no evidence.

    The budget is ignored, as for every label.
    """
    K = wc.K
    blocks_per_node = K ** (level - 1)
    first, stop = index * blocks_per_node, (index + 1) * blocks_per_node
    blocks = sorted(
        {
            b
            for start, end in evidence
            for b in range(start // K, (end - 1) // K + 1)
            if first <= b < stop
        }
    )
    if not blocks:
        return None
    opened = _with_budget_room(wc, K, len(blocks) * level)
    expansions = 0
    for block in blocks:
        for lv in range(level, 0, -1):
            node = block // K ** (lv - 1)
            present = (opened.levels == lv) & (opened.indices == node)
            if present.any():
                opened.expand(lv, node)
                expansions += 1
    return opened, expansions


def _with_budget_room(wc: WorkingContext, K: int, expansions: int = 1) -> WorkingContext:
    """A copy of ``wc`` whose budget admits ``expansions`` more expansions (labels ignore the
    budget)."""
    room = WorkingContext(
        wc.levels,
        wc.indices,
        num_tokens=wc.num_tokens,
        W_max=max(wc.W_max, wc.size + expansions * (K - 1)),
        K=K,
        protected_recent=wc.protected_recent,
    )
    return room


# --------------------------------------------------------------------------- samples


def _detok_blocks(tok: Any, ids: np.ndarray, K: int) -> list[str]:
    blocks = ids[: len(ids) // K * K].reshape(-1, K)
    return [tok.decode(row.tolist()) for row in blocks]


def make_sample(
    base: BaseAdapter,
    gistnet: GistNet,
    filler: FillerSource,
    text_stream: np.ndarray,
    cfg: LensTrainConfig,
    rng: random.Random,
    kind: str,
) -> LensSample:
    """Build one sample of ``kind`` ("text" or a task kind) with its tree, index and WC."""
    K = gistnet.config.K
    tok = base.tokenizer.backend_tokenizer
    length = rng.randint(*cfg.history_tokens)
    if kind == "text":
        start = rng.randrange(0, len(text_stream) - length - cfg.horizon)
        window = text_stream[start : start + length + cfg.horizon].astype(np.int64)
        history, scored = window[:length], window[length:]
        evidence: tuple[tuple[int, int], ...] = ()
    else:
        task = GENERATORS[kind](rng, tok, filler, length)
        ids = np.asarray(task.ids, dtype=np.int64)
        history = ids[: task.prompt_len]
        scored = ids[task.prompt_len : task.prompt_len + cfg.max_answer_tokens]
        evidence = tuple((a, b) for a, b in task.evidence if b <= len(history))
    tree = MegaContextTree(
        MemoryBackend(base.d_model, np.float32),
        GistNetGister(gistnet, base),
        K=K,
        key_backend=MemoryBackend(gistnet.config.key_dim, np.float32),
    )
    tree.append(history)
    lexical = LexicalIndex(K=K)
    lexical.add_blocks(0, _detok_blocks(tok, history, K))
    recency = WorkingContext.assemble(
        len(history), cfg.W_max, K=K, protected_recent=cfg.protected_recent
    )
    wc = recency.copy()
    _perturb(wc, rng, cfg.perturb_edits)
    query_ids = history[-cfg.query_tokens :]
    with torch.no_grad():
        block = base.embed(torch.as_tensor(history[-K:], device=base.device))[None]
        _, query_key = gistnet(block.float(), 1)
    return LensSample(
        kind=kind,
        tree=tree,
        lexical=lexical,
        wc=wc,
        recency=recency,
        query_ids=query_ids,
        query_text=tok.decode(query_ids.tolist()),
        query_key=query_key[0].cpu().numpy(),
        scored=scored,
        evidence=evidence,
    )


def _perturb(wc: WorkingContext, rng: random.Random, edits: int) -> None:
    """A few random legal expand/collapse pairs, so training WCs are not all recency-shaped."""
    for _ in range(edits):
        gists = np.flatnonzero(wc.levels > 0)
        groups = sibling_groups(wc, np.zeros(wc.size))
        if not len(gists) or not len(groups.first):
            return
        g = rng.randrange(len(groups.first))
        first = int(groups.first[g])
        candidates = [int(p) for p in gists if not first <= p < first + wc.K]
        if not candidates:
            return
        p = rng.choice(candidates)
        plan = EditPlan(
            wc.version,
            (
                Edit.collapse(int(groups.level[g]), int(groups.index[g])),
                Edit.expand(int(wc.levels[p]), int(wc.indices[p])),
            ),
        )
        wc.apply(plan)


def make_samples(
    base: BaseAdapter,
    gistnet: GistNet,
    text_stream: np.ndarray,
    cfg: LensTrainConfig,
    count: int,
    seed: int,
    special_ids: tuple[int, ...] = (),
    progress: bool = True,
    desc: str = "labelling",
) -> list[LensSample]:
    """``count`` labelled samples: a ``retrieval_fraction`` of task samples, the rest text."""
    rng = random.Random(seed)
    filler = FillerSource(text_stream, special_ids)
    version = gistnet.weights_version()
    samples = []
    for i in tqdm(range(count), desc=desc, disable=not progress, dynamic_ncols=True):
        retrieval = i < round(count * cfg.retrieval_fraction)
        kind = rng.choice(cfg.task_kinds) if retrieval else "text"
        sample = make_sample(base, gistnet, filler, text_stream, cfg, rng, kind)
        sample.gist_version = version
        sample.labels, sample.expand_gain, _ = counterfactual_labels(
            base, sample, batch=cfg.label_batch, descent=cfg.descent_labels
        )
        samples.append(sample)
    return samples


# --------------------------------------------------------------------------- features


def entry_features(sample: LensSample, wc: WorkingContext) -> np.ndarray:
    """``(W, len(FEATURES))`` numeric features of the entries of ``wc``."""
    K, n = wc.K, wc.num_tokens
    _, ends = wc.spans()
    levels = wc.levels
    feats = np.zeros((wc.size, len(FEATURES)), dtype=np.float32)
    feats[:, FEATURES.index("log_span")] = levels * math.log2(K) / 16.0
    feats[:, FEATURES.index("log_age")] = np.log2(1.0 + (n - ends)) / max(1.0, math.log2(1.0 + n))
    feats[:, FEATURES.index("is_tail")] = (ends > n - n % K).astype(np.float32) if n % K else 0.0
    lexical = sample.lexical.lexical_scores(sample.query_text, levels, wc.indices)
    if lexical.max() > 0:
        lexical = lexical / lexical.max()
    feats[:, FEATURES.index("lexical")] = lexical
    keys = _entry_keys(sample.tree, wc)
    feats[:, FEATURES.index("key_sim")] = keys @ sample.query_key
    return feats


def _entry_keys(tree: MegaContextTree, wc: WorkingContext) -> np.ndarray:
    """Each entry's key: its own for a gist, its LOD1 block's for a raw token (0 in the tail)."""
    key_dim = tree.key_backend.dim if tree.key_backend is not None else 0
    out = np.zeros((wc.size, key_dim), dtype=np.float32)
    levels, indices = wc.levels, wc.indices
    for level in np.unique(levels):
        where = np.flatnonzero(levels == level)
        nodes = indices[where] if level > 0 else indices[where] // wc.K
        lookup_level = int(level) if level > 0 else 1
        ok = nodes < tree.count(lookup_level)
        if not ok.any():
            continue
        lo, hi = int(nodes[ok].min()), int(nodes[ok].max()) + 1
        out[where[ok]] = tree.keys(lookup_level, lo, hi)[nodes[ok] - lo]
    return out


def lens_inputs(
    base: BaseAdapter, sample: LensSample, wc: WorkingContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LensNet inputs for one WC: (entries, levels, features, query), each with batch dim 1."""
    with torch.no_grad():
        entries = entry_vectors(wc, sample.tree, base).float()[None]
        query = base.embed(torch.as_tensor(sample.query_ids, device=base.device)).float()[None]
    levels = torch.tensor(wc.levels, device=base.device)[None]
    feats = torch.as_tensor(entry_features(sample, wc), device=base.device)[None]
    return entries, levels, feats, query


# --------------------------------------------------------------------------- training


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logistic loss over pairs whose labels differ: the higher label should score higher.

    Each pair weighs by its label gap. In a working context of ~100 candidates, nearly all pairs
    differ by noise (a few thousandths of a nat); with equal weights those pairs drown the few
    that matter, such as the needle's block against everything else.
    """
    diff_label = labels[:, None] - labels[None, :]
    pairs = diff_label > 1e-6
    if not pairs.any():
        return scores.new_zeros(())
    diff_score = scores[:, None] - scores[None, :]
    weights = diff_label[pairs]
    return (weights * F.softplus(-diff_score[pairs])).sum() / weights.sum()


def label_scale(samples: Sequence[LensSample], percentile: float = 99.0) -> float:
    """Scale mapping labels into the scorer's range (``tanh(label / scale)``): a high percentile
    of |label|, so that only the few labels that matter reach the saturated end."""
    values = np.concatenate(
        [np.abs(s.labels[np.isfinite(s.labels)]) for s in samples] or [np.ones(1)]
    )
    return float(max(np.percentile(values, percentile), 1e-6)) if values.size else 1.0


def train_lensnet(
    base: BaseAdapter,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    lens_config: LensNetConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    gist_version: str | None = None,
) -> tuple[LensNet, float, list[float]]:
    """Train a LensNet on labelled samples; returns (model, label scale, loss per epoch).

    With ``gist_version`` (the GistNet in use), labels made with other gists are refused: they
    describe a tree this LensNet will never see.
    """
    if gist_version is not None:
        stale = sum(1 for s in samples if s.gist_version != gist_version)
        if stale:
            raise StaleLabelError(
                f"{stale} of {len(samples)} samples were labelled with GistNet weights "
                f"{ {s.gist_version for s in samples} - {gist_version} }, not the current "
                f"{gist_version}; relabel them with the current GistNet first"
            )
    torch.manual_seed(cfg.seed)
    config = lens_config or LensNetConfig(d_model=base.d_model, **cfg.lensnet)
    lens = LensNet(config).to(base.device)
    opt = torch.optim.AdamW(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scale = label_scale(samples)
    prepared = [
        (lens_inputs(base, s, s.wc), torch.as_tensor(s.labels, dtype=torch.float32))
        for s in samples
    ]
    losses = []
    order = list(range(len(prepared)))
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.epochs), desc="lensnet", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        rng.shuffle(order)
        total = 0.0
        lens.train()
        for i in order:
            inputs, labels = prepared[i]
            legal = torch.isfinite(labels)
            if not legal.any():
                continue
            scores = lens(*inputs)[0]
            y = labels[legal].to(scores.device)
            loss = cfg.rank_weight * ranking_loss(scores[legal], y)
            loss = loss + cfg.regression_weight * F.mse_loss(scores[legal], torch.tanh(y / scale))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order)))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    lens.eval()
    return lens, scale, losses


def train_key_head(
    base: BaseAdapter,
    gistnet: GistNet,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    progress: bool = True,
) -> list[float]:
    """Contrastive training of GistNet's key head only (gists stay exactly as they were).

    For each sample with a clearly best expansion, the query key must pick that gist's key among
    the sample's gists (InfoNCE). Node and query features come from GistNet's frozen trunk.
    """
    head = gistnet.key_head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.key_lr)
    batches = []
    for s in samples:
        gists = np.flatnonzero(s.wc.levels > 0)
        gains = s.expand_gain[gists]
        if len(gists) < 2 or not np.isfinite(gains).any() or np.nanmax(gains) <= 0:
            continue
        with torch.no_grad():
            nodes = torch.stack(
                [
                    _pooled_node(base, gistnet, s.tree, int(s.wc.levels[p]), int(s.wc.indices[p]))
                    for p in gists
                ]
            )
            block = base.embed(
                torch.as_tensor(s.query_ids[-gistnet.config.K :], device=base.device)
            )[None]
            query = gistnet.pooled(block.float(), 1)[0]
        batches.append((nodes, query, int(np.nanargmax(gains))))
    losses = []
    for _ in tqdm(range(cfg.key_epochs), desc="keys", disable=not progress, dynamic_ncols=True):
        total = 0.0
        for nodes, query, target in batches:
            keys = F.normalize(head(nodes), dim=-1)
            q = F.normalize(head(query[None]), dim=-1)
            logits = (keys @ q.T).squeeze(-1) / cfg.key_temperature
            loss = F.cross_entropy(logits[None], torch.tensor([target], device=logits.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(batches)))
    return losses


def _pooled_node(
    base: BaseAdapter, gistnet: GistNet, tree: MegaContextTree, level: int, index: int
) -> torch.Tensor:
    K = gistnet.config.K
    if level == 1:
        ids = torch.as_tensor(
            tree.tokens(index * K, (index + 1) * K).astype(np.int64), device=base.device
        )
        x = base.embed(ids)[None].float()
    else:
        x = torch.tensor(
            np.asarray(tree.gists(level - 1, index * K, (index + 1) * K), dtype=np.float32),
            device=base.device,
        )[None]
    return gistnet.pooled(x, level)[0]


def refresh_keys(sample: LensSample, base: BaseAdapter, gistnet: GistNet) -> None:
    """Recompute a sample's stored keys and query key after the key head changed."""
    key_backend = MemoryBackend(gistnet.config.key_dim, np.float32)
    sample.tree = MegaContextTree(
        sample.tree.backend, GistNetGister(gistnet, base), K=sample.tree.K, key_backend=key_backend
    )
    with torch.no_grad():
        block = base.embed(
            torch.as_tensor(sample.query_ids[-gistnet.config.K :], device=base.device)
        )[None]
        sample.query_key = gistnet(block.float(), 1)[1][0].cpu().numpy()


# --------------------------------------------------------------------------- evaluation


@dataclass
class LensReport:
    """LensNet quality on one slice of held-out samples (natural text or retrieval tasks)."""

    samples: int
    spearman: float
    top1: float
    focus_gain: float
    nll_recency: float
    nll_lens: float
    nll_oracle: float


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def lens_scores(
    base: BaseAdapter, lens: LensNet, sample: LensSample, wc: WorkingContext
) -> np.ndarray:
    return lens(*lens_inputs(base, sample, wc))[0].cpu().numpy()


def _focus(
    base: BaseAdapter,
    sample: LensSample,
    scorer: Callable[[WorkingContext], np.ndarray],
    cfg: LensTrainConfig,
) -> float:
    wc = sample.recency.copy()
    allocator = FocusAllocator(
        AllocatorConfig(
            max_edits=cfg.focus_max_edits,
            min_gain=0.0,
            expand_threshold=0.0,
            collapse_threshold=1.0,
        )
    )
    state = AllocatorState()
    for _ in range(cfg.focus_steps):
        plan = allocator.plan(wc, scorer(wc), state)
        if not plan.edits:
            break
        wc.apply(plan)
        state.record(plan, wc, allocator.config.cooldown_steps)
    return wc_nll(base, sample.tree, wc, sample.scored)


def evaluate_lensnet(
    base: BaseAdapter,
    lens: LensNet,
    samples: Sequence[LensSample],
    cfg: LensTrainConfig,
    scale: float,
) -> LensReport:
    """Spearman, top-1 and focus gain of ``lens`` on ``samples`` (one slice)."""
    spearmans, top1 = [], []
    rec, lns, orc = [], [], []
    for s in samples:
        scores = lens_scores(base, lens, s, s.wc)
        gists = np.flatnonzero(np.isfinite(s.expand_gain))
        if len(gists) >= 2:
            spearmans.append(_spearman(scores[gists], s.expand_gain[gists]))
            top1.append(
                float(gists[np.argmax(scores[gists])] == gists[np.argmax(s.expand_gain[gists])])
            )

        def oracle(wc: WorkingContext, s: LensSample = s) -> np.ndarray:
            labels, _, _ = counterfactual_labels(
                base, s, wc, batch=cfg.label_batch, descent=cfg.descent_labels
            )
            return np.nan_to_num(np.tanh(labels / scale), nan=0.0)

        def lensnet(wc: WorkingContext, s: LensSample = s) -> np.ndarray:
            return lens_scores(base, lens, s, wc)

        cache = s.reference_nll
        if "recency" not in cache:
            cache["recency"] = wc_nll(base, s.tree, s.recency, s.scored)
        oracle_key = (
            f"oracle/{scale!r}/{cfg.focus_steps}/{cfg.focus_max_edits}/{cfg.descent_labels}"
        )
        if oracle_key not in cache:
            cache[oracle_key] = _focus(base, s, oracle, cfg)
        rec.append(cache["recency"])
        lns.append(_focus(base, s, lensnet, cfg))
        orc.append(cache[oracle_key])
    gap = float(np.mean(rec) - np.mean(orc))
    return LensReport(
        samples=len(samples),
        spearman=float(np.nanmean(spearmans)) if spearmans else float("nan"),
        top1=float(np.mean(top1)) if top1 else float("nan"),
        focus_gain=float((np.mean(rec) - np.mean(lns)) / gap) if abs(gap) > 1e-9 else float("nan"),
        nll_recency=float(np.mean(rec)),
        nll_lens=float(np.mean(lns)),
        nll_oracle=float(np.mean(orc)),
    )


# --------------------------------------------------------------------------- a whole run

ABLATIONS: dict[str, dict[str, bool]] = {
    "all": {"use_gists": True, "use_lexical": True, "use_keys": True},
    "gists_only": {"use_gists": True, "use_lexical": False, "use_keys": False},
    "lexical_only": {"use_gists": False, "use_lexical": True, "use_keys": False},
    "keys_only": {"use_gists": False, "use_lexical": False, "use_keys": True},
}


@dataclass
class LensRunConfig:
    """A ``megacontext train lens`` run: base, GistNet bundle, corpus, sizes, output."""

    base: str = "default"
    dtype: str = "float32"
    gist_bundle: str = "runs/gistnet/bundle"
    corpus_dir: str = "runs/corpus"
    out_dir: str = "runs/lensnet"
    train_samples: int = 400
    val_samples: int = 100
    ablations: bool = True
    threads: int | None = None
    lens: LensTrainConfig = field(default_factory=LensTrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensRunConfig:
        from megacontext.train.config import dataclass_from_dict

        run: LensRunConfig = dataclass_from_dict(cls, dict(data), "lens run")
        return run


def _prose_stream(streams: dict[str, np.ndarray]) -> np.ndarray:
    prose = [s for name, s in sorted(streams.items()) if name != "stdlib" and len(s)]
    return np.concatenate(prose or [s for s in streams.values() if len(s)])


def run_lens(run: LensRunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Label, train keys and LensNet (plus ablations), evaluate per slice, write the run."""
    from megacontext.models.bundle import load_bundle, save_bundle
    from megacontext.models.loading import load_base
    from megacontext.train.streams import corpus_streams

    if run.threads:
        torch.set_num_threads(run.threads)
    base = load_base(run.base, dtype=run.dtype)
    gist_bundle = load_bundle(run.gist_bundle, fingerprints=base.fingerprints)
    gistnet = gist_bundle.get("gistnet")
    if not isinstance(gistnet, GistNet):
        raise InvalidInputError(f"{run.gist_bundle} holds no GistNet; train one first")
    cfg = run.lens
    special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
    train_text = _prose_stream(corpus_streams(run.corpus_dir, base, "train"))
    val_text = _prose_stream(corpus_streams(run.corpus_dir, base, "val"))
    train = make_samples(
        base, gistnet, train_text, cfg, run.train_samples, cfg.seed, special, desc="labelling train"
    )
    val = make_samples(
        base, gistnet, val_text, cfg, run.val_samples, cfg.seed + 1, special, desc="labelling val"
    )
    key_losses = train_key_head(base, gistnet, train, cfg)
    for sample in [*train, *val]:
        refresh_keys(sample, base, gistnet)
    slices = {
        "text": [s for s in val if not s.retrieval],
        "retrieval": [s for s in val if s.retrieval],
    }
    metrics: dict[str, Any] = {
        "key_losses": key_losses,
        "train_samples": len(train),
        "val_samples": len(val),
    }
    models: dict[str, LensNet] = {}
    curves: dict[str, list[float]] = {}
    for name, switches in ABLATIONS.items():
        if name != "all" and not run.ablations:
            continue
        config = LensNetConfig(d_model=base.d_model, **{**cfg.lensnet, **switches})
        lens, scale, losses = train_lensnet(base, train, cfg, config, log=log)
        models[name], curves[name] = lens, losses
        metrics[f"label_scale_{name}"] = scale
        for slice_name, samples in slices.items():
            if not samples:
                continue
            report = evaluate_lensnet(base, lens, samples, cfg, scale)
            suffix = "" if name == "all" else f"_{name}"
            metrics[f"lens_spearman_{slice_name}{suffix}"] = report.spearman
            metrics[f"lens_top1_{slice_name}{suffix}"] = report.top1
            metrics[f"focus_gain_{slice_name}{suffix}"] = report.focus_gain
            metrics[f"nll_{slice_name}{suffix}"] = {
                "recency": report.nll_recency,
                "lensnet": report.nll_lens,
                "oracle": report.nll_oracle,
            }
            log(f"{name} / {slice_name}: {report}")
    out = Path(run.out_dir)
    # One bundle with everything the runtime and the benchmark need: GistNet (with its trained
    # key head), LensNet, and the ablation LensNets; training configs and metrics of both runs.
    modules: dict[str, torch.nn.Module] = {"gistnet": gistnet, "lensnet": models["all"]}
    modules.update({f"lensnet_{name}": m for name, m in models.items() if name != "all"})
    save_bundle(
        out / "bundle",
        modules,
        fingerprints=base.fingerprints,
        training={
            "gist": gist_bundle.training,
            "lens": asdict(cfg),
            "run": {k: v for k, v in asdict(run).items() if k != "lens"},
        },
        metrics={**gist_bundle.metrics, **metrics},
    )
    (out / "summary.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    plot_lens_training(curves, metrics, out / "lensnet_training.png")
    return metrics


def plot_lens_training(curves: dict[str, list[float]], metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, losses in curves.items():
        ax1.plot(range(1, len(losses) + 1), losses, label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    names = list(curves)
    for offset, slice_name in enumerate(("text", "retrieval")):
        values = [
            metrics.get(f"focus_gain_{slice_name}{'' if n == 'all' else '_' + n}", float("nan"))
            for n in names
        ]
        ax2.bar(np.arange(len(names)) + 0.4 * offset, values, width=0.4, label=slice_name)
    ax2.set_xticks(np.arange(len(names)) + 0.2, names)
    ax2.set_ylabel("focus gain (held out)")
    ax2.axhline(0, color="black", linewidth=0.6)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
