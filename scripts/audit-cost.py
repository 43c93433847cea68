"""What the audit trail costs an ask: alternate asks with the audit on and stubbed out.

.venv/bin/python scripts/audit-cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from megacontext.data import heldout_texts
from megacontext.runtime import SessionConfig, open_session

PAIRS = 8


def main() -> None:
    torch.set_num_threads(1)
    tree = Path(tempfile.mkdtemp()) / "t"
    with open_session(tree, "default", config=SessionConfig(W_max=512)) as session:
        for text in heldout_texts()[:2]:
            session.ingest(text)
    audited: list[float] = []
    unaudited: list[float] = []
    for i in range(2 * PAIRS):
        with open_session(tree, readonly=True, create=False) as session:
            if i % 2:
                session.record = lambda *args, **kwargs: None  # type: ignore[method-assign]
            started = time.perf_counter()
            session.ask("What happened next?", max_new_tokens=8)
            (unaudited if i % 2 else audited).append((time.perf_counter() - started) * 1000)
    # The first pair warms caches up: left out.
    print(
        f"ask with audit p50 {statistics.median(audited[1:]):.1f} ms, without "
        f"{statistics.median(unaudited[1:]):.1f} ms, n={PAIRS - 1} each"
    )


if __name__ == "__main__":
    main()
