"""The docs' screenshots of the web explorer, taken as a user gets there: a tree built by the
default base from the project's own docs (`megacontext ingest`), served by `megacontext explore`,
driven in Debian's chromium by playwright.

    .venv/bin/python scripts/explorer-screenshots.py [--out docs/results/explorer]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["concepts.md", "runtime.md", "storage.md", "focus-models.md"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "explorer")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "megacontext.cli"]
    with tempfile.TemporaryDirectory(prefix="mc-explorer-shots-") as tmp:
        session = Path(tmp) / "docs-tree"
        sources = [str(ROOT / "docs" / name) for name in DOCS]
        subprocess.run([*cli, "ingest", *sources, "--tree", str(session)], check=True)
        # Generating refocuses as it goes: the session writes a focus trace to play back.
        prompt = "The working context holds"
        generate = [*cli, "generate", prompt, "--tree", str(session), "--max-new-tokens", "96"]
        subprocess.run(generate, check=True)
        server = subprocess.Popen(
            [*cli, "explore", str(session), "--no-open"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = wait_for_url(server)
            shoot(url, out)
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_for_url(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + 300
    for line in server.stdout:
        found = re.search(r"(http://\S+/explorer/#\S+)", line)
        if found:
            return found.group(1)
        if time.monotonic() > deadline:
            break
    raise SystemExit("megacontext explore printed no URL")


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.set_default_timeout(120_000)
        for _ in range(60):  # the server may still be loading the base
            try:
                page.goto(url)
                break
            except Exception:  # noqa: BLE001  (connection refused until it listens)
                time.sleep(1)
        page.wait_for_selector("body[data-ready=true]")
        page.screenshot(path=str(out / "overview.png"))
        top = page.locator("#levels tbody tr").count() - 1
        for level in range(top, 0, -1):
            page.locator(f"#nodes li[data-level='{level}'] a.node-link").nth(1).click()
            page.wait_for_selector(f"#nodes li[data-level='{level - 1}']")
        page.locator("#nodes li[data-level='0'] a.node-link").nth(3).click()
        page.wait_for_selector("#span[data-level='0']")
        page.screenshot(path=str(out / "drill-down.png"))
        page.fill("#search-input", "working context budget")
        page.click("#search-form button")
        page.locator("#search-results li a").first.click()
        page.wait_for_selector("#span[data-level='1']")
        steps = int(page.locator("#step-slider").get_attribute("max") or 0)
        for _ in range(min(steps, 3)):
            page.click("#step-forward")
        cell = page.locator("#timeline .cell.lvl1").last  # a gist in view at this step
        index = cell.get_attribute("data-index")
        cell.click()
        page.wait_for_selector(f"#span[data-level='1'][data-index='{index}']")
        page.fill("#annotation-note", "the budget rule, in one line")
        page.fill("#annotation-tags", "budget, design")
        page.click("#annotation-save")
        page.wait_for_selector("#annotations li.annotation")
        page.screenshot(path=str(out / "playback-and-notes.png"))
        page.fill("#ask-input", "What does LensNet score?")
        page.click("#ask-form button")
        citation = page.locator("#citations li.citation a").first
        citation.wait_for()
        citation.click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "citation.png"))
        browser.close()
    for name in ("overview", "drill-down", "playback-and-notes", "citation"):
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
