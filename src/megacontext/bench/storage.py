"""``megacontext bench storage``: the durable store's append and read speed, cache, and memory.

Results (every ratio is measured against its baseline in the same run):

* ``append_MBps`` / ``append_ratio_vs_raw``: token appends into a :class:`LocalStore` (default
  16 MB segments, each sealed with its sha256) over raw sequential ``os.write`` of the same bytes
  in the same batches, with the same fsync policy: one ``flush()`` at the end (for the store:
  fsync of every segment and new directory entry, then the atomic manifest replace). Goal ≥ 0.8.
* ``append_1_token_us``: one token per ``append`` (as decoding appends), mean latency over
  20,000 appends and one ``flush()``, against a raw 4-byte ``os.pwrite`` per token. Each store
  append also writes the CRC32 slot of its checksum block (format v2).
* ``read_p50_us_warm``, ``read_p99_us_warm``: latency of one random level-1 node read
  (``store.read(1, i, i + 1)``, a zero-copy view of the segment's memory map) once the store is
  warm; ``read_p99_ratio_vs_pread`` compares the p99 with raw ``os.pread`` of the same record
  bytes into a numpy array. Goal ≤ 3.
* ``read_p99_us_cold``, ``read_max_us_cold``: the same reads from a freshly opened store after the
  segment files were evicted from the OS page cache (``posix_fadvise(DONTNEED)``); the baseline is
  a cold ``pread``. The first read of each sealed segment streams the whole segment once for its
  sha256 check (the max), which also brings it into the page cache (so the p99 is low).
* ``cache_hit_ratio_prefetch`` / ``cache_hit_ratio_no_prefetch``: a focus trace replayed through a
  bounded :class:`PageCache`. The trace comes from the real :class:`FocusAllocator` over a
  :class:`WorkingContext` whose scores follow a drifting point of interest; every expansion
  fetches the expanded gist's children. With prefetch, each step hints the children of the
  best-scored gists that were *not* expanded yet (the ones the allocator is close to expanding).
* ``ingest_rss_ratio_100M_vs_10M``: peak RSS of a fresh process that ingests 100M tokens through
  ``MegaContextTree`` + ``LocalStore`` (trivial gister, d=64) over one that ingests 10M
  (``--quick``: ``ingest_rss_ratio_10M_vs_1M``). Goal ≤ 1.2.
* ``s3_segment_read_p50_ms``, ``s3_segment_read_p99_ms``, ``s3_segment_read_p99_ratio_vs_local``:
  whole sealed segments read back from an ``s3://`` replica root against the same segments from a
  ``file://`` root on local disk, through the reader's replica path (:meth:`ReplicaSet.fetch`:
  the bytes, then their sha256 check). The S3 server is moto's server mode (a dev dependency),
  started by the suite on loopback in its own process: it stands in for an object store, so the
  numbers measure the store's S3 path (s3fs, HTTP, one GET per segment), not a real network.
  Skipped, with a message, when moto is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np

from megacontext.bench import (
    BenchOptions,
    Progress,
    Result,
    environment,
    median,
    peak_rss_bytes,
)
from megacontext.core import (
    AllocatorConfig,
    HashGister,
    MegaContextTree,
    WorkingContext,
)
from megacontext.focus import FocusEngine
from megacontext.store import LocalStore, Replication
from megacontext.store.cache import PageCache
from megacontext.store.replicas import ReplicaSet
from megacontext.store.segment import HEADER_BYTES, segment_name

K = 32
DIM = 64
BATCH = 1 << 16  # tokens per append
Trace = list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]


def _tokens(n: int, offset: int = 0) -> np.ndarray:
    positions = np.arange(offset, offset + n, dtype=np.uint64)
    return ((positions * np.uint64(2654435761)) % np.uint64(50_000)).astype(np.uint32)


def _percentile_us(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1000.0


# -- appends -----------------------------------------------------------------------------------


def _append_store(root: Path, data: np.ndarray) -> float:
    store = LocalStore.create(root, dim=DIM, K=K)
    start = time.perf_counter()
    for lo in range(0, len(data), BATCH):
        store.append(0, data[lo : lo + BATCH])
    store.flush()
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def _append_raw(path: Path, data: np.ndarray) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for lo in range(0, len(data), BATCH):
        os.write(fd, data[lo : lo + BATCH].tobytes())
    os.fsync(fd)  # the same policy as the store run: one flush at the end
    os.close(fd)
    return time.perf_counter() - start


def bench_append(tmp: Path, tokens: int, repeats: int, progress: Progress) -> list[Result]:
    data = _tokens(tokens)
    store_times, raw_times = [], []
    for r in range(repeats):  # interleaved, so both see the same machine state
        progress(f"append {tokens / 1e6:.0f}M tokens, round {r + 1}/{repeats}")
        raw_times.append(_append_raw(tmp / f"raw{r}.bin", data))
        store_times.append(_append_store(tmp / f"store{r}", data))
        (tmp / f"raw{r}.bin").unlink()
    megabytes = data.nbytes / 1e6
    store_rate, raw_rate = megabytes / median(store_times), megabytes / median(raw_times)
    return [
        Result("append_MBps", store_rate, "MB/s", "raw sequential write", raw_rate),
        Result(
            "append_ratio_vs_raw",
            store_rate / raw_rate,
            "x",
            note=f"store {store_rate:.0f} MB/s vs raw {raw_rate:.0f} MB/s; goal >= 0.8",
        ),
    ]


def bench_single_appends(tmp: Path, tokens: int, repeats: int, progress: Progress) -> list[Result]:
    """Decoding's pattern: one token per append, then one flush."""
    data = _tokens(tokens)
    store_times, raw_times = [], []
    for r in range(repeats):
        progress(f"single-token appends, round {r + 1}/{repeats}")
        store = LocalStore.create(tmp / f"single{r}", dim=DIM, K=K)
        start = time.perf_counter()
        for i in range(tokens):
            store.append(0, data[i : i + 1])
        store.flush()
        store_times.append(time.perf_counter() - start)
        store.close()
        fd = os.open(tmp / f"single{r}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        start = time.perf_counter()
        for i in range(tokens):
            os.pwrite(fd, data[i : i + 1].tobytes(), 4 * i)
        os.fsync(fd)
        raw_times.append(time.perf_counter() - start)
        os.close(fd)
    store_us, raw_us = median(store_times) / tokens * 1e6, median(raw_times) / tokens * 1e6
    return [
        Result(
            "append_1_token_us",
            store_us,
            "us",
            "raw 4-byte pwrite",
            raw_us,
            note="one token per append, as decoding does; each also writes its block's CRC32",
        )
    ]


# -- reads -------------------------------------------------------------------------------------


def _build_tree(root: Path, tokens: int, progress: Progress) -> None:
    tree = MegaContextTree(LocalStore.create(root, dim=DIM, K=K), HashGister(DIM), K=K)
    for lo in range(0, tokens, BATCH):
        tree.append(_tokens(min(BATCH, tokens - lo), lo))
        if lo % (BATCH * 32) == 0:
            progress(f"building a {tokens / 1e6:.0f}M-token tree: {lo / 1e6:.1f}M")
    tree.close()


def _evict(root: Path) -> None:
    for path in root.rglob("*.seg"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


class _Pread:
    """The baseline: pread of one record from the segment files, into a numpy array."""

    def __init__(self, store: LocalStore, level: int):
        info = store.manifest.levels[level]
        self.capacity = info.capacity
        self.record_bytes = info.width * np.dtype(info.dtype).itemsize
        self.dtype = np.dtype(info.dtype)
        self.fds = [
            os.open(store.root / segment_name(level, seq), os.O_RDONLY)
            for seq in range(-(-store.count(level) // self.capacity))
        ]

    def read(self, index: int) -> np.ndarray:
        seq, offset = divmod(index, self.capacity)
        data = os.pread(self.fds[seq], self.record_bytes, HEADER_BYTES + offset * self.record_bytes)
        return np.frombuffer(data, self.dtype)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def bench_reads(root: Path, samples: int, progress: Progress) -> list[Result]:
    progress("random node reads")
    store = LocalStore.open(root, readonly=True)
    n = store.count(1)
    rng = np.random.default_rng(0)
    indices = [int(i) for i in rng.integers(0, n, samples)]
    pread = _Pread(store, 1)
    for i in indices:  # warm both paths
        store.read(1, i, i + 1)
        pread.read(i)
    store_ns, pread_ns = [], []
    clock = time.perf_counter_ns
    for i in indices:
        t0 = clock()
        store.read(1, i, i + 1)
        t1 = clock()
        pread.read(i)
        t2 = clock()
        store_ns.append(t1 - t0)
        pread_ns.append(t2 - t1)
    store.close()
    pread.close()

    progress("cold reads (page cache evicted)")
    cold_indices = [int(i) for i in rng.integers(0, n, min(samples, 2000))]
    _evict(root)
    cold_store = LocalStore.open(root, readonly=True)
    cold_ns = []
    for i in cold_indices:
        t0 = clock()
        cold_store.read(1, i, i + 1)
        cold_ns.append(clock() - t0)
    cold_store.close()
    _evict(root)
    cold_pread = _Pread(LocalStore.open(root, readonly=True), 1)
    cold_pread_ns = []
    for i in cold_indices:
        t0 = clock()
        cold_pread.read(i)
        cold_pread_ns.append(clock() - t0)
    cold_pread.close()

    p99, p99_pread = _percentile_us(store_ns, 99), _percentile_us(pread_ns, 99)
    return [
        Result(
            "read_p50_us_warm",
            _percentile_us(store_ns, 50),
            "us",
            "pread p50",
            _percentile_us(pread_ns, 50),
        ),
        Result("read_p99_us_warm", p99, "us", "pread p99", p99_pread),
        Result(
            "read_p99_ratio_vs_pread",
            p99 / p99_pread,
            "x",
            note=f"store p99 {p99:.2f} us vs pread p99 {p99_pread:.2f} us; goal <= 3",
        ),
        Result(
            "read_max_us_cold",
            max(cold_ns) / 1000.0,
            "us",
            "cold pread max",
            max(cold_pread_ns) / 1000.0,
            note="the first read of a sealed segment streams it once for its sha256 check "
            "(which also brings it into the OS page cache)",
        ),
        Result(
            "read_p99_us_cold",
            _percentile_us(cold_ns, 99),
            "us",
            "cold pread p99",
            _percentile_us(cold_pread_ns, 99),
            note="fresh store, segments evicted with posix_fadvise; includes first-read sha256",
        ),
    ]


# -- cache and prefetch ------------------------------------------------------------------------


def focus_trace(num_tokens: int, steps: int, w_max: int, seed: int = 0) -> Trace:
    """A focus trace from the real allocator: per step, (expanded gists, hinted gists)."""
    wc = WorkingContext.assemble(num_tokens, w_max, K=K, protected_recent=4 * K)
    engine = FocusEngine(AllocatorConfig(max_edits=4, cooldown_steps=2, seed=seed))
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, num_tokens)
    width = num_tokens / 400
    trace: Trace = []
    for _ in range(steps):
        target = (
            rng.uniform(0, num_tokens)
            if rng.random() < 0.03
            else float(np.clip(target + rng.normal(0, width / 2), 0, num_tokens - 1))
        )
        starts, ends = wc.spans()
        distance = np.maximum(0, np.maximum(starts - target, target - ends))
        scores = np.exp(-distance / width) - 0.4  # +0.6 on the entry holding the target
        plan = engine.plan(wc, scores)
        expands: list[tuple[int, int]] = [
            (e.level, e.index) for e in plan.edits if e.kind == "expand"
        ]
        levels, indices = wc.levels, wc.indices
        order = np.argsort(-scores, kind="stable")
        chosen = set(expands)
        hints: list[tuple[int, int]] = []
        for pos in order[:64]:
            node = (int(levels[pos]), int(indices[pos]))
            if node[0] >= 1 and node not in chosen and scores[pos] > 0:
                hints.append(node)
            if len(hints) == 8:
                break
        trace.append((expands, hints))
        engine.apply(wc, plan)
    return trace


def replay(store: LocalStore, trace: Trace, prefetch: bool, pages: int) -> float:
    cache = PageCache(store, page_records=K, capacity_pages=pages)
    for expands, hints in trace:
        for level, index in expands:
            cache.read(level - 1, index * K, (index + 1) * K)
        if prefetch:
            for level, index in hints:
                cache.prefetch(level - 1, index * K, (index + 1) * K)
    return cache.stats.hit_ratio


def bench_cache(root: Path, steps: int, progress: Progress) -> list[Result]:
    progress("replaying a focus trace through the page cache")
    store = LocalStore.open(root, readonly=True)
    trace = focus_trace(store.count(0), steps, w_max=2048)
    expansions = sum(len(e) for e, _ in trace)
    with_prefetch = replay(store, trace, prefetch=True, pages=256)
    without = replay(store, trace, prefetch=False, pages=256)
    store.close()
    note = (
        f"{steps} refocus steps, {expansions} expansions, 256-page LRU (page = one node's children)"
    )
    return [
        Result("cache_hit_ratio_prefetch", with_prefetch, "ratio", "no prefetch", without, note),
        Result("cache_hit_ratio_no_prefetch", without, "ratio", note=note),
    ]


# -- object-store tier -------------------------------------------------------------------------

S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited with code {server.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto's S3 server did not listen on 127.0.0.1:{port} in {timeout:.0f} s")


def _forget_s3_clients() -> None:
    fsspec.get_filesystem_class("s3").clear_instance_cache()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, in its own process (so it does not share this
    process's GIL), with this process's environment pointing s3fs at it the documented way
    (docs/storage.md); the environment is restored afterwards."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, server)
        endpoint = f"http://127.0.0.1:{port}"
        values = ("bench", "bench", endpoint, "us-east-1")
        with environment(dict(zip(S3_ENV, values, strict=True))):
            _forget_s3_clients()
            yield endpoint
    finally:
        _forget_s3_clients()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _segment_reads(
    roots: dict[str, ReplicaSet], segments: list[tuple[str, str, int]], rounds: int
) -> dict[str, list[int]]:
    """Nanoseconds per whole-segment fetch from each root; the roots alternate who goes first."""
    samples: dict[str, list[int]] = {kind: [] for kind in roots}
    clock = time.perf_counter_ns
    for r in range(rounds):
        order = list(roots.items()) if r % 2 == 0 else list(reversed(roots.items()))
        for name, sha256, size in segments:
            for kind, replicas in order:
                t0 = clock()
                replicas.fetch(name, sha256, size)
                samples[kind].append(clock() - t0)
    return samples


def bench_object_store(tmp: Path, quick: bool, progress: Progress) -> list[Result]:
    """Seal segments onto a ``file://`` and an ``s3://`` root, then time reading them back from
    each (see the module docstring)."""
    if importlib.util.find_spec("moto") is None:
        progress("object-store reads skipped: moto is not installed (pip install 'moto[server]')")
        return []
    segment_mb, count, rounds = (4, 4, 5) if quick else (16, 8, 12)
    tokens = count * (segment_mb << 20) // 4
    progress("starting moto's S3 server on loopback")
    with s3_server():
        fsspec.filesystem("s3").mkdir("mc-bench")
        file_root, s3_root = f"file://{tmp}/replicas", "s3://mc-bench/replicas"
        progress(f"sealing {count} segments of {segment_mb} MB onto file:// and s3://")
        store = LocalStore.create(
            tmp / "objtree",
            dim=DIM,
            K=K,
            segment_bytes=segment_mb << 20,
            replication=Replication([file_root, s3_root], 2, write_quorum=2),
        )
        for lo in range(0, tokens, BATCH):
            store.append(0, _tokens(min(BATCH, tokens - lo), lo))
        store.flush()
        tree_id = store.manifest.tree_id
        size = store.manifest.levels[0].capacity * 4 + HEADER_BYTES
        segments = [(e.name, e.sha256, size) for e in store.manifest.levels[0].segments]
        store.close()
        roots = {
            kind: ReplicaSet(Replication([root], 1, write_quorum=1), tree_id)
            for kind, root in (("local", file_root), ("s3", s3_root))
        }
        progress(f"reading {len(segments)} sealed segments x {rounds} rounds from each root")
        samples = _segment_reads(roots, segments, rounds)
    return _object_store_results(samples, segment_mb)


def _object_store_results(samples: dict[str, list[int]], segment_mb: int) -> list[Result]:
    to_ms = 1e-3  # _percentile_us gives microseconds
    p50 = {kind: _percentile_us(ns, 50) * to_ms for kind, ns in samples.items()}
    p99 = {kind: _percentile_us(ns, 99) * to_ms for kind, ns in samples.items()}
    note = (
        f"{len(samples['s3'])} reads per root of whole {segment_mb} MB sealed segments (GET or "
        "file read, then the sha256 check); S3 = moto's server mode on loopback, a stand-in for "
        "an object store; local = a file:// root, warm in the OS page cache"
    )
    return [
        Result("s3_segment_read_p50_ms", p50["s3"], "ms", "local p50", p50["local"], note),
        Result("s3_segment_read_p99_ms", p99["s3"], "ms", "local p99", p99["local"], note),
        Result(
            "s3_segment_read_p99_ratio_vs_local",
            p99["s3"] / p99["local"],
            "x",
            note=f"s3 p99 {p99['s3']:.1f} ms vs local p99 {p99['local']:.1f} ms, same run",
        ),
    ]


# -- memory ------------------------------------------------------------------------------------


def ingest_probe(tokens: int) -> dict[str, float]:
    """Ingest ``tokens`` into a fresh store (in a temp dir) and report peak RSS and time."""
    with tempfile.TemporaryDirectory(prefix="mc-bench-rss-") as tmp:
        tree = MegaContextTree(
            LocalStore.create(Path(tmp) / "t", dim=DIM, K=K), HashGister(DIM), K=K
        )
        start = time.perf_counter()
        for lo in range(0, tokens, BATCH):
            tree.append(_tokens(min(BATCH, tokens - lo), lo))
        tree.close()
        seconds = time.perf_counter() - start
    return {"tokens": tokens, "peak_rss": float(peak_rss_bytes()), "seconds": seconds}


def _probe_subprocess(tokens: int) -> dict[str, float]:
    code = (
        "import json; from megacontext.bench.storage import ingest_probe; "
        f"print(json.dumps(ingest_probe({tokens})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_rss(small: int, large: int, progress: Progress) -> list[Result]:
    progress(f"peak RSS of a {small / 1e6:.0f}M-token ingest (subprocess)")
    a = _probe_subprocess(small)
    progress(f"peak RSS of a {large / 1e6:.0f}M-token ingest (subprocess)")
    b = _probe_subprocess(large)
    name = f"ingest_rss_ratio_{large // 1_000_000}M_vs_{small // 1_000_000}M"
    return [
        Result(
            name,
            b["peak_rss"] / a["peak_rss"],
            "x",
            note=f"peak RSS {b['peak_rss'] / 2**20:.0f} MiB vs {a['peak_rss'] / 2**20:.0f} MiB; "
            f"{large / b['seconds'] / 1e6:.2f}M tokens/s ingest; goal <= 1.2",
        ),
        Result("ingest_tokens_per_s", large / b["seconds"], "tokens/s"),
    ]


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """Run the storage suite (``quick``: smaller sizes, 10M vs 1M tokens for RSS)."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-storage-") as tmp:
        work = Path(tmp)
        results += bench_append(work, 16_000_000 if quick else 64_000_000, 3, progress)
        results += bench_single_appends(work, 20_000, 3, progress)
        tree_tokens = 4_000_000 if quick else 16_000_000
        _build_tree(work / "tree", tree_tokens, progress)
        results += bench_reads(work / "tree", 20_000 if quick else 100_000, progress)
        results += bench_cache(work / "tree", 300 if quick else 1000, progress)
        results += bench_object_store(work, quick, progress)
    if quick:
        results += bench_rss(1_000_000, 10_000_000, progress)
    else:
        results += bench_rss(10_000_000, 100_000_000, progress)
    return results


if __name__ == "__main__":
    progress = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    for item in run(quick="--quick" in sys.argv, progress=progress, options=BenchOptions()):
        print(json.dumps(item.to_json()))
