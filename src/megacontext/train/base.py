"""From-scratch training of a small Llama-architecture base model (DESIGN §7, issue 5 §5).

``train_base(cfg)`` runs the whole recipe, top to bottom:

1. corpus: build ``data.corpus_dir`` if it has no manifest (:mod:`megacontext.train.corpus`);
2. tokenizer: train a byte-level BPE if ``data.tokenizer_dir`` has none;
3. token streams: encode train/val documents once, cached as ``.npy`` next to the run;
4. model: ``transformers.LlamaForCausalLM`` from :class:`ModelConfig`;
5. loop: AdamW, linear warmup + cosine decay, gradient clipping, a random position offset per
   batch, bf16 autocast where it measured faster, rows from :class:`MixtureSampler` seeded by
   ``(seed, step)`` — so a resumed run sees exactly the batches an uninterrupted run would;
6. periodic validation loss / bits per byte, checkpoints (atomic), a tqdm bar with tokens/s & ETA;
7. finish: HF model directory ``out_dir/model`` (config, safetensors, tokenizer, README card),
   ``metrics.json``, ``loss_curve.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megacontext.errors import InvalidInputError
from megacontext.files import sha256_file
from megacontext.train.checkpoint import load_payload, save_atomically
from megacontext.train.config import BaseRunConfig
from megacontext.train.corpus import build_corpus, read_documents, verify_corpus
from megacontext.train.metrics import (
    bits_per_byte,
    matmul_peak_flops,
    model_flops_per_token,
    passkey_accuracy,
    unigram_bpb,
    val_windows,
)
from megacontext.train.tasks import MixtureSampler
from megacontext.train.tokenizer import (
    BOS,
    EOS,
    PAD,
    encode_documents,
    load_tokenizer,
    save_tokenizer,
    special_id,
    token_byte_lengths,
    train_tokenizer,
)

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunState:
    """What a checkpoint restores besides weights and optimizer state."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def prepare_data(
    cfg: BaseRunConfig, log: Callable[[str], None] = print
) -> tuple[Any, np.ndarray, np.ndarray, Path]:
    """Corpus → tokenizer → token streams. Returns ``(tokenizer, train, val, tok_dir)``.

    Token streams are cached in ``corpus_dir/tokens/`` under a key of the tokenizer and corpus
    hashes, so runs sharing both encode once.
    """
    d, out = cfg.data, Path(cfg.train.out_dir)
    corpus = Path(d.corpus_dir)
    if not (corpus / "manifest.json").is_file():
        log(f"building corpus in {corpus} from {', '.join(d.sources)}")
        build_corpus(
            corpus, d.sources, seed=d.corpus_seed, val_fraction=d.val_fraction, progress=log
        )
    manifest = verify_corpus(corpus)
    tok_dir = Path(d.tokenizer_dir) if d.tokenizer_dir else out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        log(f"training a {d.vocab_size}-token byte-level BPE in {tok_dir}")
        docs = read_documents(corpus / "train.jsonl")
        save_tokenizer(
            train_tokenizer((doc.text for doc in docs), d.vocab_size),
            tok_dir,
            cfg.model.max_position_embeddings,
        )
    tok = load_tokenizer(tok_dir)
    key = hashlib.sha256(
        (
            sha256_file(tok_dir / "tokenizer.json") + json.dumps(manifest.files, sort_keys=True)
        ).encode()
    ).hexdigest()[:16]
    cache = corpus / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    streams: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        path = cache / f"{split}-{key}.npy"
        if not path.is_file():
            log(f"encoding the {split} split")
            docs = read_documents(corpus / f"{split}.jsonl")
            np.save(path.with_suffix(".tmp.npy"), encode_documents(tok, (x.text for x in docs)))
            path.with_suffix(".tmp.npy").replace(path)
        streams[split] = np.load(path)
    return tok, streams["train"], streams["val"], tok_dir


# --------------------------------------------------------------------------- model


def build_model(cfg: BaseRunConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` with the configured shape (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.ffn_dim,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_kv_heads,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        tie_word_embeddings=m.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(cfg.train.seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, cfg: BaseRunConfig, train_seconds: float = 0.0) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr · min_lr_ratio``.

    The decay ends at ``max_steps`` or, when ``time_budget_s`` is set, when the training loop has
    used the budget — whichever comes first — so a run on a slow or busy machine still finishes its
    schedule. Without a time budget the schedule depends on the step only.
    """
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(1, t.max_steps - t.warmup_steps)
    progress = (step - t.warmup_steps) / span
    if t.time_budget_s:
        progress = max(progress, train_seconds / t.time_budget_s)
    progress = min(1.0, progress)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: BaseRunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms, not biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    t = cfg.train
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
    )


def pick_device(cfg: BaseRunConfig) -> torch.device:
    """``cuda`` when present (or asked for), else ``cpu``."""
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("train.device is 'cuda' but no CUDA device is available; use auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def make_sampler(
    cfg: BaseRunConfig, tok: Any, stream: np.ndarray, phase: dict[str, Any]
) -> MixtureSampler:
    """The row sampler of one curriculum phase (``{}``: the base ``data`` settings)."""
    d = cfg.data
    return MixtureSampler(
        tok,
        stream,
        d.seq_len,
        phase.get("mixture", d.mixture),
        d.min_task_len,
        max_task_len=phase.get("max_task_len", d.max_task_len),
        answer_weight=float(phase.get("answer_weight", d.answer_weight)),
    )


def _loss(
    model: Any,
    batch: torch.Tensor,
    offset: int,
    use_bf16: bool,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of ``batch`` rows, weighted per target token when given."""
    x, y = batch[:, :-1], batch[:, 1:]
    pos = (torch.arange(x.shape[1], device=x.device) + offset).unsqueeze(0).expand_as(x)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = model(input_ids=x, position_ids=pos).logits
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
    )
    if weights is None:
        return ce.mean()
    w = weights[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum()


def choose_precision(
    cfg: BaseRunConfig, model: Any, device: torch.device, batch: torch.Tensor
) -> tuple[bool, dict[str, float]]:
    """Decide bf16 autocast: forced by config, always on CUDA, measured on CPU (auto).

    On CPU both settings run two forward+backward passes on one short row of ``batch`` (gradients
    discarded, no optimizer step, so the weights are untouched); bf16 wins only if it is faster.
    """
    p = cfg.train.precision
    if p != "auto":
        return p == "bf16", {}
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), {}
    batch = batch[:1, : min(batch.shape[1], 129)]  # bf16 can be ~20x slower on CPUs without it

    def step(bf16: bool) -> None:
        _loss(model, batch, 0, bf16).backward()

    use_bf16, timings = bf16_is_faster(step, batch[:, :-1].numel())
    model.zero_grad(set_to_none=True)
    return use_bf16, timings


def bf16_is_faster(step: Callable[[bool], object], tokens: int) -> tuple[bool, dict[str, float]]:
    """Time ``step(bf16)`` (the best of two runs each, ``tokens`` tokens a run) with bf16
    autocast off and on: ``(bf16 was faster, tokens/s of each)``. CPUs without native bf16
    (no AVX-512 BF16 or AMX) emulate it, many times slower than fp32; this finds out by running."""
    timings: dict[str, float] = {}
    for name, flag in (("fp32", False), ("bf16", True)):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            step(flag)
            best = min(best, time.perf_counter() - start)
        timings[f"{name}_tokens_per_s"] = tokens / best
    return timings["bf16_tokens_per_s"] > timings["fp32_tokens_per_s"], timings


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path, model: Any, opt: torch.optim.Optimizer, state: RunState, cfg: BaseRunConfig
) -> None:
    """Write model, optimizer and run state atomically (tmp file + rename)."""
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": state.__dict__,
        "config": cfg.to_dict(),
    }
    save_atomically(payload, path)


def load_checkpoint(
    path: Path, model: Any, opt: torch.optim.Optimizer, cfg: BaseRunConfig
) -> RunState:
    """Restore a checkpoint written by :func:`save_checkpoint` for the same model shape."""
    ckpt = load_payload(path)
    if ckpt["config"]["model"] != cfg.to_dict()["model"]:
        raise InvalidInputError(
            f"checkpoint {path} was trained with model config {ckpt['config']['model']}, not "
            f"{cfg.to_dict()['model']}; use another train.out_dir or delete the checkpoint"
        )
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    return RunState(**ckpt["state"])


# --------------------------------------------------------------------------- main loop


@dataclass
class TrainResult:
    """Summary of a finished (or time-budget-stopped) run."""

    out_dir: Path
    model_dir: Path
    steps: int
    tokens: int
    train_seconds: float
    metrics: dict[str, Any]


def train_base(  # noqa: C901, PLR0915  (the training loop: data, step, eval, checkpoint in one place)
    cfg: BaseRunConfig,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    finalize: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume) a base model as configured; see the module docstring for the steps.

    Args:
        cfg: The run configuration.
        resume: Continue from ``out_dir/checkpoint.pt`` when it exists.
        stop_after: Stop (with a checkpoint) after this global step, e.g. to test resume.
        finalize: Export the HF directory, card, metrics and plot at the end.
        show_progress: Show a tqdm bar.
        log: Where one-line status messages go.
    """
    cfg.validate()
    t = cfg.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    device = pick_device(cfg)
    tok, train_stream, val_stream, tok_dir = prepare_data(cfg, log)
    ids = {name: special_id(tok, name) for name in (BOS, EOS, PAD)}
    samplers = [(0, make_sampler(cfg, tok, train_stream, {}))] + [
        (int(p["from_step"]), make_sampler(cfg, tok, train_stream, p))
        for p in cfg.data.mixture_phases
    ]

    def sampler_at(step: int) -> MixtureSampler:
        return [s for start, s in samplers if start <= step][-1]

    model = build_model(cfg, tok.get_vocab_size(), ids[BOS], ids[EOS], ids[PAD]).to(device)
    opt = make_optimizer(model, cfg)
    state = RunState()
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, model, opt, cfg)
        log(f"resumed from {ckpt_path} at step {state.step}")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    windows = val_windows(val_stream, cfg.data.seq_len, t.eval_windows)
    token_bytes = token_byte_lengths(tok)
    probe_rows = sampler_at(0).batch(random.Random(t.seed), t.batch_size)[1]
    probe = torch.as_tensor(probe_rows, device=device)
    use_bf16, precision_timings = choose_precision(cfg, model, device, probe)
    log(f"device {device}, bf16 autocast {'on' if use_bf16 else 'off'} {precision_timings}")

    def evaluate() -> dict[str, float]:
        loss, bpb = bits_per_byte(model, windows, token_bytes, device=device)
        row = {"step": float(state.step), "tokens": float(state.tokens), "val_loss": loss}
        row["val_bpb"] = bpb
        if t.eval_passkey_prompts:
            row["passkey_acc"] = passkey_accuracy(
                model, tok, val_stream, n=t.eval_passkey_prompts, seed=99,
                max_len=cfg.data.seq_len, min_len=min(64, cfg.data.seq_len), device=device,
            ).accuracy  # fmt: skip
        state.evals.append(row)
        return row

    tokens_per_step = t.batch_size * cfg.data.seq_len
    last = min(t.max_steps, stop_after) if stop_after is not None else t.max_steps
    bar = tqdm(
        total=t.max_steps,
        initial=state.step,
        disable=not show_progress,
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    model.train()
    stopped_on_budget = False
    window_start, window_tokens = time.perf_counter(), 0
    while state.step < last:
        if t.time_budget_s is not None and state.train_seconds >= t.time_budget_s:
            stopped_on_budget = True
            log(f"time budget of {t.time_budget_s:.0f} s reached at step {state.step}")
            break
        step_start = time.perf_counter()
        rng = random.Random(f"{t.seed}:{state.step}")
        _, rows, weights = sampler_at(state.step).batch(rng, t.batch_size)
        offset = rng.randint(0, t.max_position_offset) if t.max_position_offset else 0
        lr = lr_at(state.step, cfg, state.train_seconds)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _loss(
            model,
            torch.as_tensor(rows, device=device),
            offset,
            use_bf16,
            torch.as_tensor(weights, device=device),
        )
        loss.backward()
        loss_value = float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += tokens_per_step
        state.train_seconds += time.perf_counter() - step_start
        window_tokens += tokens_per_step
        if state.step % t.log_interval == 0 or state.step == last:
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / max(elapsed, 1e-9)
            state.history.append(
                {
                    "step": state.step,
                    "tokens": state.tokens,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tps,
                }
            )
            postfix = {"loss": f"{loss_value:.3f}", "tok_s": f"{tps:,.0f}", "lr": f"{lr:.2e}"}
            if t.time_budget_s is not None:
                left = max(0.0, t.time_budget_s - state.train_seconds)
                postfix["budget_left"] = f"{left / 60:.0f}min"
            bar.set_postfix(postfix)
            window_start, window_tokens = time.perf_counter(), 0
        bar.update(1)
        if state.step % t.eval_interval == 0 or state.step == t.max_steps:
            row = evaluate()
            log(
                f"step {state.step}: val loss {row['val_loss']:.3f}, val bpb {row['val_bpb']:.3f}"
                + (f", passkey {row['passkey_acc']:.2f}" if "passkey_acc" in row else "")
            )
        if state.step % t.ckpt_interval == 0 or state.step == last:
            save_checkpoint(ckpt_path, model, opt, state, cfg)
    bar.close()
    save_checkpoint(ckpt_path, model, opt, state, cfg)
    model_dir = out / "model"
    metrics: dict[str, Any] = {}
    if finalize:
        metrics = finalize_run(
            cfg, model, tok_dir, tok, train_stream, val_stream, state, device,
            use_bf16=use_bf16, precision_timings=precision_timings,
            stopped_on_budget=stopped_on_budget, log=log,
        )  # fmt: skip
    return TrainResult(out, model_dir, state.step, state.tokens, state.train_seconds, metrics)


# --------------------------------------------------------------------------- finishing


def plot_loss_curve(state: RunState, path: Path) -> None:
    """Training loss (and validation loss) against tokens, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if state.history:
        ax.plot(
            [h["tokens"] / 1e6 for h in state.history],
            [h["loss"] for h in state.history],
            lw=0.8,
            alpha=0.7,
            label="train loss",
        )
    if state.evals:
        ax.plot(
            [e["tokens"] / 1e6 for e in state.evals],
            [e["val_loss"] for e in state.evals],
            "o-",
            label="validation loss (text)",
        )
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_description(device: torch.device) -> str:
    """One line naming the CPU/GPU and thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def finalize_run(  # noqa: PLR0913  (everything a finished run records)
    cfg: BaseRunConfig,
    model: Any,
    tok_dir: Path,
    tok: Any,
    train_stream: np.ndarray,
    val_stream: np.ndarray,
    state: RunState,
    device: torch.device,
    *,
    use_bf16: bool,
    precision_timings: dict[str, float],
    stopped_on_budget: bool,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the final model and write ``model/``, ``metrics.json`` and ``loss_curve.png``."""
    out = Path(cfg.train.out_dir)
    seq_len = cfg.data.seq_len
    token_bytes = token_byte_lengths(tok)
    n_windows = min(cfg.train.final_eval_windows, len(val_stream) // (seq_len + 1))
    all_windows = val_windows(val_stream, seq_len, max(1, n_windows))
    log(f"final validation on {len(all_windows)} windows")
    val_loss, val_bpb = bits_per_byte(model, all_windows, token_bytes, device=device)
    uni = unigram_bpb(train_stream, all_windows, token_bytes)
    log(f"passkey accuracy on {cfg.train.passkey_prompts} prompts")
    pk = passkey_accuracy(
        model,
        tok,
        val_stream,
        n=cfg.train.passkey_prompts,
        max_len=seq_len,
        min_len=min(64, seq_len),
        device=device,
    )
    _, far_bpb = bits_per_byte(
        model,
        all_windows[: min(len(all_windows), 64)],
        token_bytes,
        device=device,
        position_offset=cfg.model.max_position_embeddings - seq_len,
    )
    flops_tok = model_flops_per_token(model, seq_len)
    tps = state.tokens / max(state.train_seconds, 1e-9)
    peak = matmul_peak_flops(device, torch.bfloat16 if use_bf16 else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    metrics: dict[str, Any] = {
        "params": n_params,
        "steps": state.step,
        "max_steps": cfg.train.max_steps,
        "stopped_on_time_budget": stopped_on_budget,
        "tokens": state.tokens,
        "train_seconds": state.train_seconds,
        "train_tokens_per_s": tps,
        "train_mfu": flops_tok * tps / peak,
        "matmul_peak_flops": peak,
        "model_flops_per_token": flops_tok,
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "unigram_bpb": uni,
        "val_bpb_at_far_positions": far_bpb,
        "far_position_offset": cfg.model.max_position_embeddings - seq_len,
        "val_tokens": int(all_windows[:, 1:].size),
        "passkey_acc": pk.accuracy,
        "passkey_prompts": pk.n,
        "passkey_len_range": [pk.min_len, pk.max_len],
        "passkey_failures": pk.failures,
        "bf16_autocast": use_bf16,
        "precision_timings": precision_timings,
        "machine": machine_description(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_loss_curve(state, out / "loss_curve.png")
    model_dir = out / "model"
    counts = np.bincount(train_stream.astype(np.int64), minlength=tok.get_vocab_size())
    export_model_dir(model, tok_dir, model_dir, cfg, metrics, counts)
    log(
        f"done: {state.step} steps, {state.tokens:,} tokens in {state.train_seconds / 60:.1f} min "
        f"({tps:,.0f} tok/s, MFU {metrics['train_mfu']:.1%}); val bpb {val_bpb:.3f} vs unigram "
        f"{uni:.3f}; passkey {pk.accuracy:.2f}; model in {model_dir}"
    )
    return metrics


def export_model_dir(
    model: Any,
    tok_dir: Path,
    model_dir: Path,
    cfg: BaseRunConfig,
    metrics: dict[str, Any],
    token_counts: np.ndarray,
) -> None:
    """Save an HF directory: config.json, model.safetensors, tokenizer files, README card.

    ``training_stats.json`` keeps the training length, the metrics and the training token counts
    (for the unigram baseline of :func:`megacontext.train.metrics.evaluate_base_dir`);
    ``training_config.json`` keeps the full run configuration.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, model_dir / name)
    (model_dir / "training_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    stats = {
        "seq_len": cfg.data.seq_len,
        "metrics": {k: v for k, v in metrics.items() if k != "passkey_failures"},
        "token_counts": [int(c) for c in token_counts],
    }
    (model_dir / "training_stats.json").write_text(json.dumps(stats) + "\n")
    (model_dir / "README.md").write_text(model_card(cfg, metrics))


MAX_EXPORT_BYTES = 30 * 1024 * 1024
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "training_config.json",
    "training_stats.json",
    "README.md",
)


def export_run(run_dir: str | Path, to: str | Path, max_bytes: int = MAX_EXPORT_BYTES) -> Path:
    """Copy a finished run's HF directory (``run_dir/model``) to ``to`` (e.g. the packaged default).

    Adds ``training_stats.json`` if the run predates it (token counts recomputed from the run's
    cached corpus tokens), copies the loss curve as ``loss_curve.png``, and refuses directories
    over ``max_bytes``.
    """
    run = Path(run_dir)
    src = run / "model"
    if not (src / "model.safetensors").is_file():
        raise InvalidInputError(
            f"{src} holds no trained model; finish the run first: megacontext train base --config "
            f"{run / 'config.json'}"
        )
    if not (src / "training_stats.json").is_file():
        from megacontext.train.config import config_from_dict

        cfg = config_from_dict(json.loads((run / "config.json").read_text()))
        tok, train_stream, _, _ = prepare_data(cfg, log=lambda _m: None)
        counts = np.bincount(train_stream.astype(np.int64), minlength=tok.get_vocab_size())
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.pop("passkey_failures", None)
        stats = {"seq_len": cfg.data.seq_len, "metrics": metrics}
        stats["token_counts"] = [int(c) for c in counts]
        (src / "training_stats.json").write_text(json.dumps(stats) + "\n")
    files = [src / name for name in EXPORT_FILES if (src / name).is_file()]
    extra = [run / "loss_curve.png"] if (run / "loss_curve.png").is_file() else []
    total = sum(f.stat().st_size for f in [*files, *extra])
    if total > max_bytes:
        raise InvalidInputError(
            f"export of {src} is {total / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit "
            "of a packaged model; train a smaller model"
        )
    dest = Path(to)
    dest.mkdir(parents=True, exist_ok=True)
    for f in [*files, *extra]:
        shutil.copy2(f, dest / f.name)
    if (run / "metrics.json").is_file() and (run / "config.json").is_file():
        from megacontext.train.config import config_from_dict

        cfg = config_from_dict(json.loads((run / "config.json").read_text()))
        metrics = json.loads((run / "metrics.json").read_text())
        (dest / "README.md").write_text(model_card(cfg, metrics, loss_curve=bool(extra)))
    return dest


def model_card(cfg: BaseRunConfig, m: dict[str, Any], loss_curve: bool = False) -> str:
    """The model card (Markdown) of a trained base; ``loss_curve`` links ``loss_curve.png``."""
    d, mc, t = cfg.data, cfg.model, cfg.train

    def describe(mixture: dict[str, float], max_len: int | None, weight: float) -> str:
        mix = ", ".join(f"{k} {v:g}" for k, v in mixture.items())
        longest = d.seq_len + 1 if max_len is None else max_len
        return f"{mix} (task samples {d.min_task_len}–{longest} tokens, answer weight {weight:g})"

    mixture = describe(d.mixture, d.max_task_len, d.answer_weight)
    for phase in d.mixture_phases:
        mix = describe(
            phase["mixture"],
            phase.get("max_task_len", d.max_task_len),
            float(phase.get("answer_weight", d.answer_weight)),
        )
        mixture += f"; from step {phase['from_step']}: {mix}"
    budget_note = (
        f" The run stopped on its time budget ({t.time_budget_s:.0f} s) at step {m['steps']} of "
        f"{m['max_steps']}."
        if m["stopped_on_time_budget"]
        else ""
    )
    curve = "\n![training and validation loss](loss_curve.png)\n" if loss_curve else ""
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
---

# MegaContext default base

A small Llama-architecture causal LM trained from scratch by MegaContext's own recipe
(`megacontext train base`), shipped inside the package so that `megacontext.load_base("default")`
works offline. It is a plain Hugging Face directory:
`transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`
load it directly. It is a research fixture for memory systems, not a useful assistant.

## Model

| | |
|---|---|
| architecture | LlamaForCausalLM, {mc.n_layers} layers, d_model {mc.d_model}, {mc.n_heads} heads \
({mc.n_kv_heads} KV), SwiGLU {mc.ffn_dim}, RoPE θ {mc.rope_theta:g}, tied embeddings \
{str(mc.tie_embeddings).lower()} |
| parameters | {m["params"]:,} |
| tokenizer | byte-level BPE, {d.vocab_size} tokens, digits split one per token, `<|bos|>` \
prepended |
| training length | {d.seq_len} tokens, trained with random position offsets in \
[0, {t.max_position_offset}] |

## Data

License-clean text available offline from the registries (see `docs/training.md`): the CPython
standard library source (PSF-2.0), the Python 3.11 documentation reST sources (PSF-2.0), the King
James Bible (public domain), Gutenberg Shakespeare and Milton (public domain). Deduplicated by block
hash, {d.val_fraction:g} of each source's documents held out (seed {d.corpus_seed}).
Row mixture: {mixture}. The synthetic long-context tasks (pass key, key/value lookup, copy,
variable tracking) use corpus text as filler, so a memory system can be judged on them (a base
that never saw pass keys scores 0). The answer tokens of task samples weigh more in the loss
than other tokens (the answer weight); the reported training loss is that weighted mean.

## Training

| | |
|---|---|
| steps | {m["steps"]:,} × batch {t.batch_size} × {d.seq_len} tokens |
| tokens | {m["tokens"]:,} |
| wall time (training loop) | {m["train_seconds"] / 60:.1f} min |
| throughput | {m["train_tokens_per_s"]:,.0f} tokens/s, MFU {m["train_mfu"]:.1%} of a measured \
matmul peak of {m["matmul_peak_flops"] / 1e9:.1f} GFLOP/s |
| optimizer | AdamW (β {t.beta1}, {t.beta2}; wd {t.weight_decay}), lr {t.lr:g}, warmup \
{t.warmup_steps}, cosine to {t.min_lr_ratio:g}×, grad clip {t.grad_clip} |
| precision | {"bf16 autocast" if m["bf16_autocast"] else "fp32"} (measured choice) |
| machine | {m["machine"]} |
| date | {m["date"]} |
{budget_note}
{curve}
## Results (held-out validation split)

| metric | value |
|---|---|
| validation loss | {m["val_loss"]:.3f} nats/token over {m["val_tokens"]:,} tokens |
| **validation bits per byte** | **{m["val_bpb"]:.3f}** |
| unigram baseline bits per byte (same text) | {m["unigram_bpb"]:.3f} |
| validation bpb at positions +{m["far_position_offset"]} | {m["val_bpb_at_far_positions"]:.3f} |
| **passkey accuracy** ({m["passkey_prompts"]} seeded prompts, \
{m["passkey_len_range"][0]}–{m["passkey_len_range"][1]} tokens, greedy) | \
**{m["passkey_acc"]:.2f}** |

Reproduce: `megacontext train base --config src/megacontext/train/configs/default.yaml`, then
`megacontext train export runs/default-base --to src/megacontext/models/tiny_base`.
"""
