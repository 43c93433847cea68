"""Byte-level BPE tokenizer training (``tokenizers``), saved as an HF-loadable ``tokenizer.json``.

Digits are split one per token (as in Llama), so numbers such as pass keys are copied digit by
digit and every number has one spelling. The tokenizer adds ``<|bos|>`` in front of each encoded
text (Llama convention); ``<|eos|>`` ends documents in training data; ``<|pad|>`` pads batches.

Example:
    >>> from megacontext.train.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["some text", "more text"], vocab_size=300)  # doctest: +SKIP
    >>> save_tokenizer(tok, "runs/tok")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from megacontext.errors import InvalidInputError

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD)


def special_id(tok: Tokenizer, token: str) -> int:
    """Id of a special token (``BOS``, ``EOS``, ``PAD``); an error if the tokenizer lacks it."""
    idx = tok.token_to_id(token)
    if idx is None:
        raise InvalidInputError(
            f"tokenizer has no {token!r} token; use a tokenizer made by megacontext train tokenizer"
        )
    return int(idx)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
) -> Tokenizer:
    """Train a byte-level BPE tokenizer.

    Args:
        texts: Training texts (documents).
        vocab_size: Target vocabulary size including the 256 byte tokens and special tokens.
        min_frequency: Minimum pair frequency for a merge.

    Returns:
        A ``tokenizers.Tokenizer`` whose ids 0, 1, 2 are BOS, EOS, PAD.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise InvalidInputError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens), "
            f"got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path, model_max_length: int = 8192) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` so ``AutoTokenizer`` loads the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n"
    )
    return out / "tokenizer.json"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load ``tokenizer.json`` (a file, or a directory containing one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise InvalidInputError(
            f"no tokenizer at {path}; train one with: megacontext train tokenizer --corpus DIR "
            f"--out {path.parent}"
        )
    return Tokenizer.from_file(str(path))


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The GPT-2 byte→unicode map, inverted: each ByteLevel token char stands for one byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    bs += list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Number of UTF-8 bytes each token id stands for (0 for special tokens).

    Used to turn a loss in nats per token into bits per byte.
    """
    decoder = _byte_decoder()
    vocab = tok.get_vocab()
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    specials = set(SPECIAL_TOKENS)
    for token, idx in vocab.items():
        if token in specials:
            continue
        lengths[idx] = sum(1 for ch in token if ch in decoder)
    return lengths


def encode_documents(tok: Tokenizer, texts: Iterable[str]) -> np.ndarray:
    """Encode documents into one stream ``BOS doc EOS BOS doc EOS ...`` (uint32)."""
    bos, eos = special_id(tok, BOS), special_id(tok, EOS)
    texts = list(texts)
    chunks: list[np.ndarray] = []
    batch = 64
    for start in range(0, len(texts), batch):
        for enc in tok.encode_batch(texts[start : start + batch], add_special_tokens=False):
            chunks.append(np.asarray([bos, *enc.ids, eos], dtype=np.uint32))
    if not chunks:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(chunks)
