"""The engine step: plan, apply, tell the KV cache, record — one loop for every caller (D17).

The allocator plans (pure, D9); the working context applies the plan atomically; whoever holds a
KV cache over the context is told the first entry that changed (D10); the allocator state records
the step (cooldowns, swap rate, residency). Sessions, label generation, the evaluation's
MegaContext systems, the demos and the benchmarks all step through :class:`FocusEngine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from megacontext.core import (
    AllocatorConfig,
    AllocatorState,
    EditPlan,
    FocusAllocator,
    WorkingContext,
)


@dataclass(frozen=True)
class FocusStep:
    """What one engine step did."""

    plan: EditPlan
    first_changed: int  # the first WC entry that changed; the WC's size when nothing did
    seconds: dict[str, float] = field(default_factory=dict)  # "allocator", "apply"


@dataclass
class StepTelemetry:
    """One refocus step of a session, as its trace records it."""

    step: int
    tokens: int
    entries: int
    utilization: float
    expands: int
    collapses: int
    swap_rate: float
    mean_residency: float
    first_changed: int
    # "fetch" (LensNet's input vectors), "lensnet" (features + forward), "allocator", "apply".
    seconds: dict[str, float] = field(default_factory=dict)
    cache_hit_ratio: float = 0.0  # of the tree's page cache since the session opened
    # The base's forwards (decoding, and the KV recomputes after edits) since the previous step.
    base_seconds: float = 0.0


class FocusEngine:
    """Steps a working context: the allocator's plan, applied and recorded.

    Args:
        config: The allocator's settings (thresholds, edits per step, cooldown).
        on_change: Called with the first changed input position (the first changed entry's
            first position) after a plan changed the context (a session crops its KV cache
            there).
    """

    def __init__(
        self,
        config: AllocatorConfig | None = None,
        on_change: Callable[[int], None] | None = None,
    ):
        self.allocator = FocusAllocator(config)
        self.state = AllocatorState()
        self.on_change = on_change

    @property
    def config(self) -> AllocatorConfig:
        return self.allocator.config

    def plan(
        self, wc: WorkingContext, scores: np.ndarray, reserve: int = 0, editable_from: int = 0
    ) -> EditPlan:
        """The allocator's plan for ``scores`` (pure: nothing changes)."""
        return self.allocator.plan(
            wc, scores, self.state, reserve=reserve, editable_from=editable_from
        )

    def apply(self, wc: WorkingContext, plan: EditPlan) -> FocusStep:
        """Apply ``plan`` atomically, tell ``on_change``, record the step."""
        start = time.perf_counter()
        first = wc.size
        if plan.edits:
            done = wc.apply(plan)
            first = done.first_changed
            if self.on_change is not None:
                self.on_change(done.first_position)
        self.state.record(plan, wc, self.config.cooldown_steps)
        return FocusStep(plan, first, {"apply": time.perf_counter() - start})

    def step(self, wc: WorkingContext, scores: np.ndarray, reserve: int = 0) -> FocusStep:
        """Plan and apply one refocus step."""
        start = time.perf_counter()
        plan = self.plan(wc, scores, reserve)
        planned = time.perf_counter() - start
        done = self.apply(wc, plan)
        return FocusStep(done.plan, done.first_changed, {"allocator": planned, **done.seconds})

    def run(
        self,
        wc: WorkingContext,
        score: Callable[[WorkingContext], np.ndarray],
        steps: int,
        until: Callable[[WorkingContext], bool] | None = None,
    ) -> int:
        """Up to ``steps`` steps, scoring the context anew each time; stops early when a step
        plans nothing or ``until(wc)`` holds. Returns the number of steps that edited."""
        edited = 0
        for _ in range(steps):
            if until is not None and until(wc):
                break
            done = self.step(wc, score(wc))
            if not done.plan.edits:
                break
            edited += 1
        return edited


__all__ = ["FocusEngine", "FocusStep", "StepTelemetry"]
