"""A small tool-using loop for questions that take more than one look (``megacontext code agent``).

Three tools over a session holding ingested code:

* ``search TERMS``: the session's lexical index (BM25 over LOD1 blocks), hits in live file
  versions only, each as ``PATH:LINE-LINE``;
* ``open PATH:LINE-LINE``: the hit's block and its neighbours pinned raw in the working context,
  so the next answer reads them word for word (and focus gives them up last);
* ``ask``: :func:`~megacontext.apps.code.ask.ask_code` over what is open, focus filling the rest.

The policy is fixed, not chosen by the base: a 135M-parameter model does not emit reliable tool
calls, and a loop whose every step is explained is what a user can trust. It searches for the
question — for the code names it gives, when it gives any, their definitions opened first —
opens the best hits, asks; then **follows what it read**: identifiers the answer names that the
code defines (``def NAME`` / ``class NAME``) and that were not looked at yet are searched and
their definitions opened, and the question is asked again — until the answer stops changing,
nothing new is left to open, or the step budget is spent. Every step (tool, argument, what came
back, seconds) is kept in the transcript. The pins are lifted when the loop ends.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from megacontext.apps.code.ask import CodeAnswer, ask_code, superseded_ranges
from megacontext.errors import InvalidInputError
from megacontext.runtime.provenance import cite

DEFAULT_MAX_STEPS = 8
HITS_OPENED = 2  # the best hits of a search opened at once
CONTEXT_BLOCKS = 1  # blocks either side of a hit opened with it
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclass(frozen=True)
class Hit:
    """A search hit: a LOD1 block of a live file version."""

    label: str  # PATH:LINE-LINE
    tokens: tuple[int, int]
    score: float
    text: str


@dataclass
class AgentStep:
    tool: str  # "search", "open" or "ask"
    argument: str
    result: str
    seconds: float


@dataclass
class AgentRun:
    question: str
    answer: CodeAnswer | None = None
    steps: list[AgentStep] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    stopped: str = ""  # why the loop ended

    def transcript(self) -> dict[str, Any]:
        """The run as JSON: every step, what was opened, the answer and its citations."""
        answer = self.answer
        return {
            "question": self.question,
            "answer": answer.text if answer else None,
            "citations": [
                {"label": c.label, "live": c.live, "score": c.score} for c in answer.citations
            ]
            if answer
            else [],
            "opened": self.opened,
            "stopped": self.stopped,
            "steps": [asdict(s) for s in self.steps],
        }


class CodeAgent:
    """The loop of the module docstring over ``session`` (read-only sessions work)."""

    def __init__(
        self,
        session: Any,
        repo: str | None = None,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_new_tokens: int = 64,
        on_step: Any = None,
    ):
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 3:
            raise InvalidInputError(
                f"the step budget must be an integer >= 3 (search, open, ask), got {max_steps!r}"
            )
        self.session = session
        self.repo = repo
        self.max_steps = max_steps
        self.max_new_tokens = max_new_tokens
        self.on_step = on_step
        # A search hit must be live code: superseded versions are history, not the code now.
        self._stale = superseded_ranges(session, repo)
        # What may be pinned at once: half the working context, the rest for focus.
        self._open_budget = session.config.W_max // 2

    def search(self, terms: str, limit: int = 8) -> list[Hit]:
        """The best blocks for ``terms`` in live file versions, best first."""
        s = self.session
        K = s.tree.K
        # An identifier also matches by its parts: a block boundary may cut `zebra_total` after
        # `zebra`, and the index ranks blocks.
        parts = " ".join(p for name in _IDENTIFIER.findall(terms) for p in name.split("_") if p)
        query = f"{terms} {parts}"
        hits = []
        for block, score in s.lexical.block_scores(query, limit=limit + len(self._stale)).items():
            a, b = block * K, min((block + 1) * K, s.tree.num_tokens)
            if b <= a or any(lo <= a < hi for lo, hi in self._stale):
                continue
            text = self._text(a, b)
            label = cite(s.metadata, s.tree_id, a, b, score, text)[0].label()
            hits.append(Hit(label, (a, b), float(score), text))
            if len(hits) == limit:
                break
        return hits

    def run(self, question: str) -> AgentRun:
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError("the question is empty; ask something")
        run = AgentRun(question)
        s = self.session
        pins_before = list(s.focus.pinned)
        looked_for: set[str] = set()
        opened: set[tuple[int, int]] = set()
        try:
            # The names the question gives (`node_start`) say more than its words ("what does
            # ... return"): search for those when it has any.
            names = code_names(question)
            first = " ".join(names) or question
            queue: list[tuple[str, bool]] = [(first, False)]  # (terms, a follow-up)
            previous = None
            while True:
                if not queue:
                    run.stopped = "nothing new to look at"
                    break
                terms, follow_up = queue.pop(0)
                looked_for.update(t.lower() for t in _IDENTIFIER.findall(terms))
                if not self._room(run, 3):
                    break
                hits = self._step(run, "search", terms, lambda t=terms: self.search(t))
                fresh = self._worth_opening(
                    hits, opened, [terms] if follow_up else names, follow_up
                )
                for hit in fresh[: 1 if follow_up else HITS_OPENED]:
                    if not self._room(run, 2):
                        break
                    if self._step(run, "open", hit.label, lambda h=hit: self._open(h)):
                        opened.add(hit.tokens)
                        run.opened.append(hit.label)
                if follow_up and not fresh:
                    continue  # nothing new was opened: asking again would change nothing
                if not self._room(run, 1):
                    break
                answer = self._step(run, "ask", question, lambda: self._ask(question))
                run.answer = answer
                if previous is not None and answer.text.strip() == previous:
                    run.stopped = "the answer stopped changing"
                    break
                previous = answer.text.strip()
                queued = {t.lower() for t, _ in queue}
                queue += [
                    (name, True)
                    for name in code_names(answer.text)
                    if name.lower() not in looked_for | queued
                ]
        finally:
            s.focus.pinned[:] = pins_before
        return run

    def _worth_opening(
        self, hits: list[Hit], opened: set[tuple[int, int]], names: list[str], only_defining: bool
    ) -> list[Hit]:
        """The hits not opened yet, those that define one of ``names`` first (only those, when
        ``only_defining``: a follow-up opens where a name is defined, not where it is used)."""
        fresh = [h for h in hits if h.tokens not in opened]
        defines = {
            h.tokens: any(_defines(self._text(*self._span(h)), n) for n in names) for h in fresh
        }
        if only_defining:
            return [h for h in fresh if defines[h.tokens]]
        return sorted(fresh, key=lambda h: not defines[h.tokens])

    def _room(self, run: AgentRun, steps: int) -> bool:
        """Whether ``steps`` more steps fit the budget (else the loop ends, saying so)."""
        if len(run.steps) + steps <= self.max_steps:
            return True
        run.stopped = run.stopped or f"the step budget ({self.max_steps}) is spent"
        return False

    def _step(self, run: AgentRun, tool: str, argument: str, call: Any) -> Any:
        started = time.perf_counter()
        value = call()
        if tool == "search":
            said = f"{len(value)} hits" + (
                f": {', '.join(h.label for h in value[:3])}" if value else ""
            )
        elif tool == "open":
            said = f"{value} tokens pinned" if value else "no room left to pin it"
        else:
            said = value.text.strip()
        step = AgentStep(tool, argument, said, round(time.perf_counter() - started, 3))
        run.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return value

    def _span(self, hit: Hit) -> tuple[int, int]:
        """What opening ``hit`` pins: its block and ``CONTEXT_BLOCKS`` either side."""
        K = self.session.tree.K
        lo = max(0, hit.tokens[0] - CONTEXT_BLOCKS * K)
        return lo, min(self.session.tree.num_tokens, hit.tokens[1] + CONTEXT_BLOCKS * K)

    def _text(self, lo: int, hi: int) -> str:
        s = self.session
        return str(s.base.decode(s.tree.tokens(lo, hi).tolist()))

    def _open(self, hit: Hit) -> int:
        s = self.session
        lo, hi = self._span(hit)
        pinned = sum(b - a for a, b in s.focus.pinned)
        if pinned + (hi - lo) > self._open_budget:  # keep room for focus: just the hit
            lo, hi = hit.tokens
        if pinned + (hi - lo) > self._open_budget:
            return 0
        s.focus.pin(lo, hi)
        return hi - lo

    def _ask(self, question: str) -> CodeAnswer:
        return ask_code(self.session, question, self.repo, max_new_tokens=self.max_new_tokens)


def code_names(text: str) -> list[str]:
    """Names in ``text`` that look like code, in order: with an underscore, a capital after
    the first letter or a digit, in backquotes, or called (``name(``) — not plain words."""
    found = [
        m.group(0)
        for m in _IDENTIFIER.finditer(text)
        if "_" in m.group(0)
        or any(c.isupper() for c in m.group(0)[1:])
        or any(c.isdigit() for c in m.group(0))
        or text[m.end() : m.end() + 1] == "("
        or text[max(0, m.start() - 1) : m.start()] == "`"
    ]
    return list(dict.fromkeys(found))


def _defines(text: str, name: str) -> bool:
    """Whether ``text`` defines ``name`` (a function, a class or a module-level assignment)."""
    escaped = re.escape(name)
    return bool(re.search(rf"\b(def|class)\s+{escaped}\b|^\s*{escaped}\s*=", text, re.MULTILINE))


__all__ = ["DEFAULT_MAX_STEPS", "AgentRun", "AgentStep", "CodeAgent", "Hit", "code_names"]
