"""Tasks, memory systems and the harness on a tiny random-init base."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.data import Filler
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.eval.harness import answer_sample, run_task
from megacontext.eval.memory import (
    CompressiveLite,
    FullContext,
    MegaContextMemory,
    RagBM25,
    Recency,
    StreamingLLM,
)
from megacontext.eval.tasks import TASKS, make_sample
from megacontext.models.generation import contains_answer, exact_answer
from megacontext.models.prompting import PromptFormat
from megacontext.runtime import SessionConfig


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    base = tiny_world.base
    filler = Filler(np.random.default_rng(0).integers(3, base.vocab_size, 5000), (0, 1, 2))
    return base, tiny_world.bundle, tiny_world.lensnet, filler


@pytest.mark.parametrize("task", TASKS)
def test_tasks_hide_the_answer_in_the_history(world, task: str) -> None:  # type: ignore[no-untyped-def]
    base, _, _, filler = world
    encode = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    sample = make_sample(task, random.Random(1), encode, filler, 300)
    assert abs(len(sample.history) - 300) < 120
    if task == "longdoc":
        assert len(sample.query) == 0 and len(sample.answer) == 64
        return
    assert len(sample.answer) > 0
    history_text = base.decode(sample.history.tolist())
    assert sample.answer_text in history_text  # the answer is somewhere in the history
    again = make_sample(task, random.Random(1), encode, filler, 300)
    assert np.array_equal(again.history, sample.history)  # seeded


STOPWORDS = {"the", "that", "is", "which", "a", "of"}


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_paraphrase_questions_share_no_content_word_with_any_needle(world, seed: int) -> None:  # type: ignore[no-untyped-def]
    """NoLiMa's point: word overlap must not lead to the evidence. Neither the asked needle nor
    a distractor shares a content word with the question or its cue; the evidence is the asked
    needle, and the four codes differ in the history."""
    base, _, _, filler = world
    encode = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    sample = make_sample("paraphrase", random.Random(seed), encode, filler, 200)
    asked = _content_words(f"{sample.question} {sample.cue}")
    history = base.decode(sample.history.tolist())
    needles = re.findall(r"The combination that unlocks the ([a-z ]+) is (\d+)\.", history)
    assert len(needles) == 4 and len({code for _, code in needles}) >= 3
    for lock, code in needles:
        assert not _content_words(f"The combination that unlocks the {lock} is {code}.") & asked
    ((start, end),) = sample.evidence
    assert sample.answer_text in base.decode(sample.history[start:end].tolist())


def test_token_systems_respect_the_budget_and_keep_what_they_promise(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, _ = world
    history = np.arange(3, 303)
    systems = [
        Recency(base),
        StreamingLLM(base, sinks=4),
        RagBM25(base, chunk=8, recent=16),
        CompressiveLite(base, chunk=8),
    ]
    for system in systems:
        system.observe(history[:150])
        system.observe(history[150:])
        built = system.build_context(np.arange(3, 10), budget=40)
        assert built.vectors.shape[0] == len(built.provenance) <= 40
        assert built.provenance[-1][1] == 300  # the newest token is always in view
    recency = Recency(base)
    recency.observe(history)
    assert recency.build_context(np.arange(3), 40).provenance[0] == (260, 261)
    sinks = StreamingLLM(base, sinks=4)
    sinks.observe(history)
    assert [p[0] for p in sinks.build_context(np.arange(3), 40).provenance[:5]] == [0, 1, 2, 3, 264]
    full = FullContext(base)
    full.observe(history)
    with pytest.raises(BudgetError):
        full.build_context(np.arange(3), 40)


def test_rag_bm25_retrieves_the_planted_chunk(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, filler = world
    encode = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    sample = make_sample("passkey", random.Random(3), encode, filler, 400)
    rag = RagBM25(base, chunk=32, recent=16)
    rag.observe(sample.history)
    built = rag.build_context(sample.query, budget=16 + 3 * 32)
    kept = np.concatenate([sample.history[a:b] for a, b in built.provenance])
    assert sample.answer_text in base.decode(kept.tolist())


def test_megacontext_memory_covers_everything(world) -> None:  # type: ignore[no-untyped-def]
    base, bundle, lens, _ = world
    for lensnet in (None, lens):
        system = MegaContextMemory(base, bundle, lensnet, config=SessionConfig(protected_recent=8))
        system.observe(np.arange(900) % 300 + 3)
        built = system.build_context(np.arange(3, 15), budget=40)
        assert built.provenance[0][0] == 0 and built.provenance[-1][1] == 900
        assert len(built.provenance) <= 40


def test_harness_scores_and_times(world) -> None:  # type: ignore[no-untyped-def]
    base, bundle, _, filler = world
    result = run_task(base, lambda: Recency(base), "passkey", 200, 64, 3, filler)
    assert result.samples == 3 and 0 <= result.score <= 1 and result.tokens_processed > 0
    assert result.name == "passkey@200/64/recency"
    # The answer NLL of a QA task is the mean of answer_sample's NLL over the samples.
    assert result.answer_nll is not None and result.answer_nll > 0
    assert result.answer_nll_ci is not None
    assert result.answer_nll_ci[0] <= result.answer_nll <= result.answer_nll_ci[1]
    # Containment is at least as lenient as exact match, sample by sample.
    assert result.contains is not None and result.contains >= result.score
    assert len(result.answers) == 3 and all(a["contains"] or not a["exact"] for a in result.answers)
    lm = run_task(
        base,
        lambda: MegaContextMemory(base, bundle, None, config=SessionConfig(protected_recent=8)),
        "longdoc",
        300,
        48,
        2,
        filler,
    )
    assert lm.score > 0 and lm.answer_nll is None  # longdoc's score is its NLL already
    skipped = run_task(base, lambda: FullContext(base), "passkey", 400, 64, 2, filler)
    assert skipped.samples == 0 and skipped.skipped == 2


def test_answer_sample_matches_greedy_decoding_by_hand(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, filler = world
    sample = make_sample(
        "facts", random.Random(2), lambda t: base.encode(t, add_bos=False), filler, 100
    )
    prompt = PromptFormat.for_base(base, "raw")
    context = base.embed(torch.as_tensor(sample.history))
    answered = answer_sample(base, prompt, context, sample, max_new_tokens=6)
    # The same input, decoded by hand with a full recompute per token (no KV cache).
    question = prompt.question_ids(base, sample.question, sample.cue)
    assert base.decode(question) == f"\n{sample.question} {sample.cue}"
    seq = torch.cat(
        [
            base.embed(torch.as_tensor(prompt.prefix, dtype=torch.long)),
            context,
            base.embed(torch.as_tensor(question)),
        ]
    )
    out: list[int] = []
    for _ in range(6):
        logits = base.forward(seq[None], torch.arange(seq.shape[0])[None], use_cache=False).logits
        token = int(logits[0, -1].argmax())
        if token in prompt.stop_ids:
            break
        out.append(token)
        if "\n" in base.decode(out):
            break
        seq = torch.cat([seq, base.embed(torch.tensor([token]))])
    by_hand = base.decode(out).split("\n")[0]
    assert answered.text == by_hand
    assert answered.exact == exact_answer(by_hand, sample.answer_text)
    assert answered.contains == contains_answer(by_hand, sample.answer_text)
    assert answered.nll > 0


def test_unknown_task() -> None:
    with pytest.raises(InvalidInputError, match="unknown task"):
        make_sample("telepathy", random.Random(0), lambda t: [1], Filler(np.arange(2000)), 10)
