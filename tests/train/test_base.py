"""From-scratch trainer on a tiny model: schedule, resume equality, export, card, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.errors import InvalidInputError
from megacontext.train.base import export_run, lr_at, train_base
from megacontext.train.config import config_from_dict
from megacontext.train.metrics import (
    bits_per_byte,
    evaluate_base_dir,
    measure_train_throughput,
    unigram_bpb,
    val_windows,
)
from megacontext.train.tokenizer import load_tokenizer, token_byte_lengths


def tiny_config(corpus_dir: Path, tok_dir: Path, out: Path, **train: object):  # type: ignore[no-untyped-def]
    return config_from_dict(
        {
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 64,
                      "max_position_embeddings": 256},
            "data": {"corpus_dir": str(corpus_dir), "tokenizer_dir": str(tok_dir), "seq_len": 48,
                     "min_task_len": 48,
                     "mixture": {"text": 1, "passkey": 1, "kv": 1, "copy": 1, "vartrack": 1}},
            "train": {"out_dir": str(out), "max_steps": 6, "warmup_steps": 2, "batch_size": 2,
                      "eval_interval": 3, "eval_windows": 2, "eval_passkey_prompts": 0,
                      "ckpt_interval": 100, "log_interval": 1, "passkey_prompts": 4,
                      "final_eval_windows": 4, "max_position_offset": 64, "precision": "fp32",
                      "device": "cpu", "threads": 1, **train},
        }
    )  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(max_steps=st.integers(10, 500), warmup=st.integers(0, 9), step=st.integers(0, 600))
def test_lr_schedule_warms_up_then_decays_to_the_floor(max_steps, warmup, step) -> None:  # type: ignore[no-untyped-def]
    cfg = config_from_dict({"train": {"max_steps": max_steps, "warmup_steps": warmup}})
    t = cfg.train
    lr = lr_at(step, cfg)
    assert t.lr * t.min_lr_ratio - 1e-12 <= lr <= t.lr + 1e-12
    if step >= max_steps:
        assert math.isclose(lr, t.lr * t.min_lr_ratio)
    if warmup <= step < max_steps - 1:
        assert lr_at(step + 1, cfg) <= lr + 1e-12, "cosine phase must not increase"
    if step < warmup:
        assert lr_at(step + 1, cfg) >= lr - 1e-12, "warmup must not decrease"


def test_time_budget_finishes_the_schedule_early() -> None:
    cfg = config_from_dict({"train": {"max_steps": 1000, "warmup_steps": 0, "time_budget_s": 100}})
    assert math.isclose(lr_at(10, cfg, train_seconds=100.0), cfg.train.lr * cfg.train.min_lr_ratio)
    assert lr_at(10, cfg, train_seconds=50.0) < lr_at(10, cfg, train_seconds=0.0)


def test_resume_equals_uninterrupted(corpus_dir: Path, tok_dir: Path, tmp_path: Path) -> None:
    def cfg(out: Path):  # type: ignore[no-untyped-def]
        c = tiny_config(corpus_dir, tok_dir, out)
        # a curriculum phase that starts right where the run is interrupted
        c.data.mixture_phases = [{"from_step": 3, "mixture": {"copy_long": 1.0, "text": 1.0}}]
        return c

    full = train_base(
        cfg(tmp_path / "full"), finalize=False, show_progress=False, log=lambda _m: None
    )
    part_cfg = cfg(tmp_path / "part")
    first = train_base(
        part_cfg, stop_after=3, finalize=False, show_progress=False, log=lambda _m: None
    )
    assert first.steps == 3
    second = train_base(part_cfg, finalize=False, show_progress=False, log=lambda _m: None)
    assert second.steps == full.steps == 6
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after resume"
    losses_a = [h["loss"] for h in a["state"]["history"]]
    losses_b = [h["loss"] for h in b["state"]["history"]]
    assert losses_a == losses_b
    # the phase really switches the data: without it, steps 1-3 match and later steps differ
    plain = tiny_config(corpus_dir, tok_dir, tmp_path / "plain")
    train_base(plain, finalize=False, show_progress=False, log=lambda _m: None)
    c = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=False)
    losses_c = [h["loss"] for h in c["state"]["history"]]
    assert losses_c[:3] == losses_a[:3] and losses_c[3:] != losses_a[3:]


def test_resume_refuses_another_model_shape(
    corpus_dir: Path, tok_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(corpus_dir, tok_dir, tmp_path / "run", max_steps=1)
    train_base(cfg, finalize=False, show_progress=False, log=lambda _m: None)
    cfg.model.n_layers = 2
    with pytest.raises(InvalidInputError, match="model config"):
        train_base(cfg, finalize=False, show_progress=False, log=lambda _m: None)


def test_full_run_writes_a_loadable_hf_directory_with_card(
    corpus_dir: Path, tok_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train_base(
        tiny_config(corpus_dir, tok_dir, tmp_path / "run"), show_progress=False,
        log=lambda _m: None,
    )  # fmt: skip
    m = result.metrics
    assert m["steps"] == 6 and m["tokens"] == 6 * 2 * 48
    assert 0.0 <= m["passkey_acc"] <= 1.0 and m["passkey_prompts"] == 4
    assert m["val_bpb"] > 0 and m["unigram_bpb"] > 0 and 0 < m["train_mfu"] < 1
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    hf_tok = AutoTokenizer.from_pretrained(result.model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert hf_tok("hi").input_ids[0] == model.config.bos_token_id
    card = (result.model_dir / "README.md").read_text()
    assert f"{m['val_bpb']:.3f}" in card and f"{m['tokens']:,}" in card
    dest = export_run(tmp_path / "run", tmp_path / "exported")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in dest.iterdir()
    }
    assert "loss_curve.png" in (dest / "README.md").read_text()
    stats = json.loads((dest / "training_stats.json").read_text())
    assert stats["seq_len"] == 48 and len(stats["token_counts"]) == hf_tok.vocab_size
    with pytest.raises(InvalidInputError, match="limit"):
        export_run(tmp_path / "run", tmp_path / "too-big", max_bytes=1000)
    measured = evaluate_base_dir(dest, n_windows=2, n_passkey=2, seq_len=48)
    assert measured["val_bpb"] > 0 and math.isfinite(measured["unigram_bpb"])
    assert measured["passkey_acc"] in (0.0, 0.5, 1.0)


def test_train_throughput_and_mfu_are_measured() -> None:
    out = measure_train_throughput(
        d_model=32, n_layers=1, n_heads=2, ffn_dim=64, vocab_size=300, seq_len=32, batch_size=2,
        steps=2, device="cpu",
    )  # fmt: skip
    assert out["tokens_per_s"] > 0 and out["matmul_peak_flops"] > 0
    assert 0 < out["mfu"] < 1
    auto = measure_train_throughput(  # the bench's default device: CUDA if present, else CPU
        d_model=32, n_layers=1, n_heads=2, ffn_dim=64, vocab_size=300, seq_len=32, batch_size=2,
        steps=1,
    )  # fmt: skip
    assert auto["tokens_per_s"] > 0


def test_export_of_an_unfinished_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="holds no trained model"):
        export_run(tmp_path, tmp_path / "out")


def test_bits_per_byte_matches_a_hand_computation(tok_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    )  # fmt: skip
    stream = np.asarray(tok.encode("the cat sat on the mat 123 " * 10).ids, dtype=np.uint32)
    windows = val_windows(stream, 16, 3)
    tb = token_byte_lengths(tok)
    loss, bpb = bits_per_byte(model, windows, tb)
    x = torch.as_tensor(windows)
    with torch.no_grad():
        logits = model(input_ids=x[:, :-1]).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
    mask = torch.as_tensor(tb)[x[:, 1:]] > 0
    assert math.isclose(loss, float(nll[mask].mean()), rel_tol=1e-5)
    expected = float(nll[mask].sum()) / math.log(2) / int(tb[windows[:, 1:]].sum())
    assert math.isclose(bpb, expected, rel_tol=1e-5)
    # a unigram model fitted on the evaluation text itself beats the uniform distribution
    uniform = math.log2(len(tb)) * windows[:, 1:][mask.numpy()].size / tb[windows[:, 1:]].sum()
    assert unigram_bpb(stream, windows, tb) < uniform
