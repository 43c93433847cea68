"""The runtime session over a tiny random-init base and tiny focus models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.errors import (
    BudgetError,
    FingerprintMismatchError,
    IllegalEditError,
    InvalidInputError,
)
from megacontext.models import load_base
from megacontext.models.bundle import load_bundle, save_bundle
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.runtime import SessionConfig, open_session

K = 4
TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b. "
    "To be, or not to be, that is the question. import os; print(key, value). "
) * 12


@pytest.fixture(scope="module")
def models(tiny_world):  # type: ignore[no-untyped-def]
    return tiny_world.base, tiny_world.bundle_dir


def config(**kw: object) -> SessionConfig:
    options: dict[str, object] = {
        "W_max": 48,
        "protected_recent": 12,
        "refocus_every": 4,
        "query_tokens": 8,
    }
    options.update(kw)
    return SessionConfig(**options)  # type: ignore[arg-type]


def test_ingest_covers_the_history_and_records_provenance(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        n = mc.ingest(TEXT, source="file://notes.txt", metadata={"author": "me"}).tokens
        assert n == mc.tree.num_tokens > mc.config.W_max
        mc.wc.check_invariants()
        entries = mc.working_context()
        assert entries[0].start == 0 and entries[-1].end == n
        assert sum(e.end - e.start for e in entries) == n
        assert all(e.preview for e in entries if e.level == 0)
        sources = mc.metadata.list_sources()
        assert [s.uri for s in sources] == ["file://notes.txt"]


def test_generate_streams_appends_and_refocuses(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        before = mc.tree.num_tokens
        pieces = list(mc.generate("Question: what did the fox do?", max_new_tokens=12))
        assert pieces and all(isinstance(p, str) for p in pieces)
        assert mc.tree.num_tokens > before + 12 - 1
        mc.wc.check_invariants()
        trace = [json.loads(line) for line in mc.trace_path.read_text().splitlines()]
        assert len(trace) >= 3
        assert {"utilization", "swap_rate", "seconds", "edits", "cache_hit_ratio"} <= set(trace[-1])
        # Steps after decoding account for the base's forwards since the step before.
        assert any(row["base_seconds"] > 0 for row in trace[1:])
        # The working context is read through the page cache (reads of the growing tail page,
        # never cached, are misses: in this short history that is most of them).
        assert mc.cache_stats.hits > 0 and mc.cache_stats.misses > 0
        assert 0.0 < trace[-1]["cache_hit_ratio"] < 1.0


def test_focus_query_is_the_latest_input_not_the_text_before_it(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config(query_tokens=8)) as mc:
        mc.ingest(TEXT)
        n = mc.tree.num_tokens
        np.testing.assert_array_equal(mc.query_ids(), mc.tree.tokens(n - 8, n))
        question = base.encode(" key?", add_bos=False)
        assert 0 < len(question) < 8
        mc.ingest(question)
        np.testing.assert_array_equal(mc.query_ids(), question)
        # A prompt starts a new query; generated tokens then extend it up to query_tokens.
        prompt = base.encode(" fox", add_bos=False)
        before = mc.tree.num_tokens
        for _ in mc.generate(prompt, max_new_tokens=3):
            pass
        n = mc.tree.num_tokens
        assert before + len(prompt) < n <= before + len(prompt) + 3
        expected = mc.tree.tokens(max(n - 8, before), n)
        np.testing.assert_array_equal(mc.query_ids(), expected)


def test_refocus_frees_room_for_the_tokens_until_the_next_refocus(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config(refocus_every=6)) as mc:
        mc.ingest(TEXT)
        mc.refocus()
        mc.wc.check_invariants()
        assert mc.wc.size <= mc.config.W_max - 6
        crops = []
        mc._crop = lambda first, crop=mc._crop: (crops.append(first), crop(first))[1]  # type: ignore[method-assign]
        list(mc.generate("And then", max_new_tokens=5))
        # Five new tokens fit in the room the refocus after the prompt left, so that refocus is
        # the only edit that rewrites the cache deep inside the context (without the reserve,
        # collapses to make room rewrite it again for each token).
        assert mc.wc.size <= mc.config.W_max
        assert sum(1 for first in crops if first < mc.wc.size - 8) <= 1


def test_collapse_ahead_frees_room_for_many_tokens_at_once(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    deep_crops = {}
    for ahead in (4, 16):
        cfg = config(refocus_every=4, collapse_ahead=ahead, use_lens=False, trace=False)
        with open_session(tmp_path / f"s{ahead}", base, bundle, cfg) as mc:
            mc.ingest(TEXT)
            crops: list[int] = []
            crop = mc._crop
            mc._crop = lambda first, crop=crop, crops=crops: (crops.append(first), crop(first))[1]  # type: ignore[method-assign]
            sizes = []
            for _ in mc.generate(max_new_tokens=32):
                sizes.append(mc.wc.size)
                mc.wc.check_invariants()
            assert max(sizes) <= mc.config.W_max
            # Room for 16 tokens at a time leaves the context that much emptier, no more.
            assert min(sizes) >= mc.config.W_max - ahead - K
            deep_crops[ahead] = sum(1 for first in crops if first < mc.wc.size - 8)
    # Without LensNet only room-making collapses rewrite the cache deep inside the context.
    assert deep_crops[16] <= 32 // 16 + 1 < deep_crops[4]


def test_refocus_while_generating_edits_only_within_its_reach(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """While the session generates, refocus steps and the room they make edit only the last
    ``refocus_reach`` positions (the KV recompute stays that short), even when the scores ask
    for the oldest entries; focus for a question still reaches them."""
    base, bundle = models

    def favour_the_oldest(wc):  # type: ignore[no-untyped-def]
        scores = np.full(wc.size, -0.5)
        scores[: wc.size // 3] = 1.0
        return scores

    deepest = {}
    for reach in (20, 48):
        cfg = config(refocus_every=4, refocus_reach=reach, trace=False)
        with open_session(tmp_path / f"s{reach}", base, bundle, cfg) as mc:
            mc.ingest(TEXT)
            mc.score_override = favour_the_oldest
            mc.refocus()  # focus before generating reaches the oldest gists
            edits: list[tuple[int, int]] = []  # (length before the edit, first changed position)
            apply = mc.engine.apply

            def record(wc, plan, apply=apply, edits=edits):  # type: ignore[no-untyped-def]
                before = wc.length
                step = apply(wc, plan)
                if plan.edits:
                    edits.append((before, wc.position_of(step.first_changed)))
                return step

            mc.engine.apply = record  # type: ignore[method-assign]
            for _ in mc.generate(max_new_tokens=24):
                mc.wc.check_invariants()
            assert edits and mc.wc.length <= mc.config.W_max
            deepest[reach] = min(first - (before - reach) for before, first in edits)
    assert deepest[20] >= 0  # every edit within 20 positions of the end
    assert min(first for _, first in edits) < 48 - 20  # reach 48: the oldest were edited


def test_a_continuation_refocuses_within_reach_a_prompt_everywhere(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The first refocus of a generate call that only continues the last generation edits
    within ``refocus_reach`` as generation does; after a prompt or an ingest (something new to
    focus for) it may edit anywhere."""
    base, bundle = models
    cfg = config(refocus_every=32, refocus_reach=20, trace=False)
    with open_session(tmp_path / "s", base, bundle, cfg) as mc:
        mc.ingest(TEXT)
        reaches: list[int] = []  # the first entry each refocus plan may edit
        refocusing = [False]  # (plans that make room for a prompt are not refocus plans)
        plan, refocus = mc.engine.plan, mc.refocus

        def record(wc, scores, reserve, editable_from, plan=plan):  # type: ignore[no-untyped-def]
            if refocusing[0]:
                reaches.append(editable_from)
            return plan(wc, scores, reserve, editable_from)

        def traced(refocus=refocus, **kw):  # type: ignore[no-untyped-def]
            refocusing[0] = True
            try:
                return refocus(**kw)
            finally:
                refocusing[0] = False

        mc.engine.plan = record  # type: ignore[method-assign]
        mc.refocus = traced  # type: ignore[method-assign]

        def first_reach(*args: object) -> int:
            reaches.clear()
            list(mc.generate(*args, max_new_tokens=1))  # type: ignore[arg-type]
            return reaches[0]

        assert first_reach() == 0  # nothing generated yet: focus for the history
        assert first_reach() > 0  # a continuation: only the last refocus_reach positions
        assert first_reach(" and then") == 0
        assert first_reach() > 0
        mc.ingest(" more text")
        assert first_reach() == 0


def test_generate_does_not_refocus_an_unchanged_context(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        mc.refocus()
        steps = mc.state.stats.steps
        list(mc.generate(max_new_tokens=1))  # fewer tokens than refocus_every
        assert mc.state.stats.steps == steps
        list(mc.generate(max_new_tokens=1))  # a token was appended since: refocus first
        assert mc.state.stats.steps == steps + 1
        mc.ingest(" more text")
        list(mc.generate(max_new_tokens=1))
        assert mc.state.stats.steps == steps + 2


def test_ingest_in_bounded_gist_batches_writes_the_same_tree(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    trees = []
    for batch in (1, 256):
        with open_session(tmp_path / f"s{batch}", base, bundle, config(gist_batch=batch)) as mc:
            assert mc.tree.gist_batch_size == batch
            mc.ingest(TEXT)
            levels = range(1, mc.tree.num_levels + 1)
            trees.append(
                [(mc.tree.gists(lv, 0, mc.tree.count(lv)), mc.tree.keys(lv, 0, mc.tree.count(lv)))
                 for lv in levels]
            )  # fmt: skip
    assert len(trees[0]) == len(trees[1]) >= 2
    for (gists_a, keys_a), (gists_b, keys_b) in zip(*trees, strict=True):
        np.testing.assert_allclose(np.asarray(gists_a, np.float32), gists_b, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(np.asarray(keys_a, np.float32), keys_b, rtol=1e-3, atol=1e-3)
    with pytest.raises(InvalidInputError, match="gist_batch"):
        config(gist_batch=0)


def test_kv_reuse_equals_full_recompute(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    runs = []
    for reuse in (True, False):
        with open_session(tmp_path / f"s{reuse}", base, bundle, config()) as mc:
            mc.ingest(TEXT)
            stream = mc.generate("And then", max_new_tokens=10)
            for _ in stream:
                if not reuse:
                    mc._drop_cache()  # force a full recompute before the next token
            runs.append(mc.tree.tokens(0, mc.tree.num_tokens).tolist())
    assert runs[0] == runs[1]


def test_reopen_restores_history_and_refuses_another_base(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        tokens = mc.tree.tokens(0, mc.tree.num_tokens).tolist()
        blocks = mc.lexical.num_blocks
    with open_session(tmp_path / "s", base, bundle, config()) as again:
        assert again.tree.tokens(0, again.tree.num_tokens).tolist() == tokens
        assert again.lexical.num_blocks == blocks
    other = load_base(make_tiny_model_dir("llama", tmp_path / "other", seed=3))
    gist = GistNet(GistNetConfig(d_model=other.d_model, K=K, width=32, n_heads=2, key_dim=8))
    other_bundle = save_bundle(tmp_path / "ob", {"gistnet": gist}, fingerprints=other.fingerprints)
    with pytest.raises(FingerprintMismatchError):
        open_session(tmp_path / "s", other, other_bundle, config())


def test_manual_focus_pin_expand_collapse(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        assert mc.wc.levels[0] > 0  # the far past starts as a gist
        mc.focus.pin(0, 4)
        assert all(mc.wc.levels[mc.wc.entry_at(p)] == 0 for p in range(4))
        mc.wc.check_invariants()
        list(mc.generate(max_new_tokens=8))
        assert all(mc.wc.levels[mc.wc.entry_at(p)] == 0 for p in range(4))  # pinned stays raw
        with pytest.raises(IllegalEditError):
            mc.focus.expand(0, 5)
        with pytest.raises(IllegalEditError):
            mc.focus.collapse(1, 10**6)


def test_bad_input(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with pytest.raises(BudgetError, match="protected recent window"):
        config(W_max=8, protected_recent=12)
    with pytest.raises(InvalidInputError, match="collapse_ahead"):
        config(collapse_ahead=40)  # more than W_max - protected_recent = 36
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        open_session(tmp_path / "file", base, bundle, config())
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        with pytest.raises(InvalidInputError, match="empty"):
            mc.ingest("")
        with pytest.raises(InvalidInputError, match="bytes"):
            mc.ingest(b"abc")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="binary"):
            mc.ingest("a\x00b")
        with pytest.raises(InvalidInputError, match="history is empty"):
            list(mc.generate(max_new_tokens=2))
        # A prompt longer than W_max goes into the tree like everything else.
        list(mc.generate(TEXT, max_new_tokens=2))
        assert mc.tree.num_tokens > mc.config.W_max
        mc.wc.check_invariants()
    with pytest.raises(InvalidInputError, match="closed"):
        mc.ingest("more")


def test_a_retrained_key_head_rekeys_the_tree_on_open(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.models.bundle import load_bundle

    base, bundle_dir = models
    bundle = load_bundle(bundle_dir)
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        old_keys = mc.tree.keys(1, 0, mc.tree.count(1)).copy()
        gists = mc.tree.gists(1, 0, mc.tree.count(1)).copy()
    with torch.no_grad():
        bundle.get("gistnet").key_head.weight.add_(0.5)
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        new_keys = mc.tree.keys(1, 0, mc.tree.count(1))
        assert new_keys.shape == old_keys.shape
        assert not np.allclose(new_keys, old_keys)  # recomputed with the new head
        np.testing.assert_array_equal(mc.tree.gists(1, 0, mc.tree.count(1)), gists)  # gists kept


def test_a_lora_bundle_is_read_through_its_adapters(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.models.lora import LoraAdapter, LoraSettings

    base, bundle = models
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    lora = LoraAdapter(base, LoraSettings(r=2, alpha=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for param in lora.lora_parameters():
            param.normal_(0.0, 0.5)  # B starts at zero: move it so the adapters change outputs
    plain = load_bundle(bundle, fingerprints=base.fingerprints)
    save_bundle(
        tmp_path / "lora-bundle", {**plain.modules, "lora": lora}, fingerprints=base.fingerprints
    )
    lora.detach()
    with_lora = load_bundle(tmp_path / "lora-bundle", fingerprints=base.fingerprints)
    assert with_lora.lora is not None

    def logits(name, **kw):  # type: ignore[no-untyped-def]
        with open_session(tmp_path / name, base, with_lora, config(**kw)) as mc:
            mc.ingest(TEXT)
            attached = hasattr(base.model, "peft_config")
            out = base.forward(
                mc.base.embed(torch.tensor(mc.tree.tokens(0, 8).astype(np.int64))[None]),
                torch.arange(8)[None],
                use_cache=False,
            ).logits
        return attached, out

    attached, lora_out = logits("with")
    assert attached
    # Closed: the adapters are gone and the base is bit-identical.
    assert not hasattr(base.model, "peft_config")
    after = base.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    attached, plain_out = logits("without", use_lora=False)
    assert not attached
    assert not torch.allclose(lora_out, plain_out)
    # Two sessions cannot stack adapters on one base.
    with (
        open_session(tmp_path / "a", base, with_lora, config()),
        pytest.raises(InvalidInputError, match="already carries LoRA"),
    ):
        open_session(tmp_path / "b", base, with_lora, config())
    assert not (tmp_path / "b").exists()  # refused before anything was created
    assert not hasattr(base.model, "peft_config")


def test_a_postgres_tree_keeps_metadata_and_lexical_index_there(
    models, tmp_path: Path, postgres_url: str
) -> None:  # type: ignore[no-untyped-def]
    from megacontext.store.lexical import PostgresLexicalIndex

    base, bundle = models
    path = tmp_path / "s"
    with open_session(path, base, bundle, config(), metadata_url=postgres_url) as mc:
        mc.ingest(TEXT, source="file://notes.txt")
        assert isinstance(mc.lexical, PostgresLexicalIndex)
        blocks = mc.tree.count(1)
        assert mc.lexical.num_blocks == blocks > 0
        scores = mc.lexical.block_scores("quick brown fox")
        assert scores and max(scores) < blocks
        db = mc._stores[0].metadata()
        assert db.dialect == "postgresql"
        assert [s.uri for s in db.list_sources() if s.uri == "file://notes.txt"]
        db.close()
        list(mc.generate("The fox", max_new_tokens=2))
    assert not (path / "lexical.sqlite").exists()
    with open_session(path, base, bundle, config()) as again:  # the tree remembers its database
        assert isinstance(again.lexical, PostgresLexicalIndex)
        assert again.lexical.num_blocks == again.tree.count(1) >= blocks
    with pytest.raises(InvalidInputError, match="keeps its metadata in postgresql"):
        open_session(path, base, bundle, config(), metadata_url="sqlite:///elsewhere.sqlite")
    with open_session(path, base, bundle, config(), metadata_url=postgres_url):
        pass  # the same URL again is fine, and the refused open left no lock behind


def test_a_reopened_session_needs_no_repeated_settings(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    path = tmp_path / "s"
    with open_session(path, base, bundle, config(W_max=40, query_tokens=6)) as mc:
        mc.ingest(TEXT)
    recorded = json.loads((path / "session.json").read_text())
    assert recorded["base"] == base.source and recorded["focus"] == str(bundle)
    assert recorded["config"]["W_max"] == 40
    with open_session(path) as again:  # base, focus and settings from session.json
        assert again.config.W_max == 40 and again.config.query_tokens == 6
        assert again.base.fingerprint == base.fingerprint
        assert again.tree.num_tokens > 0
    with open_session(path, config=config(W_max=44)) as wider:  # an explicit setting wins
        assert wider.config.W_max == 44
    assert json.loads((path / "session.json").read_text())["config"]["W_max"] == 40
    (path / "session.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a MegaContext session record"):
        open_session(path)


def test_ask_leaves_the_history_alone_unless_remembered(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config()) as mc:
        mc.ingest(TEXT)
        tokens = mc.tree.tokens(0, mc.tree.num_tokens).copy()
        answer = mc.ask("What did the fox do?", max_new_tokens=5)
        assert len(answer.ids) <= 5 and set(answer.seconds) == {"focus", "decode"}
        np.testing.assert_array_equal(mc.tree.tokens(0, mc.tree.num_tokens), tokens)
        assert mc.query_ids().tolist() != base.encode("What did the fox do?", add_bos=False)
        remembered = mc.ask("And then?", max_new_tokens=3, remember=True)
        added = mc.tree.tokens(len(tokens), mc.tree.num_tokens).tolist()
        asked = mc.prompt.question_text("And then?") + remembered.text
        assert base.decode(added) == base.decode(base.encode(asked, add_bos=False))
        with pytest.raises(InvalidInputError, match="question is empty"):
            mc.ask("  ")


def test_focus_for_an_explicit_query_and_reset(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, bundle = models
    with open_session(tmp_path / "s", base, bundle, config(focus_steps=3)) as mc:
        mc.ingest(TEXT)
        n = mc.tree.num_tokens
        query = np.asarray(base.encode(" lazy dog", add_bos=False))
        steps = mc.focus_for(query)
        assert 0 <= steps <= 3 and mc.state.stats.steps <= 3
        np.testing.assert_array_equal(mc.query_ids(), query)
        assert mc.tree.num_tokens == n  # the query is not history
        mc.reset_focus()
        assert mc.state.stats.steps == 0
        assembled = mc.wc
        assert assembled.size <= mc.config.W_max
        mc.resize(64)
        assert mc.wc.W_max == 64 and mc.config.protected_recent == 12  # set explicitly: kept
        mc.wc.check_invariants()


def test_an_in_memory_session_is_the_same_loop(models) -> None:  # type: ignore[no-untyped-def]
    from megacontext.models.bundle import load_bundle
    from megacontext.runtime import Session

    base, bundle_dir = models
    mc = Session.in_memory(base, load_bundle(bundle_dir), config())
    mc.ingest(TEXT)
    assert mc.path is None and mc.trace_path is None
    pieces = list(mc.generate(" and", max_new_tokens=4))
    assert pieces and mc.tree.num_tokens > 0
    mc.wc.check_invariants()
    with pytest.raises(InvalidInputError, match="no provenance"):
        mc.ingest("more", source="file://x")
