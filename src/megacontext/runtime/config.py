"""A session's settings, and the one place each of their defaults is defined (DESIGN §4).

Commands, benchmarks, the evaluation harness and the demos take their defaults from here:
:data:`W_MAX` (the working-context budget), :func:`default_protected_recent`, and every other
field of :class:`SessionConfig`. A session records its settings in ``session.json`` when it is
created, and a reopened session reads them back, so nothing has to be given twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from megacontext.core import DEFAULT_W_MAX, POLICIES, PositionPolicy, default_protected_recent
from megacontext.errors import BudgetError, InvalidInputError

W_MAX = DEFAULT_W_MAX  # the working-context budget when none is given (defined in core)


def default_collapse_ahead(W_max: int, refocus_every: int, protected_recent: int) -> int:
    """Entries freed at once when room runs out, when none is given: an eighth of the budget,
    at least ``refocus_every``, never more than what is not protected."""
    return min(max(refocus_every, W_max // 8), W_max - protected_recent)


def default_refocus_every(W_max: int) -> int:
    """Tokens generated between refocus steps, when none is given: a quarter of the budget, at
    least 32. A refocus that edits recomputes the KV cache from its first edit to the end (the
    protected window at least), so at a 512-entry budget refocusing every 32 tokens made that
    recompute a fifth of the decoding time (BENCHMARKS.md, 2026-12-07 20:15)."""
    return max(32, W_max // 4)


def default_refocus_reach(W_max: int, protected_recent: int, collapse_ahead: int) -> int:
    """How far back from the working context's end a refocus may edit while the session
    generates, when none is given: the protected window and one and a half times
    ``collapse_ahead`` (raw text enough to free that much room without reaching further back),
    at least half the budget."""
    return max(1, min(W_max, max(W_max // 2, protected_recent + collapse_ahead * 3 // 2)))


@dataclass
class SessionConfig:
    """Working-context, focus and decoding settings of a session."""

    W_max: int = W_MAX
    protected_recent: int | None = None  # default: default_protected_recent(W_max)
    policy: PositionPolicy = "compact"
    refocus_every: int | None = None  # default: default_refocus_every(W_max)
    # Entries freed at once when the working context runs out of room (default W_max // 8, at
    # least refocus_every). A collapse rewrites the KV cache from the collapsed entry on, usually
    # most of the context; freeing room for many tokens at once pays that recompute once per
    # that many tokens instead of once per refocus, at the cost of a slightly emptier context.
    collapse_ahead: int | None = None
    # While the session generates (a generate call without a prompt continues generating), a
    # refocus step (and the room it makes for new tokens) edits only the last refocus_reach
    # positions of the working context (default_refocus_reach), so the KV cache it recomputes
    # is at most that long; an edit further back would re-prefill nearly the whole context
    # every refocus_every tokens. Focus for a question (`ask`, `focus_for`, generate with a
    # prompt or after an ingest) reaches everywhere. W_max lets generation edit anywhere.
    refocus_reach: int | None = None
    use_lens: bool = True
    max_edits: int = 4
    # Most refocus steps spent on one question before it is answered (fewer when a step plans
    # nothing); sessions, `ask` and the evaluation harness all use it.
    focus_steps: int = 8
    # Focus thresholds on LensNet's scores (see AllocatorConfig). The shipped LensNet asks for
    # detail with small positive scores: with the earlier thresholds (expand 0.1, min gain 0.05)
    # the demo's session made no expansion at all. Voluntary collapses are off: only room for
    # new tokens collapses.
    expand_threshold: float = 0.0
    min_gain: float = 0.0
    collapse_threshold: float = 1.0
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    query_tokens: int = 32
    # How questions are put to the base: "raw", "chat" or "chat-cue" (models.prompting);
    # None: the default style for the base (PromptFormat.default_style).
    prompt: str | None = None
    trace: bool = True
    # Read gists through the bundle's LoRA adapters when it has them (co-learning, issue 6 §6);
    # they are attached to the base while the session is open and detached on close.
    use_lora: bool = True
    # Nodes gisted per GistNet forward. Bounds ingest memory: a 64k-token ingest gisted in one
    # batch held about 1 GB of activations; 256 LOD1 nodes are 8k tokens per forward.
    gist_batch: int = 256
    # Pages (256 records each) kept per store in the read cache; bounds its memory (at d_model
    # 256 in float16, 64 gist pages are 8 MiB).
    cache_pages: int = 64
    # The fields left to their budget-dependent defaults (protected_recent, refocus_every,
    # collapse_ahead, refocus_reach):
    # they follow a new budget (resized) and are recorded as null in session.json.
    _defaulted: frozenset[str] = field(
        init=False, default_factory=frozenset, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            if spec.init:
                _check_type(spec.name, getattr(self, spec.name), spec.type)
        self._defaulted = frozenset(
            name
            for name in ("protected_recent", "refocus_every", "collapse_ahead", "refocus_reach")
            if getattr(self, name) is None
        )
        self._check_budget()
        self._check_counts()
        if self.prompt is not None:
            from megacontext.models.prompting import PROMPT_STYLES

            if self.prompt not in PROMPT_STYLES:
                raise InvalidInputError(
                    f"prompt must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt!r}"
                )

    def _check_budget(self) -> None:
        """W_max, the protected window, collapse_ahead and refocus_reach, filling the
        budget-dependent defaults."""
        if self.W_max < 1:
            raise InvalidInputError(f"W_max must be >= 1, got {self.W_max}")
        if self.protected_recent is None:
            self.protected_recent = default_protected_recent(self.W_max)
        if self.protected_recent < 0:
            raise InvalidInputError(f"protected_recent must be >= 0, got {self.protected_recent}")
        if self.protected_recent > self.W_max:
            raise BudgetError(
                f"W_max={self.W_max} is smaller than the protected recent window "
                f"({self.protected_recent}); raise W_max or lower protected_recent"
            )
        if self.refocus_every is None:
            self.refocus_every = default_refocus_every(self.W_max)
        if self.collapse_ahead is None:
            self.collapse_ahead = default_collapse_ahead(
                self.W_max, self.refocus_every, self.protected_recent
            )
        if not 0 <= self.collapse_ahead <= self.W_max - self.protected_recent:
            raise InvalidInputError(
                f"collapse_ahead must be in [0, W_max - protected_recent = "
                f"{self.W_max - self.protected_recent}], got {self.collapse_ahead}"
            )
        if self.refocus_reach is None:
            self.refocus_reach = default_refocus_reach(
                self.W_max, self.protected_recent, self.collapse_ahead
            )
        if not 1 <= self.refocus_reach <= self.W_max:
            raise InvalidInputError(
                f"refocus_reach must be in [1, W_max = {self.W_max}] (positions from the working "
                f"context's end), got {self.refocus_reach}"
            )

    def _check_counts(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidInputError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("refocus_every", "gist_batch", "cache_pages", "max_edits"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("focus_steps", "query_tokens", "top_k", "seed"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")

    def with_changes(self, **changes: Any) -> SessionConfig:
        """A copy with ``changes`` (as ``dataclasses.replace``), in which the fields that were
        defaults stay defaults: they are derived again for the new values."""
        kept = {name: None for name in self._defaulted if name not in changes}
        return dataclasses.replace(self, **{**kept, **changes})

    def resized(self, W_max: int) -> SessionConfig:
        """This config for another budget: a protected window, ``refocus_every``,
        ``collapse_ahead`` and ``refocus_reach`` that were defaults follow the new budget; values
        set explicitly are kept."""
        return self.with_changes(W_max=W_max)

    def to_json(self) -> dict[str, Any]:
        """The settings as ``session.json`` records them (defaulted fields as null)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: None if k in self._defaulted else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionConfig:
        """A config from ``session.json``; fields this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


def _check_type(name: str, value: object, annotation: object) -> None:
    """A typed error for a value of the wrong type (``W_max="512"``), before any arithmetic."""
    text = str(annotation)
    if value is None and "None" in text:
        return
    if text == "PositionPolicy":
        return  # checked against POLICIES
    base = text.split("|")[0].strip()
    allowed = _TYPES.get(base)
    if allowed is None:
        return
    wrong = not isinstance(value, allowed) or (base in ("int", "float") and isinstance(value, bool))
    if wrong:
        raise InvalidInputError(
            f"SessionConfig.{name} must be {base}, got {type(value).__name__} {value!r}"
        )


__all__ = [
    "W_MAX",
    "SessionConfig",
    "default_collapse_ahead",
    "default_protected_recent",
    "default_refocus_every",
    "default_refocus_reach",
]
