"""Shared fixtures: a small synthetic corpus and tokenizer (seconds to build, fully offline)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from megacontext.train.corpus import Document, build_corpus
from megacontext.train.tokenizer import save_tokenizer, train_tokenizer

_WORD_TEXT = (
    "the of and to in is was that for it with as his on be at by this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some could time"
)
WORDS = tuple(_WORD_TEXT.split(" "))


def synthetic_documents(n: int = 24, seed: int = 0, source: str = "synthetic") -> list[Document]:
    """Seeded pseudo-English documents with numbers, in paragraphs."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        paragraphs = []
        for _ in range(rng.randint(4, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
            paragraphs.append(" ".join(words).capitalize() + ".")
        docs.append(Document(source, f"doc{i:03d}", "\n\n".join(paragraphs) + "\n"))
    return docs


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, sources=[], extra_documents=synthetic_documents(), val_fraction=0.2)
    return out


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    texts = [d.text for d in synthetic_documents()]
    save_tokenizer(train_tokenizer(texts, vocab_size=320), out)
    return out
