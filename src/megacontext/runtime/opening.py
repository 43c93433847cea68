"""Opening a session directory: create it, or reopen it with what it recorded.

A session directory holds everything a history needs::

    session/
      session.json      base model, focus bundle and settings, written when it is created
      tree/             the durable tree store (tokens, gists) + meta.sqlite (provenance)
      keys/             retrieval keys, one per gist, beside the tree (D7)
      lexical.sqlite    BM25 index of LOD1 blocks (D7; in PostgreSQL with a metadata_url there)
      traces/           per-step focus telemetry (JSONL), one file per session that refocused
      removing.json     only while `sources remove` rewrites the history (finished on reopen)

A reopened session reads ``session.json``: the base, the focus bundle and the settings it was
created with are used unless the caller gives others, so nothing has to be repeated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.core import MegaContextTree
from megacontext.core.snapshot import SnapshotBackend, consistent_tokens
from megacontext.errors import BudgetError, InvalidInputError, StorageCorruptionError
from megacontext.files import write_text_atomic
from megacontext.models.adapter import BaseAdapter
from megacontext.models.bundle import DEFAULT_FOCUS, Bundle
from megacontext.models.catalog import DEFAULT
from megacontext.models.context import GistNetGister
from megacontext.models.prompting import PromptFormat
from megacontext.runtime.config import SessionConfig
from megacontext.runtime.erasure import finish_erasures
from megacontext.runtime.journal import recover
from megacontext.runtime.session import Session, check_lora_free
from megacontext.store.cache import CachedBackend, PageCache
from megacontext.store.errors import NotAStoreError
from megacontext.store.lexical import AnyLexicalIndex, open_lexical_index
from megacontext.store.local import LocalStore
from megacontext.store.manifest import Fingerprints, read_manifest
from megacontext.store.metadata import MetadataDB, default_url

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


class NotASessionError(InvalidInputError):
    """A path that should hold a session does not (a typo, or a directory of something else)."""


# Positions a question and its answer need after the working context and the prompt prefix.
QUESTION_ROOM = 256


def open_session(
    path: str | Path,
    base: str | BaseAdapter | None = None,
    focus: str | Path | Bundle | None = None,
    config: SessionConfig | None = None,
    regist: bool = False,
    metadata_url: str | None = None,
    *,
    readonly: bool = False,
    create: bool = True,
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

    ``readonly``: open beside a writer, without locking: the session sees the history as it was
    at opening — every append complete at that moment, nothing half-written — and can refocus
    and ``ask``, but not change the history. Any number of readers may be open at once.
    ``create=False`` refuses a path that holds no session instead of creating one.

    A writer finishes what a crash left unfinished (``session.recovered`` says what): an
    interrupted ingest is rolled back or completed, derived data (keys, lexical index) that
    disagrees with the tree is rebuilt from it.
    """
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base

    root = Path(path)
    _check_path(root, readonly=readonly, create=create)
    if readonly and regist:
        raise InvalidInputError("a read-only session cannot re-gist; open it for writing")
    recorded = read_recorded(root)
    base = base if base is not None else (recorded.base if recorded else DEFAULT)
    focus = focus if focus is not None else (recorded.focus if recorded else DEFAULT_FOCUS)
    cfg = config or (recorded.config if recorded else SessionConfig())
    adapter = load_base(base) if isinstance(base, str) else base
    check_positions(cfg, adapter)
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
    if readonly:
        return _open_reader(root, adapter, bundle, cfg, fingerprints, key_fingerprints)
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
    else:
        store = LocalStore.create(
            tree_dir,
            dim=adapter.d_model * gistnet.config.gists_per_block,
            K=gistnet.config.K,
            fingerprints=fingerprints,
            metadata_url=metadata_url,
        )
    try:
        keys = _open_keys(keys_dir, store, gistnet.config, key_fingerprints)
        tree = MegaContextTree(
            _cached(store, cfg),
            GistNetGister(gistnet, adapter),
            K=gistnet.config.K,
            vocab_size=adapter.vocab_size,
            gist_batch_size=cfg.gist_batch,
            key_backend=_cached(keys, cfg),
        )
    except BaseException:
        store.close()
        raise
    lexical = _open_lexical(root, store, tree.blocks)
    if recorded is None or regist:
        _record(root, adapter, focus, bundle, cfg)
    session = Session(
        root, adapter, bundle, tree, [store, keys], lexical, cfg, metadata=store.metadata()
    )
    # The lexical index is derived data: index what it lacks (a crash, or a fresh session).
    session._index_new_blocks(lexical.num_blocks)
    session.recovered = recover(session)
    finish_erasures(session)  # an erasure a crash interrupted: its cleanup and record
    tree.flush()  # what opening recomputed (gists, keys) is durable before anything else runs
    return session


def _check_path(root: Path, *, readonly: bool, create: bool) -> None:
    """Refuse a path that is not a session unless one may be created there (new or empty)."""
    if root.exists() and not root.is_dir():
        raise NotASessionError(f"{root} exists and is not a directory; choose another path")
    if is_session(root):
        return
    if readonly or not create:
        raise NotASessionError(
            f"{root} holds no MegaContext session (no tree/manifest.json); check the path, "
            "or create one by ingesting into it"
        )
    if root.is_dir() and any(root.iterdir()):
        raise NotASessionError(
            f"{root} is a directory with other files in it, not a session; ingest into a new "
            "or empty directory"
        )


def check_positions(cfg: SessionConfig, base: BaseAdapter) -> None:
    """Refuse a budget the base cannot read: the prompt prefix, ``W_max`` entries and room for
    a question and its answer must fit in the positions the base was trained on."""
    trained = base.trained_positions
    if trained is None:
        return
    prefix = len(PromptFormat.for_base(base, cfg.prompt or PromptFormat.default_style(base)).prefix)
    most = trained - prefix - QUESTION_ROOM
    if cfg.W_max > most:
        raise PositionLimitError(cfg.W_max, most, trained, base.source)


class PositionLimitError(BudgetError):
    """A working-context budget larger than the positions the base was trained on."""

    def __init__(self, W_max: int, most: int, trained: int, base: str):
        self.W_max, self.most, self.trained, self.base = W_max, most, trained, base
        super().__init__(
            f"W_max={W_max:,} does not fit in the {trained:,} positions {base} was trained on "
            f"(with the prompt and room for a question and answer); use W_max <= {most:,}"
        )


def _cached(store: LocalStore, cfg: SessionConfig) -> CachedBackend:
    """Reads (the working context's tokens and gists, expanded children, keys) go through a
    bounded page cache; appends go straight to the store."""
    return CachedBackend(store, PageCache(store, capacity_pages=cfg.cache_pages))


def _open_keys(
    keys_dir: Path, tree: LocalStore, gistnet: Any, fingerprints: Fingerprints
) -> LocalStore:
    """The key store beside the tree, made to agree with it. Keys are derived data: a missing
    or damaged key store is made anew, and keys past the gists they belong to are cut, so the
    tree recomputes whatever is missing when it opens."""
    try:
        keys = LocalStore.open(keys_dir, fingerprints=fingerprints, regist=True)
    except (NotAStoreError, StorageCorruptionError):
        shutil.rmtree(keys_dir, ignore_errors=True)
        keys = LocalStore.create(
            keys_dir,
            dim=gistnet.key_dim,
            K=gistnet.K,
            gist_dtype="float32",
            fingerprints=fingerprints,
            role="keys",
        )
    for level in range(keys.num_levels - 1, 0, -1):
        if keys.count(level) > tree.count(level):
            keys.truncate(level, tree.count(level))
    return keys


def _open_lexical(root: Path, store: LocalStore, blocks: int) -> AnyLexicalIndex:
    """The lexical index, made to agree with the tree (derived data: rebuilt when damaged,
    rows past the tree's blocks dropped)."""
    path = root / "lexical.sqlite"
    url, tree_id = store.manifest.metadata_url, store.manifest.tree_id
    try:
        lexical = open_lexical_index(path, K=store.K, metadata_url=url, tree_id=tree_id)
    except StorageCorruptionError:
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        lexical = open_lexical_index(path, K=store.K, metadata_url=url, tree_id=tree_id)
    if lexical.num_blocks > blocks:
        lexical.truncate(blocks)
    return lexical


def _open_reader(
    root: Path,
    adapter: BaseAdapter,
    bundle: Bundle,
    cfg: SessionConfig,
    fingerprints: Fingerprints,
    key_fingerprints: Fingerprints,
) -> Session:
    """A read-only session over the history as it is now (see :func:`open_session`)."""
    gistnet = bundle.get("gistnet")
    K = gistnet.config.K
    store = LocalStore.open(root / "tree", fingerprints=fingerprints, readonly=True)
    try:
        keys = LocalStore.open(root / "keys", fingerprints=key_fingerprints, readonly=True)
    except NotAStoreError:
        store.close()
        raise NotASessionError(
            f"{root} has no key store; open it once for writing to rebuild it"
        ) from None
    db = metadata_reader(store)
    tree_backend, key_backend = _cached(store, cfg), _cached(keys, cfg)
    n = consistent_tokens(tree_backend, K, key_backend)
    if db is not None:  # nothing of an append that was still running
        running = db.straddling(store.manifest.tree_id, n)
        n = n if running is None else min(n, running)
    tree = MegaContextTree(
        SnapshotBackend(tree_backend, K, n),
        GistNetGister(gistnet, adapter),
        K=K,
        vocab_size=adapter.vocab_size,
        gist_batch_size=cfg.gist_batch,
        key_backend=SnapshotBackend(key_backend, K, n, "key store"),
    )
    lexical = open_lexical_index(
        root / "lexical.sqlite",
        K=K,
        metadata_url=store.manifest.metadata_url,
        tree_id=store.manifest.tree_id,
        readonly=True,
    )
    return Session(
        root,
        adapter,
        bundle,
        tree,
        [store, keys],
        lexical,
        cfg,
        metadata=db,
        readonly=True,
        audit_url=metadata_url(root) if db is not None else None,
    )


def metadata_reader(store: LocalStore) -> MetadataDB | None:
    """The store's metadata database opened read-only, or ``None`` when nothing was recorded."""
    url = store.manifest.metadata_url
    if url is None:
        if not (store.root / "meta.sqlite").is_file():
            return None  # nothing was ever recorded
        url = default_url(str(store.root))
    return MetadataDB(url, readonly=True)


def metadata_url(root: Path) -> str:
    """The URL of the metadata database of the session directory ``root`` (for what may be
    written beside a writer, such as annotations: they never touch the tree)."""
    store = root / "tree"
    return read_manifest(store).metadata_url or default_url(str(store))


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


__all__ = [
    "SESSION_FILE",
    "NotASessionError",
    "PositionLimitError",
    "Recorded",
    "check_positions",
    "is_session",
    "open_session",
    "read_recorded",
]
