"""Answering: the one routine that decodes from a base, and how answers are scored.

* :func:`choose_token` picks the next token from logits (greedy, or temperature and top-k with a
  seeded generator) — sessions call it per step while their working context changes.
* :func:`decode` prefills a fixed input (prefix, context, question) and decodes with a KV cache
  until a stop token, a stop string or ``max_new_tokens`` — the evaluation harness, the demos'
  baselines and ``ask`` use it.
* :func:`teacher_forced` scores a known answer after an input: its NLL, and whether greedy
  decoding would produce exactly those tokens (the strict metric).
* :func:`normalise` and :func:`contains_answer`: instruct models answer in sentences, so an
  answer also counts when its normalised words contain the expected answer's.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from megacontext.errors import InvalidInputError

if TYPE_CHECKING:
    from megacontext.models.adapter import BaseAdapter


@dataclass(frozen=True)
class Decoded:
    """What :func:`decode` produced."""

    ids: list[int]  # generated token ids, the stop token excluded
    text: str  # their text, special tokens stripped, cut at a stop string
    stop: str  # "token", "text" or "length"


def choose_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> int:
    """The next token from ``(vocab,)`` logits: argmax at temperature 0, else a seeded sample."""
    logits = logits.float()
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, -torch.inf), logits)
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def cut_at_stop(text: str, stop_text: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded), and whether one was found.

    A blank stop string (a line break) counts only after the answer's first non-blank
    character: a model that opens with an empty line and then answers is answering, not
    stopping. Any other stop string counts anywhere.
    """
    start = len(text) - len(text.lstrip())
    cuts = []
    for s in stop_text:
        if not s:
            continue
        at = text.find(s, start if not s.strip() else 0)
        if at >= 0:
            cuts.append(at)
    return (text[: min(cuts)], True) if cuts else (text, False)


@torch.no_grad()
def decode(  # noqa: PLR0913  (the sampling settings, all keyword-only)
    base: BaseAdapter,
    inputs: torch.Tensor,
    max_new_tokens: int,
    *,
    stop_ids: Collection[int] = (),
    stop_text: Sequence[str] = (),
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
    on_forward: Callable[[float, int, int], None] | None = None,
) -> Decoded:
    """Decode after ``inputs`` ``(T, d)`` (entry vectors at compact positions 0..T-1).

    Stops at a token in ``stop_ids`` (EOS, end of turn; not part of the answer), at the first
    stop string in the decoded text (cut there), or after ``max_new_tokens``. ``on_text``
    receives the answer as it grows, in pieces that add up to ``Decoded.text`` (text that could
    still turn out to begin a stop string is held back until it cannot). ``on_forward(seconds,
    entries, cached)`` is told of every forward of the base (the prefill, then one per token).
    """
    streamed = _Streamed(stop_text, on_text)
    decoded = _decode(
        base,
        inputs,
        max_new_tokens,
        stop_ids,
        stop_text,
        temperature,
        top_k,
        generator,
        streamed,
        on_forward or (lambda *_: None),
    )
    streamed.finish(decoded.text)
    return decoded


class _Streamed:
    """Hands ``on_text`` the new part of the answer after every token."""

    def __init__(self, stop_text: Sequence[str], on_text: Callable[[str], None] | None):
        self.hold = max((len(s) for s in stop_text if s), default=1) - 1
        self.on_text, self.sent = on_text, 0

    def update(self, text: str) -> None:
        if self.on_text is not None:
            # A token may decode to a partial character ("\ufffd") until the next completes it.
            self._send(text[: max(self.sent, len(text) - self.hold)].rstrip("\ufffd"))

    def finish(self, text: str) -> None:
        if self.on_text is not None:
            self._send(text)

    def _send(self, safe: str) -> None:
        if len(safe) > self.sent:
            assert self.on_text is not None
            self.on_text(safe[self.sent :])
            self.sent = len(safe)


def _decode(  # noqa: PLR0913, PLR0917  (decode's arguments, passed on)
    base: BaseAdapter,
    inputs: torch.Tensor,
    max_new_tokens: int,
    stop_ids: Collection[int],
    stop_text: Sequence[str],
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
    streamed: _Streamed,
    on_forward: Callable[[float, int, int], None],
) -> Decoded:
    if max_new_tokens < 0:
        raise InvalidInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if inputs.dim() != 2 or not len(inputs):
        raise InvalidInputError(
            f"inputs must be a non-empty (length, d) tensor, got {inputs.shape}"
        )
    length = inputs.shape[0]
    positions = torch.arange(length, device=base.device)[None]
    started = time.perf_counter()
    out = base.forward(inputs[None], positions)
    on_forward(time.perf_counter() - started, length, 0)
    ids: list[int] = []
    for step in range(max_new_tokens):
        token = choose_token(out.logits[0, -1], temperature, top_k, generator)
        if token in stop_ids:
            return Decoded(ids, base.decode(ids), "token")
        ids.append(token)
        text, stopped = cut_at_stop(base.decode(ids), stop_text)
        if stopped:
            return Decoded(ids, text, "text")
        streamed.update(text)
        if step == max_new_tokens - 1:
            break
        pos = torch.tensor([[length + step]], device=base.device)
        started = time.perf_counter()
        out = base.forward(base.embed(torch.tensor([[token]], device=base.device)), pos, out.cache)
        on_forward(time.perf_counter() - started, 1, length + step)
    return Decoded(ids, base.decode(ids), "length")


@torch.no_grad()
def teacher_forced(
    base: BaseAdapter, inputs: torch.Tensor, answer: Sequence[int]
) -> tuple[float, bool]:
    """The NLL (nats/token) of ``answer`` after ``inputs`` ``(T, d)``, and whether greedy decoding
    would produce exactly those tokens (the argmax chain equals the answer)."""
    if not len(answer):
        raise InvalidInputError("the answer has no tokens")
    target = torch.as_tensor(list(answer), device=base.device)
    seq = torch.cat([inputs, base.embed(target[:-1]).to(inputs.dtype)])[None]
    positions = torch.arange(seq.shape[1], device=base.device)[None]
    logits = base.forward(seq, positions, use_cache=False).logits[0, inputs.shape[0] - 1 :].float()
    nll = float(F.cross_entropy(logits, target))
    return nll, bool(torch.equal(logits.argmax(-1), target))


_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> list[str]:
    """Lower-case words of ``text``: Unicode-normalised, punctuation removed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _PUNCT.sub(" ", folded).split()


def contains_answer(answer: str, expected: str) -> bool:
    """Whether the normalised words of ``expected`` occur, in order and adjacent, in ``answer``.

    ``"The pass key is 12345."`` contains ``"12345"``; ``"123456"`` does not.
    """
    want, got = normalise(expected), normalise(answer)
    if not want:
        return False
    return any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


def exact_answer(answer: str, expected: str) -> bool:
    """Whether the answer's first normalised words are exactly the expected answer's."""
    want = normalise(expected)
    return bool(want) and normalise(answer)[: len(want)] == want


__all__ = [
    "Decoded",
    "choose_token",
    "contains_answer",
    "cut_at_stop",
    "decode",
    "exact_answer",
    "normalise",
    "teacher_forced",
]
