"""Seeded long-context tasks (DESIGN §8): nothing downloaded, filler from real held-out text.

Each generator returns an :class:`EvalSample`: the ``history`` every memory system observes, the
``question`` and its answer ``cue`` (put to the base in the prompt style under test, see
:mod:`megacontext.models.prompting`), the retrieval ``query`` tokens systems may search with, and
the ``answer`` (scored by exact match and by containment), or — for ``longdoc`` — the continuation
whose NLL is measured.
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
paraphrase NoLiMa-style: "the combination that unlocks the cobalt gate is N" among three
           others; asked "which number opens the blue door?" — no content word shared
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

from megacontext.data import Filler, random_digits
from megacontext.errors import InvalidInputError

TASKS = ("passkey", "needle", "vartrack", "lines", "facts", "paraphrase", "longdoc")
PEOPLE = ("Mary", "John", "Sandra", "Daniel", "Fred", "Bill", "Julie", "Emma")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "office", "bedroom", "cellar", "library")
# The paraphrase task's locks: how a needle names one (left) and how the question names it
# (right). The two names share no word; the question can only be answered by knowing that a
# cobalt gate is a blue door, so word overlap (BM25, lexical LensNet features) cannot find it.
LOCKS = (
    ("cobalt gate", "blue door"),
    ("crimson vault", "red safe"),
    ("emerald hatch", "green trapdoor"),
    ("ivory cupboard", "white closet"),
    ("golden chest", "yellow box"),
    ("onyx cabinet", "black cupboard"),
    ("scarlet shed", "red hut"),
    ("azure locker", "blue cabinet"),
)
PARAPHRASE_NEEDLE = "\nThe combination that unlocks the {lock} is {code}.\n"
PARAPHRASE_QUESTION = "Which number opens the {lock}?"
PARAPHRASE_CUE = "The number that opens the {lock} is"


Span = tuple[int, int]


@dataclass(frozen=True)
class EvalSample:
    """One seeded sample: what every system observes, what is asked, what must come out.

    Attributes:
        task: The task name (one of :data:`TASKS`).
        history: Token ids every memory system observes.
        query: Token ids of ``"\n{question} {cue}"``: what a memory system retrieves with, the
            same whatever the prompt style (empty for ``longdoc``).
        answer: Token ids of the answer as it continues the cue (``" 12345"``); the
            continuation for ``longdoc``.
        answer_text: The answer as text (empty for ``longdoc``).
        evidence: Token ranges ``[start, end)`` of ``history`` that hold what the answer needs,
            in time order; empty for ``longdoc``.
        question: The question (``"What is the pass key?"``).
        cue: The start of the answer (``"The pass key is"``), written for the base in the
            ``raw`` and ``chat-cue`` prompt styles.
    """

    task: str
    history: np.ndarray
    query: np.ndarray
    answer: np.ndarray
    answer_text: str
    evidence: tuple[Span, ...] = ()
    question: str = ""
    cue: str = ""


Encode = Callable[[str], list[int]]


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


def make_sample(  # noqa: PLR0911  (one return per task, each a few lines)
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
        return _qa(task, encode, history, "What is the pass key?", "The pass key is", key, spans)
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
        return _qa(
            task,
            encode,
            history,
            f"What is the special magic number for {asked}?",
            f"The special magic number for {asked} is:",
            values[asked],
            [spans[words.index(asked)]],
        )
    if task == "vartrack":
        names = ["".join(rng.choice(string.ascii_uppercase) for _ in range(3)) for _ in range(4)]
        value = random_digits(rng, 5)
        lines = [encode(f"\nVAR {names[0]} = {value}.\n")]
        lines += [encode(f"\nVAR {b} = VAR {a}.\n") for a, b in itertools.pairwise(names)]
        history, spans = _scatter(rng, filler, lines, length)
        return _qa(  # the evidence is every link of the chain
            task,
            encode,
            history,
            f"What is the value of VAR {names[-1]}?",
            "The value is",
            value,
            spans,
        )
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
        return _qa(
            task,
            encode,
            numbered,
            f"What is the REGISTER_CONTENT in line {line}?",
            f"The REGISTER_CONTENT in line {line} is <",
            registers[line],
            [(starts[line], starts[line + 1])],
            space=False,  # the cue ends in "<": the digits follow it directly
        )
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
            encode,
            history,
            f"Where is {asked}?",
            f"{asked} is in the",
            where[asked],
            [spans[last_move[asked]]],  # the asked person's last move decides the answer
        )
    if task == "paraphrase":
        return _paraphrase(rng, encode, filler, length)
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


def _paraphrase(rng: random.Random, encode: Encode, filler: Filler, length: int) -> EvalSample:
    """Four locks, each with its code; the question names one with other words. The other
    three are chosen so that no two of the four share a colour or an object with the asked one
    in either naming (a lone shared word would let overlap pick the right needle out)."""
    asked = rng.choice(LOCKS)
    taken = set(asked[0].split()) | set(asked[1].split())
    others: list[tuple[str, str]] = []
    for lock in rng.sample(LOCKS, len(LOCKS)):
        words = set(lock[0].split()) | set(lock[1].split())
        if lock != asked and len(others) < 3 and not words & taken:
            others.append(lock)
    locks = [asked, *others]
    rng.shuffle(locks)
    codes = {lock: random_digits(rng, 5) for lock in locks}
    needles = [encode(PARAPHRASE_NEEDLE.format(lock=lock[0], code=codes[lock])) for lock in locks]
    history, spans = _scatter(rng, filler, needles, length)
    return _qa(
        "paraphrase",
        encode,
        history,
        PARAPHRASE_QUESTION.format(lock=asked[1]),
        PARAPHRASE_CUE.format(lock=asked[1]),
        codes[asked],
        [spans[locks.index(asked)]],
    )


def _qa(
    task: str,
    encode: Encode,
    history: list[int] | np.ndarray,
    question: str,
    cue: str,
    answer: str,
    evidence: list[Span],
    *,
    space: bool = True,
) -> EvalSample:
    return EvalSample(
        task,
        np.asarray(history, dtype=np.int64),
        np.asarray(encode(f"\n{question} {cue}"), dtype=np.int64),
        np.asarray(encode(f" {answer}" if space else answer), dtype=np.int64),
        answer,
        tuple(sorted(evidence)),
        question,
        cue,
    )
