"""``megacontext bench crash``: kill -9 a session at random moments of ingest and generate.

A child process opens a session (a writer: it settles whatever the previous kill left), reports
what it settled, waits for the word, then ingests seeded pieces of held-out text (each under its
own source; a piece already in the history is skipped, as a re-run ingest would) and generates,
in a seeded random order, until the parent kills it with SIGKILL after a random delay. After each
reopen the parent checks, without loading a model:

* the tree store verifies clean, and every complete node has its gist and its key;
* the journal holds no running append, and the complete ones tile the history from token 0 to
  the last (provenance covers every token), their spans too;
* every ingested piece reads back as exactly the tokens of its text (nothing torn), and no piece
  is in the history twice (re-running an ingest duplicates nothing);
* the lexical index holds one row per LOD1 block.

Results: ``crash_kills`` (and ``kills_during_ingest``, ``kills_during_generate``), what reopening
settled (``rolled_back``, ``completed``, ``kept``), ``crash_check_failures`` (must be 0) and
``reopen_seconds`` (median time for a writer to open the killed session, the model load
included). ``--quick`` kills 8 times; a full run 60 (``$MEGACONTEXT_CRASH_KILLS`` overrides).
The base is ``--base`` (default: the default base) with the focus bundle shipped for it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from megacontext.bench import BenchOptions, Progress, Result, median

KILLS_ENV = "MEGACONTEXT_CRASH_KILLS"
REVISIONS = 3
MOST_DELAY_S = 3.0


def pieces() -> list[str]:
    """The texts the child ingests: the held-out documents, one after another, cut into seeded
    pieces of 15–110k chars (4–28k tokens of the tiny base: the longer ones are appended in more
    than one chunk, so a kill can fall between their tokens)."""
    from megacontext.data import heldout_texts

    rng = random.Random(0)
    stream = "\n\n".join(heldout_texts())
    out: list[str] = []
    start = 0
    while start < len(stream):
        size = rng.randint(15_000, 110_000)
        out.append(stream[start : start + size])
        start += size
    return out


def revised(text: str, revision: int) -> str:
    """Revision ``revision`` of a piece: new content each, and the same content when the same
    revision comes again (which a re-run ingest must skip)."""
    return f"{text}\n(revision {revision})\n"


# ----------------------------------------------------------------------------- the child


def child(tree: str, base: str, seed: int) -> None:
    """Open the session, report what was settled, wait for "go", then write until killed."""
    import torch

    from megacontext.runtime import SessionConfig, open_session

    torch.set_num_threads(1)
    texts = pieces()
    started = time.perf_counter()
    config = SessionConfig(W_max=256, trace=False)
    session = open_session(tree, base=base, config=config)
    opened = time.perf_counter() - started
    settled = [s.action for s in session.recovered]
    print(json.dumps({"ready": opened, "settled": settled}), flush=True)
    sys.stdin.readline()  # the parent has checked the state we recovered to
    rng = random.Random(seed)
    while True:
        if rng.random() < 0.5:
            number, revision = rng.randrange(len(texts)), rng.randrange(REVISIONS)
            print(json.dumps({"op": "ingest", "piece": number}), flush=True)
            session.ingest(
                revised(texts[number], revision),
                source=f"crash:piece/{number}/{revision}",
                metadata={"path": f"piece{number}.{revision}"},
            )
        else:
            print(json.dumps({"op": "generate"}), flush=True)
            for _ in session.generate(" ", max_new_tokens=rng.randint(4, 16)):
                pass


# ----------------------------------------------------------------------------- the parent


def check(tree: Path, tokenizer: Any, texts: list[str]) -> list[str]:
    """What is wrong with the session at ``tree`` (nothing, when the list is empty): every
    finding of ``store verify`` — a writer has reopened it, so not even a warning may remain —
    and every journaled piece reads back as its text, each at most once."""
    from megacontext.runtime.checkup import verify_session
    from megacontext.store import LocalStore
    from megacontext.store.metadata import COMPLETE, MetadataDB, default_url

    problems = [f"{p.severity}: {p.message}" for p in verify_session(tree)]
    with LocalStore.open(tree / "tree", readonly=True) as store:
        n = store.count(0)
        tokens = [int(t) for t in store.read(0, 0, n)] if n else []
        db = MetadataDB(default_url(str(store.root)), readonly=True)
        try:
            live = db.ingests_of(store.manifest.tree_id, COMPLETE)
        finally:
            db.close()
    seen = Counter(i.source.uri for i in live if i.source.kind == "text")
    problems += [f"{uri} is in the history {k} times" for uri, k in seen.items() if k > 1]
    for ingest in live:
        if ingest.source.kind == "text" and ingest.stop is not None:
            number, revision = (int(x) for x in ingest.source.uri.split("/")[-2:])
            text = revised(texts[number], revision)
            expected = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if tokens[ingest.start : ingest.stop] != list(expected):
                problems.append(f"{ingest.source.uri} does not read back as its text")
    return problems


def _spawn(tree: Path, base: str, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "megacontext.bench.crash", "--child", str(tree), base, str(seed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )


def _ready(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        _, err = process.communicate(timeout=60)
        raise RuntimeError(f"the crash child exited before it was ready:\n{err[-4000:]}")
    return dict(json.loads(line))


def crash_test(kills: int, base: str, progress: Progress, seed: int = 0) -> dict[str, Any]:
    """Kill a writer ``kills`` times at random moments; check the session after each reopen."""
    from transformers import AutoTokenizer

    from megacontext.models.loading import resolve_model_dir

    texts = pieces()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(base))
    rng = random.Random(seed)
    during: Counter[str] = Counter()
    settled: Counter[str] = Counter()
    failures: list[str] = []
    reopen: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-crash-") as tmp:
        tree = Path(tmp) / "session"
        for kill in range(kills + 1):
            process = _spawn(tree, base, seed * 1000 + kill)
            ready = _ready(process)
            if kill:  # the first open creates the session; later ones recover a killed one
                reopen.append(float(ready["ready"]))
                settled.update(ready["settled"])
                failures += [f"after kill {kill}: {p}" for p in check(tree, tokenizer, texts)]
            if kill == kills:
                process.kill()
                process.wait()
                break
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            time.sleep(rng.uniform(0.05, MOST_DELAY_S))
            os.kill(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            ops = [json.loads(line)["op"] for line in out.splitlines() if '"op"' in line]
            during[ops[-1] if ops else "open"] += 1
            progress(f"kill {kill + 1}/{kills}: during {ops[-1] if ops else 'open'}")
    return {
        "kills": kills,
        "during": dict(during),
        "settled": dict(settled),
        "failures": failures,
        "reopen_seconds": reopen,
    }


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    kills = int(os.environ.get(KILLS_ENV, "") or (8 if quick else 60))
    outcome = crash_test(kills, options.base_name(), progress)
    during, settled = outcome["during"], outcome["settled"]
    note = "; ".join(outcome["failures"][:5])
    return [
        Result("crash_kills", kills, "count", extra={"during": during}),
        Result("kills_during_ingest", during.get("ingest", 0), "count"),
        Result("kills_during_generate", during.get("generate", 0), "count"),
        Result("rolled_back", settled.get("rolled back", 0), "count"),
        Result("completed", settled.get("completed", 0), "count"),
        Result("kept", settled.get("kept", 0), "count"),
        Result("crash_check_failures", len(outcome["failures"]), "count", note=note),
        Result("reopen_seconds", median(outcome["reopen_seconds"]), "s"),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
