"""LensNet training: counterfactual labels are what they claim, training fits them, evaluation
and key training run end to end on a tiny random-init base."""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
import torch

from megacontext.core import Edit, EditPlan, WorkingContext
from megacontext.errors import InvalidInputError
from megacontext.models.lensnet import FEATURES
from megacontext.train.lens import (
    MIN_LABELLED,
    LensTrainConfig,
    counterfactual_labels,
    evaluate_lensnet,
    make_samples,
    ranking_loss,
    refresh_keys,
    train_key_head,
    train_lensnet,
    wc_nll,
)

K = 4


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    base = tiny_world.base
    gistnet = copy.deepcopy(tiny_world.gistnet)  # a private copy: these tests train its key head
    cfg = LensTrainConfig(
        W_max=40,
        protected_recent=12,
        query_tokens=8,
        history_tokens=(150, 260),
        horizon=8,
        max_answer_tokens=6,
        perturb_edits=2,
        epochs=6,
        key_epochs=5,
        focus_steps=2,
        lensnet={"width": 32, "n_heads": 2, "n_layers": 1},
    )
    rng = np.random.default_rng(0)
    stream = rng.integers(3, base.vocab_size, size=20_000)
    samples = make_samples(
        base, gistnet, stream, cfg, count=6, seed=1, special_ids=(0, 1, 2), progress=False
    )
    return base, gistnet, cfg, samples


def test_samples_mix_retrieval_and_text_with_legal_labels(world) -> None:  # type: ignore[no-untyped-def]
    base, _, cfg, samples = world
    kinds = [s.kind for s in samples]
    assert kinds.count("text") == 3 and all(k in cfg.task_kinds for k in kinds if k != "text")
    for s in samples:
        s.wc.check_invariants()
        assert s.labels.shape == (s.wc.size,)
        gists = s.wc.levels > 0
        assert np.isfinite(s.expand_gain[gists]).all()
        assert np.isnan(s.expand_gain[~gists]).all()
        assert not np.isfinite(
            s.labels[s.wc.protected_mask()]
        ).any()  # the protected window is never a candidate
        feats = s.scorer(base).features(s.wc, s.query)
        assert feats.shape == (s.wc.size, len(FEATURES)) and np.isfinite(feats).all()


def test_task_samples_are_spread_among_text_and_a_budget_cuts_the_set_short(world) -> None:  # type: ignore[no-untyped-def]
    base, gistnet, cfg, samples = world
    # Half retrieval, interleaved: any prefix of the set (what a labelling budget keeps) mixes.
    assert [s.kind == "text" for s in samples] == [True, False] * 3
    stream = np.random.default_rng(0).integers(3, base.vocab_size, size=20_000)
    cut = make_samples(
        base, gistnet, stream, cfg, count=9, seed=1, special_ids=(0, 1, 2), progress=False,
        budget_s=1e-9,
    )  # fmt: skip
    assert len(cut) == MIN_LABELLED
    # The same seed gives the same samples, however many are kept.
    assert [s.kind for s in cut] == [s.kind for s in samples[:MIN_LABELLED]]
    assert all(np.array_equal(a.scored, b.scored) for a, b in zip(cut, samples, strict=False))


def test_expand_label_is_the_nll_change_of_that_edit(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, samples = world
    s = samples[0]
    labels, gain, nll0 = counterfactual_labels(base, s)
    assert nll0 == pytest.approx(wc_nll(base, s.tree, s.wc, s.scored), rel=1e-6)
    pos = int(np.flatnonzero(s.wc.levels > 0)[0])
    # The label ignores the budget, so check it on a copy with room for one expansion.
    room = WorkingContext(
        s.wc.levels,
        s.wc.indices,
        num_tokens=s.wc.num_tokens,
        W_max=s.wc.W_max + K,
        K=K,
        protected_recent=s.wc.protected_recent,
    )
    room.apply(
        EditPlan(room.version, (Edit.expand(int(s.wc.levels[pos]), int(s.wc.indices[pos])),))
    )
    direct = wc_nll(base, s.tree, room, s.scored)
    assert gain[pos] == pytest.approx(-(direct - nll0) / (K - 1), rel=1e-4, abs=1e-6)
    assert labels[pos] == gain[pos]


def test_every_label_equals_a_full_recompute_of_its_edited_context(world) -> None:  # type: ignore[no-untyped-def]
    # Labels reuse the unedited context's KV cache up to each edit's first changed entry; each
    # must equal reading the whole edited context from scratch (expansions and collapses).
    base, _, _, samples = world
    s = next(x for x in samples if x.retrieval)
    labels, gain, nll0 = counterfactual_labels(base, s, batch=3)
    roomy = dict(
        num_tokens=s.wc.num_tokens,
        W_max=s.wc.W_max + K,
        K=K,
        protected_recent=s.wc.protected_recent,
    )
    checked = set()
    for pos in np.flatnonzero(s.wc.levels > 0):
        edited = WorkingContext(s.wc.levels, s.wc.indices, **roomy)
        edited.expand(int(s.wc.levels[pos]), int(s.wc.indices[pos]))
        direct = (wc_nll(base, s.tree, edited, s.scored) - nll0) / (K - 1)
        assert gain[pos] == pytest.approx(-direct, rel=1e-4, abs=1e-6)
        checked.add("expand")
    for pos in np.flatnonzero(np.isfinite(labels) & (s.wc.levels == 0)):
        # A raw token's label is its group's collapse; the group starts at a multiple of K.
        first = int(pos - s.wc.indices[pos] % K)
        edited = WorkingContext(s.wc.levels, s.wc.indices, **roomy)
        edited.collapse(1, int(s.wc.indices[first]) // K)
        direct = (wc_nll(base, s.tree, edited, s.scored) - nll0) / (K - 1)
        assert labels[pos] == pytest.approx(direct, rel=1e-4, abs=1e-6)
        checked.add("collapse")
    # Both paths ran: an edit of the first entry (nothing cached to reuse) and later ones.
    assert checked == {"expand", "collapse"} and s.wc.levels[0] > 0


def test_labels_are_per_position_of_budget_with_several_gists_per_node(world) -> None:  # type: ignore[no-untyped-def]
    # G = 2 vectors per node: an expansion spends K·c − 2 positions, and each label is the NLL
    # change of its edit per position spent, read from scratch.
    from megacontext.models.gistnet import GistNet, GistNetConfig

    base, _, cfg, _ = world
    torch.manual_seed(3)
    gistnet = GistNet(
        GistNetConfig(
            d_model=base.d_model, K=K, width=32, n_heads=2, key_dim=8, pooling="query",
            gists_per_block=2,
        )
    )  # fmt: skip
    stream = np.random.default_rng(0).integers(3, base.vocab_size, size=20_000)
    samples = make_samples(
        base, gistnet, stream, cfg, count=2, seed=1, special_ids=(0, 1, 2), progress=False
    )
    s = samples[1]
    assert s.tree.gists_per_node == s.wc.gists_per_node == 2 and s.wc.length <= cfg.W_max
    labels, gain, nll0 = counterfactual_labels(base, s, batch=3)
    roomy = dict(
        num_tokens=s.wc.num_tokens,
        W_max=s.wc.W_max + 2 * K * K,
        K=K,
        protected_recent=s.wc.protected_recent,
        gists_per_node=2,
    )
    levels = set()
    for pos in np.flatnonzero(s.wc.levels > 0):
        edited = WorkingContext(s.wc.levels, s.wc.indices, **roomy)
        level = int(s.wc.levels[pos])
        edited.expand(level, int(s.wc.indices[pos]))
        assert edited.length - s.wc.length == (K - 2 if level == 1 else 2 * K - 2)
        direct = (wc_nll(base, s.tree, edited, s.scored) - nll0) / (edited.length - s.wc.length)
        assert gain[pos] == pytest.approx(-direct, rel=1e-4, abs=1e-6)
        levels.add(level)
    assert levels >= {1, 2}  # both costs were checked
    raw = np.flatnonzero(np.isfinite(labels) & (s.wc.levels == 0))
    assert raw.size
    for pos in raw[:: K // 2]:
        edited = WorkingContext(s.wc.levels, s.wc.indices, **roomy)
        edited.collapse(1, int(s.wc.indices[pos]) // K)
        assert s.wc.length - edited.length == K - 2  # K tokens in, one node of 2 vectors out
        direct = (wc_nll(base, s.tree, edited, s.scored) - nll0) / (K - 2)
        assert labels[pos] == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_label_candidates_score_a_seeded_subset_and_always_the_evidence(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, samples = world
    retrieval = next(s for s in samples if s.retrieval)
    full, _, _ = counterfactual_labels(base, retrieval)
    part, _, _ = counterfactual_labels(base, retrieval, candidates=2, rng=random.Random(3))
    labelled = np.isfinite(part)
    assert labelled.any() and labelled.sum() < np.isfinite(full).sum()
    assert np.isfinite(full[labelled]).all()  # a subset of the legal edits ...
    np.testing.assert_allclose(part[labelled], full[labelled], rtol=1e-4, atol=1e-6)  # ... same
    # Every gist over the evidence is labelled, whatever the draw.
    wc = retrieval.wc
    over_evidence = []
    for pos in np.flatnonzero(wc.levels > 0):
        span = K ** int(wc.levels[pos])
        lo = int(wc.indices[pos]) * span
        if any(a < lo + span and b > lo for a, b in retrieval.evidence):
            over_evidence.append(int(pos))
    assert over_evidence and labelled[over_evidence].all()
    with pytest.raises(InvalidInputError, match="label_candidates must be >= 1"):
        LensTrainConfig(label_candidates=0)


def test_evidence_path_label_values_opening_a_needle_ancestor_to_tokens(world) -> None:  # type: ignore[no-untyped-def]
    base, _, _, samples = world
    s = next(x for x in samples if x.retrieval)
    assert s.evidence and all(b <= s.wc.num_tokens for _, b in s.evidence)
    single, _, nll0 = counterfactual_labels(base, s)
    labels, gain, _ = counterfactual_labels(base, s, descent=True)
    evidence_blocks = {b for a, e in s.evidence for b in range(a // K, (e - 1) // K + 1)}
    starts, ends = s.wc.spans()
    changed = 0
    for pos in np.flatnonzero(s.wc.levels > 0):
        level = int(s.wc.levels[pos])
        covered = sorted(b for b in evidence_blocks if starts[pos] <= b * K < ends[pos])
        if level < 2 or not covered:
            # LOD1 gists and gists without evidence keep their single-edit labels.
            assert labels[pos] == single[pos]
            continue
        # Independently: open every covered evidence block down to tokens, one level at a time.
        wc = WorkingContext(
            s.wc.levels,
            s.wc.indices,
            num_tokens=s.wc.num_tokens,
            W_max=10_000,
            K=K,
            protected_recent=s.wc.protected_recent,
        )
        expansions = 0
        for block in covered:
            for lv in range(level, 0, -1):
                node = block // K ** (lv - 1)
                if ((wc.levels == lv) & (wc.indices == node)).any():
                    wc.expand(lv, node)
                    expansions += 1
        assert all(((wc.levels == 0) & (wc.indices // K == b)).sum() == K for b in covered), (
            "every covered evidence block is raw tokens"
        )
        opened = (nll0 - wc_nll(base, s.tree, wc, s.scored)) / (expansions * (K - 1))
        assert labels[pos] == pytest.approx(max(single[pos], opened), rel=1e-4, abs=1e-6)
        assert gain[pos] == labels[pos] >= single[pos]
        changed += 1
    assert changed, "the sample should have a level-2+ gist over its evidence"
    # Text samples carry no evidence: labels are the single-edit ones.
    t = next(x for x in samples if not x.retrieval)
    assert not t.evidence
    np.testing.assert_array_equal(
        counterfactual_labels(base, t, descent=True)[0], counterfactual_labels(base, t)[0]
    )


def test_lensnet_fits_its_labels_and_evaluates(world) -> None:  # type: ignore[no-untyped-def]
    base, _, cfg, samples = world
    lens, scale, losses = train_lensnet(base, samples, cfg, progress=False, log=lambda _m: None)
    assert scale > 0
    assert losses[-1] < losses[0]
    report = evaluate_lensnet(base, lens, samples[:2], cfg, scale)
    assert report.samples == 2
    assert np.isfinite([report.nll_recency, report.nll_lens, report.nll_oracle]).all()


def test_key_head_training_lowers_its_loss_and_refresh_updates_keys(world) -> None:  # type: ignore[no-untyped-def]
    base, gistnet, cfg, samples = world
    x = torch.randn(2, K, base.d_model)
    gist_before = gistnet(x, 1)[0].detach()
    losses = train_key_head(base, gistnet, samples, cfg, progress=False)
    if losses:
        assert losses[-1] <= losses[0]
    torch.testing.assert_close(gistnet(x, 1)[0].detach(), gist_before)  # gists untouched
    s = samples[0]
    levels = range(1, s.tree.num_levels + 1)
    counts = {lv: s.tree.backend.count(lv) for lv in levels}
    before = {lv: s.tree.keys(lv, 0, counts[lv]).copy() for lv in levels}
    gists = {lv: s.tree.gists(lv, 0, counts[lv]).copy() for lv in levels}
    assert set(s.key_features) == set(levels)
    # The same refresh from scratch: every node read again (no kept features).
    again = dataclasses.replace(s, key_features={})
    refresh_keys(again, base, gistnet)
    refresh_keys(s, base, gistnet)  # from the kept features, without the base
    for lv in levels:
        keys = s.tree.keys(lv, 0, counts[lv])
        assert keys.shape == (counts[lv], gistnet.config.key_dim)
        np.testing.assert_allclose(keys, again.tree.keys(lv, 0, counts[lv]), atol=1e-5)
        assert not np.allclose(keys, before[lv], atol=1e-3)  # the trained head's keys
        np.testing.assert_array_equal(s.tree.gists(lv, 0, counts[lv]), gists[lv])


def test_key_targets_follow_the_evidence_or_the_gain() -> None:
    """With ``evidence`` the positive is the gist over most of a retrieval sample's evidence,
    whatever the noisy gains say; without covered evidence, and with ``gain``, the best gain."""
    from types import SimpleNamespace

    from megacontext.train.lens.training import key_target

    # WC: a LOD2 gist over tokens [0, 16), raw tokens, LOD1 gists over [20, 24) and [24, 28).
    levels = np.array([2, 0, 0, 0, 0, 1, 1, 0])
    indices = np.array([0, 16, 17, 18, 19, 5, 6, 28])
    wc = SimpleNamespace(K=K, levels=levels, indices=indices)
    gains = np.array([np.nan, np.nan, np.nan, np.nan, np.nan, 0.0, 0.0, np.nan])
    gains[[0, 5, 6]] = [0.1, 0.9, 0.2]
    gists = np.flatnonzero(levels > 0)  # positions 0, 5, 6

    def sample(evidence: tuple[tuple[int, int], ...]) -> SimpleNamespace:
        return SimpleNamespace(wc=wc, expand_gain=gains, evidence=evidence)

    assert key_target(sample(((25, 27),)), gists, "evidence") == 2  # inside the second LOD1
    assert key_target(sample(((2, 9), (23, 24))), gists, "evidence") == 0  # 7 tokens vs 1
    assert key_target(sample(((16, 19),)), gists, "evidence") == 1  # raw evidence: the gain
    assert key_target(sample(((25, 27),)), gists, "gain") == 1
    gains[[0, 5, 6]] = [-0.1, 0.0, -0.3]
    assert key_target(sample(()), gists, "gain") is None  # nothing helped: no target
    with pytest.raises(InvalidInputError, match="key_targets"):
        LensTrainConfig(key_targets="both")


def test_ranking_loss_prefers_correct_order() -> None:
    labels = torch.tensor([0.3, 0.1, -0.2])
    good = ranking_loss(torch.tensor([0.9, 0.0, -0.9]), labels)
    bad = ranking_loss(torch.tensor([-0.9, 0.0, 0.9]), labels)
    assert good < bad


def test_ranking_loss_weighs_pairs_by_their_label_gap() -> None:
    # One needle far above many near-equal noise labels: misranking the needle must cost more
    # than misranking every noise pair.
    labels = torch.tensor([1.0, *[0.001 * i for i in range(20)]])
    noise_order = torch.linspace(0.5, -0.5, 20)
    needle_last = ranking_loss(torch.cat([torch.tensor([-1.0]), noise_order.flip(0)]), labels)
    noise_wrong = ranking_loss(torch.cat([torch.tensor([1.0]), noise_order]), labels)
    assert noise_wrong < needle_last
    uniform_flat = ranking_loss(torch.zeros(3), torch.tensor([0.2, 0.1, 0.0]))
    assert uniform_flat == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.0))))


def test_bad_config() -> None:
    with pytest.raises(InvalidInputError, match="query must stay raw"):
        LensTrainConfig(protected_recent=4, query_tokens=8)
    with pytest.raises(InvalidInputError, match="unknown task kinds"):
        LensTrainConfig(task_kinds=("telepathy",))
    for bad in (0, "soon"):
        with pytest.raises(InvalidInputError, match="label_budget_s must be > 0"):
            LensTrainConfig(label_budget_s=bad)  # type: ignore[arg-type]


def test_stale_labels_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    base, gistnet, cfg, samples = world
    from megacontext.errors import StaleLabelError

    current = gistnet.weights_version()
    assert all(s.gist_version == current for s in samples)
    with torch.no_grad():
        gistnet.gist_head[0].weight.add_(0.01)  # the gists change: the labels are now stale
    try:
        with pytest.raises(StaleLabelError, match="relabel"):
            train_lensnet(
                base, samples, cfg, progress=False, gist_version=gistnet.weights_version()
            )
    finally:
        with torch.no_grad():
            gistnet.gist_head[0].weight.sub_(0.01)
