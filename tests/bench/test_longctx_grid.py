"""Slicing the long-context grid with MEGACONTEXT_LONGCTX_* variables."""

from __future__ import annotations

import os
import sys

import pytest

from megacontext.bench.longctx import FULL, QUICK, pick_systems, select_grid
from megacontext.errors import InvalidInputError


def test_no_variables_keep_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in ("TASKS", "LENGTHS", "BUDGETS", "SYSTEMS", "SAMPLES"):
        monkeypatch.delenv(f"MEGACONTEXT_LONGCTX_{field}", raising=False)
    assert select_grid(FULL) == (FULL, None)


def test_variables_narrow_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_TASKS", "passkey, longdoc")
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_LENGTHS", "100_000,4096")
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_SAMPLES", "7")
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_SYSTEMS", "recency,megacontext")
    grid, systems = select_grid(QUICK)
    assert grid.tasks == ("passkey", "longdoc")
    assert grid.lengths == (100_000, 4096)
    assert grid.budgets == QUICK.budgets
    assert grid.samples == 7
    assert systems == ["recency", "megacontext"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("TASKS", "passkey,haystack", r"unknown tasks \['haystack'\]"),
        ("LENGTHS", "4k", "not a comma-separated list of integers"),
        ("BUDGETS", "0", "must be >= 1"),
        ("SAMPLES", "3,4", "takes one number"),
    ],
)
def test_bad_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"MEGACONTEXT_LONGCTX_{field}", value)
    with pytest.raises(InvalidInputError, match=message):
        select_grid(FULL)


def test_pick_systems_keeps_the_order_asked_and_refuses_unknown_names() -> None:
    available = {"recency": lambda: 1, "rag-bm25": lambda: 2, "full": lambda: 3}
    assert list(pick_systems(available, None)) == ["recency", "rag-bm25", "full"]
    assert list(pick_systems(available, ["full", "recency"])) == ["full", "recency"]
    with pytest.raises(InvalidInputError, match=r"\['megacontext'\].*focus bundle"):
        pick_systems(available, ["recency", "megacontext"])


def test_reproduce_command_names_the_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    from megacontext.bench import reproduce_command

    for key in [k for k in os.environ if k.startswith("MEGACONTEXT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "argv", ["megacontext", "bench", "longctx", "--json", "a b.json"])
    assert reproduce_command("longctx") == "megacontext bench longctx --json 'a b.json'"
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_TASKS", "passkey,needle")
    monkeypatch.setenv("MEGACONTEXT_LONGCTX_LENGTHS", "100000")
    monkeypatch.setenv("UNRELATED", "x")
    assert reproduce_command("longctx") == (
        "MEGACONTEXT_LONGCTX_LENGTHS=100000 MEGACONTEXT_LONGCTX_TASKS=passkey,needle "
        "megacontext bench longctx --json 'a b.json'"
    )
    monkeypatch.setattr(sys, "argv", ["python"])
    assert reproduce_command("gist").endswith("megacontext bench gist")
