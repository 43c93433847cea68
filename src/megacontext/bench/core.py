"""``megacontext bench core``: the pure core engine's speed and memory.

Results:

* ``allocator_step_s_W{512,8192,32768}``: median seconds of one planning step on a full working
  context (size = W_max) over a long history, with random scores.
* ``allocator_scaling_vs_WlogW``: the W=32768 time over the W=512 time, divided by the growth of
  ``W log W`` between them. At most ~1 means the planner scales no worse than O(W log W).
* ``wc_apply_s_W32768``: median seconds to apply a planned step (the WC's share of a refocus).
* ``tree_append_tokens_per_s``: tokens appended per second (chunks of 64k tokens, trivial gister)
  while growing a tree to 10M tokens (4M with ``--quick``).
* ``tree_memory_overhead_ratio``: growth of RSS from 1M tokens (resident then) to the end (peak),
  over the payload bytes (token ids + gists) added in that range. Goal ≤ 1.5.

The tree measurements run in a fresh subprocess so that nothing else in this process inflates its
peak RSS.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np

from megacontext.bench import BenchOptions, Progress, Result, median, peak_rss_bytes
from megacontext.core import (
    AllocatorState,
    FocusAllocator,
    HashGister,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
)

GIST_DIM = 64
CHUNK = 1 << 16
K = 32


def _allocator_times(w_max: int, repeats: int) -> tuple[float, float]:
    history = max(1_000_000, 64 * w_max)
    wc = WorkingContext.assemble(history, w_max, K=K, protected_recent=128)
    # Fill the budget exactly with raw tokens so the WC is full.
    wc.extend(w_max - wc.size)
    allocator = FocusAllocator()
    rng = np.random.default_rng(0)
    plan_times, apply_times = [], []
    for _ in range(repeats):
        scores = rng.uniform(-1, 1, size=wc.size)
        state = AllocatorState()
        start = time.perf_counter()
        plan = allocator.plan(wc, scores, state)
        plan_times.append(time.perf_counter() - start)
        trial = wc.copy()
        start = time.perf_counter()
        trial.apply(plan)
        apply_times.append(time.perf_counter() - start)
    return median(plan_times), median(apply_times)


def _current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_probe(total_tokens: int, mark_tokens: int) -> dict[str, float]:
    """Grow a tree to ``total_tokens`` and report peak RSS at ``mark_tokens`` and at the end."""
    tree = MegaContextTree(MemoryBackend(GIST_DIM, np.float16), HashGister(GIST_DIM), K=K)
    chunk = (np.arange(CHUNK, dtype=np.uint32) * 2654435761 % 50_000).astype(np.uint32)
    rss_mark = 0
    payload_mark = 0
    elapsed = 0.0
    while tree.num_tokens < total_tokens:
        start = time.perf_counter()
        tree.append(chunk)
        elapsed += time.perf_counter() - start
        if not rss_mark and tree.num_tokens >= mark_tokens:
            # Current, not peak: an earlier transient peak (imports) would hide the growth.
            rss_mark = _current_rss_bytes()
            payload_mark = _payload_bytes(tree)
    return {
        "tokens": tree.num_tokens,
        "seconds": elapsed,
        "rss_mark": rss_mark,
        "rss_end": peak_rss_bytes(),
        "payload_added": _payload_bytes(tree) - payload_mark,
    }


def _payload_bytes(tree: MegaContextTree) -> int:
    gist_bytes = GIST_DIM * np.dtype(np.float16).itemsize
    gists = sum(tree.count(level) for level in range(1, tree.num_levels + 1))
    return tree.num_tokens * 4 + gists * gist_bytes


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    results: list[Result] = []
    repeats = {512: 200, 8192: 40, 32768: 15} if not quick else {512: 50, 8192: 10, 32768: 5}
    plan_times: dict[int, float] = {}
    for w_max, reps in repeats.items():
        progress(f"allocator planning at W_max={w_max}")
        plan_t, apply_t = _allocator_times(w_max, reps)
        plan_times[w_max] = plan_t
        results.append(Result(f"allocator_step_s_W{w_max}", plan_t, "s"))
        if w_max == 32768:
            results.append(Result(f"wc_apply_s_W{w_max}", apply_t, "s"))
    growth = (32768 * math.log(32768)) / (512 * math.log(512))
    results.append(
        Result(
            "allocator_scaling_vs_WlogW",
            plan_times[32768] / plan_times[512],
            "x",
            baseline_name="W log W growth 512→32768",
            baseline_value=growth,
            note="ratio <= 1 means no worse than O(W log W)",
        )
    )

    total = 4_000_000 if quick else 10_000_000
    progress(f"tree append to {total:,} tokens (subprocess)")
    probe = subprocess.run(
        [sys.executable, "-m", "megacontext.bench.core", str(total), "1000000"],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(probe.stdout)
    results.append(Result("tree_append_tokens_per_s", m["tokens"] / m["seconds"], "tokens/s"))
    results.append(
        Result(
            "tree_memory_overhead_ratio",
            (m["rss_end"] - m["rss_mark"]) / m["payload_added"],
            "x",
            note=f"RSS growth 1M→{m['tokens'] / 1e6:.0f}M tokens over payload added; goal <= 1.5",
        )
    )
    return results


if __name__ == "__main__":
    print(json.dumps(memory_probe(int(sys.argv[1]), int(sys.argv[2]))))
