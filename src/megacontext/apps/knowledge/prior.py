"""A hybrid focus prior per partition (``megacontext knowledge ask --prior``).

``--prior`` says, per partition, how focus mixes LensNet's score with the lexical (BM25) and key
evidence (:mod:`megacontext.focus.prior`). Clauses are separated by ``;``; each is
``PARTITION: SIGNAL=WEIGHT, …`` with ``*`` for every source of no named partition (and any text
that is not a document); a clause without ``PARTITION:`` is the ``*`` one::

    logs: lexical=1; policies: lens=1, keys=0.5; *: lens=1

A signal left out of a clause weighs 0. Without a ``*`` clause, the rest is scored by LensNet
alone, as it is without ``--prior``.
"""

from __future__ import annotations

from dataclasses import dataclass

from megacontext.apps.knowledge.documents import KnowledgeSource
from megacontext.errors import InvalidInputError
from megacontext.focus import LENS_ONLY, FocusPrior, PriorWeights

EVERYTHING_ELSE = "*"


@dataclass(frozen=True)
class PartitionPrior:
    """Weights per partition name, and for everything else (``None``: LensNet alone)."""

    text: str
    partitions: dict[str, PriorWeights]
    rest: PriorWeights | None

    def over(self, sources: list[KnowledgeSource]) -> FocusPrior:
        """The prior over the token ranges of ``sources`` (their history positions).

        Raises:
            InvalidInputError: A named partition that holds no source (the known ones listed).
        """
        known = sorted({str(s.meta["partition"]) for s in sources if "partition" in s.meta})
        unknown = sorted(set(self.partitions) - set(known))
        if unknown:
            raise InvalidInputError(
                f"--prior names partition {unknown[0]!r}, which holds no source; partitions: "
                f"{', '.join(known) or '(none: add documents with `megacontext knowledge add`)'}"
            )
        ranges = tuple(
            (s.start, s.stop, self.partitions[str(s.meta["partition"])])
            for s in sources
            if str(s.meta.get("partition")) in self.partitions
        )
        return FocusPrior(self.rest or LENS_ONLY, ranges)


def parse_partition_prior(text: str) -> PartitionPrior:
    """Parse ``--prior`` (see the module docstring).

    Raises:
        InvalidInputError: An empty prior, a partition named twice, or weights that do not
            parse (named).
    """
    partitions: dict[str, PriorWeights] = {}
    rest: PriorWeights | None = None
    clauses = [c.strip() for c in text.split(";") if c.strip()]
    if not clauses:
        raise InvalidInputError(
            "--prior is empty; example: 'logs: lexical=1; policies: lens=1,keys=0.5'"
        )
    for clause in clauses:
        name, colon, weights = clause.partition(":")
        if not colon:
            name, weights = EVERYTHING_ELSE, clause
        name = name.strip()
        if not name:
            raise InvalidInputError(f"--prior clause {clause!r} names no partition before ':'")
        if name in partitions or (name == EVERYTHING_ELSE and rest is not None):
            raise InvalidInputError(f"--prior gives partition {name!r} twice")
        parsed = PriorWeights.parse(weights)
        if name == EVERYTHING_ELSE:
            rest = parsed
        else:
            partitions[name] = parsed
    return PartitionPrior(text, partitions, rest)


__all__ = ["EVERYTHING_ELSE", "PartitionPrior", "parse_partition_prior"]
