"""Tiny random-init models of real architectures, for tests, benchmarks and ``port-model``.

No weights can be downloaded here, so the portability suite runs on real transformers classes
with tiny random-init configs (2 layers, width 64, grouped-query attention), each saved as an
ordinary Hugging Face model directory with a small byte-level BPE tokenizer, and loaded back
through :func:`megacontext.models.load_base` like any user checkpoint.

:func:`scale_down` shrinks a full-size public config (say Llama 3.1 8B) to the same tiny size
while keeping everything that changes behaviour: model type, rotary parameters (theta, llama3
scaling), tied embeddings, expert count and top-k, bias and norm flags.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

TINY_VOCAB = 320
TINY_FAMILIES: tuple[str, ...] = (
    "llama",
    "llama3",
    "qwen2",
    "qwen3",
    "mixtral",
    "mistral",
    "phi3",
    "gemma3",
    "gpt2",
    "default",
)

_COMMON: dict[str, Any] = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {
        **_COMMON,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False,
    },
    "llama3": {
        **_COMMON,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
        "tie_word_embeddings": True,
    },
    "qwen2": {
        **_COMMON,
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    "qwen3": {
        **_COMMON,
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "head_dim": 32,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    "mixtral": {
        **_COMMON,
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "router_jitter_noise": 0.1,  # only active in training mode; the adapter runs in eval
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": False,
    },
    "mistral": {
        **_COMMON,
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "phi3": {
        **_COMMON,
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "original_max_position_embeddings": 4096,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    # Gemma 3's layout at tiny size: one sliding-window layer (a window of 8 tokens, so that
    # every check's 20-24 tokens cross it) and one global layer, a rotary table for each.
    "gemma3": {
        **_COMMON,
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "head_dim": 32,
        "query_pre_attn_scalar": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 8,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        "tie_word_embeddings": True,
    },
    "gpt2": {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": TINY_VOCAB,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 512,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "tie_word_embeddings": True,
    },
    # The architecture of our default base (Llama, tied embeddings, plain RoPE) at tiny size.
    "default": {
        **_COMMON,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
    },
}

_TOKENIZER_TEXT = (
    "In the beginning God created the heaven and the earth. "
    "def add(a, b):\n    return a + b\n"
    "The quick brown fox jumps over the lazy dog; 0123456789. "
    "To be, or not to be, that is the question. "
    "import os\nfor key, value in sorted(items):\n    print(key, value)\n"
)


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    """A deterministic byte-level BPE tokenizer with ``<s>``, ``</s>``, ``<pad>`` as ids 0-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_TOKENIZER_TEXT] * 8, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_config(config_dict: dict[str, Any]) -> Any:
    """Build a transformers config object from a plain dict holding ``model_type``."""
    from transformers import AutoConfig

    values = copy.deepcopy(config_dict)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def scale_down(config_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """Shrink a full-size config to the tiny size, keeping its behaviour-defining fields.

    Returns:
        The tiny config dict and, per changed field, ``(original, tiny)`` so reports can say
        exactly what was scaled down.
    """
    full = copy.deepcopy(config_dict)
    tiny = copy.deepcopy(config_dict)
    if full.get("model_type") == "gpt2":
        targets: dict[str, Any] = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": None}
        targets["n_positions"] = min(int(full.get("n_positions", 1024)), 512)
    else:
        heads = int(full.get("num_attention_heads", 4))
        kv = int(full.get("num_key_value_heads", heads) or heads)
        ratio = max(1, heads // max(kv, 1))
        targets = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": max(1, 4 // min(ratio, 4)),
            # Keep the real head_dim so the rotary frequency spectrum is the full model's.
            "head_dim": int(full.get("head_dim") or int(full["hidden_size"]) // heads),
        }
        if "max_window_layers" in full:
            targets["max_window_layers"] = 2
        if "layer_types" in full:
            targets["layer_types"] = list(full["layer_types"])[:2]
    targets["vocab_size"] = TINY_VOCAB
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in full and full[key] is not None:
            targets[key] = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}[key]
    changes: dict[str, tuple[Any, Any]] = {}
    for key, value in targets.items():
        implied = key == "head_dim" and key not in full  # derived as hidden/heads, unchanged
        if full.get(key) != value and not implied:
            changes[key] = (full.get(key), value)
        tiny[key] = value
    return tiny, changes


def make_tiny_model_dir(
    family_or_config: str | dict[str, Any], path: Path, *, seed: int = 0
) -> Path:
    """Write a random-init model directory (config, safetensors, tokenizer) for a tiny config.

    Args:
        family_or_config: A key of :data:`TINY_CONFIGS` or a tiny config dict.
        path: Directory to create (or overwrite files in).
        seed: Seed for the random initialisation.

    Returns:
        ``path``, loadable with :func:`megacontext.models.load_base` or ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    config_dict = (
        TINY_CONFIGS[family_or_config] if isinstance(family_or_config, str) else family_or_config
    )
    config = make_config(config_dict)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init from transformers uses std 0.02, which makes logits nearly uniform; a wider
    # init (std 0.64/sqrt(fan_in), embeddings 0.15) gives peaked but well-conditioned
    # distributions, so that the checks compare something meaningful at any head_dim.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2 or "norm" in name:
                continue
            if "embed" in name or "wte" in name or "wpe" in name:
                param.normal_(0.0, 0.15)
            else:
                param.normal_(0.0, 0.64 / param.shape[-1] ** 0.5)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    architecture: str = "llama",
    quantization: str | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny random-init Llama-layout model as a GGUF file, as llama.cpp's converter lays
    one out (``token_embd``, ``blk.N.attn_q``, ...), with the tiny BPE tokenizer in its metadata.

    For tests of the GGUF path (conversion, cache, bad files) without a 100 MB download.

    Args:
        path: The file to write.
        seed: Seed of the random weights.
        architecture: ``general.architecture`` (anything but ``llama`` makes a file transformers
            cannot read, for error tests).
        quantization: A ggml type name (``Q8_0``, ``Q4_0``, ...) to store the matrices in;
            ``None`` stores float32.
        chat_template: A Jinja chat template to embed.
    """
    import gguf
    import numpy as np

    spec = json.loads(build_tiny_tokenizer().backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    hidden, layers, heads, kv_heads, ff = 64, 2, 4, 2, 128
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("megacontext tiny test model")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<s>", "</s>", "<pad>") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(2)
    if chat_template:
        writer.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)
    quant = gguf.GGMLQuantizationType[quantization] if quantization else None

    def matrix(name: str, rows: int, cols: int, std: float) -> None:
        values = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if quant is None:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, quant), raw_dtype=quant)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))

    matrix("token_embd.weight", len(tokens), hidden, 0.15)
    norm("output_norm.weight")
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden, 0.64 / hidden**0.5)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden, 0.64 / hidden**0.5)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden, 0.64 / hidden**0.5)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim, 0.64 / hidden**0.5)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", ff, hidden, 0.64 / hidden**0.5)
        matrix(f"blk.{i}.ffn_up.weight", ff, hidden, 0.64 / hidden**0.5)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ff, 0.64 / ff**0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_config_only_dir(config_dict: dict[str, Any], path: Path) -> Path:
    """Write only ``config.json`` (no weights): how public configs are described without weights."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_dict, indent=2), encoding="utf-8")
    return path


__all__ = [
    "TINY_CONFIGS",
    "TINY_FAMILIES",
    "TINY_VOCAB",
    "build_tiny_tokenizer",
    "make_config",
    "make_tiny_model_dir",
    "scale_down",
    "write_config_only_dir",
    "write_tiny_gguf",
]
