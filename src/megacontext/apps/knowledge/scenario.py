"""A compliance/support scenario with known answers (``megacontext bench knowledge``).

A support organisation's knowledge, in four partitions:

* ``policies``: four policy documents (refunds, support, data, pricing), each a handful of rules
  with numbers in them, published as version 1 and, months later, version 2 — which changes
  about half of the rules (a rule's old number is the **stale** answer);
* ``tickets``: support tickets that name a customer, an order and how many days after purchase
  they ask for a refund;
* ``logs``: a payments service's log, one request per line (time, request id, action, order,
  status, latency);
* ``docs``: real reference text (the Python documentation held out from training, shipped with
  the package) as the bulk a real knowledge base carries beside the few lines that matter.

No versioned policy corpus installs offline, so policies, tickets and logs are generated (seeded,
deterministic); their sentences are plain support-desk English. Questions, each with the
predicate a user would give (:mod:`megacontext.apps.knowledge.predicates`) and its evidence (the
document version and lines that hold the answer):

=============  ==========================================================  =================
kind           question                                                    predicate
=============  ==========================================================  =================
latest-rule    a rule that version 2 changed, asked about "the current"    kind=policy AND
               policy; the answer is version 2's number                    version=latest
log-line       the status a request id got in the payments log             kind=log
policy-ticket  whether a ticket's refund request is within the current     version=latest
               refund window (yes / no)
=============  ==========================================================  =================
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from megacontext.data import heldout_documents

# (document, topic, rule sentence, the question's wording, values to draw from)
RULES: tuple[tuple[str, str, str, str, tuple[int, ...]], ...] = (
    (
        "refunds",
        "refund window",
        "Refunds are accepted within {v} days of purchase.",
        "within how many days of purchase are refunds accepted",
        (14, 21, 30, 45, 60),
    ),
    (
        "refunds",
        "restocking fee",
        "A restocking fee of {v} percent applies to opened items.",
        "what restocking fee, in percent, applies to opened items",
        (5, 10, 15, 20),
    ),
    (
        "refunds",
        "refund approval",
        "Refunds above {v} euros need a team lead's approval.",
        "above how many euros does a refund need a team lead's approval",
        (100, 200, 250, 500),
    ),
    (
        "support",
        "escalation",
        "Priority-one tickets must be escalated within {v} hours.",
        "within how many hours must priority-one tickets be escalated",
        (1, 2, 4, 8),
    ),
    (
        "support",
        "first response",
        "Every ticket gets a first response within {v} hours.",
        "within how many hours does every ticket get a first response",
        (12, 24, 48),
    ),
    (
        "support",
        "reopen window",
        "A closed ticket may be reopened for {v} days.",
        "for how many days may a closed ticket be reopened",
        (7, 10, 14, 30),
    ),
    (
        "data",
        "transcript retention",
        "Chat transcripts are kept for {v} days and then deleted.",
        "for how many days are chat transcripts kept",
        (30, 90, 180, 365),
    ),
    (
        "data",
        "export deadline",
        "A customer's data export is delivered within {v} days of the request.",
        "within how many days is a customer's data export delivered",
        (7, 14, 30),
    ),
    (
        "data",
        "password length",
        "Staff passwords have at least {v} characters.",
        "how many characters do staff passwords have at least",
        (10, 12, 14, 16),
    ),
    (
        "pricing",
        "discount cap",
        "Agents may grant discounts of at most {v} percent without approval.",
        "what is the largest discount, in percent, agents may grant without approval",
        (5, 10, 15, 25),
    ),
    (
        "pricing",
        "free shipping",
        "Orders above {v} euros ship for free.",
        "above how many euros do orders ship for free",
        (30, 50, 75, 100),
    ),
    (
        "pricing",
        "price guarantee",
        "Quoted prices are honoured for {v} days.",
        "for how many days are quoted prices honoured",
        (7, 14, 30),
    ),
)
BOILERPLATE = (
    "This policy applies to every agent of the support organisation.",
    "Questions about this policy go to the compliance team.",
    "Exceptions are recorded in the ticket that needed them.",
    "Team leads review a sample of cases against this policy every month.",
    "Where this policy and a customer contract differ, the contract wins.",
)
CUSTOMERS = ("Ana Lima", "Bo Chen", "Carla Diaz", "Dev Patel", "Emma Stone", "Femi Ade")
V1_TIME, V2_TIME = "2026-01-10", "2026-06-01"


@dataclass(frozen=True)
class ScenarioDocument:
    partition: str
    doc: str
    kind: str
    time: str
    text: str
    version: int = 1
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScenarioQuestion:
    kind: str
    question: str
    answer: str
    where: str  # the predicate a user would give
    evidence: str  # partition/doc@vN
    lines: tuple[int, int]
    stale_answer: str | None = None  # what the superseded version says
    grading: str = "contains"  # or "yes-no": the answer's first yes or no

    def cites_evidence(self, source: str | None, lines: tuple[int, int] | None) -> bool:
        if source != self.evidence or lines is None:
            return False
        return lines[0] <= self.lines[0] and self.lines[1] <= lines[1]


@dataclass
class Scenario:
    documents: list[ScenarioDocument] = field(default_factory=list)
    questions: list[ScenarioQuestion] = field(default_factory=list)


def _policy(name: str, version: int, values: dict[str, int]) -> tuple[str, dict[str, int]]:
    """A policy's text and the line of each rule in it."""
    lines = [f"{name.capitalize()} policy, version {version}", ""]
    where = {}
    for i, (doc, topic, sentence, _, _) in enumerate(r for r in RULES if r[0] == name):
        del doc
        lines.append(BOILERPLATE[i % len(BOILERPLATE)])
        lines.append(sentence.format(v=values[topic]))
        where[topic] = len(lines)
        lines.append("")
    lines.append(BOILERPLATE[-1])
    return "\n".join(lines) + "\n", where


def build_scenario(
    seed: int = 0, per_kind: int = 4, docs: int = 2, log_lines: int = 120
) -> Scenario:
    """The scenario of the module docstring, ``per_kind`` questions of each kind."""
    rng = random.Random(seed)
    scenario = Scenario()
    old = {topic: rng.choice(values) for _, topic, _, _, values in RULES}
    new = dict(old)
    changed = []
    for _, topic, _, _, values in RULES:
        if rng.random() < 0.5:
            new[topic] = rng.choice([v for v in values if v != old[topic]])
            changed.append(topic)
    lines_of: dict[tuple[str, int], dict[str, int]] = {}
    names = sorted({r[0] for r in RULES})
    for version, rules, time in ((1, old, V1_TIME), (2, new, V2_TIME)):
        for name in names:
            text, where = _policy(name, version, rules)
            lines_of[(name, version)] = where
            scenario.documents.append(
                ScenarioDocument("policies", name, "policy", time, text, version, ("policy",))
            )
    # Tickets: refund requests some days after purchase.
    tickets = []
    for i in range(12):
        number = 1040 + i
        days = rng.randint(3, 70)
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        order = rng.randint(5000, 9999)
        text = (
            f"Ticket T-{number}, opened 2026-06-{(i % 27) + 2:02d} by {customer}.\n"
            f"The customer asks for a refund of order {order}, {days} days after purchase.\n"
            "Agent note: waiting for the policy check.\n"
        )
        tickets.append((number, days))
        scenario.documents.append(
            ScenarioDocument(
                "tickets", f"T-{number}", "ticket", "2026-06-02", text, 1, ("refunds",)
            )
        )
    # The payments log.
    log, requests = [], []
    for i in range(log_lines):
        request = f"r-{4000 + rng.randint(0, 5999)}"
        status = rng.choice((200, 200, 200, 201, 402, 404, 409, 500))
        action = rng.choice(("charge", "refund", "capture", "void"))
        log.append(
            f"2026-06-02T{8 + i // 60:02d}:{i % 60:02d}:{rng.randint(0, 59):02d}Z payments "
            f"request={request} action={action} order={rng.randint(5000, 9999)} "
            f"status={status} latency_ms={rng.randint(20, 900)}"
        )
        requests.append((request, status, i + 1))
    scenario.documents.append(
        ScenarioDocument(
            "logs", "payments.log", "log", "2026-06-02T08:00:00", "\n".join(log) + "\n"
        )
    )
    reference = [d for d in heldout_documents() if d["source"] == "pydoc"][:docs]
    for d in reference:
        scenario.documents.append(
            ScenarioDocument(
                "docs", d["name"].replace("/", "_"), "reference", "2025-10-01", d["text"]
            )
        )
    # Questions.
    by_topic = {topic: (name, phrase) for name, topic, _, phrase, _ in RULES}
    for topic in rng.sample(changed, min(per_kind, len(changed))):
        name, phrase = by_topic[topic]
        line = lines_of[(name, 2)][topic]
        scenario.questions.append(
            ScenarioQuestion(
                "latest-rule",
                f"Under the current {name} policy, {phrase}?",
                str(new[topic]),
                "kind=policy AND version=latest",
                f"policies/{name}@v2",
                (line, line),
                str(old[topic]),
            )
        )
    unique: dict[str, list[tuple[int, int]]] = {}
    for request, status, line in requests:
        unique.setdefault(request, []).append((status, line))
    once = sorted((r, v[0]) for r, v in unique.items() if len(v) == 1)
    for request, (status, line) in rng.sample(once, min(per_kind, len(once))):
        scenario.questions.append(
            ScenarioQuestion(
                "log-line",
                f"In the payments log, which status did request {request} get?",
                str(status),
                "kind=log",
                "logs/payments.log@v1",
                (line, line),
            )
        )
    window_line = lines_of[("refunds", 2)]["refund window"]
    window, stale_window = new["refund window"], old["refund window"]
    # Half the tickets within the window and half outside it: "no" alone must not score.
    inside = [t for t in tickets if t[1] <= window]
    outside = [t for t in tickets if t[1] > window]
    chosen = rng.sample(inside, min(per_kind // 2, len(inside)))
    chosen += rng.sample(outside, min(per_kind - len(chosen), len(outside)))
    for number, days in chosen:
        allowed = days <= window
        scenario.questions.append(
            ScenarioQuestion(
                "policy-ticket",
                f"Ticket T-{number} asks for a refund {days} days after purchase. Under the "
                "current refunds policy, is the refund allowed? Answer yes or no.",
                "yes" if allowed else "no",
                "version=latest",
                "policies/refunds@v2",
                (window_line, window_line),
                ("yes" if days <= stale_window else "no")
                if (days <= stale_window) != allowed
                else None,
                grading="yes-no",
            )
        )
    return scenario


__all__ = ["RULES", "Scenario", "ScenarioDocument", "ScenarioQuestion", "build_scenario"]
