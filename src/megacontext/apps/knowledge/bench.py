"""``megacontext bench knowledge``: the compliance/support scenario, MegaContext against RAG.

The scenario (:mod:`megacontext.apps.knowledge.scenario`: versioned policies, tickets, a
payments log, real reference text) goes into a session on disk with ``add_document``, as
``megacontext knowledge add`` puts it; every system then reads that same history and answers
with the same base, prompt and ``W_max``:

* ``megacontext-where``: ``ask_where`` with the predicate a user would give for the question
  (``kind=policy AND version=latest`` for the current rules, ``kind=log`` for a log line,
  ``version=latest`` for a ticket against the policy);
* ``megacontext-where-prior``: the same, with the hybrid focus prior :data:`SCENARIO_PRIOR`
  (lexical matching leads in logs and tickets, which are found by their ids; LensNet leads
  elsewhere), fixed before any run, not tuned on the questions;
* ``megacontext``: ``ask_where`` without a predicate (focus alone);
* ``rag-bm25``, ``rag-minilm``: 32-token chunks ranked against the question, no metadata;
  their best chunk is what they cite;
* ``recency``: the last ``W_max`` tokens.

Per system: accuracy (a yes/no question by the first "yes" or "no" of the answer), citation accuracy
(the top citation is the evidence's document version and holds its line) and the
**stale-citation rate** (the top citation is a superseded policy version; over the answers
to the questions about versioned policies, an answer that cites nothing counting as not
stale), each against the same run's ``recency`` / ``rag-bm25``. Focus is reset before each
question. The suite needs a focus bundle for the base (as ``bench repoqa``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from megacontext.apps.knowledge.ask import ask_where
from megacontext.apps.knowledge.documents import KnowledgeSource, add_document, knowledge_sources
from megacontext.apps.knowledge.scenario import ScenarioQuestion, build_scenario
from megacontext.apps.scoring import QARow, load_models, peer_answer, peer_systems, qa_results
from megacontext.bench import BenchOptions, Progress, Result

BUDGET = 1024
SCENARIO_PRIOR = "logs: lexical=1, lens=0.5; tickets: lexical=1, lens=0.5; *: lens=1, keys=0.5"
ANSWER_TOKENS = 16
BASELINE = "recency"
CITATION_BASELINE = "rag-bm25"


def _row(
    q: ScenarioQuestion, text: str, cited: str | None, hit: bool | None, stale: bool | None
) -> QARow:
    evidence = f"{q.evidence}:{q.lines[0]}-{q.lines[1]}"
    versioned = q.kind != "log-line"
    return QARow(
        q.kind,
        q.question,
        q.answer,
        evidence,
        text,
        cited,
        hit,
        stale if versioned else None,
        q.grading,
    )


def _ask_megacontext(
    session: Any, q: ScenarioQuestion, use_where: bool, prior: str | None = None
) -> QARow:
    session.reset_focus()
    answer = ask_where(
        session,
        q.question,
        q.where if use_where else None,
        max_new_tokens=ANSWER_TOKENS,
        prior=prior,
    )
    top = answer.citations[0] if answer.citations else None
    if top is None:  # citing nothing, it cites nothing stale
        return _row(q, answer.text, None, False, False)
    return _row(
        q,
        answer.text,
        f"{top.source} {top.label}",
        q.cites_evidence(top.source, top.lines),
        not top.latest,
    )


def _ask_peer(
    session: Any, memory: Any, sources: list[KnowledgeSource], q: ScenarioQuestion
) -> QARow:
    from megacontext.runtime.provenance import cite

    text, top, retrieves = peer_answer(session, memory, q.question, BUDGET, ANSWER_TOKENS)
    if not retrieves:
        return _row(q, text, None, None, None)
    if top is None:
        return _row(q, text, None, False, False)
    owner = next((s for s in sources if s.start <= top[0] < s.stop), None)
    cited = cite(session.metadata, session.tree_id, top[0], top[1], 0.0, "")[0]
    label = owner.label() if owner else None
    return _row(
        q,
        text,
        f"{label} {cited.label()}",
        q.cites_evidence(label, cited.lines),
        owner.superseded if owner else None,
    )


def run_scenario(
    base: Any,
    bundle: Any,
    progress: Progress,
    workdir: Path,
    per_kind: int,
    prompt: str | None = None,
) -> list[Result]:
    from megacontext.runtime import SessionConfig, open_session

    scenario = build_scenario(seed=0, per_kind=per_kind)
    questions = scenario.questions
    answered: dict[str, list[QARow]] = {}
    with open_session(
        workdir / "kb", base, bundle, SessionConfig(W_max=BUDGET, prompt=prompt)
    ) as mc:
        started = time.perf_counter()
        for i, d in enumerate(scenario.documents, 1):
            progress(f"adding document {i}/{len(scenario.documents)}")
            add_document(
                mc,
                d.text,
                partition=d.partition,
                doc=d.doc,
                kind=d.kind,
                version=d.version,
                time=d.time,
                tags=d.tags,
            )
        ingest_s = time.perf_counter() - started
        torch.manual_seed(0)
        for system, use_where, prior in (
            ("megacontext-where", True, None),
            ("megacontext-where-prior", True, SCENARIO_PRIOR),
            ("megacontext", False, None),
        ):
            rows = []
            for i, q in enumerate(questions, 1):
                progress(f"{system}, question {i}/{len(questions)}")
                rows.append(_ask_megacontext(mc, q, use_where, prior))
            answered[system] = rows
        tokens = mc.tree.tokens(0, mc.tree.num_tokens)
        sources = knowledge_sources(mc)
        for system, make in peer_systems(base).items():
            memory = make()
            memory.observe(tokens)
            rows = []
            for i, q in enumerate(questions, 1):
                progress(f"{system}, question {i}/{len(questions)}")
                rows.append(_ask_peer(mc, memory, sources, q))
            answered[system] = rows
    lens = "lensnet" in bundle.modules
    focus = "focus by the bundle's LensNet" if lens else "focus by recency (no LensNet)"
    notes = {
        "megacontext-where": f"{focus}; each question's metadata predicate applied",
        "megacontext-where-prior": f"{focus}; the predicate, and the prior {SCENARIO_PRIOR!r}",
        "megacontext": f"{focus}; no predicate",
    }
    extra = {
        "documents": len(scenario.documents),
        "history_tokens": int(tokens.size),
        "ingest_seconds": round(ingest_s, 2),
        "questions": {
            k: sum(q.kind == k for q in questions) for k in sorted({q.kind for q in questions})
        },
    }
    return qa_results(
        f"knowledge/compliance/W{BUDGET}",
        answered,
        baseline=BASELINE,
        citation_baseline=CITATION_BASELINE,
        notes=notes,
        extra=extra,
        citation_note="the top citation is the evidence's document version and holds its line",
    )


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    base, bundle = load_models(options)
    with tempfile.TemporaryDirectory(prefix="megacontext-knowledge-") as workdir:
        return run_scenario(
            base, bundle, progress, Path(workdir), 4 if quick else 10, options.prompt
        )


__all__ = ["BUDGET", "SCENARIO_PRIOR", "run", "run_scenario"]
