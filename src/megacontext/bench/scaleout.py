"""``megacontext bench scaleout``: ingest throughput on a dask cluster against one process.

The same documents (the package's own docs pages, repeated to size) are ingested into a fresh
session by the serial path (:meth:`Session.ingest`, one process) and by
:func:`megacontext.runtime.cluster.ingest_on_cluster` on a ``LocalCluster`` of 1, 2 and 4 worker
processes (one thread each) on 127.0.0.1, or on ``--cluster ADDRESS``. Each cluster result is
tokens/s with the serial run of the same run as its baseline, and checks that the cluster's tree
equals the serial one (gists of every level, byte for byte). Workers load the base once per
process; that start-up is timed separately (``warmup_s``) and not in the throughput, since a
deployment's workers stay up between ingests.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from megacontext.bench import BenchOptions, Progress, Result

DOCS = Path(__file__).resolve().parents[3] / "docs"
WORKERS = (1, 2, 4)


def _documents(target_chars: int) -> list[Any]:
    from megacontext.runtime.cluster import Document

    pages = sorted(DOCS.glob("*.md")) if DOCS.is_dir() else []
    texts = [p.read_text(encoding="utf-8") for p in pages] or ["MegaContext keeps it all. " * 4000]
    docs, size, copy = [], 0, 0
    while size < target_chars:
        for i, text in enumerate(texts):
            # A copy number makes each repeat new content (not skipped as a duplicate).
            docs.append(Document(f"[copy {copy}]\n{text}", f"bench:{copy}/{i}"))
            size += len(text)
        copy += 1
    return docs


def _digest(root: Path) -> str:
    from megacontext.runtime.opening import open_session

    digest = hashlib.sha256()
    with open_session(root, readonly=True) as mc:
        tree = mc.tree
        digest.update(tree.tokens(0, tree.num_tokens).tobytes())
        for level in range(1, tree.num_levels + 1):
            digest.update(tree.gists(level, 0, tree.count(level)).tobytes())
            digest.update(tree.keys(level, 0, tree.count(level)).tobytes())
    return digest.hexdigest()


def _serial(root: Path, docs: list[Any], base: str) -> float:
    from megacontext.runtime.opening import open_session

    with open_session(root, base=base) as mc:
        started = time.perf_counter()
        for d in docs:
            mc.ingest(d.text, d.source, d.metadata)
        return time.perf_counter() - started


def _on_cluster(root: Path, docs: list[Any], base: str, client: Any) -> tuple[float, Any]:
    from megacontext.runtime.cluster import ingest_on_cluster
    from megacontext.runtime.opening import open_session

    with open_session(root, base=base) as mc:
        run = ingest_on_cluster(mc, docs, client)
    return run.seconds, run


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from distributed import Client, LocalCluster

    from megacontext.runtime.cluster import Document, connect, ingest_on_cluster
    from megacontext.runtime.opening import open_session

    base = options.base_name()
    docs = _documents(60_000 if quick else 600_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-scaleout-") as tmp:
        root = Path(tmp)
        progress(f"serial ingest of {len(docs)} documents")
        serial_s = _serial(root / "serial", docs, base)
        expected = _digest(root / "serial")
        with open_session(root / "serial", readonly=True) as mc:
            tokens = mc.tree.num_tokens
        serial_tps = tokens / serial_s
        results.append(Result("ingest_tokens_per_s/serial", serial_tps, "tokens/s"))
        setups: list[tuple[str, Any]] = []
        if options.cluster:
            setups.append(("cluster", lambda: connect(options.cluster or "")))
        else:
            for n in (1, 2) if quick else WORKERS:
                setups.append((f"{n}_workers", n))
        for label, how in setups:
            local = None
            if isinstance(how, int):
                progress(f"starting a LocalCluster of {how} worker process(es)")
                local = LocalCluster(
                    n_workers=how,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
                client = Client(local)
            else:
                client = how()
            try:
                started = time.perf_counter()
                with open_session(root / f"warm-{label}", base=base) as mc:  # load models
                    ingest_on_cluster(mc, [Document("warm up " * 64)] * 1, client)
                warmup_s = time.perf_counter() - started
                progress(f"cluster ingest on {label}")
                seconds, done = _on_cluster(root / label, docs, base, client)
            finally:
                client.close()
                if local is not None:
                    local.close()
            same = _digest(root / label) == expected
            results.append(
                Result(
                    f"ingest_tokens_per_s/{label}",
                    tokens / seconds,
                    "tokens/s",
                    baseline_name="ingest_tokens_per_s/serial",
                    baseline_value=serial_tps,
                    extra={
                        "workers": done.workers,
                        "tokens": tokens,
                        "seconds": seconds,
                        "warmup_s": warmup_s,
                        "calls_served": done.served,
                        "calls_computed_by_writer": done.computed,
                        "identical_to_serial": same,
                    },
                )
            )
            if not same:
                progress(f"WARNING: the tree ingested on {label} differs from the serial one")
    return results
