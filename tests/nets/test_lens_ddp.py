"""LensNet and the key head trained in batches: one sample per step is the old per-sample loop,
and two processes under torch.distributed DDP (gloo, loopback) follow the single-process run
with the same global batch: the same loss per epoch, the same weights."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from typer.testing import CliRunner

from megacontext.cli import app
from megacontext.errors import InvalidInputError
from megacontext.models import load_base
from megacontext.models.bundle import save_bundle
from megacontext.models.gistnet import GistNet, GistNetConfig
from megacontext.models.lensnet import LensNet, LensNetConfig
from megacontext.train.distributed import launch
from megacontext.train.lens import (
    LensRunConfig,
    LensTrainConfig,
    label_scale,
    make_samples,
    ranking_loss,
    run_lens,
    train_key_head,
    train_lensnet,
)
from megacontext.train.lens.training import _pooled_node

TINY = {
    "W_max": 40,
    "protected_recent": 12,
    "query_tokens": 8,
    "history_tokens": (150, 260),
    "horizon": 8,
    "max_answer_tokens": 6,
    "perturb_edits": 2,
    "focus_steps": 1,
    "lensnet": {"width": 32, "n_heads": 2, "n_layers": 1},
}


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    base = tiny_world.base
    cfg = LensTrainConfig(**TINY, epochs=3, key_epochs=3)  # type: ignore[arg-type]
    stream = np.random.default_rng(0).integers(3, base.vocab_size, size=20_000)
    samples = make_samples(
        base,
        tiny_world.gistnet,
        stream,
        cfg,
        count=6,
        seed=1,
        special_ids=(0, 1, 2),
        progress=False,
    )
    # One sample without a legal entry: the old loop skipped it, so must the new one.
    samples[2] = dataclasses.replace(samples[2], labels=np.full_like(samples[2].labels, np.nan))
    return base, tiny_world.gistnet, cfg, samples


def per_sample_lensnet(base, samples, cfg):  # type: ignore[no-untyped-def]
    """The LensNet trainer as it was before batches: one optimizer step per sample."""
    torch.manual_seed(cfg.seed)
    lens = LensNet(LensNetConfig(d_model=base.d_model, **cfg.lensnet))
    opt = torch.optim.AdamW(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scale = label_scale(samples)
    prepared = [
        (s.scorer(base).inputs(s.wc, s.query), torch.as_tensor(s.labels, dtype=torch.float32))
        for s in samples
    ]
    losses, order, rng = [], list(range(len(prepared))), random.Random(cfg.seed)
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        total = 0.0
        lens.train()
        for i in order:
            inputs, labels = prepared[i]
            legal = torch.isfinite(labels)
            if not legal.any():
                continue
            scores = lens(*inputs)[0]
            y = labels[legal]
            loss = cfg.rank_weight * ranking_loss(scores[legal], y)
            loss = loss + cfg.regression_weight * F.mse_loss(scores[legal], torch.tanh(y / scale))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lens.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(order)))
    return lens, losses


def per_sample_key_head(base, gistnet, samples, cfg):  # type: ignore[no-untyped-def]
    """The key head's trainer as it was before batches: one optimizer step per sample."""
    head = gistnet.key_head
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.key_lr)
    examples = []
    for s in samples:
        gists = np.flatnonzero(s.wc.levels > 0)
        gains = s.expand_gain[gists]
        if len(gists) < 2 or not np.isfinite(gains).any() or np.nanmax(gains) <= 0:
            continue
        with torch.no_grad():
            levels, indices = s.wc.levels, s.wc.indices
            nodes = torch.stack(
                [_pooled_node(base, s, int(levels[p]), int(indices[p])) for p in gists]
            )
            block = base.embed(torch.as_tensor(s.query.ids[-gistnet.config.K :]))[None]
            query = gistnet.pooled(block.float(), 1)[0]
        examples.append((nodes, query, int(np.nanargmax(gains))))
    losses = []
    for _ in range(cfg.key_epochs):
        total = 0.0
        for nodes, query, target in examples:
            keys = F.normalize(head(nodes), dim=-1)
            q = F.normalize(head(query[None]), dim=-1)
            logits = (keys @ q.T).squeeze(-1) / cfg.key_temperature
            loss = F.cross_entropy(logits[None], torch.tensor([target]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(1, len(examples)))
    return losses


def test_one_sample_per_step_is_the_old_per_sample_loop(world) -> None:  # type: ignore[no-untyped-def]
    base, _, cfg, samples = world
    assert cfg.batch_size == 1  # the default
    lens, _, losses = train_lensnet(base, samples, cfg, progress=False)
    reference, reference_losses = per_sample_lensnet(base, samples, cfg)
    assert losses == reference_losses  # bit for bit: the default changed nothing
    assert losses[-1] < losses[0]
    for (name, p), q in zip(
        lens.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_key_head_one_sample_per_step_is_the_old_loop(world) -> None:  # type: ignore[no-untyped-def]
    base, gistnet, cfg, samples = world
    ours, theirs = copy.deepcopy(gistnet), copy.deepcopy(gistnet)
    losses = train_key_head(base, ours, samples, cfg, progress=False)
    assert losses == per_sample_key_head(base, theirs, samples, cfg)
    assert any(losses), "some sample should have a best gist to train the keys on"
    for (name, p), q in zip(
        ours.key_head.state_dict().items(), theirs.key_head.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_a_batch_is_one_step_on_its_mean_loss(world) -> None:  # type: ignore[no-untyped-def]
    """batch_size = every sample, one epoch: one optimizer step on the mean loss of the samples
    with legal entries (the skipped one counts in neither the step nor the mean)."""
    base, _, cfg, samples = world
    whole = dataclasses.replace(cfg, batch_size=len(samples), epochs=1)
    lens, scale, losses = train_lensnet(base, samples, whole, progress=False)
    torch.manual_seed(cfg.seed)
    reference = LensNet(LensNetConfig(d_model=base.d_model, **cfg.lensnet))
    opt = torch.optim.AdamW(reference.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    parts = []
    for s in samples:
        labels = torch.as_tensor(s.labels, dtype=torch.float32)
        legal = torch.isfinite(labels)
        if legal.any():
            scores = reference(*s.scorer(base).inputs(s.wc, s.query))[0][legal]
            y = labels[legal]
            parts.append(ranking_loss(scores, y) + F.mse_loss(scores, torch.tanh(y / scale)))
    opt.zero_grad()
    torch.stack(parts).mean().backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), cfg.grad_clip)
    opt.step()
    assert len(parts) == len(samples) - 1
    mean = sum(float(p.detach()) for p in parts) / len(samples)
    assert losses == pytest.approx([mean], rel=1e-6)
    for (name, p), q in zip(
        lens.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


# --------------------------------------------------------------------------- two processes

WORDS = ["the", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as", "on"]


def lens_run(tmp_path: Path, name: str, base_dir: Path) -> LensRunConfig:
    cfg = LensTrainConfig(**TINY, epochs=3, key_epochs=3, batch_size=3)  # type: ignore[arg-type]
    return LensRunConfig(
        base=str(base_dir),
        corpus_dir=str(tmp_path / "corpus"),
        threads=1,
        gist_bundle=str(tmp_path / "gist"),
        out_dir=str(tmp_path / name),
        # 7 samples in batches of 3: the processes' shares are 2 and 1, and in the last batch
        # (one sample) the second process has none and joins the reduction at weight 0.
        train_samples=7,
        val_samples=2,
        ablations=False,
        lens=cfg,
    )


def test_two_processes_follow_one_with_the_same_global_batch(tmp_path: Path, tiny_world) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    (tmp_path / "corpus").mkdir()
    for split, n in (("train", 4), ("val", 2)):
        with (tmp_path / "corpus" / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for i in range(n):
                text = " ".join(rng.choice(WORDS, size=900)) + "\n"
                out.write(json.dumps({"source": "gutenberg", "name": f"{split}{i}", "text": text}))
                out.write("\n")
    base = load_base(tiny_world.base_dir)
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=base.d_model, K=4, width=32, n_heads=2, key_dim=8))
    save_bundle(tmp_path / "gist", {"gistnet": gist}, fingerprints=base.fingerprints)
    one = lens_run(tmp_path, "one", tiny_world.base_dir)
    two = lens_run(tmp_path, "two", tiny_world.base_dir)
    run_lens(one, log=lambda _m: None)
    launch(2, run_lens, two)
    single = json.loads((Path(one.out_dir) / "history.json").read_text())
    ddp = json.loads((Path(two.out_dir) / "history.json").read_text())
    curve = single["lens_losses"]["all"]
    assert len(curve) == 3 and curve[-1] < curve[0]
    assert any(single["key_losses"]), "the key head should have had samples to train on"
    np.testing.assert_allclose(ddp["lens_losses"]["all"], curve, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ddp["key_losses"], single["key_losses"], rtol=1e-5, atol=1e-7)
    w1 = load_file(str(Path(one.out_dir) / "bundle" / "weights.safetensors"))
    w2 = load_file(str(Path(two.out_dir) / "bundle" / "weights.safetensors"))
    assert w1.keys() == w2.keys() and any(k.startswith("lensnet.") for k in w1)
    for key in w1:
        # Measured: at most 4e-7 apart (float sums in another order); a wrong weighting: 3e-3.
        np.testing.assert_allclose(w2[key], w1[key], rtol=1e-5, atol=5e-6, err_msg=key)


def test_cli_refuses_bad_process_counts() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "lens", "--nproc", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--nproc'" in result.output
    # Two processes need a global batch of at least two samples; refused before any labelling.
    result = runner.invoke(app, ["train", "lens", "--nproc", "2"])
    assert isinstance(result.exception, InvalidInputError)
    assert "lens.batch_size 1 is smaller than --nproc 2" in str(result.exception)
    with pytest.raises(InvalidInputError, match="batch_size"):
        LensTrainConfig(batch_size=0)
