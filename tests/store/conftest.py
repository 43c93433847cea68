"""Shared helpers of the storage tests: a deterministic gister and a reference token stream."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

DIM = 4
K = 4


class MeanGister:
    """Deterministic, cheap gister: level 1 = (mean, min, max, first) of ids; above = mean."""

    dim = DIM

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        x = inputs.astype(np.float32)
        if level == 1:
            return np.stack([x.mean(1), x.min(1), x.max(1), x[:, 0]], axis=1)
        return x.mean(axis=1)


def stream(start: int, stop: int) -> npt.NDArray[np.uint32]:
    """Token ids of positions [start, stop) of an endless reference stream."""
    positions = np.arange(start, stop, dtype=np.uint64)
    return ((positions * np.uint64(2654435761)) % np.uint64(50_000)).astype(np.uint32)


@pytest.fixture
def gister() -> MeanGister:
    return MeanGister()
