"""Position policies (D6): which position the base model sees for each working-context entry.

* ``compact`` — entries get consecutive positions ``offset, offset+1, …``. Relative distances stay
  inside what a frozen base was trained on. The default, and the only policy for absolute-position
  bases such as GPT-2.
* ``global`` — true token positions; a gist sits at the centre of its span.
* ``gaussian`` — ``global`` plus a width: a gist is a uniform distribution over its span, with
  mean ``μ`` at the centre and standard deviation ``σ = width / √12`` (the standard deviation of a
  uniform distribution, an explicit choice; tokens have ``σ = 0``). The model layer damps each
  RoPE frequency ``ω`` by ``exp(−½ (σ ω)²)``, the expected phasor of that distribution.

Integer ``position_ids`` are always provided (the floor of the centre for gists); ``mu`` and
``sigma`` carry the exact values for policies that can use them.

Positions are per input position, not per entry: a gist node that stores ``G`` vectors
(``gists_per_node``) takes ``G`` consecutive positions, and under ``global``/``gaussian`` its
``j``-th vector stands for the ``j``-th of ``G`` equal parts of its span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import IntArray, check_gists_per_node, entry_costs, spans_of
from megacontext.core.working_context import WorkingContext
from megacontext.errors import InvalidInputError

PositionPolicy = Literal["compact", "global", "gaussian"]
POLICIES: tuple[PositionPolicy, ...] = ("compact", "global", "gaussian")


@dataclass(frozen=True)
class Positions:
    """Per-position positions for the model layer (one per entry when a gist takes one)."""

    policy: PositionPolicy
    position_ids: IntArray
    mu: npt.NDArray[np.float64]
    sigma: npt.NDArray[np.float64]


def entry_positions(
    levels: IntArray,
    indices: IntArray,
    K: int,
    policy: PositionPolicy = "compact",
    offset: int = 0,
    gists_per_node: int = 1,
) -> Positions:
    """Positions of entries given as ``(levels, indices)`` arrays under ``policy``: one per
    token, ``gists_per_node`` per gist."""
    if policy not in POLICIES:
        raise InvalidInputError(f"unknown position policy {policy!r}; choose one of {POLICIES}")
    if offset < 0:
        raise InvalidInputError(f"position offset must be >= 0, got {offset}")
    G = check_gists_per_node(gists_per_node)
    costs = entry_costs(levels, G)
    n = int(costs.sum())
    if policy == "compact":
        ids = np.arange(offset, offset + n, dtype=np.int64)
        return Positions(policy, ids, ids.astype(np.float64), np.zeros(n))
    starts, ends = spans_of(levels, indices, K)
    # Each entry in `costs` equal parts; slot j of an entry covers [start + j·w, start + (j+1)·w).
    part = np.repeat((ends - starts) / costs, costs)
    slot = np.arange(n) - np.repeat(np.cumsum(costs) - costs, costs)
    first = np.repeat(starts, costs) + slot * part
    mu = offset + first + (part - 1.0) / 2.0
    ids = np.floor(mu).astype(np.int64)
    sigma = np.where(part > 1, part / np.sqrt(12.0), 0.0) if policy == "gaussian" else np.zeros(n)
    return Positions(policy, ids, mu, sigma)


def wc_positions(
    wc: WorkingContext, policy: PositionPolicy = "compact", offset: int = 0
) -> Positions:
    """Positions of every input position of a working context under ``policy``."""
    return entry_positions(wc.levels, wc.indices, wc.K, policy, offset, wc.gists_per_node)
