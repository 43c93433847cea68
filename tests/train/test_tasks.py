"""Synthetic long-context tasks: seeded, exact lengths, answers present where they must be."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.data import Filler
from megacontext.errors import InvalidInputError
from megacontext.train.tasks import (
    GENERATORS,
    TASK_KINDS,
    MixtureSampler,
    passkey_sample,
)
from megacontext.train.tokenizer import BOS, EOS, encode_documents, load_tokenizer

from .conftest import synthetic_documents


@pytest.fixture(scope="module")
def setup(tok_dir: Path):  # type: ignore[no-untyped-def]
    tok = load_tokenizer(tok_dir)
    stream = encode_documents(tok, [d.text for d in synthetic_documents()])
    return tok, stream, Filler(stream, (tok.token_to_id(BOS), tok.token_to_id(EOS)))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(TASK_KINDS),
    seed=st.integers(0, 10_000),
    length=st.integers(200, 600),
)
def test_samples_are_seeded_and_answer_follows_prompt(setup, kind, seed, length) -> None:  # type: ignore[no-untyped-def]
    tok, _, filler = setup
    a = GENERATORS[kind](random.Random(seed), tok, filler, length)
    b = GENERATORS[kind](random.Random(seed), tok, filler, length)
    assert a == b, "same seed must give the same sample"
    assert 0 < a.prompt_len < len(a.ids)
    assert tok.decode(a.ids[a.prompt_len :]).startswith(a.answer)
    if kind in ("passkey", "kv", "vartrack"):  # these pad filler up to the target length
        assert len(a.ids) >= length
    if kind == "passkey":  # its template is far below 200 tokens: filler fills the rest exactly
        assert len(a.ids) == length


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.floats(0.0, 1.0))
def test_passkey_needle_is_in_the_prompt_and_answer_is_the_key(setup, seed, depth) -> None:  # type: ignore[no-untyped-def]
    tok, _, filler = setup
    sample = passkey_sample(random.Random(seed), tok, filler, 300, key_digits=5, depth=depth)
    key = re.sub(r"\D", "", sample.answer)
    prompt = tok.decode(sample.ids[: sample.prompt_len])
    assert len(key) == 5
    assert f"The pass key is {key}. Remember it." in prompt
    assert prompt.endswith("What is the pass key? The pass key is")


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(("passkey", "kv", "vartrack")),
    seed=st.integers(0, 10_000),
    length=st.integers(200, 600),
)
def test_evidence_ranges_hold_what_the_answer_needs(setup, kind, seed, length) -> None:  # type: ignore[no-untyped-def]
    tok, _, filler = setup
    sample = GENERATORS[kind](random.Random(seed), tok, filler, length)
    assert sample.evidence
    assert all(0 <= a < b <= sample.prompt_len for a, b in sample.evidence)
    texts = [tok.decode(sample.ids[a:b]) for a, b in sample.evidence]
    if kind in ("passkey", "kv"):
        digits = re.sub(r"\D", "", sample.answer)
        (text,) = texts
        assert digits in text
        assert ("pass key" if kind == "passkey" else "has value") in text
    else:
        # Every variable of the answer is defined by one evidence statement, and nothing else is.
        names = sample.answer.strip(" .").split()
        defined = sorted(re.search(r"VAR (\w+) =", t).group(1) for t in texts)  # type: ignore[union-attr]
        assert defined == sorted(names)


def test_mixture_rows_have_fixed_length_and_follow_weights(setup) -> None:  # type: ignore[no-untyped-def]
    tok, stream, _ = setup
    sampler = MixtureSampler(tok, stream, 128, {"text": 1.0, "passkey": 1.0}, min_task_len=48)
    rng = random.Random(0)
    kinds, batch, weights = sampler.batch(rng, 64)
    assert batch.shape == (64, 129) and batch.dtype == np.int64
    assert np.all(weights == 1.0), "answer_weight defaults to the plain LM loss"
    assert set(kinds) == {"text", "passkey"}
    again = sampler.batch(random.Random(0), 64)[1]
    assert np.array_equal(batch, again)
    bos = tok.token_to_id(BOS)
    for kind, row in zip(kinds, batch, strict=True):
        if kind == "passkey":
            assert row[0] == bos, "task rows start with a whole sample"


def test_repeat_sample_repeats_random_tokens(setup) -> None:  # type: ignore[no-untyped-def]
    tok, _, filler = setup
    sample = GENERATORS["repeat"](random.Random(1), tok, filler, 200)
    answer = sample.ids[sample.prompt_len :]
    n = len(answer)
    prompt = sample.ids[: sample.prompt_len]
    assert n >= 60
    assert any(prompt[i : i + n] == answer for i in range(len(prompt) - n + 1))
    assert min(answer) >= 3, "special tokens never appear in random sequences"


def test_mixture_rejects_bad_weights(setup) -> None:  # type: ignore[no-untyped-def]
    tok, stream, _ = setup
    with pytest.raises(InvalidInputError, match="unknown mixture kinds"):
        MixtureSampler(tok, stream, 64, {"text": 1.0, "needle": 1.0})
    with pytest.raises(InvalidInputError, match="sum > 0"):
        MixtureSampler(tok, stream, 64, {"text": 0.0})
    with pytest.raises(InvalidInputError, match="fewer than one row"):
        MixtureSampler(tok, stream[:50], 64, {"text": 1.0})
    with pytest.raises(InvalidInputError, match="below min_task_len"):
        MixtureSampler(tok, stream, 128, {"passkey": 1.0}, min_task_len=64, max_task_len=32)
    with pytest.raises(InvalidInputError, match="answer_weight"):
        MixtureSampler(tok, stream, 128, {"passkey": 1.0}, answer_weight=0.5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), weight=st.floats(1.5, 50.0))
def test_answer_tokens_and_only_they_carry_the_answer_weight(setup, seed, weight) -> None:  # type: ignore[no-untyped-def]
    tok, stream, _ = setup
    sampler = MixtureSampler(
        tok, stream, 256, {"passkey": 1.0}, min_task_len=80, max_task_len=120, answer_weight=weight
    )
    _, ids, weights = sampler.row(random.Random(seed))
    assert ids.shape == weights.shape == (257,)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    starts = [i for i, t in enumerate(ids) if t == bos]
    assert len(starts) >= 2, "short samples pack several answers into one row"
    for start, nxt in zip(starts, [*starts[1:], None], strict=True):
        end = nxt - 1 if nxt is not None else None  # the EOS before the next sample
        if end is None or ids[end] != eos:
            continue  # the last sample may be cut short
        heavy = np.flatnonzero(weights[start:end] == weight)
        assert heavy.size, "every whole sample has weighted answer tokens"
        text = tok.decode(ids[start + heavy[0] : end].tolist())
        question = tok.decode(ids[start : start + heavy[0]].tolist())
        assert question.endswith("The pass key is"), "weights start right after the question"
        assert re.fullmatch(r" \d{4,7}\.", text), f"weighted tokens are the answer, got {text!r}"
        assert np.all(weights[start : start + heavy[0]] == 1.0)
        assert np.all(np.diff(heavy) == 1), "the answer is one contiguous run"
