"""GistNet training on a tiny random-init Llama: KL falls, the base stays frozen, bundles load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.errors import FingerprintMismatchError, InvalidInputError
from megacontext.models import load_base
from megacontext.models.bundle import load_bundle
from megacontext.models.lora import LoraAdapter, LoraSettings
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.train.gist import (
    GistTrainConfig,
    WindowSampler,
    _use_bf16,
    block_sources,
    contrast_loss,
    evaluate_gists,
    lod2_student,
    make_gistnet,
    reconstruction_loss,
    reconstruction_nll,
    save_gist_run,
    spread_loss,
    start_from_bundle,
    train_gistnet,
    window_length,
)

K = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = make_tiny_model_dir("default", tmp_path_factory.mktemp("tiny") / "llama", seed=0)
    return load_base(path)


def stream(seed: int, n: int = 20_000) -> np.ndarray:
    """Text-like tokens: phrases of 8 ids drawn from a small set, so context is predictive."""
    rng = np.random.default_rng(seed)
    phrases = rng.integers(5, 300, size=(40, 8))
    return phrases[rng.integers(0, 40, size=n // 8)].reshape(-1)


def config(**kw: object) -> GistTrainConfig:
    options: dict[str, object] = {
        "prefix_blocks": 6,
        "lead_tokens": 8,
        "horizon": 16,
        "steps": 60,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 5,
        "eval_interval": 0,
        "final_eval_windows": 16,
        "lod2_probability": 0.3,
        "spread_weight": 0.1,
        "gistnet": {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8},
    }
    options.update(kw)
    return GistTrainConfig(**options)  # type: ignore[arg-type]


def train_quietly(base, cfg: GistTrainConfig):  # type: ignore[no-untyped-def]
    """A seeded run on ``stream(1)``, evaluated on the LOD1 held-out windows, without output."""
    torch.manual_seed(0)
    return train_gistnet(
        base,
        WindowSampler({"text": stream(1)}),
        {1: val(cfg)[1]},
        cfg,
        gistnet=make_gistnet(base, cfg, K=K),
        progress=False,
        log=lambda _m: None,
    )


def val(cfg: GistTrainConfig) -> dict[int, np.ndarray]:
    sampler = WindowSampler({"text": stream(99)}, seed=5)
    return {lvl: sampler.sample(0, 16, window_length(cfg, K, lvl), 1.0) for lvl in (1, 2)}


def test_training_lowers_kl_and_keeps_the_base_frozen(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = config()
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    torch.manual_seed(0)
    gistnet = make_gistnet(base, cfg, K=K)
    result = train_gistnet(
        base,
        WindowSampler({"text": stream(1), "stdlib": stream(2)}),
        val(cfg),
        cfg,
        gistnet=gistnet,
        progress=False,
        log=lambda _m: None,
    )
    kl = [h["kl"] for h in result.history if h["level"] == 1]
    assert np.mean(kl[-8:]) < 0.7 * np.mean(kl[:8])
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, before[key]), f"base weight {key} changed (D1)"
    for report in result.reports.values():
        assert np.isfinite([report.nll_full, report.nll_drop, report.nll_gist]).all()
        low, high = report.gap_closure_ci
        assert low <= report.gap_closure <= high
        assert report.delta_nll == pytest.approx(report.nll_gist - report.nll_full)
    out = save_gist_run(result, base, cfg, tmp_path / "run")
    assert (out / "gistnet_training.png").stat().st_size > 0
    bundle = load_bundle(out / "bundle", fingerprints=base.fingerprints)
    x = torch.randn(2, K, base.d_model)
    torch.testing.assert_close(bundle.get("gistnet")(x, 1)[0], result.gistnet(x, 1)[0])
    with pytest.raises(FingerprintMismatchError):
        load_bundle(out / "bundle", fingerprints={**base.fingerprints, "base": "another"})


def test_evaluation_with_untrained_gists_is_honest(base) -> None:  # type: ignore[no-untyped-def]
    cfg = config()
    gistnet = make_gistnet(base, cfg, K=K)
    windows = val(cfg)[1]
    report = evaluate_gists(base, gistnet, windows, cfg, level=1)
    assert report.windows == 16
    # NLL_full is the plain language-model loss of the scored tokens, computed independently here.
    ids = torch.as_tensor(windows)
    with torch.no_grad():
        logits = base.model(input_ids=ids).logits[:, -cfg.horizon - 1 : -1]
    direct = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), ids[:, -cfg.horizon :].flatten()
    )
    assert report.nll_full == pytest.approx(float(direct), rel=1e-4)
    assert report.nll_drop != pytest.approx(report.nll_full)


@pytest.mark.parametrize("teacher", ["gists", "tokens"])
def test_level2_reference_is_what_the_teacher_read(base, teacher: str) -> None:  # type: ignore[no-untyped-def]
    cfg = config(lod2_teacher=teacher)
    gistnet = make_gistnet(base, cfg, K=K)
    windows = val(cfg)[2][:8]
    report = evaluate_gists(base, gistnet, windows, cfg, level=2)
    ids = torch.as_tensor(windows)
    with torch.no_grad():
        logits = base.model(input_ids=ids).logits[:, -cfg.horizon - 1 : -1]
        tokens_nll = float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), ids[:, -cfg.horizon :].flatten()
            )
        )
        # The hierarchical reference: the K² prefix tokens read as their K LOD1 gists.
        embeds = base.embed(ids)
        lod1, _ = gistnet(embeds[:, : K * K].reshape(-1, K, base.d_model), 1)
        seq = torch.cat([lod1.reshape(len(ids), K, -1), embeds[:, K * K :]], dim=1)
        positions = torch.arange(seq.shape[1])[None].expand(len(ids), -1)
        hier_logits = base.forward(seq, positions, use_cache=False).logits[:, -cfg.horizon - 1 : -1]
        hier_nll = float(
            torch.nn.functional.cross_entropy(
                hier_logits.flatten(0, 1).float(), ids[:, -cfg.horizon :].flatten()
            )
        )
    assert report.nll_full_tokens == pytest.approx(tokens_nll, rel=1e-4)
    assert report.reference == teacher
    expected = hier_nll if teacher == "gists" else tokens_nll
    assert report.nll_full == pytest.approx(expected, rel=1e-4)
    assert report.delta_nll == pytest.approx(report.nll_gist - report.nll_full)


def test_gist_norm_matches_base_embeddings(base) -> None:  # type: ignore[no-untyped-def]
    gistnet = make_gistnet(base, config(), K=K)
    gist, _ = gistnet(torch.randn(3, K, base.d_model), 1)
    rows = base.embed(torch.arange(base.vocab_size)).norm(dim=-1)
    assert float(gist.norm(dim=-1).mean()) == pytest.approx(float(rows.median()), rel=1e-4)


def test_spread_loss() -> None:
    same = torch.ones(1, 4, 6)
    assert float(spread_loss(same)) == pytest.approx(1.0)
    assert float(spread_loss(torch.eye(4)[None])) == pytest.approx(0.0)


def test_bad_configs_and_data() -> None:
    with pytest.raises(InvalidInputError, match="min_gist_fraction"):
        GistTrainConfig(min_gist_fraction=0)
    with pytest.raises(InvalidInputError, match="lead_tokens"):
        GistTrainConfig(lead_tokens=0)
    with pytest.raises(InvalidInputError, match="lod2_teacher"):
        GistTrainConfig(lod2_teacher="nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no token streams"):
        WindowSampler({"text": np.zeros(0)})
    with pytest.raises(InvalidInputError, match="shorter than a window"):
        WindowSampler({"text": np.arange(10)}).sample(0, 2, 50, 0.5)


def test_the_content_free_controls_tell_content_from_a_placeholder(base) -> None:  # type: ignore[no-untyped-def]
    """A GistNet whose gists differ per span is told apart from its shuffled and constant
    controls; one that writes the same vector for every span closes exactly what they close,
    and its content gap closure is 0."""
    cfg = config()
    windows = val(cfg)[1]
    gistnet = make_gistnet(base, cfg, K=K)
    varied = evaluate_gists(base, gistnet, windows, cfg, level=1)
    assert varied.nll_shuffled != pytest.approx(varied.nll_gist, abs=1e-6)
    assert varied.nll_constant != pytest.approx(varied.nll_gist, abs=1e-6)
    assert varied.own_minus_shuffled == pytest.approx(
        varied.gap_closure - varied.shuffled_gap_closure
    )
    lo, hi = varied.content_gap_closure_ci
    assert lo <= varied.content_gap_closure <= hi

    placeholder = torch.randn(base.d_model, generator=torch.Generator().manual_seed(3))
    real_forward = gistnet.forward

    def constant(inputs: torch.Tensor, level: int | torch.Tensor):  # type: ignore[no-untyped-def]
        _, keys = real_forward(inputs, level)
        return placeholder.expand(inputs.shape[0], -1).clone(), keys

    gistnet.forward = constant  # type: ignore[method-assign]
    for level in (1, 2):
        flat = evaluate_gists(base, gistnet, val(cfg)[level][:8], cfg, level=level)
        assert flat.nll_shuffled == pytest.approx(flat.nll_gist, abs=1e-5)
        assert flat.nll_constant == pytest.approx(flat.nll_gist, abs=1e-5)
        assert flat.content_gap_closure == pytest.approx(0.0, abs=1e-4)
        assert flat.own_minus_shuffled == pytest.approx(0.0, abs=1e-4)


def test_the_constant_control_is_the_better_of_the_mean_gist_and_its_rescaling(base) -> None:  # type: ignore[no-untyped-def]
    """Gists made of a shared placeholder and per-span content average to a short vector; the
    constant control reads each candidate and keeps the lower NLL, so content is measured
    against the stronger placeholder."""
    from megacontext.train.gist import block_sources

    cfg = config()
    windows = val(cfg)[1][:8]
    gistnet = make_gistnet(base, cfg, K=K)
    placeholder = torch.randn(base.d_model, generator=torch.Generator().manual_seed(3))
    norm = float(gistnet.config.target_norm)
    real_forward = gistnet.forward

    def anchored(inputs: torch.Tensor, level: int | torch.Tensor):  # type: ignore[no-untyped-def]
        _, keys = real_forward(inputs, level)
        content = torch.nn.functional.normalize(inputs.mean(dim=1), dim=-1)
        gist = torch.nn.functional.normalize(placeholder, dim=-1) + 2 * content
        return norm * torch.nn.functional.normalize(gist, dim=-1), keys

    gistnet.forward = anchored  # type: ignore[method-assign]
    report = evaluate_gists(base, gistnet, windows, cfg, level=1)
    with torch.no_grad():
        ids = torch.as_tensor(windows)
        sources = block_sources(base, gistnet, ids, np.arange(cfg.prefix_blocks))
        gists = gistnet(sources.reshape(-1, K, base.d_model), 1)[0]
    mean = gists.mean(dim=0)
    assert float(mean.norm()) < 0.9 * norm  # the average of varied gists is short
    candidates = {"mean": mean, "mean_rescaled": mean * gists.norm(dim=-1).mean() / mean.norm()}
    read_as = {}
    for kind, vector in candidates.items():
        gistnet.forward = lambda x, lvl, v=vector: (v.expand(x.shape[0], -1), None)  # type: ignore[method-assign]
        read_as[kind] = evaluate_gists(base, gistnet, windows, cfg, level=1).nll_gist
    assert report.constant_kind == min(read_as, key=read_as.__getitem__)
    assert report.nll_constant == pytest.approx(min(read_as.values()), abs=1e-5)


def test_reconstruction_loss_is_the_bases_nll_of_each_gisted_block(base) -> None:  # type: ignore[no-untyped-def]
    """The base reads ``[gist][block tokens]`` and is scored on the block's own tokens; only the
    gisted blocks count, in order, and the gradient reaches the gists."""
    cfg = config()
    ids = torch.as_tensor(val(cfg)[1][:2])
    gisted = np.array([False, True, False, False, True, False])
    gists = torch.randn(2, 2, base.d_model, requires_grad=True)
    loss = reconstruction_loss(base, gists, ids, K, gisted)
    nlls = []
    for row in range(2):
        for slot, block in enumerate((1, 4)):
            tokens = ids[row, block * K : (block + 1) * K]
            seq = torch.cat([gists[row, slot][None], base.embed(tokens[:-1])])[None]
            logits = base.forward(seq, torch.arange(K), use_cache=False).logits[0]
            nlls.append(torch.nn.functional.cross_entropy(logits, tokens))
    torch.testing.assert_close(loss, torch.stack(nlls).mean())
    loss.backward()
    assert gists.grad is not None and gists.grad.abs().sum() > 0


def test_the_contrast_only_credits_a_gist_that_beats_another_windows(base) -> None:  # type: ignore[no-untyped-def]
    """Identical gists in every window earn nothing (the loss is the whole margin); otherwise
    the hinge is on NLL(block | next window's gist) − NLL(block | own gist), with gradient."""
    cfg = config()
    ids = torch.as_tensor(val(cfg)[1][:3])
    gisted = np.array([True, False, True, False, False, False])
    same = torch.randn(1, 2, base.d_model).expand(3, -1, -1).clone().requires_grad_(True)
    loss, own = contrast_loss(base, same, ids, K, gisted, margin=0.75)
    torch.testing.assert_close(loss, torch.tensor(0.75))
    assert own.shape == (3, 2)
    gists = torch.randn(3, 2, base.d_model, requires_grad=True)
    loss, own = contrast_loss(base, gists, ids, K, gisted, margin=0.75)
    other = reconstruction_nll(base, gists.roll(1, dims=0), ids, K, gisted)
    torch.testing.assert_close(loss, torch.relu(0.75 - (other - own)).mean())
    loss.backward()
    assert gists.grad is not None and gists.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="batch_size >= 2"):
        config(contrast_weight=1.0, batch_size=1)


def test_reconstruction_and_the_anchored_head_train_and_round_trip(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With recon_weight the reconstruction NLL falls (the gists learn their spans); an anchored
    GistNet trained under bf16 autocast saves and loads with its running mean."""
    net = {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8, "gist_head": "anchored"}
    cfg = config(
        recon_weight=1.0,
        contrast_weight=0.5,
        autocast=True,
        lod2_probability=0.0,
        gistnet=net,
        steps=80,
    )
    result = train_quietly(base, cfg)
    recon = [h["recon"] for h in result.history]
    assert all("contrast" in h for h in result.history)
    assert len(recon) == 80 and np.mean(recon[-10:]) < np.mean(recon[:10]) - 0.1
    assert float(result.gistnet.content_updates[1]) == 80
    out = save_gist_run(result, base, cfg, tmp_path / "run")
    loaded = load_bundle(out / "bundle", fingerprints=base.fingerprints).get("gistnet")
    assert loaded.config.gist_head == "anchored"
    x = torch.randn(3, K, base.d_model)
    torch.testing.assert_close(loaded(x, 1)[0], result.gistnet.eval()(x, 1)[0])


def test_a_run_can_start_from_a_bundles_gistnet(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``init_from``: a fresh GistNet takes a trained bundle's weights (buffers included); a
    GistNet of another shape is refused with what differs."""
    net = {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8, "gist_head": "anchored"}
    cfg = config(steps=6, lod2_probability=0.0, gistnet=net)
    trained = train_quietly(base, cfg)
    save_gist_run(trained, base, cfg, tmp_path / "run", started_from="elsewhere")
    bundle = tmp_path / "run" / "bundle"
    assert load_bundle(bundle).metrics["started_from"] == "elsewhere"
    fresh = make_gistnet(base, cfg, K=K)
    x = torch.randn(2, K, base.d_model)
    before = fresh.eval()(x, 1)[0]
    start_from_bundle(fresh, bundle, base)
    torch.testing.assert_close(fresh.eval()(x, 1)[0], trained.gistnet.eval()(x, 1)[0])
    assert not torch.allclose(before, fresh(x, 1)[0])
    wider = make_gistnet(base, config(gistnet={**net, "width": 64}), K=K)
    with pytest.raises(InvalidInputError, match="width 32 there, 64 here"):
        start_from_bundle(wider, bundle, base)


def test_autocast_auto_times_both_precisions_and_bad_values_are_refused(base) -> None:  # type: ignore[no-untyped-def]
    messages: list[str] = []
    chosen = _use_bf16(base, config(autocast="auto"), messages.append)
    assert isinstance(chosen, bool) and len(messages) == 1
    assert "fp32" in messages[0] and "bf16" in messages[0]
    assert messages[0].startswith(f"bf16 autocast {'on' if chosen else 'off'}")
    assert _use_bf16(base, config(autocast=True), messages.append) is True
    assert _use_bf16(base, config(autocast=False), messages.append) is False
    assert len(messages) == 1  # a forced setting is not timed
    with pytest.raises(InvalidInputError, match="autocast must be true, false or auto"):
        config(autocast="yes")


class _Interrupted(Exception):
    pass


def test_a_stopped_run_resumes_from_its_checkpoint_unchanged(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = config(steps=12, checkpoint_interval=3, eval_interval=5, eval_windows=4)
    sampler = WindowSampler({"text": stream(1)})

    def run(checkpoint: Path | None, log=lambda _m: None):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        gistnet = make_gistnet(base, cfg, K=K)
        return train_gistnet(
            base, sampler, val(cfg), cfg, gistnet, log, progress=False, checkpoint=checkpoint
        )

    straight = run(None)
    ckpt = tmp_path / "checkpoint.pt"

    def stop_at_first_eval(message: str) -> None:
        if message.startswith("{"):
            raise _Interrupted

    with pytest.raises(_Interrupted):
        run(ckpt, stop_at_first_eval)  # killed at step 5: the step-3 checkpoint survives
    messages: list[str] = []
    resumed = run(ckpt, messages.append)
    assert any("resuming" in m and "step 3" in m for m in messages)
    assert [h["step"] for h in resumed.history] == list(range(12))
    for (name, a), b in zip(
        straight.gistnet.state_dict().items(), resumed.gistnet.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    # A checkpoint of other settings is refused, not silently continued.
    other = config(steps=12, checkpoint_interval=3, eval_interval=5, eval_windows=4, lr=1e-4)
    with pytest.raises(InvalidInputError, match="lr"):
        fresh = make_gistnet(base, other, K=K)
        train_gistnet(base, sampler, {}, other, fresh, progress=False, checkpoint=ckpt)


def test_a_finished_run_continues_when_its_budget_grows(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The run's last step is checkpointed even off the interval, and a longer budget (steps or
    time) continues from it instead of being refused as another run."""
    sampler = WindowSampler({"text": stream(1)})
    ckpt = tmp_path / "checkpoint.pt"

    def run(cfg: GistTrainConfig, log=lambda _m: None):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        gistnet = make_gistnet(base, cfg, K=K)
        return train_gistnet(base, sampler, {}, cfg, gistnet, log, progress=False, checkpoint=ckpt)

    first = run(config(steps=7, checkpoint_interval=3))
    assert [h["step"] for h in first.history] == list(range(7))
    messages: list[str] = []
    longer = run(config(steps=10, checkpoint_interval=3, time_budget_s=3600), messages.append)
    assert any("resuming" in m and "step 7" in m for m in messages)
    assert any("steps 7 -> 10" in m for m in messages)
    assert [h["step"] for h in longer.history] == list(range(10))
    assert longer.history[:7] == first.history
    moved = [
        name
        for (name, a), b in zip(
            first.gistnet.state_dict().items(), longer.gistnet.state_dict().values(), strict=True
        )
        if not torch.equal(a, b)
    ]
    assert moved  # the three new steps trained the net further
    with pytest.raises(InvalidInputError, match=r"seed differ.*may change"):
        run(config(steps=12, checkpoint_interval=3, seed=5))


def test_lora_trains_with_gistnet_resumes_and_ships_in_the_bundle(base, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``gist.lora``: the adapters train with GistNet (the base's own weights never change),
    a stopped run resumes them unchanged from the checkpoint, and the bundle carries them."""
    cfg = config(
        steps=12,
        checkpoint_interval=3,
        eval_interval=5,
        eval_windows=4,
        lod2_probability=0.0,
        lora={"r": 2, "alpha": 4},
    )
    assert cfg.lora is not None
    plain = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    sampler = WindowSampler({"text": stream(1)})

    def run(checkpoint: Path | None, log=lambda _m: None, out: Path | None = None):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        gistnet = make_gistnet(base, cfg, K=K)
        lora = LoraAdapter(base, LoraSettings.from_mapping(cfg.lora))
        try:
            result = train_gistnet(
                base,
                sampler,
                {1: val(cfg)[1]},
                cfg,
                gistnet,
                log,
                progress=False,
                checkpoint=checkpoint,
                lora=lora,
            )
            if out is not None:
                save_gist_run(result, base, cfg, out, lora)
            return result, lora.state_dict()
        finally:
            lora.detach()

    straight, straight_lora = run(None)
    assert any(float(w.abs().max()) > 0 for n, w in straight_lora.items() if "lora_B" in n)
    ckpt = tmp_path / "checkpoint.pt"

    def stop_at_first_eval(message: str) -> None:
        if message.startswith("{"):
            raise _Interrupted

    with pytest.raises(_Interrupted):
        run(ckpt, stop_at_first_eval)
    resumed, resumed_lora = run(ckpt, out=tmp_path / "run")
    for (name, a), b in zip(
        straight.gistnet.state_dict().items(), resumed.gistnet.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    assert resumed_lora.keys() == straight_lora.keys()
    for name, weight in straight_lora.items():
        torch.testing.assert_close(resumed_lora[name], weight, msg=name)
    for name, weight in base.model.named_parameters():  # detached: the plain base, bit for bit
        assert torch.equal(weight, plain[name]), name
    bundle = load_bundle(tmp_path / "run" / "bundle", fingerprints=base.fingerprints)
    assert bundle.lora is not None and bundle.lora[0]["r"] == 2
    attached = bundle.attach_lora(base)
    try:
        for name, weight in attached.state_dict().items():
            torch.testing.assert_close(weight, straight_lora[name], msg=name)
    finally:
        attached.detach()
    # init_from: the bundle's GistNet continues only with its own adapters, which it loads.
    bundle_dir = tmp_path / "run" / "bundle"
    fresh = make_gistnet(base, cfg, K=K)
    with pytest.raises(InvalidInputError, match=r"trained with LoRA .*r: 2, alpha: 4"):
        start_from_bundle(fresh, bundle_dir, base)
    for settings, loads in (({"r": 4, "alpha": 4}, False), (cfg.lora, True)):
        adapter = LoraAdapter(base, LoraSettings.from_mapping(settings))
        try:
            if not loads:
                with pytest.raises(InvalidInputError, match=r"set gist\.lora="):
                    start_from_bundle(fresh, bundle_dir, base, adapter)
                continue
            assert start_from_bundle(fresh, bundle_dir, base, adapter)
            for name, weight in adapter.state_dict().items():
                torch.testing.assert_close(weight, straight_lora[name], msg=name)
        finally:
            adapter.detach()
    with pytest.raises(InvalidInputError, match="unknown LoRA setting"):
        LoraSettings.from_mapping({"rank": 4})


@pytest.mark.parametrize(("inputs", "layer"), [("embeddings", 0), ("hidden", 0), ("hidden", 1)])
def test_training_gists_are_the_gists_ingest_writes(base, inputs: str, layer: int) -> None:  # type: ignore[no-untyped-def]
    """``gistnet.inputs``: training reads each prefix block as ingest's gister does (token
    embeddings, or the base's hidden states of the block read alone), so what is measured is
    what runs."""
    from megacontext.models.context import GistNetGister, level1_inputs
    from megacontext.train.gist import block_sources, lod1_student

    net = {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8, "inputs": inputs}
    cfg = config(gistnet={**net, "input_layer": layer}, lod2_probability=0.0)
    gistnet = make_gistnet(base, cfg, K=K).eval()
    ids = torch.as_tensor(val(cfg)[1][:3])
    prefix = cfg.prefix_blocks * K
    every = np.ones(cfg.prefix_blocks, bool)
    with torch.no_grad():
        sources = block_sources(base, gistnet, ids, np.arange(cfg.prefix_blocks))
        _, trained = lod1_student(gistnet, base.embed(ids), sources, cfg.prefix_blocks, every)
    written = GistNetGister(gistnet, base)(1, ids[:, :prefix].reshape(-1, K).numpy())
    np.testing.assert_allclose(
        trained.reshape(-1, base.d_model).numpy(), written.gists, rtol=1e-5, atol=1e-5
    )
    block = ids[:1, :K]
    embedded = base.embed(block)
    if inputs == "embeddings":
        torch.testing.assert_close(level1_inputs(gistnet, base, block), embedded)
    else:  # the base's own reading of the block: not its embeddings, and context-dependent
        hidden = level1_inputs(gistnet, base, block)
        assert hidden.shape == embedded.shape and not torch.allclose(hidden, embedded)
        if layer:  # the residual stream after that layer, at unit RMS per position
            rms = hidden.pow(2).mean(dim=-1).sqrt()
            torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)
        changed = block.clone()
        changed[0, 0] = (changed[0, 0] + 1) % base.vocab_size
        after = level1_inputs(gistnet, base, changed)
        assert not torch.allclose(after[0, -1], hidden[0, -1])  # the last token saw the first


def test_hidden_inputs_train(base) -> None:  # type: ignore[no-untyped-def]
    net = {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8, "inputs": "hidden"}
    cfg = config(gistnet=net, lod2_probability=0.3, steps=30, recon_weight=1.0)
    result = train_quietly(base, cfg)
    kl = [h["kl"] for h in result.history]
    assert {h["level"] for h in result.history} == {1, 2}
    assert np.mean(kl[-8:]) < np.mean(kl[:8])


def test_several_gists_per_block_train_and_the_tree_stores_what_training_scores(base) -> None:  # type: ignore[no-untyped-def]
    """G gists per block: the reconstruction reads ``[G gists][block tokens]``, the student
    splices G vectors per gisted block, the controls keep one constant per slot (a per-slot
    constant GistNet has content gap closure 0), the tree stores the trained net's G vectors
    per node, the ones training scores, at LOD1 and at LOD2, and LOD2 trains."""
    from megacontext.core import MegaContextTree, MemoryBackend
    from megacontext.models.context import GistNetGister, level1_inputs

    net = {"width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8, "pooling": "query"}
    cfg = config(
        gistnet={**net, "gists_per_block": 2, "gist_head": "anchored"},
        lod2_probability=0.0,
        recon_weight=1.0,
        contrast_weight=0.5,
        steps=12,
    )
    ids = torch.as_tensor(val(cfg)[1][:2])
    gisted = np.array([False, True, False, False, True, False])
    gists = torch.randn(2, 4, base.d_model)  # blocks 1 and 4, two gists each
    nlls = []
    for row in range(2):
        for slot, block in enumerate((1, 4)):
            tokens = ids[row, block * K : (block + 1) * K]
            seq = torch.cat([gists[row, 2 * slot : 2 * slot + 2], base.embed(tokens[:-1])])[None]
            logits = base.forward(seq, torch.arange(K + 1), use_cache=False).logits[0, 1:]
            nlls.append(torch.nn.functional.cross_entropy(logits, tokens))
    torch.testing.assert_close(
        reconstruction_nll(base, gists, ids, K, gisted), torch.stack(nlls).reshape(2, 2)
    )
    torch.manual_seed(0)
    gistnet = make_gistnet(base, cfg, K=K)
    result = train_gistnet(
        base, WindowSampler({"text": stream(1)}), {1: val(cfg)[1]}, cfg, gistnet,
        progress=False, log=lambda _m: None,
    )  # fmt: skip
    assert len(result.history) == 12 and np.isfinite(result.reports[1].content_gap_closure)
    gistnet.eval()
    tree = MegaContextTree(
        MemoryBackend(2 * base.d_model, np.float32), GistNetGister(gistnet, base), K=K
    )
    tokens = stream(2)[: 6 * K]
    tree.append(tokens)
    assert tree.gists_per_node == 2 and tree.gists(1, 0, 6).shape == (6, 2, base.d_model)
    with torch.no_grad():
        ids = torch.as_tensor(tokens.astype(np.int64)).view(6, K)
        want = gistnet(level1_inputs(gistnet, base, ids).float(), 1)[0]
    np.testing.assert_allclose(tree.gists(1, 0, 6), want.numpy(), rtol=1e-4, atol=1e-5)
    # LOD2 of such a node: training reads it as the tree's gister does (each child's G gists
    # read as their mean; G LOD2 gists, G positions of the student's context).
    node = stream(3)[: K * K]
    tree = MegaContextTree(
        MemoryBackend(2 * base.d_model, np.float32), GistNetGister(gistnet, base), K=K
    )
    tree.append(node)
    ids = torch.as_tensor(np.concatenate([node, stream(4)[:24]]).astype(np.int64))[None]
    with torch.no_grad():
        sources = block_sources(base, gistnet, ids, np.arange(K))
        student, teacher, lod1 = lod2_student(gistnet, base.embed(ids), sources)
    assert student.shape[1] == 2 + 24 and teacher.shape[1] == 2 * K + 24
    np.testing.assert_allclose(tree.gists(2, 0, 1)[0], student[0, :2].numpy(), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(tree.gists(1, 0, K).reshape(2 * K, -1), lod1[0].numpy(),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    lod2_cfg = config(gistnet=cfg.gistnet, lod2_probability=1.0, steps=6, recon_weight=1.0)
    trained = train_gistnet(
        base, WindowSampler({"text": stream(1)}), {2: val(lod2_cfg)[2][:8]}, lod2_cfg, gistnet,
        progress=False, log=lambda _m: None,
    )  # fmt: skip
    assert {h["level"] for h in trained.history} == {2}
    assert np.isfinite(trained.reports[2].gap_closure)
    assert np.isfinite(trained.reports[2].content_gap_closure)

    slot_constants = torch.randn(2, base.d_model, generator=torch.Generator().manual_seed(4))
    real_forward = gistnet.forward

    def per_slot_constant(inputs: torch.Tensor, level: int | torch.Tensor):  # type: ignore[no-untyped-def]
        _, keys = real_forward(inputs, level)
        return slot_constants.expand(inputs.shape[0], -1, -1).clone(), keys

    gistnet.forward = per_slot_constant  # type: ignore[method-assign]
    flat = evaluate_gists(base, gistnet, val(cfg)[1][:8], cfg, level=1)
    assert flat.nll_constant == pytest.approx(flat.nll_gist, abs=1e-5)
    assert flat.content_gap_closure == pytest.approx(0.0, abs=1e-4)
    assert flat.own_minus_shuffled == pytest.approx(0.0, abs=1e-4)
