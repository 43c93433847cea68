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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from megacontext.core.spans import IntArray, spans_of
from megacontext.core.working_context import WorkingContext
from megacontext.errors import InvalidInputError

PositionPolicy = Literal["compact", "global", "gaussian"]
POLICIES: tuple[PositionPolicy, ...] = ("compact", "global", "gaussian")


@dataclass(frozen=True)
class Positions:
    """Per-entry positions for the model layer."""

    policy: PositionPolicy
    position_ids: IntArray
    mu: npt.NDArray[np.float64]
    sigma: npt.NDArray[np.float64]


def entry_positions(
    levels: IntArray, indices: IntArray, K: int, policy: PositionPolicy = "compact", offset: int = 0
) -> Positions:
    """Positions of entries given as ``(levels, indices)`` arrays under ``policy``."""
    if policy not in POLICIES:
        raise InvalidInputError(f"unknown position policy {policy!r}; choose one of {POLICIES}")
    if offset < 0:
        raise InvalidInputError(f"position offset must be >= 0, got {offset}")
    n = levels.size
    if policy == "compact":
        ids = np.arange(offset, offset + n, dtype=np.int64)
        return Positions(policy, ids, ids.astype(np.float64), np.zeros(n))
    starts, ends = spans_of(levels, indices, K)
    width = (ends - starts).astype(np.float64)
    mu = offset + starts + (width - 1.0) / 2.0
    ids = np.floor(mu).astype(np.int64)
    sigma = np.where(width > 1, width / np.sqrt(12.0), 0.0) if policy == "gaussian" else np.zeros(n)
    return Positions(policy, ids, mu, sigma)


def wc_positions(
    wc: WorkingContext, policy: PositionPolicy = "compact", offset: int = 0
) -> Positions:
    """Positions of every entry of a working context under ``policy``."""
    return entry_positions(wc.levels, wc.indices, wc.K, policy, offset)
