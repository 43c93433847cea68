"""SessionConfig: one place for each default, typed errors, and defaults that follow a budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megacontext.core import DEFAULT_W_MAX, default_protected_recent
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.runtime import SessionConfig
from megacontext.runtime.config import (
    default_collapse_ahead,
    default_refocus_every,
    default_refocus_reach,
)


def test_defaults_come_from_one_place() -> None:
    config = SessionConfig()
    assert config.W_max == DEFAULT_W_MAX
    assert config.protected_recent == default_protected_recent(DEFAULT_W_MAX) == 128
    assert config.refocus_every == default_refocus_every(DEFAULT_W_MAX) == 128
    assert config.collapse_ahead == default_collapse_ahead(DEFAULT_W_MAX, 128, 128) == 128
    # The reach holds the protected window and room to free collapse_ahead positions.
    assert config.refocus_reach == default_refocus_reach(DEFAULT_W_MAX, 128, 128) == 320
    assert SessionConfig(W_max=64).refocus_every == 32  # small budgets keep refocusing often


@given(W_max=st.integers(1, 1 << 16))
def test_the_default_reach_can_free_the_default_room(W_max: int) -> None:
    config = SessionConfig(W_max=W_max)
    assert config.protected_recent is not None and config.collapse_ahead is not None
    assert config.refocus_reach is not None and config.refocus_every is not None
    assert config.collapse_ahead >= min(config.refocus_every, W_max - config.protected_recent)
    # Raw text within the reach, outside the protected window, frees K - 1 of every K
    # positions when collapsed (K >= 2): 1.5 x collapse_ahead of it frees collapse_ahead.
    editable = config.refocus_reach - config.protected_recent
    assert editable >= min(config.collapse_ahead * 3 // 2, W_max - config.protected_recent)


@given(
    first=st.integers(64, 4096),
    second=st.integers(64, 4096),
    explicit=st.one_of(st.none(), st.integers(0, 63)),
)
def test_defaulted_fields_follow_a_new_budget_and_explicit_ones_stay(
    first: int, second: int, explicit: int | None
) -> None:
    config = SessionConfig(W_max=first, protected_recent=explicit)
    resized = config.resized(second)
    assert resized.W_max == second
    if explicit is None:
        assert resized.protected_recent == default_protected_recent(second)
    else:
        assert resized.protected_recent == explicit
    # What session.json records reads back as the same settings, defaults still defaults.
    again = SessionConfig.from_json(config.to_json())
    assert again == config and again.resized(second) == resized
    assert (config.to_json()["protected_recent"] is None) == (explicit is None)
    assert resized.refocus_every == default_refocus_every(second)  # defaults follow too
    assert resized.refocus_reach == default_refocus_reach(
        second, resized.protected_recent, resized.collapse_ahead
    )
    assert config.to_json()["refocus_reach"] is None
    assert config.to_json()["refocus_every"] is None
    assert config.with_changes(trace=False).resized(second) == resized.with_changes(trace=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"W_max": "512"}, InvalidInputError, "W_max must be int, got str"),
        ({"W_max": 0}, InvalidInputError, "W_max must be >= 1"),
        ({"W_max": True}, InvalidInputError, "W_max must be int, got bool"),
        ({"protected_recent": 600}, BudgetError, "protected recent window"),
        ({"refocus_every": 0}, InvalidInputError, "refocus_every must be >= 1"),
        ({"focus_steps": -1}, InvalidInputError, "focus_steps must be >= 0"),
        ({"temperature": "hot"}, InvalidInputError, "temperature must be float"),
        ({"prompt": "shout"}, InvalidInputError, "prompt must be one of raw, chat, chat-cue"),
        ({"policy": "random"}, InvalidInputError, "policy must be one of"),
        ({"refocus_reach": 0}, InvalidInputError, r"refocus_reach must be in \[1, W_max = 512\]"),
        ({"refocus_reach": 513}, InvalidInputError, "refocus_reach must be in"),
    ],
)
def test_bad_settings_are_typed_errors(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        SessionConfig(**kwargs)  # type: ignore[arg-type]
