"""Manual focus control of a session: expand, collapse and pin, still legal and within budget."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from megacontext.core import Edit, EditKind, EditPlan, FocusAllocator, WorkingContext
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.focus import FocusPrior
from megacontext.runtime import metrics

if TYPE_CHECKING:
    from megacontext.runtime.session import Session


class Focus:
    """Manual focus control, still subject to legality and the budget."""

    def __init__(self, session: Session):
        self._s = session
        self.pinned: list[tuple[int, int]] = []
        # Token ranges focus leaves as gists: superseded text (an old version of a file) that
        # should not be read, nor cited, in place of the current one.
        self.avoided: list[tuple[int, int]] = []
        # How LensNet's score and the lexical and key evidence are mixed, per token range
        # (None: LensNet's score alone).
        self.prior: FocusPrior | None = None

    def avoid(self, ranges: list[tuple[int, int]]) -> None:
        """Never expand a LOD1 block that lies wholly inside one of ``ranges`` (token ranges of
        the history), so that focus opens — and answers cite — other text instead; the text
        stays in the history and its gists stay in view. Such blocks that are open now (an
        earlier question expanded them) are collapsed, except in the protected recent window.
        Replaces the previous ranges; an empty list lifts the restriction. Pins win over it."""
        n = self._s.tree.num_tokens
        for start, end in ranges:
            if not 0 <= start < end <= n:
                raise InvalidInputError(
                    f"avoided range [{start}, {end}) is outside the history [0, {n})"
                )
        self.avoided = sorted((int(a), int(b)) for a, b in ranges)
        self._close_avoided()

    def weigh(self, prior: FocusPrior | None) -> None:
        """Score entries by ``prior`` (LensNet's score blended with the lexical and key
        evidence, weighted per token range) from the next focus step on; None goes back to
        LensNet's score alone. Pins and avoided ranges still win over it."""
        n = self._s.tree.num_tokens
        if prior is not None:
            for start, stop, _ in prior.ranges:
                if stop > n:
                    raise InvalidInputError(
                        f"focus prior range [{start}, {stop}) is outside the history [0, {n})"
                    )
        self.prior = prior

    def _close_avoided(self) -> None:
        s = self._s
        K = s.tree.K
        protected_from = s.tree.num_tokens - s.wc.protected_recent
        for lo, hi in self.avoided:
            for block in range(-(-lo // K), min(hi, protected_from) // K):
                first, last = block * K, block * K + K - 1
                if s.wc.entry_of(0, first) is None or s.wc.entry_of(0, last) is None:
                    continue  # not open (a gist here, or coarser)
                if any(a <= last and first < b for a, b in self.pinned):
                    continue
                s._apply(EditPlan(s.wc.version, (Edit.collapse(1, block),)))

    def avoided_mask(self, wc: WorkingContext) -> np.ndarray:
        """LOD1 entries of ``wc`` whose tokens all lie in an avoided range."""
        starts, ends = wc.spans()
        mask = np.zeros(wc.size, dtype=bool)
        for lo, hi in self.avoided:
            mask |= (starts >= lo) & (ends <= hi)
        return mask & (wc.levels == 1)

    def expand(self, level: int, index: int) -> None:
        """Open gist ``(level, index)``, paying with the least useful collapse if needed."""
        s = self._s
        pos = s.wc.entry_of(level, index)
        if pos is None or level < 1:
            s._apply(EditPlan(s.wc.version, (Edit.expand(level, index),)))  # raises, names why
            return
        if s.wc.length + s.wc.expand_cost(level) <= s.wc.W_max:
            s._apply(EditPlan(s.wc.version, (Edit.expand(level, index),)))
            return
        # One plan: this expansion, paid by the lowest-scoring groups that do not contain it
        # (as many as it takes: an explicit request is not held to the per-step edit limit).
        scores = s._with_pins(np.zeros(s.wc.size))
        scores[pos] = 1.0
        unlimited = replace(s.engine.config, max_edits=max(s.engine.config.max_edits, s.wc.size))
        plan = FocusAllocator(unlimited).plan(s.wc, scores, s.engine.state)
        wanted = Edit.expand(level, index)
        if wanted not in plan.edits:
            metrics.FOCUS_EDITS_REFUSED.inc()
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


__all__ = ["Focus"]
