"""Token streams of a built corpus in a given base model's tokenizer, cached on disk.

GistNet and LensNet train against a particular frozen base, so the corpus must be tokenized with
that base's tokenizer (the corpus itself is built once by ``megacontext train corpus``). Streams
are ``BOS doc EOS BOS doc EOS …`` per source and split, cached as ``.npy`` under the corpus
directory, keyed by the tokenizer's fingerprint.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter
from megacontext.train.corpus import read_documents


def corpus_streams(
    corpus_dir: str | Path, base: BaseAdapter, split: str, progress: bool = True
) -> dict[str, np.ndarray]:
    """``{source: token ids}`` of one split (``train`` or ``val``) in ``base``'s tokenizer."""
    corpus = Path(corpus_dir)
    docs_path = corpus / f"{split}.jsonl"
    if not docs_path.is_file():
        raise InvalidInputError(
            f"{docs_path} does not exist; build the corpus first: megacontext train corpus "
            f"--out {corpus}"
        )
    cache = corpus / "tokens" / f"{base.tokenizer_fingerprint[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    done = {p.stem.removeprefix(f"{split}-"): p for p in cache.glob(f"{split}-*.npy")}
    marker = cache / f"{split}.complete"
    if marker.is_file():
        return {name: np.load(path) for name, path in sorted(done.items())}
    by_source: dict[str, list[str]] = defaultdict(list)
    for doc in read_documents(docs_path):
        by_source[doc.source].append(doc.text)
    backend = base.tokenizer.backend_tokenizer
    bos, eos = base.bos_token_id, base.eos_token_id
    streams: dict[str, np.ndarray] = {}
    for source, texts in tqdm(
        sorted(by_source.items()), desc=f"tokenizing {split}", disable=not progress
    ):
        chunks = []
        for lo in range(0, len(texts), 64):
            for enc in backend.encode_batch(texts[lo : lo + 64], add_special_tokens=False):
                ids = enc.ids
                if bos is not None:
                    ids = [bos, *ids]
                if eos is not None:
                    ids = [*ids, eos]
                chunks.append(np.asarray(ids, dtype=np.uint32))
        streams[source] = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
        np.save(cache / f"{split}-{source}.npy", streams[source])
    marker.write_text("ok\n")
    return streams
