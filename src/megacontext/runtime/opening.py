"""Opening a session directory: create it, or reopen it with what it recorded.

A session directory holds everything a history needs::

    session/
      session.json      base model, focus bundle and settings, written when it is created
      tree/             the durable tree store (tokens, gists) + meta.sqlite (provenance)
      keys/             retrieval keys, one per gist, beside the tree (D7)
      lexical.sqlite    BM25 index of LOD1 blocks (D7; in PostgreSQL with a metadata_url there)
      traces/           per-step focus telemetry (JSONL)

A reopened session reads ``session.json``: the base, the focus bundle and the settings it was
created with are used unless the caller gives others, so nothing has to be repeated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.core import MegaContextTree
from megacontext.errors import InvalidInputError
from megacontext.files import write_text_atomic
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import DEFAULT_FOCUS, Bundle
from megacontext.models.catalog import DEFAULT
from megacontext.models.context import GistNetGister
from megacontext.runtime.config import SessionConfig
from megacontext.runtime.session import Session, check_lora_free
from megacontext.store.cache import CachedBackend, PageCache
from megacontext.store.lexical import open_lexical_index
from megacontext.store.local import LocalStore
from megacontext.store.manifest import Fingerprints

SESSION_FILE = "session.json"
SESSION_FORMAT = 2


@dataclass(frozen=True)
class Recorded:
    """What a session directory's ``session.json`` says it was created with."""

    base: str
    focus: str
    config: SessionConfig


def read_recorded(root: Path) -> Recorded | None:
    """The settings a session directory recorded, or ``None`` when it has none.

    Raises:
        InvalidInputError: ``session.json`` exists but is not a session record.
    """
    path = root / SESSION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        config = SessionConfig.from_json(dict(data.get("config", {})))
        return Recorded(str(data["base"]), str(data.get("focus", DEFAULT_FOCUS)), config)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(
            f"{path} is not a MegaContext session record ({exc}); restore it or delete it and "
            "reopen with --base (and --focus) given explicitly"
        ) from None


def is_session(root: Path) -> bool:
    """Whether ``root`` is a session directory (it holds a tree)."""
    return (root / "tree" / "manifest.json").is_file()


def open_session(
    path: str | Path,
    base: str | BaseAdapter | None = None,
    focus: str | Path | Bundle | None = None,
    config: SessionConfig | None = None,
    regist: bool = False,
    metadata_url: str | None = None,
) -> Session:
    """Create or reopen the session directory ``path`` (see the module docstring).

    ``base``: a model name/path or a loaded adapter; ``focus``: the GistNet/LensNet bundle —
    ``"default"`` (the one shipped for the base), a bundle directory, or a loaded bundle;
    ``config``: the session's settings. Each defaults to what a reopened session recorded,
    else to ``"default"``, ``"default"`` and ``SessionConfig()``. Reopening with another base,
    tokenizer or GistNet raises ``FingerprintMismatchError`` unless ``regist=True`` (D13).
    ``metadata_url``: where a new tree keeps its metadata, provenance and lexical index (a
    PostgreSQL URL for shared deployments; default: SQLite files in ``path``); a reopened tree
    keeps the one it was created with.
    """
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base

    root = Path(path)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{root} exists and is not a directory; choose another --tree path")
    recorded = read_recorded(root)
    base = base if base is not None else (recorded.base if recorded else DEFAULT)
    focus = focus if focus is not None else (recorded.focus if recorded else DEFAULT_FOCUS)
    cfg = config or (recorded.config if recorded else SessionConfig())
    adapter = load_base(base) if isinstance(base, str) else base
    if isinstance(focus, Bundle):
        bundle = focus
    else:
        bundle_dir = resolve_focus(focus, adapter.fingerprints, adapter.source)
        bundle = load_bundle(bundle_dir, fingerprints=adapter.fingerprints)
    gistnet = bundle.get("gistnet")
    if cfg.use_lora and bundle.lora is not None:
        check_lora_free(adapter)  # before anything is created or locked
    fingerprints = Fingerprints(
        base=adapter.fingerprint,
        tokenizer=adapter.tokenizer_fingerprint,
        gistnet=gistnet.weights_version(),
    )
    # Keys also depend on the key head: a retrained head re-keys the tree (keys are derived).
    key_fingerprints = Fingerprints(
        base=adapter.fingerprint,
        tokenizer=adapter.tokenizer_fingerprint,
        gistnet=gistnet.key_version(),
    )
    root.mkdir(parents=True, exist_ok=True)
    tree_dir, keys_dir = root / "tree", root / "keys"
    if (tree_dir / "manifest.json").is_file():
        store = LocalStore.open(tree_dir, fingerprints=fingerprints, regist=regist)
        kept = store.manifest.metadata_url
        if metadata_url is not None and metadata_url != kept:
            store.close()
            raise InvalidInputError(
                f"{root} keeps its metadata in {kept or 'its own SQLite files'}, not "
                f"{metadata_url}; reopen it without metadata_url (a tree stays where it was made)"
            )
        keys = LocalStore.open(keys_dir, fingerprints=key_fingerprints, regist=True)
    else:
        store = LocalStore.create(
            tree_dir,
            dim=adapter.d_model,
            K=gistnet.config.K,
            fingerprints=fingerprints,
            metadata_url=metadata_url,
        )
        keys = LocalStore.create(
            keys_dir,
            dim=gistnet.config.key_dim,
            K=gistnet.config.K,
            gist_dtype="float32",
            fingerprints=key_fingerprints,
            role="keys",
        )
    # Reads (the working context's tokens and gists, expanded children, keys) go through a
    # bounded page cache; appends go straight to the stores.
    tree = MegaContextTree(
        CachedBackend(store, PageCache(store, capacity_pages=cfg.cache_pages)),
        GistNetGister(gistnet, adapter),
        K=gistnet.config.K,
        vocab_size=adapter.vocab_size,
        gist_batch_size=cfg.gist_batch,
        key_backend=CachedBackend(keys, PageCache(keys, capacity_pages=cfg.cache_pages)),
    )
    lexical = open_lexical_index(
        root / "lexical.sqlite",
        K=gistnet.config.K,
        metadata_url=store.manifest.metadata_url,
        tree_id=store.manifest.tree_id,
    )
    if recorded is None or regist:
        _record(root, adapter, focus, bundle, cfg)
    session = Session(root, adapter, bundle, tree, [store, keys], lexical, cfg)
    # The lexical index is derived data: rebuild what it lacks (a crash, or a fresh session).
    if lexical.num_blocks > tree.blocks:
        raise InvalidInputError(
            f"{root / 'lexical.sqlite'} indexes more blocks than the tree holds; delete it "
            "and reopen to rebuild it"
        )
    session._index_new_blocks(lexical.num_blocks)
    return session


def _record(
    root: Path, base: BaseAdapter, focus: str | Path | Bundle, bundle: Bundle, cfg: SessionConfig
) -> None:
    """Write ``session.json``: what a later open reads when it is given nothing."""
    if isinstance(focus, Bundle):
        focus_label = str(bundle.path) if bundle.path is not None else DEFAULT_FOCUS
    else:
        focus_label = str(focus)
    document: dict[str, Any] = {
        "format": SESSION_FORMAT,
        "base": base.source,
        "focus": focus_label,
        "config": cfg.to_json(),
    }
    write_text_atomic(root / SESSION_FILE, json.dumps(document, indent=2) + "\n")


__all__ = ["SESSION_FILE", "Recorded", "is_session", "open_session", "read_recorded"]
