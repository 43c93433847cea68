"""GistNet as the tree's gister, and materializing a working context for the base model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megacontext.core import MegaContextTree, MemoryBackend, WorkingContext
from megacontext.errors import InvalidInputError
from megacontext.models import load_base
from megacontext.models.context import GistNetGister, entry_vectors, materialize
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.tiny import make_tiny_model_dir

K = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = load_base(make_tiny_model_dir("default", tmp_path_factory.mktemp("m") / "b"))
    torch.manual_seed(0)
    net = GistNet(GistNetConfig(d_model=base.d_model, K=K, width=32, n_heads=2, key_dim=5))
    gister = GistNetGister(net, base)
    tree = MegaContextTree(
        MemoryBackend(base.d_model, np.float32),
        gister,
        K=K,
        key_backend=MemoryBackend(5, np.float32),
    )
    tree.append(np.random.default_rng(0).integers(0, base.vocab_size, size=300))
    return base, net, tree


def test_tree_gisted_by_gistnet_matches_direct_forward(setup) -> None:  # type: ignore[no-untyped-def]
    base, net, tree = setup
    ids = torch.as_tensor(tree.tokens(0, 2 * K).astype(np.int64)).view(2, K)
    with torch.no_grad():
        gists, keys = net(base.embed(ids), 1)
    np.testing.assert_allclose(tree.gists(1, 0, 2), gists.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tree.keys(1, 0, 2), keys.numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        lod2, _ = net(torch.tensor(tree.gists(1, 0, K))[None], 2)
    np.testing.assert_allclose(tree.gists(2, 0, 1), lod2.numpy(), rtol=1e-5, atol=1e-6)


def test_materialize_puts_each_entry_in_place(setup) -> None:  # type: ignore[no-untyped-def]
    base, _, tree = setup
    wc = WorkingContext.assemble(tree.num_tokens, 40, K=K, protected_recent=8)
    m = materialize(wc, tree, base, policy="global")
    assert m.embeds.shape == (1, wc.size, base.d_model)
    for pos in range(wc.size):
        level, index = int(wc.levels[pos]), int(wc.indices[pos])
        if level == 0:
            expect = base.embed(torch.tensor([int(tree.tokens(index, index + 1)[0])]))[0]
        else:
            expect = torch.as_tensor(tree.gists(level, index, index + 1)[0])
        torch.testing.assert_close(m.embeds[0, pos], expect)
    assert m.mu is not None and torch.all(m.mu[0, 1:] > m.mu[0, :-1])
    out = base.forward(m.embeds, m.position_ids, mu=m.mu)
    assert out.logits.shape[:2] == (1, wc.size)
    compact = materialize(wc, tree, base)
    assert compact.mu is None and compact.position_ids[0].tolist() == list(range(wc.size))
    torch.testing.assert_close(entry_vectors(wc, tree, base), m.embeds[0])
    for start in (1, wc.size // 2, wc.size - 1, wc.size):  # the uncached suffix only
        torch.testing.assert_close(entry_vectors(wc, tree, base, start), m.embeds[0, start:])
    with pytest.raises(InvalidInputError, match="start"):
        entry_vectors(wc, tree, base, wc.size + 1)


def test_mismatches_are_refused(setup) -> None:  # type: ignore[no-untyped-def]
    base, _, tree = setup
    wc = WorkingContext.assemble(tree.num_tokens - 1, 40, K=K)
    with pytest.raises(InvalidInputError, match="covers"):
        materialize(wc, tree, base)
    wrong = GistNet(GistNetConfig(d_model=base.d_model + 2, K=K, width=32, n_heads=2))
    with pytest.raises(InvalidInputError, match="dim gists"):
        GistNetGister(wrong, base)
