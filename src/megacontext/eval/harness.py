"""Run memory systems on tasks with the same frozen base, budget and seeds (D14).

For each sample a fresh system observes the history and builds a context in what the budget
leaves after the prompt (its prefix and the question); the base reads ``[prefix][context]
[question]`` in one prompt style (:mod:`megacontext.models.prompting`), the same for every system
(D14). A QA task decodes the answer greedily and scores it by exact match of its first words and
by containment, beside the expected answer's NLL; ``longdoc`` scores the NLL of the next tokens.
Every
result records tokens processed and wall time, and the numeric :meth:`MemorySystem.stats` of its
systems summed over samples (e.g. the base tokens LLMLingua-style pruning spent on scoring).

A system that implements :class:`~megacontext.eval.memory.EvidenceAware` (an oracle) is handed
the sample's evidence ranges after it observed the history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from megacontext.data import Filler
from megacontext.errors import BudgetError
from megacontext.eval.leaderboard import length_label
from megacontext.eval.memory import EvidenceAware, MemorySystem
from megacontext.eval.tasks import EvalSample, make_sample
from megacontext.models.adapter import BaseAdapter
from megacontext.models.generation import contains_answer, decode, exact_answer, teacher_forced
from megacontext.models.prompting import PromptFormat

# Longest decoded answer (tokens): a sentence such as "The pass key is 12345." fits.
ANSWER_TOKENS = 24


@dataclass
class TaskResult:
    task: str
    length: int
    budget: int
    system: str
    samples: int
    score: float  # QA tasks: exact-match accuracy of the decoded answer; longdoc: mean NLL
    ci: tuple[float, float]
    tokens_processed: int
    seconds: float
    skipped: int = 0
    system_stats: dict[str, float] = field(default_factory=dict)  # numeric stats(), summed
    # QA tasks: mean NLL (nats/token) of the answer's tokens read after the built context, and
    # its 95% interval. It separates systems where accuracy cannot (all 0 or all 1).
    answer_nll: float | None = None
    answer_nll_ci: tuple[float, float] | None = None
    # QA tasks: the fraction of decoded answers whose words contain the expected answer (instruct
    # models answer in sentences), with its 95% interval.
    contains: float | None = None
    contains_ci: tuple[float, float] | None = None
    prompt: str = "raw"
    # Per sample: the decoded answer, the expected one, and both verdicts (for reading failures).
    answers: list[dict[str, object]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.task}@{length_label(self.length)}/{self.budget}/{self.system}"


@dataclass(frozen=True)
class Answered:
    """One sample's answer, scored every way."""

    text: str
    exact: bool
    contains: bool
    nll: float  # of the expected answer's tokens, teacher-forced after the input


@torch.no_grad()
def answer_inputs(
    base: BaseAdapter, prompt: PromptFormat, context: torch.Tensor, question: str, cue: str
) -> torch.Tensor:
    """``[prompt prefix][context][question, closing, cue]`` as base inputs ``(T, d)``."""
    device = base.device
    prefix = base.embed(torch.as_tensor(prompt.prefix, dtype=torch.long, device=device))
    asked = base.embed(torch.as_tensor(prompt.question_ids(base, question, cue), device=device))
    return torch.cat([prefix, context.to(asked.dtype), asked])


def answer_question(
    base: BaseAdapter,
    prompt: PromptFormat,
    context: torch.Tensor,
    question: str,
    cue: str = "",
    max_new_tokens: int = ANSWER_TOKENS,
) -> str:
    """The greedy answer to ``question`` after ``context`` in the prompt's style."""
    inputs = answer_inputs(base, prompt, context, question, cue)
    return decode(
        base, inputs, max_new_tokens, stop_ids=prompt.stop_ids, stop_text=prompt.stop_text
    ).text


@torch.no_grad()
def answer_sample(
    base: BaseAdapter,
    prompt: PromptFormat,
    context: torch.Tensor,
    sample: EvalSample,
    max_new_tokens: int = ANSWER_TOKENS,
) -> Answered:
    """Put the sample's question after ``[prompt prefix][context]`` and score the answer.

    The base reads ``[prefix][context][question, closing, cue]`` at compact positions. The
    answer is decoded greedily (:func:`~megacontext.models.generation.decode`) and scored by
    exact match of its first words and by containment; the expected answer's NLL is measured
    teacher-forced after the same input.
    """
    inputs = answer_inputs(base, prompt, context, sample.question, sample.cue)
    if prompt.answers_after_cue(sample.cue):
        expected = sample.answer.tolist()
    else:
        expected = base.encode(sample.answer_text, add_bos=False)
    nll, _ = teacher_forced(base, inputs, expected)
    decoded = decode(
        base,
        inputs,
        max_new_tokens,
        stop_ids=prompt.stop_ids,
        stop_text=prompt.stop_text,
    )
    return Answered(
        decoded.text,
        exact_answer(decoded.text, sample.answer_text),
        contains_answer(decoded.text, sample.answer_text),
        nll,
    )


def prompt_tokens(base: BaseAdapter, prompt: PromptFormat, sample: EvalSample) -> int:
    """Positions the prompt takes besides the context: its prefix and the question part."""
    if sample.task == "longdoc":
        return len(prompt.prefix)
    return len(prompt.prefix) + len(prompt.question_ids(base, sample.question, sample.cue))


@torch.no_grad()
def continuation_nll(
    base: BaseAdapter, prompt: PromptFormat, context: torch.Tensor, continuation: np.ndarray
) -> float:
    """NLL of a document's next tokens after ``[prefix][context]`` (``longdoc``)."""
    prefix = base.embed(torch.as_tensor(prompt.prefix, dtype=torch.long, device=base.device))
    inputs = torch.cat([prefix, context.to(prefix.dtype)])
    nll, _ = teacher_forced(base, inputs, continuation.tolist())
    return nll


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval of ``values``' mean (1,000 resamples, seeded)."""
    if len(values) < 2:
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(1000)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def run_task(  # noqa: PLR0913, PLR0917  (a grid cell's coordinates and the run's settings)
    base: BaseAdapter,
    make_system: Callable[[], MemorySystem],
    task: str,
    length: int,
    budget: int,
    samples: int,
    filler: Filler,
    seed: int = 0,
    chunk: int = 4096,
    prompt: PromptFormat | None = None,
) -> TaskResult:
    """Score one system on ``samples`` seeded samples of one task, length and budget.

    ``budget`` counts every position the base reads: the prompt's prefix, the system's context
    and the question; the system builds its context in what remains. ``prompt`` defaults to the
    ``raw`` style.
    """
    prompt = prompt or PromptFormat.for_base(base, "raw")
    rng = random.Random(f"{task}/{length}/{seed}")
    encode = lambda text: base.encode(text, add_bos=False)  # noqa: E731
    scores: list[float] = []
    contained: list[float] = []
    answer_nlls: list[float] = []
    answers: list[dict[str, object]] = []
    tokens = 0
    skipped = 0
    name = ""
    totals: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(samples):
        sample = make_sample(task, rng, encode, filler, length)
        system = make_system()
        name = system.name
        for lo in range(0, len(sample.history), chunk):
            system.observe(sample.history[lo : lo + chunk])
        if isinstance(system, EvidenceAware):
            system.observe_evidence(sample.evidence)
        room = budget - prompt_tokens(base, prompt, sample)
        try:
            built = system.build_context(sample.query, room)
        except BudgetError:
            skipped += 1
            continue
        tokens += len(sample.history)
        for key, value in system.stats().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
        if task == "longdoc":
            scores.append(continuation_nll(base, prompt, built.vectors, sample.answer))
            continue
        answered = answer_sample(base, prompt, built.vectors, sample)
        scores.append(float(answered.exact))
        contained.append(float(answered.contains))
        answer_nlls.append(answered.nll)
        answers.append(
            {
                "answer": answered.text,
                "expected": sample.answer_text,
                "exact": answered.exact,
                "contains": answered.contains,
            }
        )
    values = np.asarray(scores, dtype=np.float64)
    qa = task != "longdoc" and len(answer_nlls) > 0
    nlls = np.asarray(answer_nlls, dtype=np.float64)
    hits = np.asarray(contained, dtype=np.float64)
    return TaskResult(
        task=task,
        length=length,
        budget=budget,
        system=name,
        samples=len(values),
        score=float(values.mean()) if len(values) else float("nan"),
        ci=bootstrap_ci(values),
        tokens_processed=tokens,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        system_stats=totals,
        answer_nll=float(nlls.mean()) if qa else None,
        answer_nll_ci=bootstrap_ci(nlls) if qa else None,
        contains=float(hits.mean()) if qa else None,
        contains_ci=bootstrap_ci(hits) if qa else None,
        prompt=prompt.style,
        answers=answers,
    )
