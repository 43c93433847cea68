"""Run memory systems on tasks with the same frozen base, budget and seeds (D14).

For each sample a fresh system observes the history, builds a context of at most
``budget − len(query)`` entries, and the base reads ``[context][query]``: a QA task scores an
exact greedy match of the answer tokens; ``longdoc`` scores the NLL of the next tokens. Every
result records tokens processed and wall time, and the numeric :meth:`MemorySystem.stats` of its
systems summed over samples (e.g. the base tokens LLMLingua-style pruning spent on scoring).

A system that implements :class:`~megacontext.eval.memory.EvidenceAware` (an oracle) is handed
the sample's evidence ranges after it observed the history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from megacontext.errors import BudgetError
from megacontext.eval.memory import EvidenceAware, MemorySystem
from megacontext.eval.tasks import EvalSample, Filler, make_sample
from megacontext.models.adapter import BaseAdapter


@dataclass
class TaskResult:
    task: str
    length: int
    budget: int
    system: str
    samples: int
    score: float  # accuracy for QA tasks, mean NLL for longdoc
    ci: tuple[float, float]
    tokens_processed: int
    seconds: float
    skipped: int = 0
    system_stats: dict[str, float] = field(default_factory=dict)  # numeric stats(), summed
    # QA tasks: mean NLL (nats/token) of the answer's tokens read after the built context, and
    # its 95% interval. It separates systems where accuracy cannot (all 0 or all 1).
    answer_nll: float | None = None
    answer_nll_ci: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.task}@{_short(self.length)}/{self.budget}/{self.system}"


def _short(n: int) -> str:
    return (
        f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    )


@torch.no_grad()
def answer_once(base: BaseAdapter, context: torch.Tensor, sample: EvalSample) -> tuple[bool, float]:
    """Greedy-decode len(answer) tokens after ``[context][query]``; also the answer's NLL."""
    query = base.embed(torch.as_tensor(sample.query, device=base.device))
    prefix = torch.cat([context.to(query.dtype), query])[None]
    answer = torch.as_tensor(sample.answer, device=base.device)
    teacher = torch.cat([prefix, base.embed(answer[:-1])[None]], dim=1)
    positions = torch.arange(teacher.shape[1], device=base.device)[None]
    logits = (
        base.forward(teacher, positions, use_cache=False).logits[0, prefix.shape[1] - 1 :].float()
    )
    nll = float(F.cross_entropy(logits, answer))
    correct = bool(
        torch.equal(logits.argmax(-1), answer)
    )  # greedy decode == teacher-forced argmax chain
    return correct, nll


def _bootstrap(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if len(values) < 2:
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(1000)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def run_task(
    base: BaseAdapter,
    make_system: Callable[[], MemorySystem],
    task: str,
    length: int,
    budget: int,
    samples: int,
    filler: Filler,
    seed: int = 0,
    chunk: int = 4096,
) -> TaskResult:
    """Score one system on ``samples`` seeded samples of one task, length and budget."""
    rng = random.Random(f"{task}/{length}/{seed}")
    encode = lambda text: base.encode(text, add_bos=False)  # noqa: E731
    scores: list[float] = []
    answer_nlls: list[float] = []
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
        try:
            built = system.build_context(sample.query, budget - len(sample.query))
        except BudgetError:
            skipped += 1
            continue
        tokens += len(sample.history)
        for key, value in system.stats().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
        correct, nll = answer_once(base, built.vectors, sample)
        scores.append(nll if task == "longdoc" else float(correct))
        answer_nlls.append(nll)
    values = np.asarray(scores, dtype=np.float64)
    qa_nll = np.asarray(answer_nlls, dtype=np.float64) if task != "longdoc" else None
    return TaskResult(
        task=task,
        length=length,
        budget=budget,
        system=name,
        samples=len(values),
        score=float(values.mean()) if len(values) else float("nan"),
        ci=_bootstrap(values),
        tokens_processed=tokens,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        system_stats=totals,
        answer_nll=float(qa_nll.mean()) if qa_nll is not None and len(qa_nll) else None,
        answer_nll_ci=_bootstrap(qa_nll) if qa_nll is not None and len(qa_nll) else None,
    )


def run_grid(
    base: BaseAdapter,
    systems: dict[str, Callable[[], MemorySystem]],
    tasks: Sequence[str],
    lengths: Sequence[int],
    budgets: Sequence[int],
    samples: int,
    filler: Filler,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[TaskResult]:
    results = []
    for task in tasks:
        for length in lengths:
            for budget in budgets:
                for name, factory in systems.items():
                    progress(f"{task}@{length}/{budget}/{name}")
                    results.append(run_task(base, factory, task, length, budget, samples, filler))
    return results
