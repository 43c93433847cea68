"""Position policies (D6)."""

from __future__ import annotations

import numpy as np
import pytest

from megacontext.core import WorkingContext, wc_positions
from megacontext.errors import InvalidInputError


def test_policies_on_a_mixed_working_context() -> None:
    # K=4: a level-2 gist (tokens 0..15), a level-1 gist (16..19), then tokens 20, 21.
    wc = WorkingContext([2, 1, 0, 0], [0, 4, 20, 21], num_tokens=22, W_max=10, K=4)
    compact = wc_positions(wc, "compact", offset=5)
    assert compact.position_ids.tolist() == [5, 6, 7, 8]
    glob = wc_positions(wc, "global")
    assert glob.mu.tolist() == [7.5, 17.5, 20.0, 21.0]  # gists at their span centre
    assert glob.position_ids.tolist() == [7, 17, 20, 21]
    assert glob.sigma.tolist() == [0, 0, 0, 0]
    gauss = wc_positions(wc, "gaussian")
    np.testing.assert_allclose(gauss.sigma, [16 / np.sqrt(12), 4 / np.sqrt(12), 0, 0])
    np.testing.assert_array_equal(gauss.mu, glob.mu)


def test_a_node_of_two_gists_takes_two_positions_each_for_half_its_span() -> None:
    # K=4, G=2: the same entries as above; each gist is two vectors, for its two halves.
    wc = WorkingContext(
        [2, 1, 0, 0], [0, 4, 20, 21], num_tokens=22, W_max=10, K=4, gists_per_node=2
    )
    assert (wc.size, wc.length) == (4, 6)
    assert wc.offsets().tolist() == [0, 2, 4, 5]
    assert wc_positions(wc, "compact", offset=5).position_ids.tolist() == list(range(5, 11))
    glob = wc_positions(wc, "global")
    # Tokens 0..7 and 8..15 for the level-2 gist, 16..17 and 18..19 for the level-1 gist.
    assert glob.mu.tolist() == [3.5, 11.5, 16.5, 18.5, 20.0, 21.0]
    gauss = wc_positions(wc, "gaussian")
    np.testing.assert_allclose(gauss.sigma, [8 / np.sqrt(12)] * 2 + [2 / np.sqrt(12)] * 2 + [0, 0])


def test_global_positions_increase_strictly_over_any_assembly() -> None:
    wc = WorkingContext.assemble(50_000, 300, K=8, protected_recent=20)
    assert np.all(np.diff(wc_positions(wc, "global").position_ids) > 0)


def test_bad_policy_and_offset() -> None:
    wc = WorkingContext([0], [0], num_tokens=1, W_max=2, K=4)
    with pytest.raises(InvalidInputError, match="unknown position policy"):
        wc_positions(wc, "alibi")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="offset"):
        wc_positions(wc, "compact", offset=-1)
