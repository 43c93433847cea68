"""Measurements of a base model: bits per byte, unigram baseline, passkey accuracy, tokens/s, MFU.

These back the benchmark results ``default_val_bpb``, ``default_passkey_acc``,
``train_tokens_per_s`` and ``train_mfu`` (DESIGN §9) and the numbers in a model card.

* **bits per byte** = total next-token NLL (nats) / ln 2 / UTF-8 bytes of the predicted tokens, so
  it compares across tokenizers.
* **unigram bpb** = the same with a unigram model of the training tokens (add-one smoothed): a
  model that ignores context entirely. A base must be clearly below it.
* **passkey accuracy** = greedy decode after ``... The pass key is``; correct when the first
  digits generated equal the key.
* **MFU** = model FLOPs per second during training / a matmul peak measured on the same machine in
  the same run (not a datasheet number).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from megacontext.data import Filler, heldout_texts
from megacontext.errors import InvalidInputError
from megacontext.train.tasks import passkey_sample
from megacontext.train.tokenizer import BOS, EOS, PAD, special_id


def val_windows(stream: np.ndarray, seq_len: int, n: int) -> np.ndarray:
    """``n`` windows of ``seq_len + 1`` tokens spread evenly over ``stream`` (int64, n × L+1)."""
    if len(stream) < seq_len + 1:
        raise InvalidInputError(
            f"validation stream has {len(stream)} tokens, fewer than one window of {seq_len + 1}"
        )
    starts = np.linspace(0, len(stream) - seq_len - 1, num=max(1, n)).astype(np.int64)
    return np.stack([stream[s : s + seq_len + 1].astype(np.int64) for s in starts])


@torch.no_grad()
def bits_per_byte(
    model: torch.nn.Module,
    windows: np.ndarray,
    token_bytes: np.ndarray,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    position_offset: int = 0,
) -> tuple[float, float]:
    """Validation loss (nats/token) and bits per byte of ``model`` on ``windows``.

    Targets that are special tokens (0 bytes) are excluded from both numbers.
    """
    was_training = model.training
    model.eval()
    total_nll = 0.0
    total_tokens = 0
    total_bytes = 0
    tb = torch.as_tensor(token_bytes)
    for start in range(0, len(windows), batch_size):
        chunk = torch.as_tensor(windows[start : start + batch_size], device=device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        pos = torch.arange(x.shape[1], device=device).unsqueeze(0) + position_offset
        logits = model(input_ids=x, position_ids=pos.expand_as(x)).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").cpu()
        nbytes = tb[y.cpu()]
        mask = nbytes > 0
        total_nll += float(nll[mask].sum())
        total_tokens += int(mask.sum())
        total_bytes += int(nbytes.sum())
    model.train(was_training)
    return total_nll / max(total_tokens, 1), total_nll / math.log(2) / max(total_bytes, 1)


def unigram_bpb(train_stream: np.ndarray, windows: np.ndarray, token_bytes: np.ndarray) -> float:
    """Bits per byte of an add-one-smoothed unigram model of ``train_stream`` on ``windows``."""
    counts = np.bincount(train_stream.astype(np.int64), minlength=len(token_bytes))
    return unigram_bpb_from_counts(counts, windows, token_bytes)


@dataclass
class PasskeyResult:
    """Outcome of :func:`passkey_accuracy`."""

    accuracy: float
    n: int
    min_len: int
    max_len: int
    failures: list[tuple[str, str]]


@torch.no_grad()
def passkey_accuracy(  # noqa: PLR0913  (the probe's settings)
    model: torch.nn.Module,
    tok: Tokenizer,
    filler_stream: np.ndarray,
    *,
    n: int = 100,
    seed: int = 1234,
    max_len: int = 512,
    min_len: int = 64,
    key_digits: int = 5,
    device: str | torch.device = "cpu",
) -> PasskeyResult:
    """Accuracy on ``n`` seeded passkey prompts of ``min_len``…``max_len`` tokens (BOS included).

    Lengths and needle depths are spread uniformly; the filler comes from ``filler_stream`` (use
    held-out text). Decoding is greedy, ``key_digits + 3`` new tokens. A prompt is never shorter
    than the passkey template itself (about 60 tokens with an 8k vocabulary).
    """
    if not 1 <= min_len <= max_len:
        raise InvalidInputError(f"need 1 ≤ min_len ≤ max_len, got {min_len}, {max_len}")
    was_training = model.training
    model.eval()
    bos = special_id(tok, BOS)
    filler = Filler(filler_stream, (bos, special_id(tok, EOS), special_id(tok, PAD)))
    rng = random.Random(seed)
    correct = 0
    failures: list[tuple[str, str]] = []
    for i in range(n):
        length = min_len + round((max_len - min_len) * (i + 0.5) / n)
        depth = rng.random()
        # length counts BOS; the answer tokens are not part of the prompt
        sample = passkey_sample(rng, tok, filler, length - 1, key_digits=key_digits, depth=depth)
        prompt = [bos, *sample.ids[: sample.prompt_len]]
        ids = torch.tensor([prompt], device=device)
        out: list[int] = []
        cache = None
        pos = torch.arange(len(prompt), device=device).unsqueeze(0)
        for _ in range(key_digits + 3):
            result = model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
            cache = result.cache
            nxt = int(result.logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.tensor([[nxt]], device=device)
            pos = pos[:, -1:] + 1
        text = tok.decode(out)
        expected = re.sub(r"\D", "", sample.answer)
        got = "".join(re.findall(r"\d", text))[: len(expected)]
        if got == expected:
            correct += 1
        elif len(failures) < 10:
            failures.append((expected, text))
    model.train(was_training)
    return PasskeyResult(correct / max(n, 1), n, min_len, max_len, failures)


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 × (matmul parameters, LM head included) + attention.

    Attention is counted as in PaLM (appendix B): 12 · n_layers · d_model · seq_len.
    """
    n_matmul = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n_matmul += module.weight.numel()
    config = model.config
    attn = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return float(6 * n_matmul + attn)


def matmul_peak_flops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 1024,
    repeats: int = 5,
) -> float:
    """Best observed FLOP/s of an ``n×n @ n×n`` matmul on ``device`` in ``dtype``."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * n**3 / best


# --------------------------------------------------------------------------- benchmark entry points


def evaluate_base_dir(
    model_dir: str | Path,
    *,
    n_windows: int = 64,
    n_passkey: int = 100,
    seq_len: int | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Measure an HF model directory trained by this package: ``val_bpb``, ``passkey_acc``, ...

    Uses the shipped held-out text; the unigram baseline uses the training token counts stored
    in ``model_dir/training_stats.json`` when present.

    Returns:
        ``val_loss``, ``val_bpb``, ``unigram_bpb`` (or NaN), ``passkey_acc``, ``seq_len``.
    """
    from transformers import AutoModelForCausalLM

    from megacontext.train.tokenizer import encode_documents, load_tokenizer, token_byte_lengths

    model_dir = Path(model_dir)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    stats_path = model_dir / "training_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    length = seq_len or int(stats.get("seq_len", 512))
    stream = encode_documents(tok, heldout_texts())
    windows = val_windows(stream, length, n_windows)
    token_bytes = token_byte_lengths(tok)
    val_loss, val_bpb = bits_per_byte(model, windows, token_bytes, device=device)
    uni = float("nan")
    if "token_counts" in stats:
        counts = np.asarray(stats["token_counts"], dtype=np.float64)
        uni = unigram_bpb_from_counts(counts, windows, token_bytes)
    pk = passkey_accuracy(
        model, tok, stream, n=n_passkey, max_len=length, min_len=min(64, length), device=device
    )
    return {
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "unigram_bpb": uni,
        "passkey_acc": pk.accuracy,
        "seq_len": float(length),
    }


def unigram_bpb_from_counts(
    counts: np.ndarray, windows: np.ndarray, token_bytes: np.ndarray
) -> float:
    """Like :func:`unigram_bpb`, from precomputed training token counts."""
    vocab = len(token_bytes)
    counts = np.asarray(counts, dtype=np.float64)[:vocab]
    logp = np.log((counts + 1.0) / (counts.sum() + vocab))
    targets = windows[:, 1:].reshape(-1)
    nbytes = token_bytes[targets]
    mask = nbytes > 0
    return float(-logp[targets[mask]].sum() / math.log(2) / nbytes.sum())


def measure_train_throughput(  # noqa: PLR0913  (the measured model's shape)
    *,
    d_model: int = 256,
    n_layers: int = 4,
    n_heads: int = 4,
    ffn_dim: int = 704,
    vocab_size: int = 8192,
    seq_len: int = 512,
    batch_size: int = 4,
    steps: int = 4,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, float]:
    """Training tokens/s and MFU of a Llama model of the given shape (default: the default base).

    Runs ``steps`` AdamW steps on random tokens in fp32 (bf16 autocast on CUDA) after one warmup
    step, then measures a matmul peak on the same device in the same call.

    Returns:
        ``tokens_per_s``, ``mfu``, ``model_flops_per_token``, ``matmul_peak_flops``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=ffn_dim,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max(seq_len, 512),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=gen).to(dev)
    x, y = batch[:, :-1], batch[:, 1:]

    def step() -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    tps = steps * x.numel() / (time.perf_counter() - start)
    flops_tok = model_flops_per_token(model, seq_len)
    peak = matmul_peak_flops(dev, torch.bfloat16 if use_bf16 else torch.float32)
    return {
        "tokens_per_s": tps,
        "mfu": flops_tok * tps / peak,
        "model_flops_per_token": flops_tok,
        "matmul_peak_flops": peak,
    }
