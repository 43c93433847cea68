"""Questions restricted by a metadata predicate (``megacontext knowledge ask --where``).

``where`` selects the sources an answer may stand on (``kind=policy AND version=latest``). For
the question, focus never expands the text of any other source (its LOD1 blocks stay gists,
:meth:`~megacontext.runtime.focus_control.Focus.avoid`), and only citations inside admitted
sources are returned; those outside (text already raw in the recent window, or a block that
straddles two sources) are counted as ``withheld``. Every citation says whether it is the
**latest version** of its document: the stale-citation rate of a set of answers is the share of
their citations that are not.

What this does not do: text of other sources that is already raw in view (the recent window)
is still read by the base — a predicate steers focus and citations, it is not an access control
(that is :meth:`~megacontext.runtime.session.Session.restrict`, which redacts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megacontext.apps.knowledge.documents import KnowledgeSource, select_sources
from megacontext.apps.knowledge.predicates import Predicate, parse_predicate
from megacontext.apps.knowledge.prior import PartitionPrior, parse_partition_prior
from megacontext.errors import InvalidInputError


@dataclass(frozen=True)
class KnowledgeCitation:
    label: str  # PATH:LINE-LINE
    source: str  # partition/doc@vN (or the path of a source that is not a document)
    lines: tuple[int, int] | None
    tokens: tuple[int, int]
    latest: bool  # the latest version of its document (always true for a non-document)
    score: float
    text: str


@dataclass(frozen=True)
class KnowledgeAnswer:
    text: str
    citations: list[KnowledgeCitation]
    where: str | None
    prior: str | None
    admitted_sources: int
    withheld: int  # citations outside the admitted sources, not returned
    focus_steps: int
    ids: list[int]  # the answer's tokens
    spans: list[tuple[int, int]]  # the raw spans focus brought into view
    seconds: dict[str, float]

    @property
    def stale_citations(self) -> int:
        return sum(not c.latest for c in self.citations)


def _owner(sources: list[KnowledgeSource], token: int) -> KnowledgeSource | None:
    return next((s for s in sources if s.start <= token < s.stop), None)


def ask_where(
    session: Any,
    question: str,
    where: str | Predicate | None = None,
    *,
    max_new_tokens: int = 64,
    focus_steps: int | None = None,
    on_text: Callable[[str], None] | None = None,
    prior: str | PartitionPrior | None = None,
) -> KnowledgeAnswer:
    """Answer ``question`` from the sources ``where`` admits (see the module docstring),
    focus scoring each partition's text by ``prior`` (:mod:`megacontext.apps.knowledge.prior`).

    Raises:
        InvalidInputError: A predicate or prior that does not parse (named), a predicate that
            admits no source, a prior naming a partition that holds none, or the errors of
            :meth:`~megacontext.runtime.session.Session.ask`.
    """
    predicate = parse_predicate(where) if isinstance(where, str) else where
    weighting = parse_partition_prior(prior) if isinstance(prior, str) else prior
    admitted, others = select_sources(session, predicate)
    if predicate is not None and not admitted:
        raise InvalidInputError(
            f"no source matches --where {predicate.text!r}; `megacontext knowledge sources` "
            "lists the sources and their metadata"
        )
    everything = admitted + others
    focus_prior = weighting.over(everything) if weighting is not None else None
    avoided_before, prior_before = list(session.focus.avoided), session.focus.prior
    session.focus.avoid([(s.start, s.stop) for s in others])
    session.focus.weigh(focus_prior)
    try:
        answer = session.ask(
            question, max_new_tokens=max_new_tokens, focus_steps=focus_steps, on_text=on_text
        )
    finally:
        session.focus.avoid(avoided_before)
        session.focus.weigh(prior_before)
    admitted_ids = {s.id for s in admitted}
    citations, withheld = [], 0
    for c in answer.citations:
        owner = _owner(everything, c.tokens[0])
        if owner is None or owner.id not in admitted_ids:
            withheld += 1
            continue
        citations.append(
            KnowledgeCitation(
                c.label(), owner.label(), c.lines, c.tokens, not owner.superseded, c.score, c.text
            )
        )
    return KnowledgeAnswer(
        answer.text,
        citations,
        predicate.text if predicate else None,
        weighting.text if weighting else None,
        len(admitted),
        withheld,
        answer.focus_steps,
        list(answer.ids),
        [tuple(span) for span in answer.spans],
        dict(answer.seconds),
    )


__all__ = ["KnowledgeAnswer", "KnowledgeCitation", "ask_where"]
