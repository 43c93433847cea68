"""Seeded synthetic long-context tasks, mixed into base-model training text (DESIGN §7, §12).

A small base that never saw a pass key scores 0 on passkey prompts. These generators teach it to
read far context: each builds one sample as token ids, with natural-text filler drawn from a
:class:`Filler` so the tasks look like the documents around them.

========== =================================================================================
kind       what the model must do
========== =================================================================================
passkey    find "The pass key is 71432" hidden in filler and repeat it at the end
kv         look up the value of one key among many key/value lines spread through filler
copy       repeat a span of text verbatim after a marker (teaches induction/copying)
copy_long  the same with a span of a quarter to a half of the sample
repeat     uniformly random tokens, then the same tokens again (pure induction)
vartrack   follow chains of variable assignments (``VAR QXT = VAR ABC``) through filler
========== =================================================================================

Every generator takes a ``random.Random`` and is deterministic given it. A :class:`TaskSample`
records where the prompt ends and the expected answer, so the same generators serve evaluation.

Example:
    >>> import random
    >>> sample = passkey_sample(random.Random(0), tok, filler, length=256)  # doctest: +SKIP
    >>> tok.decode(sample.ids[: sample.prompt_len])[-36:]  # doctest: +SKIP
    '\\nWhat is the pass key? The pass key is'
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from megacontext.data import (
    KV_LINE,
    KV_QUESTION,
    PASSKEY_INTRO,
    PASSKEY_NEEDLE,
    PASSKEY_QUESTION,
    Filler,
    random_digits,
)
from megacontext.errors import InvalidInputError
from megacontext.train.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, special_id

TASK_KINDS: tuple[str, ...] = ("passkey", "kv", "copy", "copy_long", "repeat", "vartrack")


@dataclass(frozen=True)
class TaskSample:
    """One synthetic sample.

    Attributes:
        kind: One of :data:`TASK_KINDS`.
        ids: Token ids of the whole sample (prompt then answer), no BOS/EOS.
        prompt_len: ``ids[:prompt_len]`` is the prompt an evaluator feeds the model.
        answer: The expected continuation of the prompt (text, leading space included).
        evidence: Token ranges ``[start, end)`` of ``ids`` that hold what the answer needs (the
            needle, the asked key/value line, the asked chain's statements); empty for kinds
            whose answer is not in one place. Training data never reads it; focus labels do.
    """

    kind: str
    ids: list[int]
    prompt_len: int
    answer: str
    evidence: tuple[tuple[int, int], ...] = ()


def _enc(tok: Tokenizer, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def _split_filler(rng: random.Random, total: int, parts: int) -> list[int]:
    """Split ``total`` filler tokens into ``parts`` non-negative random sizes."""
    if parts <= 1:
        return [max(total, 0)]
    cuts = sorted(rng.randint(0, max(total, 0)) for _ in range(parts - 1))
    bounds = [0, *cuts, max(total, 0)]
    return [b - a for a, b in itertools.pairwise(bounds)]


def passkey_sample(
    rng: random.Random,
    tok: Tokenizer,
    filler: Filler,
    length: int,
    *,
    key_digits: int | None = None,
    depth: float | None = None,
) -> TaskSample:
    """A pass key hidden at a random depth in ``length`` tokens of filler, asked for at the end.

    Args:
        rng: Source of randomness.
        tok: Tokenizer.
        filler: Natural text around the needle.
        length: Total sample length in tokens (prompt plus answer); the fixed template is kept
            even when ``length`` is smaller than it.
        key_digits: Digits in the key (default: 4 to 7 at random).
        depth: Where the needle sits in the filler, 0 (start) to 1 (end); default random.
    """
    n_digits = key_digits if key_digits is not None else rng.randint(4, 7)
    key = random_digits(rng, n_digits)
    intro = _enc(tok, PASSKEY_INTRO)
    needle = _enc(tok, PASSKEY_NEEDLE.format(key=key))
    question = _enc(tok, PASSKEY_QUESTION)
    answer_text = f" {key}."
    answer = _enc(tok, answer_text)
    n_fill = max(0, length - len(intro) - len(needle) - len(question) - len(answer))
    d = rng.random() if depth is None else depth
    before = round(n_fill * d)
    ids = intro + filler.take(rng, before) + needle + filler.take(rng, n_fill - before) + question
    start = len(intro) + before
    return TaskSample(
        "passkey", ids + answer, len(ids), answer_text, ((start, start + len(needle)),)
    )


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def kv_sample(rng: random.Random, tok: Tokenizer, filler: Filler, length: int) -> TaskSample:
    """Key/value lines spread through filler; the end asks for the values of some keys."""
    n_pairs = rng.randint(2, 8)
    keys = list(dict.fromkeys(_word(rng, rng.randint(4, 7)) for _ in range(n_pairs)))
    values = {k: random_digits(rng, rng.randint(3, 6)) for k in keys}
    header = _enc(tok, "Remember these keys and their values.\n")
    lines = [_enc(tok, KV_LINE.format(key=k, value=values[k])) for k in keys]
    asked = rng.sample(keys, k=min(len(keys), rng.randint(1, 3)))
    questions = [_enc(tok, KV_QUESTION.format(key=k)) for k in asked]
    answers = [_enc(tok, f" {values[k]}.") for k in asked]
    fixed = len(header) + sum(map(len, lines)) + sum(map(len, questions)) + sum(map(len, answers))
    sizes = _split_filler(rng, length - fixed, len(lines) + 1)
    ids = list(header)
    where: dict[str, tuple[int, int]] = {}
    for key, line, size in zip(keys, lines, sizes[:-1], strict=True):
        ids += filler.take(rng, size)
        where[key] = (len(ids), len(ids) + len(line))
        ids += line
    ids += filler.take(rng, sizes[-1])
    prompt_len = len(ids) + len(questions[0])
    for q, a in zip(questions, answers, strict=True):
        ids += q + a
    return TaskSample("kv", ids, prompt_len, f" {values[asked[0]]}.", (where[asked[0]],))


def copy_sample(rng: random.Random, tok: Tokenizer, filler: Filler, length: int) -> TaskSample:
    """A span of text, some filler, then the span again after a marker."""
    header = _enc(tok, "Read this passage carefully.\n")
    marker = _enc(tok, "\nRepeat the passage exactly:\n")
    budget = max(8, length - len(header) - len(marker))
    span_len = max(4, min(budget // 2, rng.randint(8, 128)))
    gap = max(0, budget - 2 * span_len)
    span = filler.take(rng, span_len)
    ids = [*header, *span, *filler.take(rng, gap), *marker]
    return TaskSample("copy", ids + span, len(ids), tok.decode(span))


def copy_long_sample(rng: random.Random, tok: Tokenizer, filler: Filler, length: int) -> TaskSample:
    """Like :func:`copy_sample`, but the span fills a quarter to a half of the sample.

    Half of the sample's tokens are then copy targets: the strongest signal for the induction
    (find-and-copy) circuits every retrieval task relies on.
    """
    header = _enc(tok, "Read this passage carefully.\n")
    marker = _enc(tok, "\nRepeat the passage exactly:\n")
    budget = max(8, length - len(header) - len(marker))
    span_len = max(4, rng.randint(budget // 4, budget // 2))
    gap = max(0, budget - 2 * span_len)
    span = filler.take(rng, span_len)
    ids = [*header, *span, *filler.take(rng, gap), *marker]
    return TaskSample("copy_long", ids + span, len(ids), tok.decode(span))


def repeat_sample(rng: random.Random, tok: Tokenizer, filler: Filler, length: int) -> TaskSample:
    """A sequence of uniformly random tokens, then the same sequence again.

    Nothing but copying predicts the second half: a pure test of induction (find-and-copy). It
    is not an easy teacher at our scale: with the plain LM loss, small models here stayed at
    chance on it for 1,500 steps (docs/training.md). ``filler`` is unused (kept for the common
    signature).
    """
    header = _enc(tok, "Random tokens:\n")
    marker = _enc(tok, "\nAgain:\n")
    n = max(2, (length - len(header) - len(marker)) // 2)
    low = len(SPECIAL_TOKENS)
    seq = [rng.randrange(low, tok.get_vocab_size()) for _ in range(n)]
    ids = [*header, *seq, *marker]
    return TaskSample("repeat", ids + seq, len(ids), tok.decode(seq))


def vartrack_sample(rng: random.Random, tok: Tokenizer, filler: Filler, length: int) -> TaskSample:
    """Chains of variable assignments through filler; asks which variables hold a value."""
    n_chains = rng.randint(1, 3)
    names = list(
        dict.fromkeys(
            "".join(rng.choice(string.ascii_uppercase) for _ in range(3)) for _ in range(24)
        )
    )
    statements: list[str] = []
    chains: list[tuple[str, list[str]]] = []
    for _ in range(n_chains):
        hops = rng.randint(1, 4)
        chain = [names.pop() for _ in range(hops + 1)]
        value = random_digits(rng, 5)
        chains.append((value, chain))
        statements.append(f"\nVAR {chain[0]} = {value}.\n")
        statements.extend(f"\nVAR {b} = VAR {a}.\n" for a, b in itertools.pairwise(chain))
    # keep each chain in order while interleaving chains
    order: list[str] = []
    queues = [
        [s for s in statements if s.split()[1] in chain] for _, chain in chains
    ]  # statements grouped by the chain they define
    while any(queues):
        q = rng.choice([q for q in queues if q])
        order.append(q.pop(0))
    value, chain = rng.choice(chains)
    header = _enc(tok, "Track the variables below.\n")
    stmt_ids = [_enc(tok, s) for s in order]
    question = _enc(tok, f"\nWhich variables hold the value {value}? Answer:")
    answer_text = " " + " ".join(chain) + "."
    answer = _enc(tok, answer_text)
    fixed = len(header) + sum(map(len, stmt_ids)) + len(question) + len(answer)
    sizes = _split_filler(rng, length - fixed, len(stmt_ids) + 1)
    ids = list(header)
    evidence = []
    for text, stmt, size in zip(order, stmt_ids, sizes[:-1], strict=True):
        ids += filler.take(rng, size)
        if text.split()[1] in chain:
            evidence.append((len(ids), len(ids) + len(stmt)))
        ids += stmt
    ids += filler.take(rng, sizes[-1]) + question
    return TaskSample("vartrack", ids + answer, len(ids), answer_text, tuple(evidence))


GENERATORS: dict[str, Callable[[random.Random, Tokenizer, Filler, int], TaskSample]] = {
    "passkey": passkey_sample,
    "kv": kv_sample,
    "copy": copy_sample,
    "copy_long": copy_long_sample,
    "repeat": repeat_sample,
    "vartrack": vartrack_sample,
}


class MixtureSampler:
    """Builds training rows of ``seq_len + 1`` tokens from natural text and synthetic tasks.

    A row is either a random window of the natural-text stream (kind ``text``), or whole task
    samples of one kind (each ``BOS sample EOS``, random lengths from ``min_task_len`` up to
    ``max_task_len``) packed until the row is full; only the last one may be cut short.

    Every row comes with per-token loss weights: 1 everywhere except the answer tokens of task
    samples, which weigh ``answer_weight``. An answer is a handful of tokens in hundreds of filler
    tokens, so without the weight the gradient that teaches retrieval is a rounding error next to
    the language-modelling one; short task samples (a small ``max_task_len``) pack more answers
    into a row for the same reason.

    Args:
        tok: Tokenizer (must know BOS/EOS/PAD).
        stream: Natural-text training stream (also the task filler).
        seq_len: Model context length of a row (the row has one more token for the shifted target).
        weights: Row-kind weights, keys from ``("text", *TASK_KINDS)``.
        min_task_len: Shortest task sample in tokens.
        max_task_len: Longest task sample in tokens (default: the whole row).
        answer_weight: Loss weight of task answer tokens (≥ 1; 1 is the plain LM loss).
    """

    def __init__(
        self,
        tok: Tokenizer,
        stream: np.ndarray,
        seq_len: int,
        weights: Mapping[str, float],
        min_task_len: int = 64,
        max_task_len: int | None = None,
        answer_weight: float = 1.0,
    ) -> None:
        unknown = set(weights) - {"text", *TASK_KINDS}
        if unknown:
            raise InvalidInputError(
                f"unknown mixture kinds {sorted(unknown)}; use text, {', '.join(TASK_KINDS)}"
            )
        if sum(weights.values()) <= 0 or any(w < 0 for w in weights.values()):
            raise InvalidInputError(f"mixture weights must be ≥ 0 and sum > 0, got {weights}")
        if len(stream) < seq_len + 2:
            raise InvalidInputError(
                f"training stream has {len(stream)} tokens, fewer than one row of {seq_len + 1}"
            )
        self.tok = tok
        self.stream = stream
        self.seq_len = seq_len
        self.kinds = [k for k, w in weights.items() if w > 0]
        self.weights = [weights[k] for k in self.kinds]
        self.min_task_len = min(min_task_len, seq_len + 1)
        self.max_task_len = seq_len + 1 if max_task_len is None else min(max_task_len, seq_len + 1)
        if self.max_task_len < self.min_task_len:
            raise InvalidInputError(
                f"max_task_len ({max_task_len}) is below min_task_len ({min_task_len}); raise it"
            )
        if answer_weight < 1.0:
            raise InvalidInputError(f"answer_weight must be ≥ 1, got {answer_weight}")
        self.answer_weight = float(answer_weight)
        self.bos = special_id(tok, BOS)
        self.eos = special_id(tok, EOS)
        self.filler = Filler(stream, (self.bos, self.eos, special_id(tok, PAD)))

    def row(self, rng: random.Random) -> tuple[str, np.ndarray, np.ndarray]:
        """Return ``(kind, ids, weights)``, each of length ``seq_len + 1``.

        ``weights[i]`` is the loss weight of predicting ``ids[i]`` (``weights[0]`` is unused).
        """
        kind = rng.choices(self.kinds, weights=self.weights)[0]
        n = self.seq_len + 1
        if kind == "text":
            start = rng.randrange(0, len(self.stream) - n + 1)
            return kind, self.stream[start : start + n].astype(np.int64), np.ones(n, np.float32)
        ids: list[int] = []
        weights: list[float] = []
        while len(ids) < n:
            length = rng.randint(self.min_task_len, self.max_task_len) - 2
            sample = GENERATORS[kind](rng, self.tok, self.filler, length)
            answer = len(sample.ids) - sample.prompt_len
            ids += [self.bos, *sample.ids, self.eos]
            weights += [1.0] * (1 + sample.prompt_len) + [self.answer_weight] * answer + [1.0]
        return kind, np.asarray(ids[:n], dtype=np.int64), np.asarray(weights[:n], np.float32)

    def batch(
        self, rng: random.Random, batch_size: int
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``batch_size`` rows: kinds, int64 ids ``(B, seq_len + 1)`` and float32 loss weights."""
        rows = [self.row(rng) for _ in range(batch_size)]
        kinds = [k for k, _, _ in rows]
        return kinds, np.stack([r for _, r, _ in rows]), np.stack([w for _, _, w in rows])
