"""Byte-level BPE tokenizer: lossless, digits split, BOS added, loadable by transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.errors import InvalidInputError
from megacontext.train.tokenizer import (
    BOS,
    EOS,
    encode_documents,
    load_tokenizer,
    token_byte_lengths,
    train_tokenizer,
)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_roundtrip_is_lossless_and_byte_lengths_add_up(tok_dir: Path, text: str) -> None:
    tok = load_tokenizer(tok_dir)
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert int(token_byte_lengths(tok)[ids].sum()) == len(text.encode("utf-8"))


def test_digits_are_single_tokens_and_bos_is_prepended(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    enc = tok.encode("key 90210")
    assert enc.tokens[0] == BOS
    assert enc.tokens[-5:] == ["9", "0", "2", "1", "0"]


def test_transformers_loads_the_saved_directory(tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok_dir)
    tok = load_tokenizer(tok_dir)
    text = "The pass key is 12345."
    assert hf(text).input_ids == tok.encode(text).ids
    assert hf.bos_token == BOS and hf.eos_token == EOS and hf.pad_token is not None


def test_encode_documents_frames_each_document(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    stream = encode_documents(tok, ["one two", "three"])
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert stream.dtype == np.uint32
    assert stream[0] == bos and stream[-1] == eos
    assert list(stream).count(bos) == 2 and list(stream).count(eos) == 2


def test_training_is_deterministic() -> None:
    texts = ["alpha beta gamma 123", "beta gamma delta 456"] * 20
    a, b = train_tokenizer(texts, 280), train_tokenizer(texts, 280)
    assert a.get_vocab() == b.get_vocab()


def test_bad_vocab_and_missing_file_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(InvalidInputError, match="megacontext train tokenizer"):
        load_tokenizer(tmp_path)
