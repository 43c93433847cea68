"""The working context: the fixed-budget view of the whole history that the base model reads.

A working context (WC) is an ordered list of entries, each a tree node ``(level, index)``: a raw
token at level 0, a gist above. The entries tile ``[0, N)`` with no gap or overlap (D3), in time
order. A token takes one position of the base's input and a gist ``G`` (``gists_per_node``: the
vectors a tree node stores, 1 by default), and the entries take at most ``W_max`` positions in
all (their :attr:`~WorkingContext.length`). The newest ``protected_recent`` tokens are always raw.

Edits are named by tree node, not by WC position, so a plan stays meaningful however it is ordered:

* ``expand (ℓ, i)``: the gist is replaced by its K children. Cost: ``K·c(ℓ−1) − G`` positions,
  where a child costs ``c = 1`` (a token) or ``G`` (a gist): ``K − 1`` when ``G = 1``.
* ``collapse (ℓ, i)``: the K children of node ``(ℓ, i)``, all present, are replaced by it.
  Refund: the same number of positions.

Applying a plan is atomic: it is validated as a whole against this version of the WC and either
every edit happens or none does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from megacontext.core.spans import (
    IntArray,
    check_block_size,
    check_gists_per_node,
    coarsest_size,
    entry_costs,
    spans_of,
)
from megacontext.errors import (
    BudgetError,
    IllegalEditError,
    InvalidInputError,
    InvariantError,
    StalePlanError,
)


class EditKind(StrEnum):
    EXPAND = "expand"
    COLLAPSE = "collapse"


@dataclass(frozen=True, slots=True)
class Edit:
    """One expand or collapse, named by the node it opens (expand) or forms (collapse)."""

    kind: EditKind
    level: int
    index: int

    @staticmethod
    def expand(level: int, index: int) -> Edit:
        return Edit(EditKind.EXPAND, int(level), int(index))

    @staticmethod
    def collapse(level: int, index: int) -> Edit:
        return Edit(EditKind.COLLAPSE, int(level), int(index))


@dataclass(frozen=True, slots=True)
class EditPlan:
    """Edits to apply together to one version of a working context."""

    wc_version: int
    edits: tuple[Edit, ...] = ()

    @property
    def expands(self) -> int:
        return sum(1 for e in self.edits if e.kind is EditKind.EXPAND)

    @property
    def collapses(self) -> int:
        return sum(1 for e in self.edits if e.kind is EditKind.COLLAPSE)

    def size_change(self, K: int) -> int:
        """Net change in WC entries if applied: ``(expands − collapses) · (K − 1)`` (in positions
        too when a gist costs one; see :meth:`WorkingContext.growth`)."""
        return (self.expands - self.collapses) * (K - 1)

    def __len__(self) -> int:
        return len(self.edits)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an applied plan changed. ``first_changed`` is the first WC entry that differs (D10),
    ``first_position`` the first position of the base's input that does (they are equal when a
    gist costs one position); ``size`` and ``length`` are the entries and positions after."""

    first_changed: int
    expands: int
    collapses: int
    size: int
    first_position: int
    length: int


# The working-context budget (positions fed to the base) every command and session uses when none
# is given.
DEFAULT_W_MAX = 512


def default_protected_recent(W_max: int) -> int:
    """Recent tokens kept raw when a caller gives none: a quarter of the budget, at most 128."""
    return min(128, W_max // 4)


class WorkingContext:
    """Entries ``(level, index)`` tiling ``[0, num_tokens)`` within a budget of ``W_max``
    positions.

    The WC is pure index arithmetic (D2): it never touches token ids or gist vectors, and it knows
    which nodes exist from ``num_tokens`` alone (a node exists once it is complete).
    """

    def __init__(
        self,
        levels: IntArray | list[int],
        indices: IntArray | list[int],
        *,
        num_tokens: int,
        W_max: int,
        K: int = 32,
        protected_recent: int = 0,
        gists_per_node: int = 1,
    ):
        self.K = check_block_size(K)
        self.gists_per_node = _check_compresses(gists_per_node, self.K)
        self.W_max = _positive_int(W_max, "W_max")
        if (
            isinstance(protected_recent, bool)
            or not isinstance(protected_recent, int)
            or protected_recent < 0
        ):
            raise InvalidInputError(
                f"protected_recent must be a non-negative integer, got {protected_recent!r}"
            )
        if protected_recent > self.W_max:
            raise BudgetError(
                f"W_max={self.W_max} is smaller than the protected recent window "
                f"({protected_recent} tokens); raise W_max or shrink protected_recent"
            )
        if (
            isinstance(num_tokens, bool)
            or not isinstance(num_tokens, int | np.integer)
            or num_tokens < 0
        ):
            raise InvalidInputError(
                f"num_tokens must be a non-negative integer, got {num_tokens!r}"
            )
        self.protected_recent = protected_recent
        self._num_tokens = int(num_tokens)
        self._levels = np.array(levels, dtype=np.int64)
        self._indices = np.array(indices, dtype=np.int64)
        self._version = 0
        self._spans_cache: tuple[int, IntArray, IntArray] | None = None
        self._offsets_cache: tuple[int, IntArray] | None = None
        self.check_invariants()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def assemble(
        cls,
        num_tokens: int,
        W_max: int,
        K: int = 32,
        protected_recent: int = 0,
        gists_per_node: int = 1,
    ) -> WorkingContext:
        """Build the initial WC for a history of ``num_tokens`` tokens.

        The newest ``protected_recent`` tokens (rounded out to whole blocks) are raw; older history
        is as coarse as it must be and is refined toward the present until the budget is used: no
        further expansion fits, or everything is raw.
        """
        K = check_block_size(K)
        G = _check_compresses(gists_per_node, K)
        W_max = _positive_int(W_max, "W_max")
        if protected_recent > W_max:
            raise BudgetError(
                f"W_max={W_max} is smaller than the protected recent window ({protected_recent} "
                "tokens); raise W_max or shrink protected_recent"
            )
        n = int(num_tokens)
        if n < 0:
            raise InvalidInputError(f"num_tokens must be >= 0, got {num_tokens}")
        recent = min(protected_recent, n)
        raw_from = ((n - recent) // K) * K
        raw = n - raw_from
        budget = W_max - raw
        if budget < 0 or coarsest_size(raw_from, K, G) > budget:
            need = coarsest_size(raw_from, K, G) + raw
            raise BudgetError(
                f"W_max={W_max} cannot hold {n} tokens: the coarsest legal working context with "
                f"{raw} protected raw tokens needs {need} positions; raise W_max or shrink "
                "protected_recent"
            )
        # Walk back from the raw region: at each point take the finest node that still leaves
        # enough budget to tile the rest of the past as coarsely as possible.
        rev_levels: list[int] = []
        rev_indices: list[int] = []
        pos = raw_from
        while pos > 0:
            level, width = 0, 1
            # Terminates at the coarsest aligned node ending at pos at the latest, which always
            # fits: its cost + coarsest_size(pos - that width) == coarsest_size(pos) <= budget.
            while (1 if level == 0 else G) + coarsest_size(pos - width, K, G) > budget:
                level, width = level + 1, width * K
            rev_levels.append(level)
            rev_indices.append(pos // width - 1)
            pos -= width
            budget -= 1 if level == 0 else G
        levels = np.concatenate(
            [np.array(rev_levels[::-1], dtype=np.int64), np.zeros(raw, dtype=np.int64)]
        )
        indices = np.concatenate(
            [np.array(rev_indices[::-1], dtype=np.int64), np.arange(raw_from, n, dtype=np.int64)]
        )
        wc = cls(
            levels,
            indices,
            num_tokens=n,
            W_max=W_max,
            K=K,
            protected_recent=protected_recent,
            gists_per_node=G,
        )
        wc._fill_budget_from_present()
        return wc

    def _fill_budget_from_present(self) -> None:
        while True:
            gists = np.flatnonzero(self._levels > 0)
            if gists.size == 0:
                return
            newest = int(gists[-1])
            if self.length + self.expand_cost(int(self._levels[newest])) > self.W_max:
                return
            self.apply(
                EditPlan(
                    self._version,
                    (Edit.expand(int(self._levels[newest]), int(self._indices[newest])),),
                )
            )

    def copy(self) -> WorkingContext:
        clone = WorkingContext.__new__(WorkingContext)
        clone.K, clone.W_max, clone.protected_recent = self.K, self.W_max, self.protected_recent
        clone.gists_per_node = self.gists_per_node
        clone._num_tokens, clone._version = self._num_tokens, self._version
        clone._levels, clone._indices = self._levels.copy(), self._indices.copy()
        clone._spans_cache = None
        clone._offsets_cache = None
        return clone

    # -- views -----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Incremented by every change; plans carry the version they were computed for."""
        return self._version

    @property
    def num_tokens(self) -> int:
        """History length N covered by the WC."""
        return self._num_tokens

    @property
    def size(self) -> int:
        """Number of entries (one score each; positions too when a gist costs one)."""
        return int(self._levels.size)

    def __len__(self) -> int:
        return self.size

    @property
    def length(self) -> int:
        """Positions the base model reads: a token takes one, a gist ``gists_per_node``."""
        if self.gists_per_node == 1:
            return self.size
        return self.size + int(np.count_nonzero(self._levels)) * (self.gists_per_node - 1)

    @property
    def utilization(self) -> float:
        """Share of the budget in use: :attr:`length` / ``W_max``."""
        return self.length / self.W_max

    def cost(self, level: int) -> int:
        """Positions one entry of ``level`` takes."""
        return 1 if level == 0 else self.gists_per_node

    def expand_cost(self, level: int) -> int:
        """Positions expanding a level-``level`` gist adds (and collapsing into one refunds)."""
        return self.K * self.cost(level - 1) - self.cost(level)

    def growth(self, plan: EditPlan) -> int:
        """Net change in :attr:`length` if ``plan`` were applied."""
        return sum(
            self.expand_cost(e.level) * (1 if e.kind is EditKind.EXPAND else -1) for e in plan.edits
        )

    def offsets(self) -> IntArray:
        """The first position of every entry in the base's input (cached per version): the
        entry index itself when a gist costs one position."""
        if self._offsets_cache is None or self._offsets_cache[0] != self._version:
            costs = entry_costs(self._levels, self.gists_per_node)
            offsets = np.concatenate([[0], np.cumsum(costs)[:-1]]).astype(np.int64)
            offsets.flags.writeable = False
            self._offsets_cache = (self._version, offsets[: self.size])
        return self._offsets_cache[1]

    def position_of(self, entry: int) -> int:
        """The first input position of WC entry ``entry`` (``size`` maps to :attr:`length`)."""
        if not 0 <= entry <= self.size:
            raise InvalidInputError(f"entry must be in [0, {self.size}], got {entry}")
        if self.gists_per_node == 1:
            return int(entry)
        return self.length if entry == self.size else int(self.offsets()[entry])

    @property
    def levels(self) -> IntArray:
        view = self._levels.view()
        view.flags.writeable = False
        return view

    @property
    def indices(self) -> IntArray:
        view = self._indices.view()
        view.flags.writeable = False
        return view

    def spans(self) -> tuple[IntArray, IntArray]:
        """``(starts, ends)`` token positions of every entry (cached per version)."""
        if self._spans_cache is None or self._spans_cache[0] != self._version:
            starts, ends = spans_of(self._levels, self._indices, self.K)
            starts.flags.writeable = False
            ends.flags.writeable = False
            self._spans_cache = (self._version, starts, ends)
        return self._spans_cache[1], self._spans_cache[2]

    @property
    def protected_from(self) -> int:
        """Token position from which every covering entry must be raw."""
        return max(0, self._num_tokens - self.protected_recent)

    def protected_mask(self) -> np.ndarray:
        """Entries that overlap the protected recent window."""
        _, ends = self.spans()
        return np.asarray(ends > self.protected_from)

    def entry_of(self, level: int, index: int) -> int | None:
        """WC position of node ``(level, index)``, or ``None`` when it is not an entry."""
        starts, _ = self.spans()
        start = int(index) * self.K ** int(level)
        pos = int(np.searchsorted(starts, start))
        if pos < self.size and self._levels[pos] == level and self._indices[pos] == index:
            return pos
        return None

    def entry_at(self, token_position: int) -> int:
        """WC position of the entry covering a token position."""
        if not 0 <= token_position < self._num_tokens:
            raise InvalidInputError(
                f"token position {token_position} is outside the history [0, {self._num_tokens})"
            )
        _, ends = self.spans()
        return int(np.searchsorted(ends, token_position, side="right"))

    def level_histogram(self) -> dict[int, int]:
        values, counts = np.unique(self._levels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    # -- edits -----------------------------------------------------------------------------------

    def expand(self, level: int, index: int) -> ApplyResult:
        """Replace gist ``(level, index)`` by its K children."""
        return self.apply(EditPlan(self._version, (Edit.expand(level, index),)))

    def collapse(self, level: int, index: int) -> ApplyResult:
        """Replace the K children of node ``(level, index)`` by the node itself."""
        return self.apply(EditPlan(self._version, (Edit.collapse(level, index),)))

    def apply(self, plan: EditPlan) -> ApplyResult:
        """Apply every edit of ``plan`` or none: on any error the WC is unchanged."""
        if plan.wc_version != self._version:
            raise StalePlanError(
                f"plan was computed for working-context version {plan.wc_version}, but the WC is "
                f"at version {self._version}; plan again on the current WC"
            )
        if not plan.edits:
            return ApplyResult(self.size, 0, 0, self.size, self.length, self.length)
        K = self.K
        replacements: list[
            tuple[int, int, IntArray, IntArray]
        ] = []  # (first, stop, levels, indices)
        children_offsets = np.arange(K, dtype=np.int64)
        for edit in plan.edits:
            if edit.kind is EditKind.EXPAND:
                pos = self._locate_expand(edit)
                replacements.append(
                    (
                        pos,
                        pos + 1,
                        np.full(K, edit.level - 1, dtype=np.int64),
                        edit.index * K + children_offsets,
                    )
                )
            elif edit.kind is EditKind.COLLAPSE:
                pos = self._locate_collapse(edit)
                replacements.append(
                    (
                        pos,
                        pos + K,
                        np.array([edit.level], dtype=np.int64),
                        np.array([edit.index], dtype=np.int64),
                    )
                )
            else:
                raise IllegalEditError(f"unknown edit kind {edit.kind!r}")
        replacements.sort(key=lambda r: r[0])
        for (_, stop, _, _), (first, _, _, _) in itertools.pairwise(replacements):
            if first < stop:
                raise IllegalEditError(
                    "plan contains overlapping edits (the same entries are expanded or collapsed "
                    "twice); plan each span at most once"
                )
        new_length = self.length + self.growth(plan)
        if new_length > self.W_max:
            raise BudgetError(
                f"plan would grow the working context to {new_length} positions, over W_max="
                f"{self.W_max}; pay for expansions with collapses"
            )
        first_position = self.position_of(replacements[0][0])
        level_parts: list[IntArray] = []
        index_parts: list[IntArray] = []
        cursor = 0
        for first, stop, levels, indices in replacements:
            level_parts += [self._levels[cursor:first], levels]
            index_parts += [self._indices[cursor:first], indices]
            cursor = stop
        level_parts.append(self._levels[cursor:])
        index_parts.append(self._indices[cursor:])
        self._levels = np.concatenate(level_parts)
        self._indices = np.concatenate(index_parts)
        self._version += 1
        return ApplyResult(
            replacements[0][0],
            plan.expands,
            plan.collapses,
            self.size,
            first_position,
            self.length,
        )

    def extend(self, count: int) -> ApplyResult:
        """The history grew by ``count`` tokens: append them as raw entries.

        Raises :class:`BudgetError` (and changes nothing) when they do not fit; plan collapses
        first (the allocator's ``reserve``) to make room.
        """
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise InvalidInputError(f"count must be a non-negative integer, got {count!r}")
        if self.length + count > self.W_max:
            raise BudgetError(
                f"appending {count} tokens would grow the working context to "
                f"{self.length + count} positions, over W_max={self.W_max}; collapse first "
                "(plan with reserve >= the tokens to append)"
            )
        first, first_position = self.size, self.length
        if count:
            self._levels = np.concatenate([self._levels, np.zeros(count, dtype=np.int64)])
            self._indices = np.concatenate(
                [
                    self._indices,
                    np.arange(self._num_tokens, self._num_tokens + count, dtype=np.int64),
                ]
            )
            self._num_tokens += int(count)
            self._version += 1
        return ApplyResult(first, 0, 0, self.size, first_position, self.length)

    def _locate_expand(self, edit: Edit) -> int:
        if edit.level < 1:
            raise IllegalEditError(
                f"cannot expand token (level 0, index {edit.index}): only gists have children"
            )
        pos = self.entry_of(edit.level, edit.index)
        if pos is None:
            raise IllegalEditError(
                f"cannot expand (level {edit.level}, index {edit.index}): it is not an entry of "
                "the working context"
            )
        return pos

    def _locate_collapse(self, edit: Edit) -> int:
        K = self.K
        if edit.level < 1:
            raise IllegalEditError(
                f"cannot collapse into (level {edit.level}, index {edit.index}): a collapse "
                "forms a gist at level >= 1"
            )
        width = K**edit.level
        end = (edit.index + 1) * width
        if edit.index < 0 or end > self._num_tokens:
            raise IllegalEditError(
                f"cannot collapse into (level {edit.level}, index {edit.index}): the node is not "
                f"complete in a history of {self._num_tokens} tokens"
            )
        if end > self.protected_from:
            raise IllegalEditError(
                f"cannot collapse into (level {edit.level}, index {edit.index}): it overlaps the "
                f"protected recent window (tokens >= {self.protected_from} stay raw)"
            )
        first_child = edit.index * K
        pos = self.entry_of(edit.level - 1, first_child)
        if (
            pos is None
            or pos + K > self.size
            or self._levels[pos + K - 1] != edit.level - 1
            or self._indices[pos + K - 1] != first_child + K - 1
        ):
            raise IllegalEditError(
                f"cannot collapse into (level {edit.level}, index {edit.index}): its {K} children "
                f"at level {edit.level - 1} are not all entries of the working context"
            )
        return pos

    # -- invariants ------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise :class:`InvariantError` unless budget, contiguity, alignment, level legality,
        full coverage, time order and the protected window all hold."""
        levels, indices, n = self._levels, self._indices, self._num_tokens
        if levels.ndim != 1 or levels.shape != indices.shape:
            raise InvariantError(
                f"levels {levels.shape} and indices {indices.shape} must be equal 1-D"
            )
        if self.length > self.W_max:
            raise InvariantError(f"budget: {self.length} positions exceed W_max={self.W_max}")
        if n == 0:
            if self.size:
                raise InvariantError("an empty history must have an empty working context")
            return
        if self.size == 0:
            raise InvariantError(f"coverage: no entries for a history of {n} tokens")
        if levels.min() < 0 or indices.min() < 0:
            raise InvariantError("level and index of every entry must be >= 0")
        # Every entry is aligned by construction (its start is index · K^level), so full coverage
        # with no gap or overlap, in time order, reduces to: starts chain onto ends from 0 to N.
        starts, ends = spans_of(levels, indices, self.K)
        if starts[0] != 0:
            raise InvariantError(f"coverage: first entry starts at token {starts[0]}, not 0")
        if ends[-1] != n:
            raise InvariantError(f"coverage: last entry ends at token {ends[-1]}, not N={n}")
        broken = np.flatnonzero(starts[1:] != ends[:-1])
        if broken.size:
            i = int(broken[0])
            kind = "gap" if starts[i + 1] > ends[i] else "overlap or time reversal"
            raise InvariantError(
                f"contiguity: {kind} between entry {i} (ends at {ends[i]}) and entry {i + 1} "
                f"(starts at {starts[i + 1]})"
            )
        raw_needed = ends > self.protected_from
        if np.any(levels[raw_needed] != 0):
            i = int(np.flatnonzero(raw_needed & (levels != 0))[0])
            raise InvariantError(
                f"protected window: entry {i} is a level-{levels[i]} gist inside the newest "
                f"{self.protected_recent} tokens, which must stay raw"
            )

    def __repr__(self) -> str:
        hist = ", ".join(f"L{k}:{v}" for k, v in sorted(self.level_histogram().items()))
        used = (
            f"size={self.size}/{self.W_max}"
            if self.gists_per_node == 1
            else f"length={self.length}/{self.W_max}, G={self.gists_per_node}"
        )
        return f"WorkingContext(N={self._num_tokens}, {used}, version={self._version}, {hist})"


def layout_runs(levels: IntArray, indices: IntArray) -> list[list[int]]:
    """The entries ``(levels[i], indices[i])`` as runs ``[level, first_index, count]`` of
    consecutive nodes of one level: a working context of thousands of entries is a few dozen
    runs (focus traces record it this way)."""
    runs: list[list[int]] = []
    for level, index in zip(levels.tolist(), indices.tolist(), strict=True):
        last = runs[-1] if runs else None
        if last is not None and last[0] == level and last[1] + last[2] == index:
            last[2] += 1
        else:
            runs.append([level, index, 1])
    return runs


def entries_of_runs(runs: list[list[int]]) -> list[tuple[int, int]]:
    """The ``(level, index)`` entries that :func:`layout_runs` encoded."""
    return [(level, first + k) for level, first, count in runs for k in range(count)]


def _check_compresses(gists_per_node: int, K: int) -> int:
    G = check_gists_per_node(gists_per_node)
    if G >= K:
        raise InvalidInputError(
            f"gists_per_node={G} must be below K={K}: a gist that takes as many positions as its "
            "K children saves nothing"
        )
    return G


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
