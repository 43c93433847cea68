"""The working context: the fixed-budget view of the whole history that the base model reads.

A working context (WC) is an ordered list of entries, each a tree node ``(level, index)``: a raw
token at level 0, a gist above. The entries tile ``[0, N)`` with no gap or overlap (D3), in time
order, and there are at most ``W_max`` of them (every entry costs 1). The newest
``protected_recent`` tokens are always raw.

Edits are named by tree node, not by WC position, so a plan stays meaningful however it is ordered:

* ``expand (ℓ, i)``: the gist is replaced by its K children. Cost: exactly ``K − 1`` entries.
* ``collapse (ℓ, i)``: the K children of node ``(ℓ, i)``, all present, are replaced by it.
  Refund: exactly ``K − 1`` entries.

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
    coarsest_size,
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
        """Net change in WC entries if applied: ``(expands − collapses) · (K − 1)``."""
        return (self.expands - self.collapses) * (K - 1)

    def __len__(self) -> int:
        return len(self.edits)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an applied plan changed. ``first_changed`` is the first WC entry that differs (D10)."""

    first_changed: int
    expands: int
    collapses: int
    size: int


# The working-context budget (entries fed to the base) every command and session uses when none
# is given.
DEFAULT_W_MAX = 512


def default_protected_recent(W_max: int) -> int:
    """Recent tokens kept raw when a caller gives none: a quarter of the budget, at most 128."""
    return min(128, W_max // 4)


class WorkingContext:
    """Entries ``(level, index)`` tiling ``[0, num_tokens)`` within a budget of ``W_max``.

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
    ):
        self.K = check_block_size(K)
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
        self.check_invariants()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def assemble(
        cls, num_tokens: int, W_max: int, K: int = 32, protected_recent: int = 0
    ) -> WorkingContext:
        """Build the initial WC for a history of ``num_tokens`` tokens.

        The newest ``protected_recent`` tokens (rounded out to whole blocks) are raw; older history
        is as coarse as it must be and is refined toward the present until the budget is used: no
        further expansion fits, or everything is raw.
        """
        K = check_block_size(K)
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
        if budget < 0 or coarsest_size(raw_from, K) > budget:
            need = coarsest_size(raw_from, K) + raw
            raise BudgetError(
                f"W_max={W_max} cannot hold {n} tokens: the coarsest legal working context with "
                f"{raw} protected raw tokens needs {need} entries; raise W_max or shrink "
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
            # fits: 1 + coarsest_size(pos - that width) == coarsest_size(pos) <= budget.
            while 1 + coarsest_size(pos - width, K) > budget:
                level, width = level + 1, width * K
            rev_levels.append(level)
            rev_indices.append(pos // width - 1)
            pos -= width
            budget -= 1
        levels = np.concatenate(
            [np.array(rev_levels[::-1], dtype=np.int64), np.zeros(raw, dtype=np.int64)]
        )
        indices = np.concatenate(
            [np.array(rev_indices[::-1], dtype=np.int64), np.arange(raw_from, n, dtype=np.int64)]
        )
        wc = cls(levels, indices, num_tokens=n, W_max=W_max, K=K, protected_recent=protected_recent)
        wc._fill_budget_from_present()
        return wc

    def _fill_budget_from_present(self) -> None:
        while self.size + self.K - 1 <= self.W_max:
            gists = np.flatnonzero(self._levels > 0)
            if gists.size == 0:
                return
            newest = int(gists[-1])
            self.apply(
                EditPlan(
                    self._version,
                    (Edit.expand(int(self._levels[newest]), int(self._indices[newest])),),
                )
            )

    def copy(self) -> WorkingContext:
        clone = WorkingContext.__new__(WorkingContext)
        clone.K, clone.W_max, clone.protected_recent = self.K, self.W_max, self.protected_recent
        clone._num_tokens, clone._version = self._num_tokens, self._version
        clone._levels, clone._indices = self._levels.copy(), self._indices.copy()
        clone._spans_cache = None
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
        """Number of entries (= positions fed to the base model)."""
        return int(self._levels.size)

    def __len__(self) -> int:
        return self.size

    @property
    def utilization(self) -> float:
        return self.size / self.W_max

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
            return ApplyResult(self.size, 0, 0, self.size)
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
        new_size = self.size + plan.size_change(K)
        if new_size > self.W_max:
            raise BudgetError(
                f"plan would grow the working context to {new_size} entries, over W_max="
                f"{self.W_max}; pay for expansions with collapses"
            )
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
        return ApplyResult(replacements[0][0], plan.expands, plan.collapses, self.size)

    def extend(self, count: int) -> ApplyResult:
        """The history grew by ``count`` tokens: append them as raw entries.

        Raises :class:`BudgetError` (and changes nothing) when they do not fit; plan collapses
        first (the allocator's ``reserve``) to make room.
        """
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise InvalidInputError(f"count must be a non-negative integer, got {count!r}")
        if self.size + count > self.W_max:
            raise BudgetError(
                f"appending {count} tokens would grow the working context to "
                f"{self.size + count} entries, over W_max={self.W_max}; collapse first "
                "(plan with reserve >= the tokens to append)"
            )
        first = self.size
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
        return ApplyResult(first, 0, 0, self.size)

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
        if self.size > self.W_max:
            raise InvariantError(f"budget: {self.size} entries exceed W_max={self.W_max}")
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
        return (
            f"WorkingContext(N={self._num_tokens}, size={self.size}/{self.W_max}, "
            f"version={self._version}, {hist})"
        )


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


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
