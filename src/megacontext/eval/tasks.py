"""Seeded long-context tasks (DESIGN §8): nothing downloaded, filler from real held-out text.

Each generator returns an :class:`EvalSample`: the ``history`` every memory system observes, the
``query`` appended after the system's context, and the ``answer`` tokens the base must produce
(scored by exact greedy match), or — for ``longdoc`` — the continuation whose NLL is measured.
``evidence`` names the token ranges of the history that hold what the answer needs (the asked
needle, every link of a variable chain, the asked person's last move); ``longdoc`` has none. Only
an oracle may read it (see :class:`megacontext.eval.memory.EvidenceAware`).

========== ==========================================================================
task       what is hidden, what is asked
========== ==========================================================================
passkey    one "pass key is N" line at a random depth; asked for at the end
needle     RULER-style multi-key: several "magic number for WORD is N" lines; one asked
vartrack   chains VAR A = N, VAR B = VAR A, …; asked for the value at the end of a chain
lines      LongEval-style numbered lines "line 17: REGISTER_CONTENT is <N>"; one asked
facts      bAbI-style movements of people spread through filler; asked where one is
longdoc    a long real document; NLL of its next tokens (no question)
========== ==========================================================================
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from megacontext.errors import InvalidInputError
from megacontext.train.tasks import random_digits

TASKS = ("passkey", "needle", "vartrack", "lines", "facts", "longdoc")
PEOPLE = ("Mary", "John", "Sandra", "Daniel", "Fred", "Bill", "Julie", "Emma")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "office", "bedroom", "cellar", "library")


Span = tuple[int, int]


@dataclass(frozen=True)
class EvalSample:
    """One seeded sample: what every system observes, what is asked, what must come out.

    Attributes:
        task: The task name (one of :data:`TASKS`).
        history: Token ids every memory system observes.
        query: Token ids appended after the system's context (empty for ``longdoc``).
        answer: Token ids the base must produce (the continuation for ``longdoc``).
        answer_text: The answer as text (empty for ``longdoc``).
        evidence: Token ranges ``[start, end)`` of ``history`` that hold what the answer needs,
            in time order; empty for ``longdoc``.
    """

    task: str
    history: np.ndarray
    query: np.ndarray
    answer: np.ndarray
    answer_text: str
    evidence: tuple[Span, ...] = ()


Encode = Callable[[str], list[int]]


class Filler:
    """Random windows of a real held-out token stream."""

    def __init__(self, stream: np.ndarray, special_ids: tuple[int, ...] = ()):
        if len(stream) < 1024:
            raise InvalidInputError("filler needs at least 1024 tokens of text")
        self.stream = np.asarray(stream, dtype=np.int64)
        self.special = np.asarray(special_ids, dtype=np.int64)

    def take(self, rng: random.Random, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            width = min(n - len(out) + 16, len(self.stream))
            start = rng.randrange(0, len(self.stream) - width + 1)
            window = self.stream[start : start + width]
            if self.special.size:
                window = window[~np.isin(window, self.special)]
            out.extend(int(t) for t in window[: n - len(out)])
        return out


def _scatter(
    rng: random.Random, filler: Filler, pieces: list[list[int]], length: int
) -> tuple[list[int], list[Span]]:
    """``pieces`` in order, with filler between them, ``length`` tokens in all.

    Returns:
        The tokens and the ``[start, end)`` range of each piece in them.
    """
    fixed = sum(map(len, pieces))
    total = max(0, length - fixed)
    cuts = sorted(rng.randint(0, total) for _ in range(len(pieces)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    out: list[int] = []
    spans: list[Span] = []
    for piece, size in zip(pieces, sizes[:-1], strict=True):
        out += filler.take(rng, size)
        spans.append((len(out), len(out) + len(piece)))
        out += piece
    return out + filler.take(rng, sizes[-1]), spans


def make_sample(
    task: str, rng: random.Random, encode: Encode, filler: Filler, length: int
) -> EvalSample:
    """One sample of ``task`` with a history of about ``length`` tokens."""
    if task == "passkey":
        key = random_digits(rng, 5)
        history, spans = _scatter(
            rng,
            filler,
            [encode(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n")],
            length,
        )
        query = encode("\nWhat is the pass key? The pass key is")
        return _qa(task, history, query, encode(f" {key}"), key, spans)
    if task == "needle":
        words = rng.sample(
            ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"], 4
        )
        values = {w: random_digits(rng, 6) for w in words}
        lines = [
            encode(f"\nOne of the special magic numbers for {w} is: {values[w]}.\n") for w in words
        ]
        asked = rng.choice(words)
        history, spans = _scatter(rng, filler, lines, length)
        query = encode(
            f"\nWhat is the special magic number for {asked}? "
            f"The special magic number for {asked} is:"
        )
        evidence = [spans[words.index(asked)]]
        return _qa(task, history, query, encode(f" {values[asked]}"), values[asked], evidence)
    if task == "vartrack":
        names = ["".join(rng.choice(string.ascii_uppercase) for _ in range(3)) for _ in range(4)]
        value = random_digits(rng, 5)
        lines = [encode(f"\nVAR {names[0]} = {value}.\n")]
        lines += [encode(f"\nVAR {b} = VAR {a}.\n") for a, b in itertools.pairwise(names)]
        history, spans = _scatter(rng, filler, lines, length)
        query = encode(f"\nWhat is the value of VAR {names[-1]}? The value is")
        return _qa(task, history, query, encode(f" {value}"), value, spans)  # every link
    if task == "lines":
        count = max(8, length // 24)
        registers = [random_digits(rng, 5) for _ in range(count)]
        numbered: list[int] = []
        starts: list[int] = []
        for i, v in enumerate(registers):
            starts.append(len(numbered))
            numbered += encode(f"line {i}: REGISTER_CONTENT is <{v}>\n")
        starts.append(len(numbered))
        line = rng.randrange(count // 2)  # far from the end
        query = encode(
            f"\nWhat is the REGISTER_CONTENT in line {line}? "
            f"The REGISTER_CONTENT in line {line} is <"
        )
        evidence = [(starts[line], starts[line + 1])]
        return _qa(task, numbered, query, encode(registers[line]), registers[line], evidence)
    if task == "facts":
        people = rng.sample(PEOPLE, 4)
        moves = []
        where: dict[str, str] = {}
        last_move: dict[str, int] = {}
        for i in range(8):
            who, place = rng.choice(people), rng.choice(PLACES)
            where[who] = place
            last_move[who] = i
            moves.append(encode(f"\n{who} moved to the {place}.\n"))
        asked = rng.choice(sorted(where))
        history, spans = _scatter(rng, filler, moves, length)
        return _qa(
            task,
            history,
            encode(f"\nWhere is {asked}? {asked} is in the"),
            encode(f" {where[asked]}"),
            where[asked],
            [spans[last_move[asked]]],  # the asked person's last move decides the answer
        )
    if task == "longdoc":
        ids = filler.take(rng, length + 64)
        return EvalSample(
            task,
            np.asarray(ids[:length]),
            np.zeros(0, dtype=np.int64),
            np.asarray(ids[length:]),
            "",
        )
    raise InvalidInputError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def _qa(
    task: str,
    history: list[int] | np.ndarray,
    query: list[int],
    answer: list[int],
    text: str,
    evidence: list[Span],
) -> EvalSample:
    return EvalSample(
        task,
        np.asarray(history, dtype=np.int64),
        np.asarray(query, dtype=np.int64),
        np.asarray(answer, dtype=np.int64),
        text,
        tuple(sorted(evidence)),
    )
