"""Span arithmetic (D2) and the numpy-only promise of megacontext.core."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megacontext.core import spans
from megacontext.errors import InvalidInputError


def test_core_imports_without_torch() -> None:
    code = (
        "import sys, megacontext.core, megacontext.errors; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@given(st.integers(0, 6), st.integers(0, 10_000), st.integers(2, 40))
def test_node_span_parent_children_arithmetic(level: int, index: int, K: int) -> None:
    start, end = spans.node_start(level, index, K), spans.node_end(level, index, K)
    assert end - start == K**level
    parent = spans.Node(level, index).parent(K)
    assert parent.start(K) <= start < end <= parent.end(K)
    assert index in spans.children_indices(parent.index, K)
    assert spans.is_aligned(start, level, K)


@given(st.integers(0, 10**12), st.integers(2, 64))
def test_coarsest_tiling_is_minimal_and_exact(n: int, K: int) -> None:
    if n > 200_000 and K < 8:
        n = n % 200_000
    levels, indices = spans.coarsest_tiling(n, K)
    assert levels.size == spans.coarsest_size(n, K)
    starts, ends = spans.spans_of(levels, indices, K)
    if n:
        assert starts[0] == 0 and ends[-1] == n
        assert np.array_equal(starts[1:], ends[:-1])
    # Monotone non-increasing levels: coarse past first.
    assert np.all(np.diff(levels) <= 0)


def test_levels_needed_and_existence() -> None:
    assert spans.levels_needed(31, 32) == 0
    assert spans.levels_needed(32, 32) == 1
    assert spans.levels_needed(32 * 32, 32) == 2
    assert spans.node_exists(1, 0, 32, 32)
    assert not spans.node_exists(1, 1, 32, 63)
    assert spans.complete_nodes(100, 1, 32) == 3


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "32"])
def test_bad_block_size(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="block size K"):
        spans.check_block_size(bad)  # type: ignore[arg-type]
