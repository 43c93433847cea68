"""WorkingContext: invariants after every edit, atomic plans, costs, assembly, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.core import Edit, EditPlan, WorkingContext, coarsest_size, wc_positions
from megacontext.errors import (
    BudgetError,
    IllegalEditError,
    InvalidInputError,
    InvariantError,
    StalePlanError,
)


@st.composite
def assembled(draw: st.DrawFn) -> WorkingContext:
    K = draw(st.integers(2, 8))
    G = draw(st.integers(1, min(4, K - 1)))  # positions a gist takes
    n = draw(st.integers(0, 5000))
    recent = draw(st.integers(0, 3 * K))
    need = coarsest_size(max(0, ((n - min(recent, n)) // K) * K), K, G) + (
        n - max(0, ((n - min(recent, n)) // K) * K)
    )
    w_max = draw(st.integers(max(1, need, recent), max(1, need, recent) + 300))
    return WorkingContext.assemble(n, w_max, K=K, protected_recent=recent, gists_per_node=G)


def snapshot(wc: WorkingContext) -> tuple[int, int, list[int], list[int]]:
    return wc.version, wc.num_tokens, wc.levels.tolist(), wc.indices.tolist()


@settings(max_examples=300)
@given(assembled())
def test_assembly_covers_history_within_budget_and_uses_it(wc: WorkingContext) -> None:
    wc.check_invariants()
    assert wc.length <= wc.W_max
    costs = np.where(wc.levels > 0, wc.gists_per_node, 1)
    assert wc.length == costs.sum()
    assert wc.offsets().tolist() == (np.cumsum(costs) - costs).tolist()
    assert len(wc_positions(wc, "gaussian").position_ids) == wc.length
    starts, ends = wc.spans()
    if wc.num_tokens:
        assert starts[0] == 0 and ends[-1] == wc.num_tokens
    # Budget is used: expanding the newest gist does not fit, or nothing is left to expand.
    gists = np.flatnonzero(wc.levels > 0)
    assert not gists.size or wc.length + wc.expand_cost(int(wc.levels[gists[-1]])) > wc.W_max
    # Refined toward the present: levels never get coarser as time moves forward.
    assert np.all(np.diff(wc.levels) <= 0)
    assert np.all(wc.levels[wc.protected_mask()] == 0)


@settings(max_examples=250)
@given(assembled(), st.data())
def test_random_edits_keep_invariants_and_costs(wc: WorkingContext, data: st.DataObject) -> None:
    K = wc.K
    for _ in range(data.draw(st.integers(1, 25))):
        before = snapshot(wc)
        size, length = wc.size, wc.length
        action = data.draw(st.sampled_from(["expand", "collapse", "extend", "illegal"]))
        if action == "expand":
            gists = np.flatnonzero(wc.levels > 0)
            if not gists.size:
                continue
            pos = int(data.draw(st.sampled_from(gists.tolist())))
            edit = Edit.expand(int(wc.levels[pos]), int(wc.indices[pos]))
            # K children in place of one gist: K - 1 when children and gist take one position.
            cost = K * (1 if edit.level == 1 else wc.gists_per_node) - wc.gists_per_node
            if length + cost > wc.W_max:
                with pytest.raises(BudgetError):
                    wc.apply(EditPlan(wc.version, (edit,)))
                assert snapshot(wc) == before
                continue
            first_position = wc.position_of(pos)
            result = wc.apply(EditPlan(wc.version, (edit,)))
            assert wc.size == size + K - 1
            assert wc.length == result.length == length + cost
            assert result.first_changed == pos
            assert result.first_position == first_position == wc.position_of(pos)
        elif action == "collapse":
            from megacontext.core import sibling_groups

            groups = sibling_groups(wc, np.zeros(wc.size))
            if not groups.first.size:
                continue
            g = data.draw(st.integers(0, groups.first.size - 1))
            wc.collapse(int(groups.level[g]), int(groups.index[g]))
            assert wc.size == size - (K - 1)  # collapse refunds what expanding it costs
            assert wc.length == length - wc.expand_cost(int(groups.level[g]))
        elif action == "extend":
            count = data.draw(st.integers(0, 2 * K))
            if length + count > wc.W_max:
                with pytest.raises(BudgetError):
                    wc.extend(count)
                assert snapshot(wc) == before
                continue
            wc.extend(count)
            assert wc.size == size + count and wc.length == length + count
        else:
            bad = data.draw(
                st.sampled_from(
                    [
                        Edit.expand(0, 0),
                        Edit.expand(1, 10**9),
                        Edit.collapse(0, 0),
                        Edit.collapse(1, 10**9),
                    ]
                )
            )
            with pytest.raises(IllegalEditError):
                wc.apply(EditPlan(wc.version, (bad,)))
            assert snapshot(wc) == before
        wc.check_invariants()


def small_wc() -> WorkingContext:
    # K=4, N=70, budget 40, 6 protected tokens.
    return WorkingContext.assemble(70, 40, K=4, protected_recent=6)


def test_plan_is_all_or_nothing() -> None:
    wc = WorkingContext.assemble(64 * 4, 30, K=4)
    before = snapshot(wc)
    gist = int(np.flatnonzero(wc.levels > 0)[0])
    good = Edit.expand(int(wc.levels[gist]), int(wc.indices[gist]))
    with pytest.raises(IllegalEditError):
        wc.apply(EditPlan(wc.version, (good, Edit.expand(0, 3))))
    assert snapshot(wc) == before
    with pytest.raises(IllegalEditError, match="overlapping"):
        wc.apply(EditPlan(wc.version, (good, good)))
    assert snapshot(wc) == before


def test_stale_plan_is_refused() -> None:
    wc = WorkingContext.assemble(70, 60, K=4, protected_recent=6)
    plan = EditPlan(wc.version, ())
    wc.extend(1)
    with pytest.raises(StalePlanError, match="version"):
        wc.apply(plan)


def test_collapse_refuses_protected_window_and_missing_children() -> None:
    wc = WorkingContext(
        list(np.zeros(12, dtype=int)),
        list(range(12)),
        num_tokens=12,
        W_max=20,
        K=4,
        protected_recent=5,
    )
    with pytest.raises(IllegalEditError, match="protected recent window"):
        wc.collapse(1, 2)  # tokens 8..11 are within the newest 5
    wc.collapse(1, 0)
    with pytest.raises(IllegalEditError, match="not all entries"):
        wc.collapse(1, 0)  # already collapsed: children absent
    with pytest.raises(IllegalEditError, match="not complete"):
        wc.collapse(1, 3)
    with pytest.raises(IllegalEditError, match="only gists have children"):
        wc.expand(0, 4)
    with pytest.raises(IllegalEditError, match="not an entry"):
        wc.expand(1, 1)


def test_invariant_checker_names_each_violation() -> None:
    def make(levels: list[int], indices: list[int], n: int, w: int = 50, recent: int = 0) -> None:
        WorkingContext(levels, indices, num_tokens=n, W_max=w, K=4, protected_recent=recent)

    with pytest.raises(InvariantError, match="gap"):
        make([0, 0], [0, 2], 3)
    with pytest.raises(InvariantError, match="overlap"):
        make([1, 0], [0, 2], 3)
    with pytest.raises(InvariantError, match="first entry starts"):
        make([0], [1], 2)
    with pytest.raises(InvariantError, match="not N"):
        make([1], [0], 8)
    with pytest.raises(InvariantError, match="budget"):
        make([0, 0, 0], [0, 1, 2], 3, w=2)
    with pytest.raises(InvariantError, match="protected window"):
        make([1, 0], [0, 4], 5, recent=3)
    with pytest.raises(InvariantError, match="no entries"):
        make([], [], 4)
    with pytest.raises(InvariantError, match="empty history"):
        make([0], [0], 0)


def test_bad_budgets() -> None:
    with pytest.raises(BudgetError, match="smaller than the protected recent window"):
        WorkingContext.assemble(1000, 50, K=4, protected_recent=64)
    with pytest.raises(BudgetError, match="coarsest legal working context"):
        WorkingContext.assemble(10**6, 8, K=4)
    with pytest.raises(InvalidInputError, match="W_max"):
        WorkingContext.assemble(10, 0, K=4)
    with pytest.raises(BudgetError, match="over W_max"):
        WorkingContext.assemble(10, 10, K=4).extend(1)


def test_assembly_of_long_history_is_coarse_far_and_fine_near() -> None:
    wc = WorkingContext.assemble(100_000, 512, K=32, protected_recent=128)
    assert wc.size <= 512 and wc.size > 512 - 31
    assert wc.levels[0] == wc.levels.max() >= 3
    assert np.all(wc.levels[-128:] == 0)
    positions = wc_positions(wc, "global")
    assert np.all(np.diff(positions.mu) > 0)


def test_entry_lookup() -> None:
    wc = small_wc()
    for pos in range(wc.size):
        assert wc.entry_of(int(wc.levels[pos]), int(wc.indices[pos])) == pos
        starts, ends = wc.spans()
        assert wc.entry_at(int(starts[pos])) == pos
        assert wc.entry_at(int(ends[pos]) - 1) == pos
    with pytest.raises(InvalidInputError):
        wc.entry_at(70)


def test_gists_per_node_must_compress() -> None:
    for bad in (0, True, 1.5):
        with pytest.raises(InvalidInputError, match="gists_per_node"):
            WorkingContext.assemble(64, 40, K=4, gists_per_node=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="saves nothing"):
        WorkingContext([1], [0], num_tokens=4, W_max=8, K=4, gists_per_node=4)


def test_budget_counts_positions_when_a_gist_is_several_vectors() -> None:
    # K=4, G=3: a level-1 gist takes 3 positions; expanding it adds only 1.
    wc = WorkingContext([1, 1], [0, 1], num_tokens=8, W_max=7, K=4, gists_per_node=3)
    assert (wc.size, wc.length, wc.utilization) == (2, 6, 6 / 7)
    assert wc.expand(1, 1).first_position == 3
    assert (wc.size, wc.length) == (5, 7)
    with pytest.raises(BudgetError, match="8 positions, over W_max=7"):
        wc.expand(1, 0)
    with pytest.raises(InvariantError, match="budget: 9 positions"):
        WorkingContext([1, 1, 1], [0, 1, 2], num_tokens=12, W_max=8, K=4, gists_per_node=3)
    with pytest.raises(BudgetError, match="needs 10 positions"):
        # 36 tokens: two level-2 nodes (3 positions each) + 4 raw protected tokens = 10.
        WorkingContext.assemble(36, 9, K=4, protected_recent=4, gists_per_node=3)
