"""Data that training and evaluation share: filler text, seeded task pieces, held-out texts.

* :class:`Filler` — random windows of a real token stream (special tokens removed): the
  haystack that long-context tasks hide their needles in, for training and evaluation alike.
* :func:`random_digits` and the task formats the tiny base was trained on (``PASSKEY_*``,
  ``KV_*``), which the evaluation and the demo reuse.
* :data:`HELDOUT_PATH`, :func:`heldout_documents`, :func:`heldout_texts` — the validation split
  of the default corpus, shipped with the package (nothing trained on it), so benchmarks and the
  demo need no corpus build.

numpy and the standard library only; every layer above ``core`` may use it.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np

from megacontext.errors import InvalidInputError

HELDOUT_PATH = Path(__file__).resolve().parent / "heldout.jsonl.gz"

PASSKEY_INTRO = (
    "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it. "
    "I will ask you for the pass key at the end.\n"
)
PASSKEY_NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
# (question, answer cue); the trained prompt is "\n{question} {cue}".
PASSKEY_ASK = ("What is the pass key?", "The pass key is")
PASSKEY_QUESTION = f"\n{PASSKEY_ASK[0]} {PASSKEY_ASK[1]}"
KV_LINE = "\nkey {key} has value {value}.\n"
KV_ASK = ("What is the value of key {key}?", "The value is")
KV_QUESTION = f"\n{KV_ASK[0]} {KV_ASK[1]}"


class Filler:
    """Random windows of natural text from a token stream, with special tokens removed.

    Args:
        stream: Token ids (``BOS doc EOS ...``).
        special_ids: Ids to strip from filler windows.
    """

    def __init__(self, stream: np.ndarray, special_ids: tuple[int, ...] = ()) -> None:
        if len(stream) < 64:
            raise InvalidInputError(
                f"filler stream has {len(stream)} tokens; need at least 64 tokens of text"
            )
        self.stream = np.asarray(stream)
        self.special_ids = np.asarray(special_ids, dtype=self.stream.dtype)

    def take(self, rng: random.Random, n: int) -> list[int]:
        """Return exactly ``n`` filler token ids from a random place in the stream."""
        out: list[int] = []
        while len(out) < n:
            need = n - len(out)
            width = min(need + 16, len(self.stream))
            start = rng.randrange(0, len(self.stream) - width + 1)
            window = self.stream[start : start + width]
            if len(self.special_ids):
                window = window[~np.isin(window, self.special_ids)]
            out.extend(int(t) for t in window[:need])
        return out


def random_digits(rng: random.Random, n: int) -> str:
    """``n`` random decimal digits without a leading zero."""
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def heldout_documents(path: str | Path = HELDOUT_PATH) -> list[dict[str, str]]:
    """The held-out documents (``source``, ``name``, ``text``) shipped with the package."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"held-out text {path} is missing; reinstall megacontext")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def heldout_texts(path: str | Path = HELDOUT_PATH) -> list[str]:
    """Texts of the held-out validation documents (the default corpus's validation split)."""
    return [row["text"] for row in heldout_documents(path)]


__all__ = [
    "HELDOUT_PATH",
    "KV_ASK",
    "KV_LINE",
    "KV_QUESTION",
    "PASSKEY_ASK",
    "PASSKEY_INTRO",
    "PASSKEY_NEEDLE",
    "PASSKEY_QUESTION",
    "Filler",
    "heldout_documents",
    "heldout_texts",
    "random_digits",
]
