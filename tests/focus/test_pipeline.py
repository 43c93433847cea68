"""One focus pipeline: what LensNet is trained on is what it scores in a session (D17)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megacontext.core import AllocatorConfig, WorkingContext
from megacontext.data import Filler
from megacontext.focus import FocusEngine, FocusQuery, LensScorer, query_key
from megacontext.runtime import Session, SessionConfig
from megacontext.train.lens import LensTrainConfig, make_sample


@pytest.fixture(scope="module")
def sample_and_session(tiny_world):  # type: ignore[no-untyped-def]
    base, gistnet = tiny_world.base, tiny_world.gistnet
    cfg = LensTrainConfig(
        W_max=40, protected_recent=12, query_tokens=8, history_tokens=(300, 300), perturb_edits=3
    )
    stream = np.random.default_rng(0).integers(3, base.vocab_size, size=5_000)
    filler = Filler(stream, (0, 1, 2))
    sample = make_sample(base, gistnet, filler, stream, cfg, random.Random(0), "text")
    history = sample.tree.tokens(0, sample.tree.num_tokens)
    session = Session.in_memory(
        base, tiny_world.bundle, SessionConfig(W_max=40, protected_recent=12, query_tokens=8)
    )
    session.ingest(history)
    return base, sample, session


def test_lensnet_gets_identical_inputs_in_training_and_in_a_session(sample_and_session) -> None:  # type: ignore[no-untyped-def]
    base, sample, session = sample_and_session
    # The session's own query rule (the last query_tokens tokens of the latest input) names the
    # same tokens the training sample asks with; its key and text must come out the same.
    served_query = session.focus_query()
    np.testing.assert_array_equal(served_query.ids, sample.query.ids)
    assert served_query.text == sample.query.text
    np.testing.assert_array_equal(served_query.key, sample.query.key)
    trained = sample.scorer(base).inputs(sample.wc, sample.query)
    served = session.scorer.inputs(sample.wc.copy(), served_query)
    for name, a, b in zip(trained._fields, trained, served, strict=True):
        assert torch.equal(a, b), name
    lens = session.lensnet
    assert lens is not None
    np.testing.assert_array_equal(
        sample.scorer(base).scores(lens, sample.wc, sample.query),
        session.scorer.scores(lens, sample.wc, served_query),
    )


def test_a_short_query_has_no_key_and_a_block_query_has_gistnets(tiny_world) -> None:  # type: ignore[no-untyped-def]
    base, gistnet = tiny_world.base, tiny_world.gistnet
    K = gistnet.config.K
    assert not query_key(base, gistnet, np.arange(3, 3 + K - 1)).any()
    ids = np.arange(3, 3 + 2 * K)
    with torch.no_grad():
        block = base.embed(torch.as_tensor(ids[-K:]))[None].float()
        expected = gistnet(block, 1)[1][0].numpy()
    np.testing.assert_array_equal(query_key(base, gistnet, ids), expected)
    query = FocusQuery.of(base, gistnet, ids)
    assert query.text == base.decode(ids.tolist())


def test_the_engine_step_plans_applies_crops_and_records() -> None:
    wc = WorkingContext.assemble(4096, 96, K=4, protected_recent=8)
    crops: list[int] = []
    engine = FocusEngine(AllocatorConfig(max_edits=2), on_change=crops.append)
    scores = np.zeros(wc.size)
    gist = int(np.flatnonzero(wc.levels > 0)[3])
    scores[gist] = 1.0
    before = wc.version
    done = engine.step(wc, scores)
    assert done.plan.expands == 1 and wc.version != before
    assert crops == [done.first_changed] and done.first_changed <= gist
    assert engine.state.stats.steps == 1 and engine.state.stats.expands == 1
    assert {"allocator", "apply"} <= set(done.seconds)
    wc.check_invariants()
    # Nothing worth doing: the context and the cache are left alone, the step still counts.
    quiet = engine.step(wc, np.zeros(wc.size))
    assert not quiet.plan.edits and crops == [done.first_changed]
    assert quiet.first_changed == wc.size and engine.state.stats.steps == 2


def test_the_engine_runs_until_nothing_is_planned_or_done() -> None:
    wc = WorkingContext.assemble(4096, 96, K=4, protected_recent=8)
    sessions = AllocatorConfig(
        max_edits=4, expand_threshold=0.0, min_gain=0.0, collapse_threshold=1.0
    )
    engine = FocusEngine(sessions)
    target = 1000

    def score(ctx: WorkingContext) -> np.ndarray:
        starts, ends = ctx.spans()
        return ((starts <= target) & (ends > target) & (ctx.levels > 0)).astype(float)

    steps = engine.run(wc, score, steps=50)
    assert 0 < steps < 50
    assert wc.levels[wc.entry_at(target)] == 0  # opened down to the token
    assert engine.run(wc, score, steps=50) == 0  # nothing left to open
    fresh = WorkingContext.assemble(4096, 96, K=4, protected_recent=8)
    assert FocusEngine(sessions).run(fresh, score, steps=50, until=lambda _wc: True) == 0


def test_lens_scorer_features_are_finite_and_in_order(sample_and_session) -> None:  # type: ignore[no-untyped-def]
    base, sample, _ = sample_and_session
    scorer = LensScorer(base, sample.tree, sample.lexical)
    feats = scorer.features(sample.wc, sample.query)
    assert feats.shape == (sample.wc.size, 5) and np.isfinite(feats).all()
    assert (feats[:, 3] >= 0).all() and feats[:, 3].max() <= 1.0  # lexical, normalised
