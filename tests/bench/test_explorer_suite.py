"""`megacontext bench explorer`'s measurement against a real `megacontext serve` and chromium
(the shipped default base, a small tree)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from megacontext.bench import explorer, service


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None and os.environ.get("CI", "").lower() != "true",
    reason="needs Debian's chromium (apt-get install chromium); CI installs it",
)
def test_the_explorer_suite_paints_and_drills_down(tmp_path: Path) -> None:
    tree = tmp_path / "tenants" / "bench" / "trees" / "t"
    explorer.build_tree(tree, "default", 40_000, print)  # two levels of gists above the tokens
    key = service.create_key(tmp_path)
    process, url = service.start_server(tmp_path, "default")
    try:
        measured = explorer.measure(url, key, "t", print, page_loads=1, api_repeats=3)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert set(measured) == {
        "first_paint",
        "drilldown",
        "api_overview",
        "api_children",
        "api_span",
    }
    assert all(math.isfinite(v) and v > 0 for v in measured.values())
