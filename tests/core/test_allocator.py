"""FocusAllocator (D9): legal, budget-neutral plans; cooldown; thresholds; counters; bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.core import (
    AllocatorConfig,
    AllocatorState,
    Edit,
    EditKind,
    FocusAllocator,
    WorkingContext,
    coarsest_size,
)
from megacontext.errors import BudgetError, InvalidInputError


def state_snapshot(state: AllocatorState) -> tuple[int, dict[object, object], dict[object, object]]:
    return state.step, dict(state.last_edit), dict(state.expanded_at)


@settings(max_examples=200)
@given(
    K=st.integers(2, 6),
    G=st.integers(1, 4),
    n=st.integers(1, 4000),
    slack=st.integers(0, 200),
    recent=st.integers(0, 12),
    config=st.builds(
        AllocatorConfig,
        max_edits=st.integers(1, 6),
        expand_threshold=st.floats(0, 0.5),
        collapse_threshold=st.floats(0, 0.5),
        min_gain=st.floats(0, 0.3),
        cooldown_steps=st.integers(0, 3),
        strategy=st.sampled_from(["greedy", "stochastic"]),
        sample_top_k=st.integers(1, 5),
        seed=st.integers(0, 5),
    ),
    data=st.data(),
)
def test_allocator_sequences_keep_every_promise(
    K: int, G: int, n: int, slack: int, recent: int, config: AllocatorConfig, data: st.DataObject
) -> None:
    # G gists per node: a gist takes G positions of the budget (G < K, or it saves nothing).
    G = min(G, K - 1)
    recent = min(recent, n)
    raw_from = ((n - recent) // K) * K
    w_max = coarsest_size(raw_from, K, G) + (n - raw_from) + 3 * K * G + slack
    wc = WorkingContext.assemble(n, w_max, K=K, protected_recent=recent, gists_per_node=G)
    allocator, state = FocusAllocator(config), AllocatorState()
    history: dict[tuple[int, int], list[tuple[int, EditKind]]] = {}
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    for _ in range(data.draw(st.integers(1, 12))):
        grow = data.draw(st.integers(0, K))
        scores = rng.uniform(-1, 1, size=wc.size)
        before_wc = (wc.version, wc.levels.tolist(), wc.indices.tolist())
        before_state = state_snapshot(state)
        over = wc.length > wc.W_max - grow
        try:
            plan = allocator.plan(wc, scores, state, reserve=grow)
        except BudgetError:
            # Honest only when even the coarsest legal WC cannot leave room for `grow` tokens.
            raw_from = ((wc.num_tokens - min(recent, wc.num_tokens)) // K) * K
            smallest = coarsest_size(raw_from, K, G) + wc.num_tokens - raw_from
            assert smallest + grow > wc.W_max
            break
        # Pure: planning changed neither the WC nor the state.
        assert (wc.version, wc.levels.tolist(), wc.indices.tolist()) == before_wc
        assert state_snapshot(state) == before_state
        if not over:
            assert len(plan) <= config.max_edits
        # Never reverse an edit on the same node inside its cooldown (unless the budget forces a
        # mandatory collapse, which is documented to win).
        step = state.step + 1
        for edit in plan.edits if not over else ():
            for when, kind in history.get((edit.level, edit.index), []):
                if kind is not edit.kind:
                    assert step - when > config.cooldown_steps
        size, length, growth = wc.size, wc.length, wc.growth(plan)
        wc.apply(plan)
        state.record(plan, wc, config.cooldown_steps)
        for edit in plan.edits:
            history.setdefault((edit.level, edit.index), []).append((step, edit.kind))
        assert wc.size == size + plan.size_change(K)
        assert wc.length == length + growth
        assert wc.length <= wc.W_max - grow  # budget kept, with room for what comes next
        wc.check_invariants()
        wc.extend(grow)
        wc.check_invariants()
    assert state.stats.steps == state.step
    assert state.stats.swap_rate == pytest.approx(
        (state.stats.expands + state.stats.collapses) / state.stats.steps
    )


def wc_with_gists() -> WorkingContext:
    # K=4, 256 tokens, budget 20: a coarse past, some raw recent tokens.
    return WorkingContext.assemble(256, 20, K=4, protected_recent=4)


def test_greedy_expands_highest_score_first_and_pays_with_lowest_group() -> None:
    wc = wc_with_gists()
    gists = np.flatnonzero(wc.levels > 0)
    scores = np.zeros(wc.size)
    best, second = int(gists[0]), int(gists[1])
    scores[best], scores[second] = 0.9, 0.8
    plan = FocusAllocator(AllocatorConfig(max_edits=2, min_gain=0.1)).plan(wc, scores)
    assert wc.size + wc.K - 1 > wc.W_max  # full: the expansion must be paid by a collapse
    assert [e.kind for e in plan.edits] == [EditKind.COLLAPSE, EditKind.EXPAND]
    assert Edit.expand(int(wc.levels[best]), int(wc.indices[best])) in plan.edits
    assert Edit.expand(int(wc.levels[second]), int(wc.indices[second])) not in plan.edits


def test_no_trade_without_gain() -> None:
    wc = wc_with_gists()
    assert wc.size + wc.K - 1 > wc.W_max  # budget is full: every expansion must be paid for
    scores = np.full(wc.size, 0.5)  # every group scores as well as every gist
    plan = FocusAllocator(AllocatorConfig(min_gain=0.1)).plan(wc, scores)
    assert len(plan) == 0


def test_voluntary_collapse_below_threshold() -> None:
    wc = WorkingContext(np.zeros(16, dtype=np.int64), np.arange(16), num_tokens=16, W_max=16, K=4)
    scores = np.zeros(16)
    scores[4:8] = -0.9
    plan = FocusAllocator(AllocatorConfig(collapse_threshold=0.2)).plan(wc, scores)
    assert plan.edits == (Edit.collapse(1, 1),)
    scores[4:8] = -0.1
    assert len(FocusAllocator(AllocatorConfig(collapse_threshold=0.2)).plan(wc, scores)) == 0


def test_mandatory_collapse_makes_room_and_fails_clearly_when_impossible() -> None:
    wc = WorkingContext(np.zeros(16, dtype=np.int64), np.arange(16), num_tokens=16, W_max=16, K=4)
    plan = FocusAllocator().plan(wc, np.zeros(16), reserve=4)
    assert plan.collapses == 2  # 3 refunded per collapse; 4 needed
    wc.apply(plan)
    wc.extend(4)
    wc.check_invariants()
    tight = WorkingContext(
        np.zeros(6, dtype=np.int64), np.arange(6), num_tokens=6, W_max=6, K=4, protected_recent=6
    )
    with pytest.raises(BudgetError, match="no legal collapse"):
        FocusAllocator().plan(tight, np.zeros(6), reserve=1)


def test_mandatory_collapse_overrides_cooldown_only_when_nothing_else_can_pay() -> None:
    wc = WorkingContext([1] * 4, list(range(4)), num_tokens=16, W_max=7, K=4)
    allocator = FocusAllocator(AllocatorConfig(cooldown_steps=5, max_edits=1))
    state = AllocatorState()
    scores = np.array([1.0, 0.0, 0.0, 0.0])
    allocator.step(wc, scores, state)  # expand (1, 0): 7 entries, budget full
    assert wc.size == 7
    plan = allocator.plan(wc, np.zeros(7), state, reserve=1)
    assert plan.edits == (Edit.collapse(1, 0),)  # the only legal collapse, despite the cooldown


def test_cooldown_blocks_reversal_then_allows_it() -> None:
    wc = WorkingContext.assemble(64, 40, K=4)
    wc = WorkingContext([1] * 16, list(range(16)), num_tokens=64, W_max=40, K=4)
    allocator = FocusAllocator(
        AllocatorConfig(cooldown_steps=2, max_edits=1, collapse_threshold=0.1)
    )
    state = AllocatorState()
    up = np.zeros(wc.size)
    up[0] = 1.0
    allocator.step(wc, up, state)  # expand (1, 0)
    assert wc.levels[0] == 0
    down = np.full(wc.size, -1.0)
    for _ in range(2):
        plan = allocator.plan(wc, down, state)
        assert Edit.collapse(1, 0) not in plan.edits
        state.record(dataclasses.replace(plan, edits=()), wc, 2)
    assert Edit.collapse(1, 0) in allocator.plan(wc, down, state).edits
    allocator.step(wc, down, state)
    assert state.stats.mean_residency == 3.0


def test_protected_window_is_never_touched() -> None:
    wc = WorkingContext(
        np.zeros(32, dtype=np.int64),
        np.arange(32),
        num_tokens=32,
        W_max=32,
        K=4,
        protected_recent=9,
    )
    plan = FocusAllocator(AllocatorConfig(max_edits=8)).plan(wc, np.full(32, -1.0))
    collapsed = sorted(e.index for e in plan.edits)
    assert collapsed == [0, 1, 2, 3, 4]  # blocks 5..7 overlap the newest 9 tokens


@settings(max_examples=150)
@given(
    K=st.integers(2, 5),
    G=st.integers(1, 3),
    n=st.integers(8, 1500),
    slack=st.integers(0, 60),
    reserve=st.integers(0, 40),
    max_edits=st.integers(1, 6),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_editable_from_keeps_every_edit_at_or_after_it(
    K: int,
    G: int,
    n: int,
    slack: int,
    reserve: int,
    max_edits: int,
    seed: int,
    data: st.DataObject,
) -> None:
    """Entries before ``editable_from`` are neither expanded nor collapsed, whatever the scores
    ask; a plan that cannot fit there is refused rather than reaching back."""
    G = min(G, K - 1)
    wc = WorkingContext.assemble(n, coarsest_size(n, K, G) + slack, K=K, gists_per_node=G)
    rng = np.random.default_rng(seed)
    for _ in range(3):  # a few random edits, so that the context mixes levels
        scores = rng.uniform(-1, 1, size=wc.size)
        wc.apply(FocusAllocator(AllocatorConfig(max_edits=4)).plan(wc, scores))
    editable_from = data.draw(st.integers(0, wc.size))
    scores = rng.uniform(-1, 1, size=wc.size)
    allocator = FocusAllocator(AllocatorConfig(max_edits=max_edits, collapse_threshold=0.2))
    reserve = min(reserve, wc.W_max - wc.length)  # no mandatory collapse: nothing to refuse
    plan = allocator.plan(wc, scores, reserve=reserve, editable_from=editable_from)
    starts, _ = wc.spans()
    first_token = int(starts[editable_from]) if editable_from < wc.size else wc.num_tokens
    for edit in plan.edits:
        # The expanded node, or the parent a group collapses into, starts at or after the first
        # editable entry's first token.
        assert edit.index * K**edit.level >= first_token, (edit, editable_from)
    wc.apply(plan)
    assert wc.length + reserve <= wc.W_max


def test_room_is_made_within_editable_from_or_refused() -> None:
    """A mandatory collapse takes the groups from editable_from on (the oldest of those on
    ties), and is refused with the reach named when none is left there."""
    wc = WorkingContext.assemble(64, 64, K=4)  # 64 raw tokens, W_max 64: full
    zeros = np.zeros(wc.size)
    plan = FocusAllocator().plan(wc, zeros, reserve=3, editable_from=40)
    assert plan.edits == (Edit.collapse(1, 10),)  # tokens 40..43, not 0..3
    assert FocusAllocator().plan(wc, zeros, reserve=3).edits == (Edit.collapse(1, 0),)
    with pytest.raises(BudgetError, match="entries from 62 on"):
        FocusAllocator().plan(wc, zeros, reserve=3, editable_from=62)


def test_editable_from_is_checked() -> None:
    wc = WorkingContext.assemble(64, 64, K=4)
    with pytest.raises(InvalidInputError, match="editable_from"):
        FocusAllocator().plan(wc, np.zeros(wc.size), editable_from=wc.size + 1)


def test_stochastic_is_seeded() -> None:
    wc = WorkingContext([1] * 16, list(range(16)), num_tokens=64, W_max=200, K=4)
    scores = np.linspace(0.3, 0.9, 16)
    plans = {
        seed: FocusAllocator(AllocatorConfig(strategy="stochastic", seed=seed, max_edits=3)).plan(
            wc, scores
        )
        for seed in range(6)
    }
    again = FocusAllocator(AllocatorConfig(strategy="stochastic", seed=3, max_edits=3)).plan(
        wc, scores
    )
    assert again == plans[3]
    assert len({p.edits for p in plans.values()}) > 1


@pytest.mark.parametrize(
    ("scores", "match"),
    [(np.zeros(3), "one value per working-context entry"), (np.full(20, np.nan), "finite")],
)
def test_bad_scores(scores: np.ndarray, match: str) -> None:
    wc = wc_with_gists()
    scores = scores if scores.size != 20 else np.full(wc.size, np.nan)
    with pytest.raises(InvalidInputError, match=match):
        FocusAllocator().plan(wc, scores)


def test_bad_config_and_reserve() -> None:
    for kwargs in (
        {"max_edits": 0},
        {"cooldown_steps": -1},
        {"expand_threshold": -0.1},
        {"strategy": "random"},
        {"temperature": 0.0},
    ):
        with pytest.raises(InvalidInputError):
            AllocatorConfig(**kwargs)  # type: ignore[arg-type]
    wc = wc_with_gists()
    with pytest.raises(InvalidInputError, match="reserve"):
        FocusAllocator().plan(wc, np.zeros(wc.size), reserve=-1)


def test_a_collapse_pays_for_an_expansion_only_when_it_refunds_enough() -> None:
    # K=4, G=2: a level-2 gist (2 positions), tokens 16..19 (4), a level-1 gist (2): 8 of 8.
    # Expanding the level-2 gist costs 4·2 − 2 = 6; collapsing the tokens refunds 4 − 2 = 2.
    wc = WorkingContext(
        [2, 0, 0, 0, 0, 1], [0, 16, 17, 18, 19, 5], num_tokens=24, W_max=8, K=4, gists_per_node=2
    )
    scores = np.array([0.9, -0.5, -0.5, -0.5, -0.5, 0.0])
    plan = FocusAllocator(AllocatorConfig(max_edits=4)).plan(wc, scores)
    assert Edit.expand(2, 0) not in plan.edits
    assert plan.edits == (Edit.collapse(1, 4),)  # the unwanted tokens still go
    wc.apply(plan)
    assert wc.length == 6

    # Two groups of tokens together pay for it (2 + 2 + 2 free positions), within max_edits.
    def two_groups() -> WorkingContext:
        levels, indices = [2, *[0] * 8, 1], [0, *range(16, 24), 6]
        return WorkingContext(levels, indices, num_tokens=28, W_max=14, K=4, gists_per_node=2)

    scores3 = np.array([0.9, *[-0.5] * 8, 0.0])
    wc3 = two_groups()
    plan = FocusAllocator(AllocatorConfig(max_edits=4)).plan(wc3, scores3)
    assert plan.edits == (Edit.collapse(1, 4), Edit.collapse(1, 5), Edit.expand(2, 0))
    assert wc3.apply(plan).length == 14
    # With two edits allowed the pair of collapses cannot be afforded: nothing is taken for it.
    plan = FocusAllocator(AllocatorConfig(max_edits=2)).plan(two_groups(), scores3)
    assert Edit.expand(2, 0) not in plan.edits
    # With the room, the expansion happens: 6 free positions after the collapse.
    wc2 = WorkingContext([2, 1, 1], [0, 4, 5], num_tokens=24, W_max=12, K=4, gists_per_node=2)
    plan = FocusAllocator().plan(wc2, np.array([0.9, 0.0, 0.0]))
    assert plan.edits == (Edit.expand(2, 0),)
    assert wc2.apply(plan).length == 12
