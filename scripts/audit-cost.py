"""What the audit trail costs an ask: alternate asks with the audit on and stubbed out.

.venv/bin/python scripts/audit-cost.py
"""

import statistics, time, tempfile
from pathlib import Path
import torch
from megacontext.runtime import open_session, SessionConfig
from megacontext.data import heldout_texts

torch.set_num_threads(1)
d = Path(tempfile.mkdtemp()) / "t"
with open_session(d, "default", config=SessionConfig(W_max=512)) as s:
    for t in heldout_texts()[:2]:
        s.ingest(t)
on, off = [], []
for i in range(16):
    with open_session(d, readonly=True, create=False) as s:
        if i % 2:
            s.record = lambda *a, **k: None
        t0 = time.perf_counter()
        s.ask("What happened next?", max_new_tokens=8)
        dt = (time.perf_counter() - t0) * 1000
        (off if i % 2 else on).append(dt)
print(
    f"ask with audit p50 {statistics.median(on[1:]):.1f} ms, without {statistics.median(off[1:]):.1f} ms, n={len(on) - 1} each"
)
