"""Streamed decoding: the pieces handed to ``on_text`` add up to the answer, stop strings
included (text that could begin one is held back until it cannot)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.models.generation import decode


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    stops=st.lists(st.text(alphabet="abcde \n", min_size=1, max_size=3), max_size=2),
    steps=st.integers(0, 24),
)
def test_streamed_pieces_add_up_to_the_decoded_text(tiny_world, seed, stops, steps) -> None:  # type: ignore[no-untyped-def]
    base = tiny_world.base
    torch.manual_seed(seed)
    inputs = base.embed(torch.randint(3, base.vocab_size, (12,)))
    pieces: list[str] = []
    streamed = decode(
        base,
        inputs,
        steps,
        stop_text=stops,
        temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
        on_text=pieces.append,
    )
    plain = decode(
        base,
        inputs,
        steps,
        stop_text=stops,
        temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    assert streamed == plain  # streaming changes nothing about the answer
    assert "".join(pieces) == plain.text
    assert all(pieces)  # no empty pieces
    for stop in stops:
        assert stop not in "".join(pieces)
