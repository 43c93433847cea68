"""Fingerprints of a base model: config, weights, tokenizer (DESIGN D13).

A tree records these so that opening it with another base or tokenizer is an error. Each part is
a sha256 hex digest; the combined fingerprint hashes the three parts together.

Weights are hashed tensor by tensor (sorted by name, tied tensors once) in the dtype the
checkpoint stores them in, so loading a bf16 checkpoint in fp32 gives the same fingerprint (the
bf16 -> fp32 -> bf16 round trip is exact), while a genuinely different set of numbers does not.
Hashing runs at memory speed (about a second per GB) and the adapter caches the result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

# Config keys that describe how a model was saved or run, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_experts_implementation",
        "_commit_hash",
    }
)


def config_digest(config: Any) -> str:
    """sha256 over the canonical JSON of a transformers config, minus volatile keys."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    canonical = {k: v for k, v in values.items() if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps(canonical, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def weights_digest(model: torch.nn.Module, stored_dtype: torch.dtype | None = None) -> str:
    """sha256 over every parameter and persistent buffer (name, shape, dtype, bytes).

    Args:
        model: The model whose weights to hash.
        stored_dtype: Cast floating tensors to this dtype before hashing (the checkpoint's own
            dtype); ``None`` hashes them as they are.
    """
    hasher = hashlib.sha256()
    seen: set[int] = set()
    tensors: list[tuple[str, torch.Tensor]] = []
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            continue  # tied weights (e.g. lm_head = embed_tokens) are hashed once
        seen.add(key)
        tensors.append((name, tensor))
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        value = tensor.detach().cpu()
        if stored_dtype is not None and value.is_floating_point() and value.dtype != stored_dtype:
            value = value.to(stored_dtype)
        value = value.contiguous().reshape(-1)
        header = f"{name}|{tuple(tensor.shape)}|{value.dtype}\n"
        hasher.update(header.encode("utf-8"))
        if value.numel():
            hasher.update(memoryview(value.view(torch.uint8).numpy()))
    return hasher.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 over a tokenizer's full definition (vocab, merges, normaliser, special tokens)."""
    hasher = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        hasher.update(backend.to_str().encode("utf-8"))
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        hasher.update(json.dumps(vocab, separators=(",", ":")).encode("utf-8"))
    specials = {
        "bos": getattr(tokenizer, "bos_token", None),
        "eos": getattr(tokenizer, "eos_token", None),
        "pad": getattr(tokenizer, "pad_token", None),
        "unk": getattr(tokenizer, "unk_token", None),
    }
    hasher.update(json.dumps(specials, sort_keys=True, default=str).encode("utf-8"))
    return hasher.hexdigest()


def combine(config_hex: str, weights_hex: str, tokenizer_hex: str) -> str:
    """The combined base fingerprint from its three parts."""
    blob = f"megacontext-base-v1|{config_hex}|{weights_hex}|{tokenizer_hex}"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


__all__ = ["combine", "config_digest", "tokenizer_digest", "weights_digest"]
