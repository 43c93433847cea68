"""Sessions over a GistNet that writes several gists per node: the tree stores them, the working
context budgets them as positions, and the base reads every one of them (issue 16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.core import WorkingContext
from megacontext.errors import InvalidInputError
from megacontext.models.bundle import save_bundle
from megacontext.models.context import entry_vectors, input_vectors, materialize
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.runtime import Session, SessionConfig, open_session

G = 2
TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b. "
    "To be, or not to be, that is the question. import os; print(key, value). "
) * 12


@pytest.fixture(scope="module")
def two_gist_bundle(tiny_world, tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tiny_world.base
    torch.manual_seed(1)
    gist = GistNet(
        GistNetConfig(
            d_model=base.d_model,
            K=4,
            width=32,
            n_heads=2,
            key_dim=8,
            pooling="query",
            gists_per_block=G,
        )
    )
    return save_bundle(
        tmp_path_factory.mktemp("two-gists") / "focus",
        {"gistnet": gist, "lensnet": tiny_world.lensnet},
        fingerprints=base.fingerprints,
    )


def config(**kw: object) -> SessionConfig:
    options: dict[str, object] = {
        "W_max": 48,
        "protected_recent": 12,
        "refocus_every": 4,
        "query_tokens": 8,
    }
    options.update(kw)
    return SessionConfig(**options)  # type: ignore[arg-type]


def test_the_base_reads_every_vector_of_a_node(  # type: ignore[no-untyped-def]
    tiny_world, two_gist_bundle, tmp_path: Path
) -> None:
    base = tiny_world.base
    with open_session(tmp_path / "s", base, two_gist_bundle, config()) as mc:
        mc.ingest(TEXT)
        tree, wc = mc.tree, mc.wc
        assert tree.gists_per_node == wc.gists_per_node == G
        assert tree.backend.dim == G * base.d_model  # one record of G vectors per node
        assert wc.length <= wc.W_max and wc.length > wc.size  # gists take G positions each
        vectors = mc.context_vectors()
        assert vectors.shape == (wc.length, base.d_model)
        offsets = wc.offsets()
        gists = np.flatnonzero(wc.levels > 0)
        assert gists.size
        for entry in gists.tolist():
            level, index = int(wc.levels[entry]), int(wc.indices[entry])
            stored = np.asarray(tree.gists(level, index, index + 1)[0], np.float32)
            assert stored.shape == (G, base.d_model)
            assert not np.allclose(stored[0], stored[1])  # two vectors, not one repeated
            got = vectors[offsets[entry] : offsets[entry] + G].float().numpy()
            np.testing.assert_allclose(got, stored, rtol=1e-3, atol=1e-3)
        # LensNet reads one vector per entry: a node's is the mean of its vectors.
        per_entry = entry_vectors(wc, tree, base).float().numpy()
        entry = int(gists[0])
        level, index = int(wc.levels[entry]), int(wc.indices[entry])
        np.testing.assert_allclose(
            per_entry[entry],
            np.asarray(tree.gists(level, index, index + 1)[0], np.float32).mean(0),
            rtol=1e-3,
            atol=1e-3,
        )
        ids = materialize(wc, tree, base, "global").position_ids[0]
        assert ids.shape == (wc.length,) and bool((ids.diff() > 0).all())


def test_decoding_with_the_kv_cache_equals_full_recompute(
    tiny_world, two_gist_bundle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    base = tiny_world.base
    runs, crops = [], []
    for reuse in (True, False):
        with open_session(tmp_path / f"s{reuse}", base, two_gist_bundle, config()) as mc:
            mc.ingest(TEXT)
            if reuse:
                original = mc._crop

                def crop(first: int, original=original) -> None:  # type: ignore[no-untyped-def]
                    crops.append(first)
                    original(first)

                mc._crop = crop  # type: ignore[method-assign,assignment]
            for _ in mc.generate("And then", max_new_tokens=12):
                assert mc.wc.length <= mc.wc.W_max
                if not reuse:
                    mc._drop_cache()  # a full recompute before the next token
            runs.append(mc.tree.tokens(0, mc.tree.num_tokens).tolist())
    assert runs[0] == runs[1]
    assert crops  # the cache was cropped at input positions, not rebuilt


def test_an_in_memory_session_stores_the_same_nodes(
    tiny_world, two_gist_bundle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from megacontext.models.bundle import load_bundle

    base = tiny_world.base
    bundle = load_bundle(two_gist_bundle, fingerprints=base.fingerprints)
    memory = Session.in_memory(base, bundle, config())
    memory.ingest(TEXT)
    with open_session(tmp_path / "s", base, two_gist_bundle, config()) as disk:
        disk.ingest(TEXT)
        for level in range(1, disk.tree.num_levels + 1):
            n = disk.tree.count(level)
            assert memory.tree.count(level) == n
            np.testing.assert_allclose(
                np.asarray(memory.tree.gists(level, 0, n), np.float32),
                np.asarray(disk.tree.gists(level, 0, n), np.float32),
                rtol=1e-2,
                atol=1e-2,
            )


def test_inputs_that_do_not_fit_the_tree_are_refused(
    tiny_world, two_gist_bundle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    base = tiny_world.base
    with open_session(tmp_path / "s", base, two_gist_bundle, config()) as mc:
        mc.ingest(TEXT)
        one_each = WorkingContext.assemble(mc.tree.num_tokens, 48, K=4, protected_recent=12)
        with pytest.raises(InvalidInputError, match="assemble it with gists_per_node"):
            input_vectors(one_each, mc.tree, base)
        gist = int(np.flatnonzero(mc.wc.levels > 0)[0])
        inside = int(mc.wc.offsets()[gist]) + 1  # the second vector of a node
        with pytest.raises(InvalidInputError, match="first position of an entry"):
            input_vectors(mc.wc, mc.tree, base, inside)
