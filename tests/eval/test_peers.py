"""The published peers (RAG-MiniLM, RETRO-lite, MemGPT-lite, LLMLingua) and oracle focus."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from megacontext.data import Filler
from megacontext.errors import BudgetError, InvalidInputError
from megacontext.eval.harness import run_task
from megacontext.eval.memory import EvidenceAware, MegaContextMemory, MegaContextOracle
from megacontext.eval.peers import LLMLinguaPruning, MemGPTLite, RagMiniLM, RetroLite
from megacontext.eval.tasks import make_sample
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import Bundle
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.runtime import SessionConfig

SENTENCES = [
    "The committee approved the new budget for road repairs in the northern district.",
    "Heavy rain is expected across the coast over the weekend, with strong winds.",
    "She planted tomatoes and basil in the small garden behind the house.",
    "The orchestra rehearsed the symphony for three hours before the concert.",
    "Engineers tested the bridge with trucks loaded with sand and gravel.",
    "A new bakery opened downtown and sells bread, croissants and cakes.",
    "The museum displays ancient pottery found near the river valley.",
    "Students gathered in the library to prepare for their final exams.",
    "The football team won the championship after a dramatic penalty shootout.",
    "Doctors recommend drinking water and sleeping eight hours every night.",
    "The train to the capital was delayed by a signal failure this morning.",
    "Farmers harvested wheat early because of the unusually warm summer.",
]
PLANTED = "The secret launch code for the Zephyr rocket is hidden in the old lighthouse."
QUESTION = "Where is the launch code of the Zephyr rocket hidden?"


@pytest.fixture(scope="module")
def base(tiny_world) -> BaseAdapter:  # type: ignore[no-untyped-def]
    return tiny_world.base  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bundle(tiny_world) -> Bundle:  # type: ignore[no-untyped-def]
    return tiny_world.bundle  # type: ignore[no-any-return]


SMALL = SessionConfig(protected_recent=8)


def encode(base: BaseAdapter, text: str) -> np.ndarray:
    return np.asarray(base.encode(text, add_bos=False), dtype=np.int64)


def peers(base: BaseAdapter, chunk: int = 8, recent: int = 16) -> dict[str, Callable[[], Any]]:
    return {
        "rag-minilm": lambda: RagMiniLM(base, chunk=chunk, recent=recent),
        "retro-lite": lambda: RetroLite(base, chunk=chunk, recent=recent),
        "memgpt-lite": lambda: MemGPTLite(base, page=chunk, recent=recent, summary=6),
        "llmlingua": lambda: LLMLinguaPruning(base, recent=recent, window=48, overlap=8),
    }


def kept_positions(provenance: list[tuple[int, int]]) -> set[int]:
    return {p for a, b in provenance for p in range(a, b)}


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", ["rag-minilm", "retro-lite", "memgpt-lite", "llmlingua"])
@given(
    n=st.integers(0, 300),
    budget=st.integers(16, 120),
    split=st.floats(0, 1),
    query_len=st.integers(0, 20),
    seed=st.integers(0, 2**16),
)
def test_peers_respect_budget_provenance_and_recent_window(
    base: BaseAdapter, name: str, n: int, budget: int, split: float, query_len: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    history = rng.integers(3, base.vocab_size, n)
    query = rng.integers(3, base.vocab_size, query_len)
    system = peers(base)[name]()
    cut = int(split * n)
    system.observe(history[:cut])  # observed in two pieces
    system.observe(history[cut:])
    built = system.build_context(query, budget)
    assert built.vectors.shape == (len(built.provenance), base.d_model)
    assert len(built.provenance) <= budget
    flat = [p for span in built.provenance for p in span]
    assert flat == sorted(flat) and all(a < b for a, b in built.provenance)  # time order
    assert all(a >= 0 and b <= n for a, b in built.provenance)
    assert len({a for a, _ in built.provenance}) == len(built.provenance)  # no duplicates
    recent = min(16, n)
    assert built.provenance[len(built.provenance) - recent :] == [
        (p, p + 1) for p in range(n - recent, n)
    ]
    # Raw-token systems hand the base the embeddings of exactly the tokens they name.
    ids = torch.as_tensor(np.asarray([history[a] for a, _ in built.provenance], dtype=np.int64))
    assert torch.equal(built.vectors, base.embed(ids).reshape(-1, base.d_model))


@pytest.mark.parametrize("name", ["rag-minilm", "retro-lite", "memgpt-lite", "llmlingua"])
def test_bad_input_gets_typed_errors(base: BaseAdapter, name: str) -> None:
    system = peers(base)[name]()
    system.observe(np.arange(3, 103))
    with pytest.raises(InvalidInputError, match="budget"):
        system.build_context(np.arange(3, 6), 0)
    with pytest.raises(BudgetError, match="recent"):
        system.build_context(np.arange(3, 6), 15)  # the recent window is 16 tokens
    with pytest.raises(InvalidInputError, match="1-D"):
        system.observe(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(InvalidInputError, match="1-D"):
        system.build_context(np.array([1.5, 2.0]), 40)
    with pytest.raises(InvalidInputError, match="negative"):
        system.observe(np.array([-1]))
    assert system.stats()["tokens"] == 100  # nothing stored by the refused calls


def test_constructors_refuse_bad_settings(base: BaseAdapter) -> None:
    with pytest.raises(InvalidInputError, match="chunk"):
        RetroLite(base, chunk=0)
    with pytest.raises(InvalidInputError, match="recent"):
        MemGPTLite(base, recent=-1)
    with pytest.raises(InvalidInputError, match="overlap"):
        LLMLinguaPruning(base, window=16, overlap=15)
    with pytest.raises(InvalidInputError, match="overlap"):
        LLMLinguaPruning(base, window=16, overlap=0)
    with pytest.raises(InvalidInputError, match="neighbours"):
        RetroLite(base, neighbours=0)


# --------------------------------------------------------------------------- retrieval


def planted_history(base: BaseAdapter, chunk: int = 32) -> tuple[np.ndarray, range]:
    """Random filler with a rare phrase alone in chunk 5 (of 12); returns its positions."""
    rng = np.random.default_rng(7)
    phrase = encode(base, " quokka zephyr 73519 ")
    assert len(phrase) <= chunk
    history = rng.integers(3, base.vocab_size, 12 * chunk)
    history[5 * chunk : 5 * chunk + len(phrase)] = phrase
    return history, range(5 * chunk, 5 * chunk + len(phrase))


@pytest.mark.parametrize("system_class", [RetroLite, MemGPTLite])
def test_lexical_peers_page_in_the_planted_chunk(base: BaseAdapter, system_class: type) -> None:
    history, where = planted_history(base)
    system = system_class(base, 32, 16)
    system.observe(history)
    query = encode(base, " Which number goes with quokka zephyr?")
    built = system.build_context(query, 16 + 32 + 32 + 8)
    assert set(where) <= kept_positions(built.provenance)
    # Without the rare words in the query the chunk is not what is kept.
    other = system.build_context(encode(base, " lighthouse"), 16 + 32 + 32 + 8)
    assert not set(where) <= kept_positions(other.provenance)


def test_retro_lite_takes_the_continuation_chunk(base: BaseAdapter) -> None:
    history, _ = planted_history(base)
    retro = RetroLite(base, chunk=32, recent=16, neighbours=1)
    retro.observe(history)
    built = retro.build_context(encode(base, " quokka zephyr"), 16 + 2 * 32)
    kept = kept_positions(built.provenance)
    assert set(range(5 * 32, 7 * 32)) <= kept  # [neighbour, continuation]
    assert len(kept) == 16 + 2 * 32


def test_memgpt_lite_summary_holds_the_rarest_evicted_tokens(base: BaseAdapter) -> None:
    common = encode(base, " the cat sat on the mat and the dog sat on the rug.")
    rare = encode(base, "Q")
    assert len(rare) == 1
    history = np.concatenate([np.tile(common, 8), rare, np.tile(common, 8)])
    memgpt = MemGPTLite(base, page=16, recent=16, summary=1)
    memgpt.observe(history)
    built = memgpt.build_context(np.zeros(0, dtype=np.int64), 16 + 1)  # no room for pages
    rare_at = 8 * len(common)
    assert built.provenance[0] == (rare_at, rare_at + 1)


def test_rag_minilm_matches_meaning_with_real_sentences(base: BaseAdapter) -> None:
    text = " ".join([*SENTENCES[:6], PLANTED, *SENTENCES[6:]])
    history = encode(base, text)
    planted_at = len(encode(base, " ".join(SENTENCES[:6]) + " The secret launch code for the"))
    rag = RagMiniLM(base, chunk=32, recent=16)
    rag.observe(history)
    built = rag.build_context(encode(base, QUESTION), 16 + 32)  # room for a single chunk
    assert planted_at in kept_positions(built.provenance)  # the chunk saying "Zephyr"
    assert "Zephyr" in base.decode([int(history[a]) for a, _ in built.provenance])
    # Embeddings are computed once per chunk and cached across queries.
    embedded = rag.stats()["encoder_texts"]
    rag.build_context(encode(base, "weather forecast rain"), 16 + 32)
    assert rag.stats()["encoder_texts"] == embedded + 1  # only the new query


# --------------------------------------------------------------------------- LLMLingua


def test_llmlingua_scores_are_the_base_surprisal_in_any_chunking(base: BaseAdapter) -> None:
    history = np.random.default_rng(1).integers(3, base.vocab_size, 130)
    whole = LLMLinguaPruning(base, recent=8, window=48, overlap=8)
    whole.observe(history)
    pieces = LLMLinguaPruning(base, recent=8, window=48, overlap=8)
    for lo in range(0, 130, 17):
        pieces.observe(history[lo : lo + 17])
    np.testing.assert_allclose(whole.scores(), pieces.scores(), rtol=1e-5, atol=1e-5)
    # The first window is the plain teacher-forced NLL after BOS.
    ids = torch.as_tensor(np.concatenate([[base.bos_token_id], history[:39]]))
    logits = base.forward(base.embed(ids)[None], torch.arange(40)[None], use_cache=False).logits
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[1:], reduction="none")
    np.testing.assert_allclose(whole.scores()[:39], nll.detach().numpy(), rtol=1e-4, atol=1e-4)
    assert whole.stats()["base_tokens"] >= 130  # one forward over the history, honestly counted


def trained_on_repetition(path: Any, pattern: np.ndarray) -> BaseAdapter:
    """A tiny base taught (a few hundred steps) to continue a repeated pattern."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.as_tensor(np.tile(pattern, 8))[None]
    for _ in range(150):
        loss = model(input_ids=data, labels=data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5
    return BaseAdapter(model, AutoTokenizer.from_pretrained(path))


def test_llmlingua_keeps_a_surprising_burst_inside_repeated_text(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = make_tiny_model_dir("default", tmp_path_factory.mktemp("m") / "r")
    pattern = np.arange(10, 26)
    base = trained_on_repetition(path, pattern)
    burst = np.random.default_rng(3).integers(100, 300, 12)
    history = np.concatenate([np.tile(pattern, 6), burst, np.tile(pattern, 6)])
    at = 6 * len(pattern)
    lingua = LLMLinguaPruning(base, recent=16, window=64, overlap=16)
    lingua.observe(history)
    built = lingua.build_context(np.zeros(0, dtype=np.int64), 16 + len(burst))
    kept = kept_positions(built.provenance)
    assert len(kept & set(range(at, at + len(burst)))) >= len(burst) - 2


# --------------------------------------------------------------------------- oracle focus


def lod0(provenance: list[tuple[int, int]], ranges: tuple[tuple[int, int], ...]) -> bool:
    """Whether every entry overlapping an evidence range is a single raw token."""
    return all(b - a == 1 for a, b in provenance for s, e in ranges if a < e and b > s)


def test_oracle_brings_the_evidence_to_lod0(base: BaseAdapter, bundle: Bundle) -> None:
    evidence = ((100, 110), (517, 523))
    history = np.arange(900) % 300 + 3
    recency = MegaContextMemory(base, bundle, None, config=SMALL)
    recency.observe(history)
    assert not lod0(recency.build_context(np.arange(3, 9), 64).provenance, evidence)
    oracle = MegaContextOracle(base, bundle, config=SMALL)
    assert isinstance(oracle, EvidenceAware) and not isinstance(recency, EvidenceAware)
    oracle.observe(history)
    oracle.observe_evidence(evidence)
    built = oracle.build_context(np.arange(3, 9), 64)
    assert lod0(built.provenance, evidence)
    assert len(built.provenance) <= 64
    assert built.provenance[0][0] == 0 and built.provenance[-1][1] == 900  # full coverage (D3)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(built.provenance))
    assert oracle.last_wc is not None
    oracle.last_wc.check_invariants()
    assert oracle.stats()["focus_steps"] > 0


def test_oracle_refuses_bad_evidence_and_budget(base: BaseAdapter, bundle: Bundle) -> None:
    oracle = MegaContextOracle(base, bundle, config=SMALL)
    oracle.observe(np.arange(3, 203))
    with pytest.raises(InvalidInputError, match="evidence"):
        oracle.observe_evidence(((190, 210),))
    with pytest.raises(InvalidInputError, match="evidence"):
        oracle.observe_evidence(((5, 5),))
    with pytest.raises(InvalidInputError, match="budget"):
        oracle.build_context(np.arange(3, 6), 0)


def test_harness_hands_the_evidence_to_the_oracle(base: BaseAdapter, bundle: Bundle) -> None:
    filler = Filler(np.random.default_rng(0).integers(3, base.vocab_size, 5000), (0, 1, 2))
    seen: list[MegaContextOracle] = []

    def make() -> MegaContextOracle:
        seen.append(MegaContextOracle(base, bundle, config=SMALL))
        return seen[-1]

    result = run_task(base, make, "passkey", 400, 160, 2, filler)
    assert result.samples == 2 and result.system == "megacontext-oracle"
    encode_text = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    rng = random.Random("passkey/400/0")
    for oracle in seen:
        sample = make_sample("passkey", rng, encode_text, filler, 400)
        assert oracle.evidence == sample.evidence and sample.evidence
        assert oracle.last_wc is not None
        starts, ends = oracle.last_wc.spans()
        assert lod0(list(zip(starts.tolist(), ends.tolist(), strict=True)), sample.evidence)
    assert result.system_stats["focus_steps"] > 0  # stats() summed over samples


@pytest.mark.parametrize("task", ["passkey", "needle", "vartrack", "lines", "facts", "longdoc"])
def test_every_task_names_its_evidence(base: BaseAdapter, task: str) -> None:
    filler = Filler(np.random.default_rng(0).integers(3, base.vocab_size, 5000), (0, 1, 2))
    encode_text = lambda t: base.encode(t, add_bos=False)  # noqa: E731
    sample = make_sample(task, random.Random(4), encode_text, filler, 300)
    if task == "longdoc":
        assert sample.evidence == ()
        return
    assert sample.evidence == tuple(sorted(sample.evidence))
    assert all(0 <= a < b <= len(sample.history) for a, b in sample.evidence)
    text = "".join(base.decode(sample.history[a:b].tolist()) for a, b in sample.evidence)
    if task == "vartrack":
        assert len(sample.evidence) == 4  # every link of the chain
    if task == "facts":
        assert f"moved to the {sample.answer_text}" in text  # the asked person's last move
    assert sample.answer_text in text
