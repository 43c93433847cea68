"""The focus allocator (D9): a pure planner ``(WC, scores, state) → EditPlan``.

Scores come one per WC entry (LensNet's signed output: positive = expand here, negative =
collapse here). The greedy policy:

1. If the WC is over its target size (``W_max − reserve``), collapse the lowest-scoring sibling
   groups until it fits (mandatory: the budget wins over the edit limit, and over the cooldown
   when no other group can pay).
2. Expand gists in order of score (above ``expand_threshold``). An expansion costs
   :meth:`~WorkingContext.expand_cost` positions (``K − 1`` when a gist takes one position);
   when the free budget cannot pay, it is paid for by collapsing the lowest-scoring sibling group
   (groups, when a node stores several gists and one group frees too little), but only groups
   scoring at least ``min_gain`` below the gist (no churn for nothing).
3. Collapse groups scoring below ``−collapse_threshold`` while edits remain.

A sibling group's score is the mean of its members' scores (D7). No edit touches the protected
recent window (nor, with ``editable_from``, the entries before that one: a session refocusing
while it generates keeps its edits near the end, where they recompute little KV), no edit
reverses an edit on the same node within ``cooldown_steps`` steps, and no step makes more than
``max_edits`` voluntary edits. ``strategy="stochastic"`` samples each
expansion among the ``sample_top_k`` best remaining candidates (softmax of score / temperature),
seeded by ``(seed, step)`` so planning stays a pure function of its inputs.

Planning is O(W log W): a few vectorised passes and two sorts over the entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from megacontext.core.working_context import ApplyResult, Edit, EditKind, EditPlan, WorkingContext
from megacontext.errors import BudgetError, InvalidInputError

Strategy = Literal["greedy", "stochastic"]


@dataclass(frozen=True)
class AllocatorConfig:
    """Knobs of the focus allocator. Thresholds apply to scores in ``[-1, 1]``."""

    max_edits: int = 4
    expand_threshold: float = 0.2
    collapse_threshold: float = 0.2
    min_gain: float = 0.1
    cooldown_steps: int = 2
    strategy: Strategy = "greedy"
    sample_top_k: int = 4
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_edits < 1:
            raise InvalidInputError(f"max_edits must be >= 1, got {self.max_edits}")
        if self.cooldown_steps < 0:
            raise InvalidInputError(f"cooldown_steps must be >= 0, got {self.cooldown_steps}")
        if self.expand_threshold < 0 or self.collapse_threshold < 0 or self.min_gain < 0:
            raise InvalidInputError("thresholds and min_gain must be >= 0")
        if self.strategy not in ("greedy", "stochastic"):
            raise InvalidInputError(
                f"strategy must be 'greedy' or 'stochastic', got {self.strategy!r}"
            )
        if self.sample_top_k < 1 or self.temperature <= 0:
            raise InvalidInputError("sample_top_k must be >= 1 and temperature > 0")


@dataclass
class FocusStats:
    """Counters over refocus steps: swap rate, residency and utilization (DESIGN §2)."""

    steps: int = 0
    expands: int = 0
    collapses: int = 0
    residency_sum: int = 0
    residency_count: int = 0
    utilization_sum: float = 0.0
    last_utilization: float = 0.0

    @property
    def swap_rate(self) -> float:
        """(expands + collapses) per refocus step."""
        return (self.expands + self.collapses) / self.steps if self.steps else 0.0

    @property
    def mean_residency(self) -> float:
        """Mean steps an expanded node stayed expanded before it was collapsed again."""
        return self.residency_sum / self.residency_count if self.residency_count else 0.0

    @property
    def mean_utilization(self) -> float:
        return self.utilization_sum / self.steps if self.steps else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "expands": self.expands,
            "collapses": self.collapses,
            "swap_rate": self.swap_rate,
            "mean_residency": self.mean_residency,
            "utilization": self.last_utilization,
            "mean_utilization": self.mean_utilization,
        }


@dataclass
class AllocatorState:
    """What the allocator remembers between steps: the step count, recent edits, counters."""

    step: int = 0
    last_edit: dict[tuple[int, int], tuple[int, EditKind]] = field(default_factory=dict)
    expanded_at: dict[tuple[int, int], int] = field(default_factory=dict)
    stats: FocusStats = field(default_factory=FocusStats)

    def blocked(self, node: tuple[int, int], kind: EditKind, cooldown: int) -> bool:
        """Whether ``kind`` on ``node`` at the next step would reverse an edit made within the
        last ``cooldown`` steps."""
        last = self.last_edit.get(node)
        return last is not None and last[1] is not kind and self.step + 1 - last[0] <= cooldown

    def record(self, plan: EditPlan, wc: WorkingContext, cooldown: int) -> None:
        """Account for a plan that was applied to ``wc``; advances the step."""
        self.step += 1
        for edit in plan.edits:
            node = (edit.level, edit.index)
            self.last_edit[node] = (self.step, edit.kind)
            if edit.kind is EditKind.EXPAND:
                self.expanded_at[node] = self.step
            else:
                opened = self.expanded_at.pop(node, None)
                if opened is not None:
                    self.stats.residency_sum += self.step - opened
                    self.stats.residency_count += 1
        stale = [n for n, (s, _) in self.last_edit.items() if self.step - s > cooldown]
        for node in stale:
            del self.last_edit[node]
        self.stats.steps += 1
        self.stats.expands += plan.expands
        self.stats.collapses += plan.collapses
        self.stats.last_utilization = wc.utilization
        self.stats.utilization_sum += wc.utilization


@dataclass(frozen=True)
class _Groups:
    """Collapsible sibling groups of a WC, sorted by ascending score (ties: older first)."""

    first: npt.NDArray[np.int64]  # WC position of the first member
    level: npt.NDArray[np.int64]  # level of the parent the group collapses into
    index: npt.NDArray[np.int64]  # index of that parent
    score: npt.NDArray[np.float64]


def sibling_groups(
    wc: WorkingContext, scores: npt.NDArray[np.float64], editable_from: int = 0
) -> _Groups:
    """Every complete, aligned run of K siblings outside the protected window (and from entry
    ``editable_from`` on), with its score.

    Because the WC tiles time contiguously, K consecutive entries whose first and last members are
    children 0 and K−1 of one parent must all be that parent's children (D2: arithmetic only).
    """
    K, W = wc.K, wc.size
    empty = np.empty(0, dtype=np.int64)
    if W < K:
        return _Groups(empty, empty, empty, np.empty(0))
    levels, indices = wc.levels, wc.indices
    head, tail = np.arange(W - K + 1), np.arange(K - 1, W)
    _, ends = wc.spans()
    ok = (
        (head >= editable_from)
        & (indices[head] % K == 0)
        & (levels[tail] == levels[head])
        & (indices[tail] == indices[head] + K - 1)
        & (ends[tail] <= wc.protected_from)
    )
    first = head[ok]
    csum = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    mean = (csum[first + K] - csum[first]) / K
    order = np.lexsort((first, mean))
    first = first[order]
    return _Groups(first, levels[first] + 1, indices[first] // K, mean[order])


class FocusAllocator:
    """Turns per-entry scores into a legal, budget-respecting :class:`EditPlan` (D9)."""

    def __init__(self, config: AllocatorConfig | None = None):
        self.config = config or AllocatorConfig()

    def plan(  # noqa: C901, PLR0915  (one greedy algorithm; its helpers are closures over its state)
        self,
        wc: WorkingContext,
        scores: npt.ArrayLike,
        state: AllocatorState | None = None,
        reserve: int = 0,
        editable_from: int = 0,
    ) -> EditPlan:
        """Plan the edits of one refocus step. Pure: neither ``wc`` nor ``state`` changes.

        ``reserve`` positions are kept free after the plan (e.g. room for the next K tokens).
        Entries before ``editable_from`` are left as they are (neither expanded nor collapsed).
        """
        cfg = self.config
        state = state or AllocatorState()
        K = wc.K
        s = _check_scores(scores, wc.size)
        if reserve < 0 or reserve > wc.W_max:
            raise InvalidInputError(f"reserve must be in [0, W_max={wc.W_max}], got {reserve}")
        if not 0 <= editable_from <= wc.size:
            raise InvalidInputError(
                f"editable_from must be an entry index in [0, {wc.size}], got {editable_from}"
            )
        free = wc.W_max - reserve - wc.length
        groups = sibling_groups(wc, s, editable_from)
        used = np.zeros(wc.size, dtype=bool)
        edits: list[Edit] = []
        group_cursor = 0

        def take_group(
            max_score: float, exclude: int = -1, honour_cooldown: bool = True
        ) -> int | None:
            """Lowest-scoring usable group with score < max_score; advances past used groups."""
            nonlocal group_cursor
            g = group_cursor
            while g < groups.first.size and groups.score[g] < max_score:
                first = int(groups.first[g])
                node = (int(groups.level[g]), int(groups.index[g]))
                if (
                    not used[first : first + K].any()
                    and not first <= exclude < first + K
                    and not (
                        honour_cooldown
                        and state.blocked(node, EditKind.COLLAPSE, cfg.cooldown_steps)
                    )
                ):
                    if g == group_cursor:
                        group_cursor += 1
                    return g
                if g == group_cursor and used[first : first + K].any():
                    group_cursor += 1
                g += 1
            return None

        def plan_collapse(g: int) -> None:
            nonlocal free
            first = int(groups.first[g])
            used[first : first + K] = True
            edits.append(Edit.collapse(int(groups.level[g]), int(groups.index[g])))
            free += wc.expand_cost(int(groups.level[g]))

        def pay_for(pos: int, cost: int) -> list[int] | None:
            """The lowest-scoring groups (each ``min_gain`` below the gist) whose collapses free
            enough for expanding ``pos``, within the edit limit; ``None`` (and nothing taken)
            when they cannot. One group always pays when a gist takes one position; with
            several gists per node a group of tokens frees less than a LOD2 expansion costs."""
            nonlocal group_cursor
            saved, gained = group_cursor, free
            payers: list[int] = []
            while gained < cost and len(edits) + len(payers) + 1 < cfg.max_edits:
                g = take_group(float(s[pos]) - cfg.min_gain, exclude=pos)
                if g is None:
                    break
                first = int(groups.first[g])
                used[first : first + K] = True  # taken for now: not offered twice
                payers.append(g)
                gained += wc.expand_cost(int(groups.level[g]))
            for g in payers:
                used[int(groups.first[g]) : int(groups.first[g]) + K] = False
            if gained < cost:
                group_cursor = saved
                return None
            return payers

        # 1. Mandatory collapses until the WC fits its target size. The budget wins over the
        #    cooldown: a recently expanded group is reversed only when nothing else can pay.
        while free < 0:
            g = take_group(np.inf)
            if g is None:
                g = take_group(np.inf, honour_cooldown=False)
            if g is None:
                raise BudgetError(
                    f"the working context needs {-free} more free positions but no legal collapse "
                    f"is left (W_max={wc.W_max}, reserve={reserve}, protected window "
                    f"{wc.protected_recent} tokens"
                    + (f", entries from {editable_from} on" if editable_from else "")
                    + "); raise W_max or lower reserve"
                )
            plan_collapse(g)

        # 2. Expansions by score, paid from free budget or by lower-scoring collapses.
        levels = wc.levels
        candidates = np.flatnonzero((levels > 0) & (s > cfg.expand_threshold))
        candidates = candidates[candidates >= editable_from]
        if candidates.size:
            starts, _ = wc.spans()
            candidates = candidates[np.lexsort((-starts[candidates], -s[candidates]))]
        rng = (
            np.random.default_rng([cfg.seed, state.step]) if cfg.strategy == "stochastic" else None
        )
        pending = list(candidates.tolist())
        while pending and len(edits) < cfg.max_edits:
            pick = (
                0 if rng is None else _sample(rng, s[pending[: cfg.sample_top_k]], cfg.temperature)
            )
            pos = pending.pop(pick)
            node = (int(levels[pos]), int(wc.indices[pos]))
            if used[pos] or state.blocked(node, EditKind.EXPAND, cfg.cooldown_steps):
                continue
            cost = wc.expand_cost(node[0])
            if free < cost:
                if len(edits) + 2 > cfg.max_edits:
                    break
                payers = pay_for(pos, cost)
                if payers is None:
                    continue
                for g in payers:
                    plan_collapse(g)
            used[pos] = True
            edits.append(Edit.expand(*node))
            free -= cost

        # 3. Voluntary collapses of clearly unwanted detail.
        while len(edits) < cfg.max_edits:
            g = take_group(-cfg.collapse_threshold)
            if g is None:
                break
            plan_collapse(g)

        return EditPlan(wc.version, tuple(edits))

    def step(
        self,
        wc: WorkingContext,
        scores: npt.ArrayLike,
        state: AllocatorState,
        reserve: int = 0,
        editable_from: int = 0,
    ) -> ApplyResult:
        """Plan, apply atomically, and record one refocus step."""
        plan = self.plan(wc, scores, state, reserve=reserve, editable_from=editable_from)
        result = wc.apply(plan)
        state.record(plan, wc, self.config.cooldown_steps)
        return result


def _check_scores(scores: npt.ArrayLike, size: int) -> npt.NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (size,):
        raise InvalidInputError(
            f"scores must have one value per working-context entry: expected shape ({size},), "
            f"got {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("scores must be finite (found NaN or inf)")
    return s


def _sample(rng: np.random.Generator, top: npt.NDArray[np.float64], temperature: float) -> int:
    logits = top / temperature
    weights = np.exp(logits - logits.max())
    return int(rng.choice(top.size, p=weights / weights.sum()))
