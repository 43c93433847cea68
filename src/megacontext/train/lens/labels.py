"""LensNet's training data: sampled working contexts and their counterfactual labels (D8).

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

LensNet's inputs for a sample come from :class:`~megacontext.focus.LensScorer`, the code sessions
score with.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.core import (
    Edit,
    EditPlan,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
    sibling_groups,
)
from megacontext.data import Filler
from megacontext.errors import InvalidInputError
from megacontext.focus import FocusQuery, LensScorer
from megacontext.models.adapter import BaseAdapter
from megacontext.models.context import GistNetGister, input_vectors
from megacontext.models.gistnet import GistNet
from megacontext.store.lexical import AnyLexicalIndex, LexicalIndex
from megacontext.train.tasks import GENERATORS

RETRIEVAL_KINDS = ("passkey", "kv", "vartrack")
# A labelling budget never cuts a set below this many samples (both kinds, for the slices).
MIN_LABELLED = 4


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
    # Samples per optimizer step, the global batch: under DDP (`train lens --nproc N`) the
    # processes share it. Each step takes the mean loss of the batch's samples.
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    rank_weight: float = 1.0
    regression_weight: float = 1.0
    key_epochs: int = 10
    key_lr: float = 1e-3
    key_temperature: float = 0.1
    # The key head's positive per sample: "gain" — the gist whose expansion helped most;
    # "evidence" — on retrieval samples, the gist covering most of the evidence (the gain where
    # no gist covers any), a target label noise cannot move (issue 16).
    key_targets: str = "gain"
    focus_steps: int = 3
    focus_max_edits: int = 2
    descent_labels: bool = True
    # Seconds of labelling (train and val together, shared in proportion to their counts): a
    # set stops early when its share is spent, keeping at least MIN_LABELLED samples. On a real
    # base a sample costs a base forward per gist in the WC, so this is what bounds a CPU run.
    label_budget_s: float | None = None
    # At most this many single edits (expansions and collapses, drawn at random, seeded) are
    # labelled per *training* sample; the rest are masked like illegal ones. A sample then costs
    # this many base forwards instead of one per gist, so a labelling budget buys more, and more
    # varied, working contexts. Evidence-path labels and validation samples are always complete.
    label_candidates: int | None = None
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
        if self.batch_size < 1:
            raise InvalidInputError(
                f"batch_size (samples per LensNet step) must be >= 1, got {self.batch_size}"
            )
        if self.label_candidates is not None and self.label_candidates < 1:
            raise InvalidInputError(
                f"label_candidates must be >= 1 (or unset), got {self.label_candidates}"
            )
        if self.label_budget_s is not None and (
            not isinstance(self.label_budget_s, (int, float)) or self.label_budget_s <= 0
        ):
            raise InvalidInputError(
                f"label_budget_s must be > 0 seconds (or unset), got {self.label_budget_s}"
            )
        if self.key_targets not in ("gain", "evidence"):
            raise InvalidInputError(
                f"key_targets must be gain or evidence, got {self.key_targets!r}"
            )


@dataclass
class LensSample:
    """One labelled working context."""

    kind: str  # "text" or a task kind
    tree: MegaContextTree
    lexical: AnyLexicalIndex
    wc: WorkingContext
    recency: WorkingContext  # the unperturbed assembly, for focus-gain evaluation
    query: FocusQuery
    scored: np.ndarray
    gist_version: str = ""  # GistNet weights the labels were computed with
    # Token ranges [start, end) of the history that hold what the answer needs (retrieval tasks).
    evidence: tuple[tuple[int, int], ...] = ()
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per entry; NaN = illegal
    expand_gain: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # per entry; NaN if no gist
    # GistNet's pooled trunk features of every node of the tree, per level in node order: the
    # keys follow from them after the key head is trained (refresh_keys) without the base.
    key_features: dict[int, np.ndarray] = field(default_factory=dict)
    # NLLs that do not depend on the scorer under evaluation (recency; the oracle at a label
    # scale), kept so that evaluating several LensNets on one sample labels it only once.
    reference_nll: dict[str, float] = field(default_factory=dict)

    @property
    def retrieval(self) -> bool:
        return self.kind != "text"

    def scorer(self, base: BaseAdapter) -> LensScorer:
        """The scorer of this sample's tree and lexical index (LensNet's inputs)."""
        return LensScorer(base, self.tree, self.lexical)


# --------------------------------------------------------------------------- scoring


def _answer_nll(
    base: BaseAdapter,
    entries: torch.Tensor,
    scored: torch.Tensor,
    first: int = 0,
    past: Any = None,
    keep_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Per-row mean NLL of ``scored`` (H,) after each row of ``entries`` ``(B, n, d)``, which
    start at compact position ``first`` and continue ``past`` (a cache of the first ``first``
    positions, or None when ``first`` is 0). Logits for the scored tokens only. Returns the NLLs
    and, with ``keep_cache``, the cache extended by this read."""
    b = entries.shape[0]
    tail = base.embed(scored[:-1])[None].expand(b, -1, -1)
    seq = torch.cat([entries, tail.to(entries.dtype)], dim=1)
    positions = torch.arange(first, first + seq.shape[1], device=base.device)[None].expand(b, -1)
    use_cache = keep_cache or past is not None
    out = base.forward(seq, positions, past, use_cache=use_cache, logits_last=len(scored))
    targets = scored[None].expand(b, -1)
    losses = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(b, -1).mean(dim=1), out.cache


@torch.no_grad()
def wc_nll(
    base: BaseAdapter, tree: MegaContextTree, wc: WorkingContext, scored: np.ndarray
) -> float:
    ids = torch.as_tensor(scored, dtype=torch.long, device=base.device)
    return float(_answer_nll(base, input_vectors(wc, tree, base)[None], ids)[0][0])


class _EditedNLL:
    """The scored tokens' NLL after edited copies of one working context, each computed from its
    first changed input position on.

    The unedited context is read once and its KV cache kept. A copy whose inputs first differ
    at position ``first`` starts from the first ``first`` positions of that cache and recomputes
    only the rest — equal to a full recompute (D10) — so an edit near the recent end costs a
    fraction of a forward. Logits are computed for the scored tokens only.
    """

    def __init__(
        self, base: BaseAdapter, tree: MegaContextTree, wc: WorkingContext, scored: np.ndarray
    ):
        self.base, self.tree, self.length = base, tree, wc.length
        self.scored = torch.as_tensor(scored, dtype=torch.long, device=base.device)
        entries = input_vectors(wc, tree, base)[None]
        nll, self.cache = _answer_nll(base, entries, self.scored, keep_cache=True)
        self.unedited = float(nll[0])

    def __call__(self, edited: Sequence[WorkingContext], firsts: Sequence[int]) -> np.ndarray:
        """NLL after each of ``edited`` (all of one length), whose input positions before
        ``firsts[i]`` are those of the unedited context."""
        if len({e.length for e in edited}) != 1 or len(firsts) != len(edited):
            raise InvalidInputError("_EditedNLL scores a batch of edited contexts of one length")
        first = min(firsts)
        if not 0 <= first <= self.length:
            raise InvalidInputError(f"first changed position {first} outside [0, {self.length}]")
        suffixes = torch.stack(
            [input_vectors(e, self.tree, self.base, start=first) for e in edited]
        )
        past = self.base.cache_prefix(self.cache, first, len(edited)) if first else None
        nll, _ = _answer_nll(self.base, suffixes, self.scored, first, past)
        return nll.cpu().numpy()

    def batched(self, edited: Sequence[tuple[WorkingContext, int]], batch: int) -> np.ndarray:
        """NLL after each ``(context, first changed position)``, in the given order: contexts of
        one length and nearby first changes share a forward, ``batch`` at most."""
        order = sorted(range(len(edited)), key=lambda i: (edited[i][0].length, edited[i][1]))
        out = np.empty(len(edited))
        lo = 0
        while lo < len(order):
            size = edited[order[lo]][0].length
            hi = lo + 1
            while hi < len(order) and hi - lo < batch and edited[order[hi]][0].length == size:
                hi += 1
            chunk = order[lo:hi]
            out[chunk] = self([edited[i][0] for i in chunk], [edited[i][1] for i in chunk])
            lo = hi
        return out


@torch.no_grad()
def counterfactual_labels(
    base: BaseAdapter,
    sample: LensSample,
    wc: WorkingContext | None = None,
    batch: int = 32,
    descent: bool = False,
    candidates: int | None = None,
    rng: random.Random | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-entry labels and expand gains of every legal single edit on ``wc`` (default: the
    sample's). Returns ``(labels, expand_gain, nll_unedited)``; both arrays are per entry.

    With ``candidates``, only that many of the edits are scored — the expansions over the
    sample's evidence, then edits drawn with ``rng`` — and the others' entries stay NaN (masked,
    as illegal ones are).

    With ``descent``, a gist at level ≥ 2 that covers some of the sample's evidence is valued by
    the better of its single expansion and opening the paths to its evidence blocks down to raw
    tokens (:func:`evidence_path`), each per unit of budget spent.
    """
    wc = wc or sample.wc
    K = wc.K
    nll = _EditedNLL(base, sample.tree, wc, sample.scored)
    nll0 = nll.unedited
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
    if candidates is not None and len(edits) > candidates:
        # A retrieval sample always labels the expansions over its evidence: they are the
        # labels it exists for.
        keep = [e for e in edits if e[0] == "expand" and _covers(e[2], K, sample.evidence)]
        rest = [e for e in edits if e not in keep]
        room = max(candidates - len(keep), 0)
        edits = keep + (rng or random.Random(0)).sample(rest, min(room, len(rest)))
    edited = []
    for _, _, edit in edits:
        copy = _with_budget_room(wc)
        edited.append((copy, copy.apply(EditPlan(copy.version, (edit,))).first_position))
    for (kind, pos, edit), value in zip(edits, nll.batched(edited, batch), strict=True):
        # Per position of budget the edit spends (expand) or frees (collapse).
        delta = (float(value) - nll0) / wc.expand_cost(edit.level)
        if kind == "expand":
            gain[pos] = -delta
            labels[pos] = -delta
        else:
            labels[pos : pos + K] = delta
    if descent and sample.evidence:
        _descent_labels(nll, sample, wc, batch, labels, gain)
    return labels, gain, nll0


def _covers(edit: Edit, K: int, evidence: Sequence[tuple[int, int]]) -> bool:
    """Whether the node an edit opens spans any of the evidence token ranges."""
    span = K**edit.level
    lo = edit.index * span
    return any(a < lo + span and b > lo for a, b in evidence)


def _descent_labels(
    nll: _EditedNLL,
    sample: LensSample,
    wc: WorkingContext,
    batch: int,
    labels: np.ndarray,
    gain: np.ndarray,
) -> None:
    """Raise the labels of level-2+ gists over evidence to the value of opening the path to it
    (in place; see :func:`counterfactual_labels`)."""
    # (WC position of the gist, the WC with its evidence opened, positions it spent).
    paths: list[tuple[int, WorkingContext, int]] = []
    for gist_pos in np.flatnonzero(wc.levels > 1).tolist():
        level = int(wc.levels[gist_pos])
        opened = evidence_path(wc, level, int(wc.indices[gist_pos]), sample.evidence)
        if opened is not None:
            paths.append((gist_pos, *opened))
    # Opening a gist's path changes the context from that gist's entry on.
    values = nll.batched(
        [(opened, wc.position_of(gist_pos)) for gist_pos, opened, _ in paths], batch
    )
    for (gist_pos, _, spent), value in zip(paths, values, strict=True):
        per_position = (nll.unedited - float(value)) / spent
        gain[gist_pos] = labels[gist_pos] = max(gain[gist_pos], per_position)


def evidence_path(
    wc: WorkingContext, level: int, index: int, evidence: Sequence[tuple[int, int]]
) -> tuple[WorkingContext, int] | None:
    """``wc`` with gist ``(level, index)`` opened down to raw tokens over every evidence block it
    covers, and the positions of budget that took (``K − 1`` per expansion when a gist takes one
    position); ``None`` if it covers no evidence.

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
    opened = _with_budget_room(wc, len(blocks) * level)
    for block in blocks:
        for lv in range(level, 0, -1):
            node = block // K ** (lv - 1)
            present = (opened.levels == lv) & (opened.indices == node)
            if present.any():
                opened.expand(lv, node)
    return opened, opened.length - wc.length


def _with_budget_room(wc: WorkingContext, expansions: int = 1) -> WorkingContext:
    """A copy of ``wc`` whose budget admits ``expansions`` more expansions of any level (labels
    ignore the budget)."""
    most = max(wc.expand_cost(level) for level in range(1, int(wc.levels.max(initial=1)) + 1))
    room = WorkingContext(
        wc.levels,
        wc.indices,
        num_tokens=wc.num_tokens,
        W_max=max(wc.W_max, wc.length + expansions * most),
        K=wc.K,
        protected_recent=wc.protected_recent,
        gists_per_node=wc.gists_per_node,
    )
    return room


# --------------------------------------------------------------------------- samples


def _detok_blocks(base: BaseAdapter, ids: np.ndarray, K: int) -> list[str]:
    """The text of each complete block, as a session indexes it."""
    blocks = ids[: len(ids) // K * K].reshape(-1, K)
    return [base.decode(row.tolist()) for row in blocks]


def make_sample(
    base: BaseAdapter,
    gistnet: GistNet,
    filler: Filler,
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
    features: dict[int, list[np.ndarray]] = {}
    gister = GistNetGister(gistnet, base, features=features)
    tree = MegaContextTree(
        MemoryBackend(base.d_model * gister.gists_per_node, np.float32),
        gister,
        K=K,
        key_backend=MemoryBackend(gistnet.config.key_dim, np.float32),
    )
    tree.append(history)
    gister.features = None  # the tree is complete: nothing more to record
    lexical = LexicalIndex(K=K)
    lexical.add_blocks(0, _detok_blocks(base, history, K))
    recency = WorkingContext.assemble(
        len(history),
        cfg.W_max,
        K=K,
        protected_recent=cfg.protected_recent,
        gists_per_node=gister.gists_per_node,
    )
    wc = recency.copy()
    _perturb(wc, rng, cfg.perturb_edits)
    return LensSample(
        kind=kind,
        tree=tree,
        lexical=lexical,
        wc=wc,
        recency=recency,
        query=FocusQuery.of(base, gistnet, history[-cfg.query_tokens :]),
        scored=scored,
        evidence=evidence,
        key_features={level: np.concatenate(parts) for level, parts in features.items()},
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
        # What the pair leaves free for the expansion (with several gists per node a group of
        # tokens frees less than a LOD2 expansion costs).
        free = wc.W_max - wc.length + wc.expand_cost(int(groups.level[g]))
        candidates = [
            int(p)
            for p in gists
            if not first <= p < first + wc.K and wc.expand_cost(int(wc.levels[p])) <= free
        ]
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


def make_samples(  # noqa: PLR0913, PLR0917  (the sample recipe: base, nets, text, settings, seed)
    base: BaseAdapter,
    gistnet: GistNet,
    text_stream: np.ndarray,
    cfg: LensTrainConfig,
    count: int,
    seed: int,
    special_ids: tuple[int, ...] = (),
    progress: bool = True,
    desc: str = "labelling",
    budget_s: float | None = None,
    subsample: bool = False,
) -> list[LensSample]:
    """Up to ``count`` labelled samples, a ``retrieval_fraction`` of them task samples spread
    evenly among the text ones (so a set cut short by ``budget_s`` keeps the mix). With
    ``budget_s``, labelling stops once that many seconds are spent and at least
    :data:`MIN_LABELLED` samples are done. With ``subsample`` (training sets), each sample labels
    at most ``cfg.label_candidates`` edits."""
    rng = random.Random(seed)
    filler = Filler(text_stream, special_ids)
    version = gistnet.weights_version()
    samples: list[LensSample] = []
    started = time.perf_counter()
    bar = tqdm(range(count), desc=desc, disable=not progress, dynamic_ncols=True)
    for i in bar:
        if (
            budget_s is not None
            and len(samples) >= MIN_LABELLED
            and time.perf_counter() - started >= budget_s
        ):
            bar.close()
            break
        retrieval = math.floor((i + 1) * cfg.retrieval_fraction) > math.floor(
            i * cfg.retrieval_fraction
        )
        kind = rng.choice(cfg.task_kinds) if retrieval else "text"
        sample = make_sample(base, gistnet, filler, text_stream, cfg, rng, kind)
        sample.gist_version = version
        sample.labels, sample.expand_gain, _ = counterfactual_labels(
            base,
            sample,
            batch=cfg.label_batch,
            descent=cfg.descent_labels,
            candidates=cfg.label_candidates if subsample else None,
            rng=rng,
        )
        samples.append(sample)
    return samples


__all__ = [
    "MIN_LABELLED",
    "RETRIEVAL_KINDS",
    "LensSample",
    "LensTrainConfig",
    "counterfactual_labels",
    "evidence_path",
    "make_sample",
    "make_samples",
    "wc_nll",
]
