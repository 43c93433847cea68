"""The hybrid focus prior: signals brought to one scale, weighted per token range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from megacontext.errors import InvalidInputError
from megacontext.focus import LENS_ONLY, FocusPrior, PriorWeights
from megacontext.focus.prior import centred

finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(values=arrays(np.float64, st.integers(1, 40), elements=finite))
def test_centred_keeps_order_puts_the_best_at_one_and_stays_in_range(values) -> None:  # type: ignore[no-untyped-def]
    out = centred(values)
    assert out.shape == values.shape
    assert ((out >= -1) & (out <= 1)).all()
    if values.max() - values.mean() > 1e-9 * max(1.0, abs(values).max()):
        assert out[np.argmax(values)] == pytest.approx(1.0)
        order = np.argsort(values, kind="stable")
        assert (np.diff(out[order]) >= -1e-12).all()  # monotone in the input
    if np.ptp(values) == 0:
        assert not out.any()  # flat evidence says nothing


@settings(max_examples=100, deadline=None)
@given(
    lens=arrays(np.float64, 12, elements=finite),
    lexical=arrays(np.float64, 12, elements=st.floats(0, 50)),
    keys=arrays(np.float64, 12, elements=st.floats(-1, 1)),
    w=st.tuples(*(st.floats(0, 10) for _ in range(3))).filter(lambda t: sum(t) > 0.01),
)
def test_a_blend_is_the_weighted_mean_of_the_scaled_signals(lens, lexical, keys, w) -> None:  # type: ignore[no-untyped-def]
    weights = PriorWeights(*w)
    starts = np.arange(12) * 4
    out = FocusPrior(weights).blend(starts, lens, lexical, keys)
    expected = (w[0] * centred(lexical) + w[1] * centred(keys) + w[2] * np.clip(lens, -1, 1)) / sum(
        w
    )
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert ((out >= -1 - 1e-12) & (out <= 1 + 1e-12)).all()


def test_each_range_takes_its_own_weights_and_the_rest_the_default() -> None:
    logs = PriorWeights(lexical=1.0)
    prior = FocusPrior(LENS_ONLY, ((40, 80, logs),))
    starts = np.array([0, 36, 40, 79, 80, 100])
    lens = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 3.0])
    lexical = np.array([0.0, 0.0, 4.0, 0.0, 0.0, 0.0])  # mean 2/3
    out = prior.blend(starts, lens, lexical, np.zeros(6))
    assert out[[0, 1, 4]] == pytest.approx([0.5, 0.5, 0.5])  # LensNet alone outside the range
    assert out[5] == 1.0  # clipped
    assert out[2] == pytest.approx(1.0) and out[3] == pytest.approx(-(2 / 3) / (4 - 2 / 3))
    # LensNet alone is exactly LensNet's (clipped) score: a lens-only prior changes nothing.
    np.testing.assert_allclose(
        FocusPrior().blend(starts, lens, lexical, lexical), np.clip(lens, -1, 1)
    )


def test_weights_parse_and_bad_weights_are_named() -> None:
    assert PriorWeights.parse("lexical=1, keys=0.5") == PriorWeights(1.0, 0.5, 0.0)
    assert PriorWeights.parse("LENS=2 lexical=1") == PriorWeights(lexical=1.0, lens=2.0)
    for text, said in [
        ("colour=1", "SIGNAL one of lexical, keys, lens"),
        ("lexical", "is not SIGNAL=WEIGHT"),
        ("lexical=lots", "lexical='lots' is not a number"),
        ("lexical=1,lexical=2", "'lexical' is given twice"),
        ("lexical=-1", "must be finite and >= 0"),
        ("lexical=inf", "is not finite"),
        ("lexical=0", "at least one positive weight"),
        ("  ", "an empty focus prior"),
    ]:
        with pytest.raises(InvalidInputError, match=said):
            PriorWeights.parse(text)
    with pytest.raises(InvalidInputError, match="overlap at token 10"):
        FocusPrior(LENS_ONLY, ((0, 20, LENS_ONLY), (10, 30, LENS_ONLY)))
    with pytest.raises(InvalidInputError, match=r"range \[5, 5\) is empty"):
        FocusPrior(LENS_ONLY, ((5, 5, LENS_ONLY),))


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 200), min_size=0, max_size=12, unique=True),
    starts=arrays(np.int64, st.integers(0, 30), elements=st.integers(0, 220)),
)
def test_an_entry_takes_the_weights_of_the_range_holding_its_first_token(cuts, starts) -> None:  # type: ignore[no-untyped-def]
    bounds = sorted(cuts)
    # Every other interval between the cuts is a range, each with its own weights.
    ranges = tuple(
        (a, b, PriorWeights(lexical=float(i + 1)))
        for i, (a, b) in enumerate(zip(bounds[::2], bounds[1::2], strict=False))
    )
    prior = FocusPrior(LENS_ONLY, ranges)
    expected = [
        next((w.as_array() for a, b, w in ranges if a <= s < b), LENS_ONLY.as_array())
        for s in starts
    ]
    np.testing.assert_array_equal(prior.weights(starts), np.array(expected).reshape(-1, 3))
