"""GistNet and LensNet: shapes, bidirectionality, batching equivalence, ablations, bad input."""

from __future__ import annotations

import pytest
import torch

from megacontext.errors import InvalidInputError
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lensnet import FEATURES, LensNet, LensNetConfig, collapse_scores


def gistnet(pooling: str = "mean", **kw: object) -> GistNet:
    torch.manual_seed(0)
    return GistNet(
        GistNetConfig(
            d_model=24,
            K=8,
            width=32,
            n_layers=2,
            n_heads=4,
            pooling=pooling,
            key_dim=6,
            target_norm=3.0,
            **kw,
        )
    ).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["mean", "query", "cls"])
def test_gistnet_shapes_norm_and_unit_keys(pooling: str) -> None:
    net = gistnet(pooling)
    x = torch.randn(5, 8, 24)
    gist, key = net(x, level=1)
    assert gist.shape == (5, 24) and key.shape == (5, 6)
    torch.testing.assert_close(gist.norm(dim=-1), torch.full((5,), 3.0))
    torch.testing.assert_close(key.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("pooling", ["mean", "query", "cls"])
def test_gistnet_is_bidirectional_and_input_dependent(pooling: str) -> None:
    net = gistnet(pooling)
    x = torch.randn(4, 8, 24)
    gist, _ = net(x, level=1)
    # Not constant across inputs (CLS pooling must read the block, not just its own token).
    assert (gist[0] - gist[1]).abs().max() > 1e-3
    # Bidirectional: changing the LAST input changes what the first position sees, so the gist
    # changes even with CLS pooling (which reads position 0 only).
    y = x.clone()
    y[:, -1] += 1.0
    gist_y, _ = net(y, level=1)
    assert (gist - gist_y).abs().max() > 1e-4


def test_gistnet_batched_equals_one_by_one() -> None:
    net = gistnet("query")
    x = torch.randn(7, 8, 24)
    levels = torch.tensor([1, 2, 1, 3, 2, 1, 1])
    batched, keys = net(x, levels)
    for i in range(7):
        one, key = net(x[i : i + 1], int(levels[i]))
        torch.testing.assert_close(one[0], batched[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(key[0], keys[i], atol=1e-5, rtol=1e-5)


def test_level_embedding_matters() -> None:
    net = gistnet()
    with torch.no_grad():
        net.level.weight.normal_()
    x = torch.randn(2, 8, 24)
    assert (net(x, 1)[0] - net(x, 2)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("head", ["direct", "anchored"])
def test_several_gists_per_block(head: str) -> None:
    """``gists_per_block`` G: G gists of the target norm per block, from G learned queries that
    differ, one unit key; batched equals one by one; only query pooling can make them."""
    net = gistnet("query", gists_per_block=3, gist_head=head)
    x = torch.randn(5, 8, 24)
    gists, keys = net(x, level=1)
    assert gists.shape == (5, 3, 24) and keys.shape == (5, 6)
    torch.testing.assert_close(gists.norm(dim=-1), torch.full((5, 3), 3.0))
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(5))
    assert not torch.allclose(gists[:, 0], gists[:, 1])  # the slots say different things
    one = torch.cat([net(x[i : i + 1], level=1)[0] for i in range(5)])
    torch.testing.assert_close(gists, one)
    single = gistnet("query")(x, level=1)[0]
    assert single.shape == (5, 24)  # one gist per block keeps its (n, d) shape
    with pytest.raises(InvalidInputError, match="pooling: query"):
        gistnet("mean", gists_per_block=2)
    with pytest.raises(InvalidInputError, match="gists_per_block"):
        gistnet("query", gists_per_block=0)


def test_anchored_head_keeps_spans_apart_when_the_head_collapses() -> None:
    """A head whose output is one huge shared vector (the placeholder collapse issue 16 measured)
    makes every span's gist the same with the direct head; the anchored head centres it away, so
    the gists of different spans stay a fixed angle apart."""
    x = torch.randn(6, 8, 24)
    cosines = {}
    for head in ("direct", "anchored"):
        net = gistnet("mean", gist_head=head).train()
        with torch.no_grad():
            net.gist_head[-1].bias.normal_(std=1000.0)
        gist, _ = net(x, level=1)
        unit = torch.nn.functional.normalize(gist, dim=-1)
        off = unit @ unit.T - torch.eye(6)
        cosines[head] = float(off.sum() / 30)
        torch.testing.assert_close(gist.norm(dim=-1), torch.full((6,), 3.0))
    assert cosines["direct"] > 0.999
    assert cosines["anchored"] < 0.7


def test_anchored_head_uses_the_running_mean_at_inference() -> None:
    """The first training batch sets the running mean to its own mean, so inference on that
    batch writes the training gists; the mean is kept per level, and a lone gist never needs a
    batch to be centred on."""
    net = gistnet("query", gist_head="anchored").train()
    x = torch.randn(5, 8, 24)
    trained, _ = net(x, level=2)
    net.eval()
    with torch.no_grad():
        inferred, _ = net(x, level=2)
        one, _ = net(x[:1], level=2)
    torch.testing.assert_close(inferred, trained.detach())
    torch.testing.assert_close(one[0], inferred[0])
    assert float(net.content_updates[2]) == 1 and float(net.content_updates[1]) == 0
    assert net.content_mean[1].abs().max() == 0  # level 1 never trained: untouched


def test_gistnet_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="gist_head"):
        GistNetConfig(d_model=8, gist_head="pooled")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="content_ratio"):
        GistNetConfig(d_model=8, content_ratio=0.0)
    net = gistnet()
    with pytest.raises(InvalidInputError, match=r"shape \(n, 8, 24\)"):
        net(torch.randn(2, 7, 24), 1)
    with pytest.raises(InvalidInputError, match="levels must be in"):
        net(torch.randn(2, 8, 24), 0)
    with pytest.raises(InvalidInputError, match="divisible"):
        GistNetConfig(d_model=8, width=30, n_heads=4)
    with pytest.raises(InvalidInputError, match="pooling"):
        GistNetConfig(d_model=8, pooling="max")  # type: ignore[arg-type]


def lens(**kw: object) -> LensNet:
    torch.manual_seed(0)
    return LensNet(LensNetConfig(d_model=24, width=32, n_layers=2, n_heads=4, **kw)).eval()  # type: ignore[arg-type]


def lens_inputs(b: int = 2, w: int = 10, q: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    entries = torch.randn(b, w, 24, generator=g)
    levels = torch.randint(0, 3, (b, w), generator=g)
    features = torch.randn(b, w, len(FEATURES), generator=g)
    query = torch.randn(b, q, 24, generator=g)
    return entries, levels, features, query


def test_lensnet_scores_are_bounded_and_query_conditioned() -> None:
    net = lens()
    entries, levels, features, query = lens_inputs()
    scores = net(entries, levels, features, query)
    assert scores.shape == (2, 10)
    assert scores.abs().max() < 1
    other = net(entries, levels, features, query + 1.0)
    assert (scores - other).abs().max() > 1e-5  # conditioned on the query


def test_lensnet_is_non_causal() -> None:
    net = lens()
    entries, levels, features, query = lens_inputs()
    base = net(entries, levels, features, query)
    later = entries.clone()
    later[:, -1] += 2.0
    # Changing the newest entry changes the score of the oldest one.
    assert (net(later, levels, features, query)[:, 0] - base[:, 0]).abs().max() > 1e-6


def test_lensnet_padding_does_not_leak() -> None:
    net = lens()
    entries, levels, features, query = lens_inputs(b=1, w=6)
    alone = net(entries, levels, features, query)
    pad = 4
    padded = (
        torch.cat([entries, torch.randn(1, pad, 24)], dim=1),
        torch.cat([levels, torch.zeros(1, pad, dtype=levels.dtype)], dim=1),
        torch.cat([features, torch.randn(1, pad, len(FEATURES))], dim=1),
    )
    mask = torch.tensor([[True] * 6 + [False] * pad])
    out = net(*padded, query, entry_mask=mask)
    torch.testing.assert_close(out[:, :6], alone, atol=1e-5, rtol=1e-5)
    assert torch.all(out[:, 6:] == 0)


@pytest.mark.parametrize(("flag", "column"), [("use_lexical", "lexical"), ("use_keys", "key_sim")])
def test_ablation_switches_remove_an_input(flag: str, column: str) -> None:
    net = lens(**{flag: False})
    entries, levels, features, query = lens_inputs()
    changed = features.clone()
    changed[..., FEATURES.index(column)] += 5.0
    torch.testing.assert_close(
        net(entries, levels, features, query), net(entries, levels, changed, query)
    )
    full = lens()
    assert (
        full(entries, levels, features, query) - full(entries, levels, changed, query)
    ).abs().max() > 1e-5


def test_gists_only_ablation_hides_gist_vectors() -> None:
    net = lens(use_gists=False)
    entries, levels, features, query = lens_inputs()
    changed = entries.clone()
    changed[levels > 0] += 3.0
    torch.testing.assert_close(
        net(entries, levels, features, query), net(changed, levels, features, query)
    )


def test_collapse_scores_are_member_means() -> None:
    scores = torch.arange(12, dtype=torch.float32)
    out = collapse_scores(scores, torch.tensor([0, 8]), K=4)
    torch.testing.assert_close(out, torch.tensor([1.5, 9.5]))
