"""``megacontext bench explorer``: how fast the web explorer answers on a big tree (issue 20).

A session of the default base (or ``--base``) is grown to 10M tokens (200k with ``--quick``)
through :meth:`Session.ingest` in 100k-token sources, then refocused a few times with tracing
on; ``megacontext serve`` serves it on loopback, and Debian's ``chromium``, driven by
playwright, opens the explorer as a user does. The same is measured on a 10k-token tree in the
same run (the baseline: what does not grow with the history).

Results (medians; goals from the issue in parentheses):

* ``explorer_first_paint_ms``: from navigating to the explorer's URL until the page has drawn
  the tree (overview, levels, sources, the first page of top-level nodes, the latest trace's
  timeline) (≤ 1000 ms).
* ``explorer_drilldown_ms``: from a click on a node until its children and its detail are drawn,
  over every level from the top down to raw text (≤ 1000 ms).
* ``explorer_api_overview_ms``, ``explorer_api_children_ms``, ``explorer_api_span_ms``: the API
  calls behind them, from a plain HTTP client.

The token ids are seeded random ids of the base's vocabulary (what the text says does not change
what the explorer costs). Needs ``chromium`` (``apt-get install chromium``) and ``playwright``
(the ``dev`` extra).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from megacontext.bench import BenchOptions, Progress, Result
from megacontext.errors import InvalidInputError

SOURCE_TOKENS = 100_000
SMALL_TOKENS = 10_000
TRACE_STEPS = 6
PAGE_LOADS = 5
API_REPEATS = 20
GOAL_MS = 1000.0


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise InvalidInputError(
            "the explorer suite drives Debian's chromium: apt-get install chromium"
        )
    return found


def build_tree(path: Path, base_name: str, tokens: int, progress: Progress) -> None:
    """A session of ``tokens`` seeded ids in sources of SOURCE_TOKENS, with a focus trace."""
    from megacontext.bench.runtime import history_ids
    from megacontext.models.loading import load_base
    from megacontext.runtime import SessionConfig, open_session

    base = load_base(base_name)
    config = SessionConfig(W_max=512, trace=True)
    with open_session(path, base, config=config) as session:
        done = 0
        started = time.perf_counter()
        while done < tokens:
            n = min(SOURCE_TOKENS, tokens - done)
            session.ingest(history_ids(base, n, seed=done), source=f"bench:ids/{done}")
            done += n
            rate = done / (time.perf_counter() - started)
            progress(f"ingested {done:,} of {tokens:,} tokens ({rate:,.0f} tokens/s)")
        session.focus_for(history_ids(base, 16, seed=12_345), steps=0)
        for _ in range(TRACE_STEPS):
            session.refocus()


def measure(
    url: str,
    key: str,
    tree: str,
    progress: Progress,
    page_loads: int = PAGE_LOADS,
    api_repeats: int = API_REPEATS,
) -> dict[str, float]:
    """Median milliseconds of first paint, drill-down clicks and the API calls behind them."""
    from playwright.sync_api import sync_playwright

    headers = {"Authorization": f"Bearer {key}"}
    api = f"/v1/trees/{tree}/explorer"
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        top = http.get(f"{api}/overview").raise_for_status().json()["top_level"]

        def timed(path: str, **params: Any) -> float:
            start = time.perf_counter()
            http.get(path, params=params).raise_for_status()
            return (time.perf_counter() - start) * 1000

        out = {
            "api_overview": statistics.median(timed(f"{api}/overview") for _ in range(api_repeats)),
            "api_children": statistics.median(
                timed(f"{api}/children", level=top, index=0) for _ in range(api_repeats)
            ),
            "api_span": statistics.median(
                timed(f"{api}/span", level=top, index=0) for _ in range(api_repeats)
            ),
        }
    paints, clicks = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            for load in range(page_loads):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                start = time.perf_counter()
                page.goto(f"{url}/explorer/#tree={tree}&key={key}")
                page.wait_for_selector("body[data-ready=true]")
                paints.append((time.perf_counter() - start) * 1000)
                for level in range(top, 0, -1):
                    link = page.locator(f"#nodes li[data-level='{level}'] a.node-link").first
                    start = time.perf_counter()
                    link.click()
                    page.wait_for_selector(f"#span[data-level='{level}']")
                    page.wait_for_selector(f"#nodes li[data-level='{level - 1}']")
                    clicks.append((time.perf_counter() - start) * 1000)
                page.close()
                progress(f"page load {load + 1} of {page_loads}: {paints[-1]:.0f} ms")
        finally:
            browser.close()
    out["first_paint"] = statistics.median(paints)
    out["drilldown"] = statistics.median(clicks)
    return out


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from megacontext.bench.service import create_key, start_server

    chromium_path()
    base = options.base_name()
    big = 200_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory(prefix="mc-bench-explorer-") as tmp:
        root = Path(tmp)
        trees = root / "tenants" / "bench" / "trees"
        for name, tokens in (("small", SMALL_TOKENS), ("big", big)):
            progress(f"building the {name} tree ({tokens:,} tokens)")
            build_tree(trees / name, base, tokens, progress)
        key = create_key(root)
        process, url = start_server(root, base)
        try:
            small = measure(url, key, "small", progress)
            large = measure(url, key, "big", progress)
        finally:
            process.terminate()
            process.wait(timeout=60)
    size = f"{big // 1_000_000}M" if big >= 1_000_000 else f"{big // 1000}k"
    goal = f"goal <= {GOAL_MS:.0f} ms"
    baseline = f"the same on a {SMALL_TOKENS // 1000}k-token tree"
    results = []
    for name, what in (
        ("first_paint", goal),
        ("drilldown", goal),
        ("api_overview", ""),
        ("api_children", ""),
        ("api_span", ""),
    ):
        results.append(
            Result(
                f"explorer_{name}_ms",
                round(large[name], 1),
                "ms",
                baseline,
                round(small[name], 1),
                note=f"{size}-token tree; {what}".rstrip("; "),
            )
        )
    return results


__all__ = ["build_tree", "measure", "run"]
