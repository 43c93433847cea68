"""The compliance scenario: questions whose answers its documents hold, and every system scored."""

from __future__ import annotations

from pathlib import Path

from megacontext.apps.knowledge.bench import run_scenario
from megacontext.apps.knowledge.scenario import build_scenario
from megacontext.bench import SUITES


def test_every_question_is_answered_by_its_evidence_and_the_old_version_differs() -> None:
    scenario = build_scenario(seed=0, per_kind=4)
    assert scenario == build_scenario(seed=0, per_kind=4)  # deterministic
    docs = {f"{d.partition}/{d.doc}@v{d.version}": d for d in scenario.documents}
    kinds = [q.kind for q in scenario.questions]
    assert (
        kinds.count("latest-rule") == kinds.count("log-line") == kinds.count("policy-ticket") == 4
    )
    for q in scenario.questions:
        line = docs[q.evidence].text.splitlines()[q.lines[0] - 1]
        if q.kind == "latest-rule":
            assert q.evidence.endswith("@v2") and f" {q.answer} " in f" {line} "
            old = docs[q.evidence.replace("@v2", "@v1")].text.splitlines()[q.lines[0] - 1]
            assert q.stale_answer is not None and f" {q.stale_answer} " in f" {old} "
            assert q.stale_answer != q.answer  # a rule version 2 changed
        elif q.kind == "log-line":
            request = q.question.split("request ")[1].split(" ")[0]
            assert f"request={request} " in line and f"status={q.answer} " in line
            assert sum(f"request={request} " in x for x in docs[q.evidence].text.splitlines()) == 1
        else:
            window = int(line.split("within ")[1].split(" days")[0])
            days = int(q.question.split("refund ")[1].split(" days")[0])
            assert q.answer == ("yes" if days <= window else "no") and q.grading == "yes-no"
    answers = [q.answer for q in scenario.questions if q.kind == "policy-ticket"]
    assert answers.count("yes") == answers.count("no")  # "no" alone does not score
    assert {d.partition for d in scenario.documents} == {"policies", "tickets", "logs", "docs"}


def test_every_system_answers_over_the_same_history(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert SUITES["knowledge"] == "megacontext.apps.knowledge.bench"
    said: list[str] = []
    results = {
        r.name: r
        for r in run_scenario(tiny_world.base, tiny_world.bundle, said.append, tmp_path, 2)
    }
    prefix = "knowledge/compliance/W1024/"
    systems = {n.removeprefix(prefix) for n in results if n.count("/") == 3}
    assert {
        "megacontext-where",
        "megacontext-where-prior",
        "megacontext",
        "recency",
        "rag-bm25",
    } <= systems
    questions = [q.question for q in build_scenario(seed=0, per_kind=2).questions]
    for system in systems:
        rows = results[prefix + system].extra["answers"]
        assert [r["question"] for r in rows] == questions
        # Staleness is judged only where versions exist (not for log lines).
        assert all(r["stale"] is None for r in rows if r["kind"] == "log-line")
    for citing in ("megacontext-where", "megacontext-where-prior", "megacontext", "rag-bm25"):
        assert prefix + citing + "/citations" in results
    assert prefix + "recency/citations" not in results
    # With version=latest in the predicate, no answer may stand on a superseded policy.
    assert results[prefix + "megacontext-where/stale-citations"].value == 0.0
    assert results[prefix + "megacontext-where-prior/stale-citations"].value == 0.0
    assert any("megacontext-where, question 1/" in line for line in said)


def test_yes_no_answers_are_read_for_their_verdict() -> None:
    from megacontext.apps.scoring import QARow, verdict

    assert verdict("The answer is no.\n\nBecause the window closed.") == "no"
    assert verdict("Yes, it is within the window; no fee applies.") == "yes"
    assert verdict("It depends on the policy.") is None
    row = QARow("policy-ticket", "?", "no", "e", "The answer is no.", None, None, grading="yes-no")
    assert row.correct
    assert not QARow("k", "?", "no", "e", "Notably, yes.", None, None, grading="yes-no").correct
