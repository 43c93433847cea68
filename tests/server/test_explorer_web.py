"""The web explorer in a real browser: Debian's chromium driven by playwright (never a downloaded
browser) against the real service on loopback. Screenshots go to ``runs/artifacts/explorer``."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MEGACONTEXT_ARTIFACTS", "runs/artifacts")) / "explorer"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI", "").lower() != "true",
    reason="needs Debian's chromium (apt-get install chromium); CI installs it",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield chromium
        chromium.close()


def snap(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture()
def focus_on_one_span(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Sessions the service opens focus by an oracle that wants the entry holding token n-150
    expanded and every other collapsed: the tiny test LensNet is untrained, and following a
    citation needs focus to bring raw text into view (what citations cite)."""
    import numpy as np

    from megacontext.server import trees

    opened = trees.open_session

    def oracle(wc):  # type: ignore[no-untyped-def]
        target = wc.num_tokens - 150
        starts, ends = wc.spans()
        return np.where((starts <= target) & (target < ends), 1.0, -1.0)

    def open_focusing(*args, **kwargs):  # type: ignore[no-untyped-def]
        session = opened(*args, **kwargs)
        session.score_override = oracle
        return session

    monkeypatch.setattr(trees, "open_session", open_focusing)


def test_drill_play_annotate_reload_and_follow_a_citation(  # type: ignore[no-untyped-def]
    browser, world, live, logs, focus_on_one_span
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live}/explorer/#tree={logs}&key={world.writer}")
    page.wait_for_selector("body[data-ready=true]")
    assert world.writer not in page.url  # the key left the address bar
    top = int(page.locator("#levels tbody tr").count()) - 1
    assert top >= 3
    snap(page, "overview")

    # drill down from a top-level gist, level by level, to raw text
    for level in range(top, 0, -1):
        page.locator(f"#nodes li[data-level='{level}'] a.node-link").first.click()
        page.wait_for_selector(f"#nodes li[data-level='{level - 1}']")
        assert page.locator("#span").get_attribute("data-level") == str(level)
        assert page.locator("#breadcrumbs a").count() == top - level + 2
    tokens = page.locator("#nodes li[data-level='0']")
    assert tokens.count() == world_K(page)
    tokens.nth(1).locator("a.node-link").click()
    page.wait_for_selector("#span[data-level='0']")
    assert page.locator("#span-text").inner_text().strip()
    assert "harbour.txt" in page.locator("#span-sources").inner_text()
    snap(page, "drill-down")

    # play the trace forward and back
    status = page.locator("#step-status")
    expect(status).to_contain_text(re.compile(r"step 1 of 4\b"))
    first = page.locator("#timeline .cell").count()
    page.click("#step-forward")
    page.click("#step-forward")
    expect(status).to_contain_text(re.compile(r"step 3 of 4\b"))
    page.click("#step-back")
    expect(status).to_contain_text(re.compile(r"step 2 of 4\b"))
    page.uncheck("#show-after")
    expect(status).to_contain_text("before the step's edits")
    page.check("#show-after")
    assert first > 0 and page.locator("#timeline .cell").count() > 0
    page.locator("#timeline .cell.lvl1").first.click()
    page.wait_for_selector("#span[data-level='1']")
    assert "LensNet score" in page.locator("#span-evidence").inner_text()
    snap(page, "playback")

    # annotate the span shown, reload, find the note again
    node = page.locator("#span").get_attribute("data-index")
    page.fill("#annotation-note", "checked against the harbour log")
    page.fill("#annotation-tags", "ferries, verified")
    page.click("#annotation-save")
    page.wait_for_selector("#annotations li.annotation")
    assert "[ferries, verified]" in page.locator("#annotations").inner_text()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#span").get_attribute("data-index") == node
    assert "checked against the harbour log" in page.locator("#annotations").inner_text()
    snap(page, "annotation")

    # ask, then follow a citation to its span
    page.fill("#ask-input", "where do pears ripen?")
    page.click("#ask-form button")
    citation = page.locator("#citations li.citation").first
    citation.wait_for()
    start = int(citation.get_attribute("data-start") or -1)
    citation.locator("a").click()
    page.wait_for_function(
        "s => { const d = document.getElementById('span').dataset;"
        " return +d.start <= s && s < +d.stop; }",
        arg=start,
    )
    snap(page, "citation")
    assert errors == []
    page.close()


def world_K(page) -> int:  # type: ignore[no-untyped-def]
    """K of the tree shown: the tokens one LOD1 node spans (the levels table's second row)."""
    return int(page.locator("#levels tbody tr").nth(1).locator("td").nth(2).inner_text())
