"""Streamed decoding: the pieces handed to ``on_text`` add up to the answer, stop strings
included (text that could begin one is held back until it cannot)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.models.generation import cut_at_stop, decode


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


def test_a_line_break_stops_an_answer_only_after_it_began() -> None:
    # SmolLM2 asked in the raw style often opens with a blank line, then answers.
    assert cut_at_stop("\n\nThe function scan_once.\nMore", ["\n"]) == (
        "\n\nThe function scan_once.",
        True,
    )
    assert cut_at_stop("42\nQuestion: next", ["\n"]) == ("42", True)
    assert cut_at_stop("\n \n", ["\n"]) == ("\n \n", False)  # nothing answered yet
    # A stop string that is text counts from the first character.
    assert cut_at_stop("Question: what", ["Question:"]) == ("", True)
    assert cut_at_stop("no stop here", ["\n", "Q:"]) == ("no stop here", False)
