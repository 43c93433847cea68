"""Simple, model-free gisters (numpy only) for tests, benchmarks and the first demo.

Real trees are gisted by GistNet (``megacontext.models``); these stand-ins satisfy the same
:class:`~megacontext.core.tree.Gister` protocol.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from megacontext.errors import InvalidInputError


class MeanPoolGister:
    """Level 1: mean of the tokens' embedding rows; above: mean of the child gists.

    Untrained (DESIGN §12 measured gap closure 0.17 for this on a real base), but it makes
    gists that keep a coarse sense of their span, which is enough to exercise the machinery.
    """

    def __init__(self, embeddings: npt.NDArray[np.floating]):
        if embeddings.ndim != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
            raise InvalidInputError(
                f"embeddings must be a (vocab, dim) matrix, got shape {embeddings.shape}"
            )
        self.embeddings = np.asarray(embeddings, dtype=np.float32)

    @classmethod
    def random(cls, vocab_size: int, dim: int, seed: int = 0) -> MeanPoolGister:
        """A gister over a seeded random embedding table (unit-variance rows)."""
        rng = np.random.default_rng(seed)
        return cls(rng.standard_normal((vocab_size, dim), dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        if level == 1:
            ids = np.asarray(inputs)
            if ids.size and int(ids.max()) >= self.embeddings.shape[0]:
                raise InvalidInputError(
                    f"token id {int(ids.max())} is outside this gister's vocabulary "
                    f"({self.embeddings.shape[0]})"
                )
            result: npt.NDArray[np.float32] = self.embeddings[ids].mean(axis=1)
            return result
        pooled: npt.NDArray[np.float32] = np.asarray(inputs, dtype=np.float32).mean(axis=1)
        return pooled


class HashGister:
    """A trivial, vocabulary-free gister: a cheap deterministic function of the children.

    Used by storage and throughput benchmarks, where gisting must cost next to nothing.
    """

    def __init__(self, dim: int = 64):
        if dim < 1:
            raise InvalidInputError(f"dim must be >= 1, got {dim}")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        if level == 1:
            summary = np.asarray(inputs, dtype=np.float32).mean(axis=1, keepdims=True)
        else:
            summary = np.asarray(inputs, dtype=np.float32).mean(axis=(1, 2), keepdims=False)[
                :, None
            ]
        return np.broadcast_to(summary, (summary.shape[0], self._dim)).astype(np.float32)
