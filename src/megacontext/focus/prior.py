"""A hybrid focus prior: LensNet's score blended with the lexical and key evidence, per range.

LensNet already reads the lexical (BM25) and key·query evidence as features (D7), and learns
how much to trust each from its training data. A collection whose text it was not trained on
may want a different mix: service logs are found by their exact tokens (an error code, a
request id), so lexical matching should lead there, while prose policies are better found by
keys and LensNet. A :class:`FocusPrior` says, per token range of the history (the sources of a
partition) and for the rest, how much each signal counts.

Each signal is brought to a comparable scale over the entries of the working context before it
is weighted: LensNet's score clipped to ``[-1, 1]``; the lexical and key evidence centred on their
mean and divided by the distance from the mean to the best entry, so the best-matching entry
scores 1, an entry with average evidence 0 and the weakest a negative value (clipped at −1).
An entry's score is the weighted mean of its three signals, so it stays in ``[-1, 1]``, the range
the allocator's thresholds are set for. The entry takes the weights of the range that holds its
first token (a coarse gist that spans several ranges takes its first one's).

``lens`` reads 0 for every entry when the session has no LensNet (focus by recency), so a prior
with lexical or key weight still focuses where its evidence points.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from megacontext.errors import InvalidInputError

SIGNALS = ("lexical", "keys", "lens")


@dataclass(frozen=True)
class PriorWeights:
    """How much each signal counts; non-negative, at least one positive."""

    lexical: float = 0.0
    keys: float = 0.0
    lens: float = 0.0

    def __post_init__(self) -> None:
        values = self.as_array()
        if not np.isfinite(values).all() or (values < 0).any():
            raise InvalidInputError(
                f"focus prior weights must be finite and >= 0, got {self.describe()}"
            )
        if not values.any():
            raise InvalidInputError(
                "a focus prior needs at least one positive weight among "
                f"{', '.join(SIGNALS)}, got {self.describe()}"
            )

    def as_array(self) -> np.ndarray:
        return np.array([self.lexical, self.keys, self.lens], dtype=np.float64)

    def describe(self) -> str:
        return ",".join(f"{name}={getattr(self, name):g}" for name in SIGNALS)

    @classmethod
    def parse(cls, text: str) -> PriorWeights:
        """``lexical=1,keys=0.5,lens=1`` (commas or spaces; a signal left out weighs 0)."""
        weights: dict[str, float] = {}
        for term in text.replace(",", " ").split():
            name, eq, value = term.partition("=")
            name = name.strip().lower()
            if not eq or name not in SIGNALS:
                raise InvalidInputError(
                    f"focus prior term {term!r} is not SIGNAL=WEIGHT with SIGNAL one of "
                    f"{', '.join(SIGNALS)} (example: lexical=1,keys=0.5,lens=1)"
                )
            if name in weights:
                raise InvalidInputError(f"focus prior weight {name!r} is given twice in {text!r}")
            try:
                number = float(value)
            except ValueError:
                raise InvalidInputError(
                    f"focus prior weight {name}={value!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise InvalidInputError(f"focus prior weight {name}={value!r} is not finite")
            weights[name] = number
        if not weights:
            raise InvalidInputError(
                "an empty focus prior; give SIGNAL=WEIGHT terms (example: lexical=1,lens=1)"
            )
        return cls(**weights)


LENS_ONLY = PriorWeights(lens=1.0)


def centred(values: np.ndarray) -> np.ndarray:
    """``values`` centred on their mean, the maximum at 1, clipped at −1 (all 0 when flat)."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return values
    mean = float(values.mean())
    spread = float(values.max()) - mean
    if spread <= 1e-9 * max(1.0, float(np.abs(values).max())):  # flat, up to rounding
        return np.zeros_like(values)
    return np.clip((values - mean) / spread, -1.0, 1.0)


@dataclass(frozen=True)
class FocusPrior:
    """Weights per token range of the history, and ``default`` for every token outside them.

    ``ranges`` are ``(start, stop, weights)`` over token positions; they must not overlap.
    """

    default: PriorWeights = LENS_ONLY
    ranges: tuple[tuple[int, int, PriorWeights], ...] = ()
    # The ranges as arrays (starts, stops, one weights row each), for lookups by searchsorted:
    # a knowledge base may hold thousands of sources, and focus looks entries up every step.
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _stops: np.ndarray = field(init=False, repr=False, compare=False)
    _table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = sorted(self.ranges, key=lambda r: r[0])
        for start, stop, _ in ordered:
            if not 0 <= start < stop:
                raise InvalidInputError(f"focus prior range [{start}, {stop}) is empty")
        for (_, stop, _), (start, _, _) in itertools.pairwise(ordered):
            if start < stop:
                raise InvalidInputError(
                    f"focus prior ranges overlap at token {start}: each token takes one weighting"
                )
        object.__setattr__(self, "ranges", tuple(ordered))
        object.__setattr__(self, "_starts", np.array([r[0] for r in ordered], dtype=np.int64))
        object.__setattr__(self, "_stops", np.array([r[1] for r in ordered], dtype=np.int64))
        table = np.array([r[2].as_array() for r in ordered]).reshape(len(ordered), len(SIGNALS))
        object.__setattr__(self, "_table", table)

    def weights(self, starts: np.ndarray) -> np.ndarray:
        """``(len(starts), 3)`` weights (lexical, keys, lens) of entries starting at ``starts``."""
        starts = np.asarray(starts, dtype=np.int64)
        out = np.tile(self.default.as_array(), (starts.size, 1))
        if not self.ranges:
            return out
        # The last range starting at or before each entry, if the entry lies inside it.
        which = np.searchsorted(self._starts, starts, side="right") - 1
        inside = (which >= 0) & (starts < self._stops[np.maximum(which, 0)])
        out[inside] = self._table[which[inside]]
        return out

    def blend(
        self, starts: np.ndarray, lens: np.ndarray, lexical: np.ndarray, key_sim: np.ndarray
    ) -> np.ndarray:
        """Each entry's weighted mean of its three signals (see the module docstring)."""
        signals = np.stack(
            [centred(lexical), centred(key_sim), np.clip(np.asarray(lens, np.float64), -1, 1)],
            axis=1,
        )
        weights = self.weights(starts)
        return (signals * weights).sum(axis=1) / weights.sum(axis=1)


__all__ = ["LENS_ONLY", "SIGNALS", "FocusPrior", "PriorWeights", "centred"]
