"""Access policies in focus: what a principal may not see never reaches the base (or LensNet).

A source carries access labels (:mod:`megacontext.store.policies`); a principal holds a set of
labels and may see a source whose every label it holds (an unlabelled source is open to all).
The token ranges of the other sources are **restricted** for it. :class:`AccessFilter` marks the
entries of a working context that touch restricted text: a raw token inside a restricted range,
and any gist whose span overlaps one (it was computed from restricted tokens). Such an entry is
shown to the models as the **redaction vector** (the mean embedding of the text " [redacted]"),
never as its token or gist; its lexical and key evidence are zeroed so that restricted text
cannot steer focus either; and a LOD1 block that touches restricted text is never expanded (its
tokens would only be redactions too). Higher gists that touch restricted text may be expanded:
their unrestricted children then show as themselves.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from megacontext.core import WorkingContext
from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter

REDACTION_TEXT = " [redacted]"
NEVER_EXPAND = -1e3  # the score of a LOD1 entry that touches restricted text


class AccessFilter:
    """The restricted token ranges ``[start, stop)`` of a history, for one principal."""

    def __init__(self, restricted: list[tuple[int, int]]):
        ranges = sorted((int(a), int(b)) for a, b in restricted if b > a)
        for (_, b), (a, _) in itertools.pairwise(ranges):
            if a < b:
                raise InvalidInputError("restricted ranges must not overlap")
        self.starts = np.array([a for a, _ in ranges], dtype=np.int64)
        self.stops = np.array([b for _, b in ranges], dtype=np.int64)

    @property
    def empty(self) -> bool:
        return len(self.starts) == 0

    def overlaps(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Whether each token span ``[starts[i], ends[i])`` overlaps a restricted range."""
        if self.empty:
            return np.zeros(len(starts), dtype=bool)
        first = np.searchsorted(self.stops, starts, side="right")  # first range ending after
        inside = first < len(self.stops)
        hit = np.zeros(len(starts), dtype=bool)
        hit[inside] = self.starts[first[inside]] < ends[inside]
        return hit

    def mask(self, wc: WorkingContext) -> np.ndarray:
        """Which entries of ``wc`` touch restricted text."""
        starts, ends = wc.spans()
        return self.overlaps(np.asarray(starts), np.asarray(ends))


def redaction_vector(base: BaseAdapter) -> torch.Tensor:
    """``(d,)``: what a restricted entry is shown as (the mean embedding of " [redacted]")."""
    ids = torch.as_tensor(base.encode(REDACTION_TEXT, add_bos=False), device=base.device)
    with torch.no_grad():
        return base.embed(ids).float().mean(dim=0)


def redact(vectors: torch.Tensor, masked: np.ndarray, replacement: torch.Tensor) -> torch.Tensor:
    """``vectors`` with the rows of ``masked`` replaced (a copy when any is)."""
    if not masked.any():
        return vectors
    out = vectors.clone()
    out[torch.as_tensor(np.flatnonzero(masked), device=vectors.device)] = replacement.to(out.dtype)
    return out


__all__ = ["NEVER_EXPAND", "REDACTION_TEXT", "AccessFilter", "redact", "redaction_vector"]
