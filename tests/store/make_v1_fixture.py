"""Make ``tests/store/data/v1-tree``: a small storage format v1 tree, for the migration tests.

It was made by the store code of commit 8e550f6 (the last one that wrote format v1), with::

    git stash  # or otherwise set aside the newer store
    git checkout 8e550f6 -- src/megacontext/store
    .venv/bin/python tests/store/make_v1_fixture.py
    git checkout HEAD -- src/megacontext/store

and the resulting directory is committed as test data. Do not regenerate it with a newer store:
its point is to be bytes written by the v1 writer (the script refuses to run on a store that
writes another format). It uses nothing of the tests' own helpers, which need the newer store;
the gister and the token stream below are copies of ``conftest.MeanGister`` and
``conftest.stream``. What it holds:

- ``segment_records=32`` for every level, K 4, dim 4, float16 gists;
- level 0: 150 tokens: four sealed segments (tokens 0–127) and an open segment of 22 tokens;
  level 1: 37 gists, one sealed segment of 32 and an open one of 5; level 2: 9 gists and
  level 3: 2 gists, each in an open segment;
- ``manifest.json`` and ``manifest.backup.json`` (identical), no ``LOCK`` and no ``meta.sqlite``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
TOKENS = 150
DIM = 4
K = 4


class MeanGister:
    """``conftest.MeanGister``: level 1 = (mean, min, max, first) of ids; above = mean."""

    dim = DIM

    def __call__(self, level: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        x = inputs.astype(np.float32)
        if level == 1:
            return np.stack([x.mean(1), x.min(1), x.max(1), x[:, 0]], axis=1)
        return x.mean(axis=1)


def stream(start: int, stop: int) -> npt.NDArray[np.uint32]:
    """``conftest.stream``: token ids of positions [start, stop)."""
    positions = np.arange(start, stop, dtype=np.uint64)
    return ((positions * np.uint64(2654435761)) % np.uint64(50_000)).astype(np.uint32)


def main() -> None:
    from megacontext.core.tree import MegaContextTree
    from megacontext.store import LocalStore
    from megacontext.store.segment import FORMAT_VERSION

    if FORMAT_VERSION != 1:
        raise SystemExit(
            f"this store writes format v{FORMAT_VERSION}; the fixture must be written by the v1 "
            "store (see this script's docstring)"
        )
    out = HERE / "data" / "v1-tree"
    if out.exists():
        shutil.rmtree(out)
    store = LocalStore.create(out, dim=DIM, K=K, segment_records=32)
    tree = MegaContextTree(store, MeanGister(), K=K)
    tree.append(stream(0, TOKENS))
    tree.close()
    (out / "LOCK").unlink()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
