"""MegaContext as a model of EleutherAI's lm-evaluation-harness: a suite none of us wrote.

``megacontext lm-eval --model megacontext --model_args base=smollm2,system=megacontext,W_max=512
--tasks niah_single_1 --metadata '{"max_seq_lengths":[4096]}'`` runs lm-eval's own tasks (RULER's
haystacks among them) through the same memory systems and answer routine as ``bench longctx``:
for every request the prompt's body is observed as the history, its last line is the question
(with the task's answer prefix as the cue), the system builds its working context within
``W_max`` positions, and the base answers greedily in the chosen prompt style.

lm-eval 0.4 finds models only in its own registry (it has no plugin entry point), so the
``megacontext lm-eval`` command registers this class as ``megacontext`` and then runs lm-eval's
own command line with the arguments it was given; in Python, pass an instance to
``lm_eval.simple_evaluate(model=MegaContextLM(...), ...)``. Only generation tasks
(``generate_until``) are supported: a memory system answers questions; it does not score
arbitrary continuations.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from megacontext.errors import BudgetError, InvalidInputError

MODEL_NAME = "megacontext"


@dataclass(frozen=True)
class SplitPrompt:
    """A request's prompt cut into what is remembered and what is asked."""

    history: str
    question: str
    cue: str


def split_prompt(prompt: str, gen_prefix: str | None = None) -> SplitPrompt:
    """The history is everything before the prompt's last line; that line is the question,
    and the task's answer prefix (``gen_prefix``), when the line ends with it, is the cue.

    Raises:
        InvalidInputError: the prompt has no line break, so the question cannot be told apart.
    """
    body, newline, last = prompt.rstrip().rpartition("\n")
    if not newline or not body.strip():
        raise InvalidInputError(
            "an lm-eval prompt must end with its question on a line of its own (this one has no "
            "line break before it); tasks that strip newlines (RULER's remove_newline_tab) "
            "cannot be split into history and question"
        )
    question, cue = last.strip(), ""
    prefix = (gen_prefix or "").strip()
    if prefix and question.endswith(prefix) and question != prefix:
        question, cue = question[: -len(prefix)].rstrip(), prefix
    return SplitPrompt(body, question, cue)


def stop_at(text: str, until: list[str] | str | None) -> str:
    """``text`` cut before the first of the request's stop strings."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]


def _lm_class() -> type:
    """The adapter class, built on lm-eval's ``LM`` (imported only when lm-eval is used)."""
    try:
        from lm_eval.api.model import LM
    except ImportError as exc:
        raise InvalidInputError(
            "lm-eval is not installed; install it with `pip install 'lm-eval[ruler]==0.4.13' "
            "torch==2.13.0` (or `make install`, which installs the dev extras)"
        ) from exc

    class MegaContextLM(LM):  # type: ignore[misc,valid-type]
        """One lm-eval model: a base, a memory system and a budget (see the module docstring).

        ``base``: a base name or path (``megacontext models list``); ``system``: a memory system
        of ``bench longctx`` (``megacontext``, ``recency``, ``full``, ``rag-bm25``, …);
        ``W_max``: positions the base reads (prompt, context, question); ``prompt``: ``raw``,
        ``chat`` or ``chat-cue``. ``tokenizer`` is only read by tasks that size their data with
        it (RULER); the base's own tokenizer is used to read and answer.
        """

        def __init__(
            self,
            base: str = "default",
            system: str = "megacontext",
            W_max: int | str = 512,
            prompt: str = "raw",
            tokenizer: str | None = None,
            batch_size: int | str = 1,
            **_ignored: Any,
        ) -> None:
            super().__init__()
            self.adapter, self.make_system, self.prompt = load_system(base, system, prompt)
            self.system_name, self.W_max = system, _positive_int(W_max, "W_max")
            self.sizing_tokenizer = tokenizer  # read by RULER from the model args, not here

        @classmethod
        def create_from_arg_string(
            cls, arg_string: str, additional_config: dict[str, Any] | None = None
        ) -> Any:
            from lm_eval.utils import simple_parse_args_string

            args = simple_parse_args_string(arg_string)
            return cls(**args, **{k: v for k, v in (additional_config or {}).items() if v})

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            from tqdm import tqdm

            return [
                self.answer(request.args[0], request.args[1], request.doc)
                for request in tqdm(requests, disable=disable_tqdm, desc="megacontext")
            ]

        def answer(self, prompt: str, gen_kwargs: dict[str, Any], doc: dict[str, Any]) -> str:
            split = split_prompt(prompt, (doc or {}).get("gen_prefix"))
            max_new = int(gen_kwargs.get("max_gen_toks", 64))
            return stop_at(
                answer_split(
                    self.adapter, self.make_system, self.prompt, split, self.W_max, max_new
                ),
                gen_kwargs.get("until"),
            )

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            raise InvalidInputError(_GENERATION_ONLY)

        def loglikelihood_rolling(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[Any]:
            raise InvalidInputError(_GENERATION_ONLY)

    return MegaContextLM


_GENERATION_ONLY = (
    "the MegaContext lm-eval model runs generation tasks (output_type generate_until, such as "
    "RULER's) only: a memory system answers questions, it does not score given continuations"
)


def _positive_int(value: int | str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidInputError(f"--model_args {name}={value!r} is not an integer") from None
    if number < 1:
        raise InvalidInputError(f"--model_args {name} must be >= 1, got {number}")
    return number


def load_system(base_name: str, system: str, style: str) -> tuple[Any, Callable[[], Any], Any]:
    """The base, a factory of fresh memory systems named ``system``, and the prompt format."""
    from megacontext.bench.longctx import pick_systems, systems
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.errors import NoFocusBundleError
    from megacontext.models.loading import load_base
    from megacontext.models.prompting import PromptFormat

    torch.manual_seed(0)
    base = load_base(base_name)
    prompt = PromptFormat.for_base(base, style)
    try:
        bundle = load_bundle(
            resolve_focus("default", base.fingerprints, base.source),
            fingerprints=base.fingerprints,
        )
    except NoFocusBundleError:
        bundle = None  # the MegaContext systems are then not available: pick_systems says so
    (make,) = pick_systems(systems(base, bundle), [system]).values()
    return base, make, prompt


@torch.no_grad()
def answer_split(
    base: Any,
    make_system: Callable[[], Any],
    prompt: Any,
    split: SplitPrompt,
    W_max: int,
    max_new_tokens: int,
    chunk: int = 4096,
) -> str:
    """Observe ``split.history`` with a fresh system, build its context for the question
    within ``W_max`` positions, and answer greedily (``eval.harness.answer_question``)."""
    from megacontext.eval.harness import answer_question

    history = np.asarray(base.encode(split.history, add_bos=False), dtype=np.int64)
    query = np.asarray(base.encode(f"\n{split.question} {split.cue}", add_bos=False))
    system = make_system()
    for lo in range(0, len(history), chunk):
        system.observe(history[lo : lo + chunk])
    room = W_max - len(prompt.prefix) - len(prompt.question_ids(base, split.question, split.cue))
    try:
        built = system.build_context(query, room)
    except BudgetError as exc:
        raise InvalidInputError(
            f"{system.name} cannot fit a {len(history):,}-token history in W_max={W_max:,} "
            f"({exc}); raise W_max or choose a memory system"
        ) from None
    return answer_question(base, prompt, built.vectors, split.question, split.cue, max_new_tokens)


def register() -> type:
    """Register the adapter in lm-eval's model registry as ``megacontext``; returns the class."""
    from lm_eval.api.registry import model_registry

    cls = _lm_class()
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=cls)
    return cls


def with_tokenizer(argv: list[str]) -> list[str]:
    """``argv`` with ``tokenizer=`` added to ``--model_args`` when missing: RULER's tasks size
    their haystacks with it, and lm-eval would otherwise look the model name up on the hub."""
    from megacontext.models.loading import resolve_model_dir

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--model_args" and i + 1 < len(out):
            args = out[i + 1]
            if re.search(r"(^|,)tokenizer=", args):
                return out
            found = re.search(r"(?:^|,)base=([^,]+)", args)
            base = found.group(1) if found else "default"
            out[i + 1] = (
                f"{args},tokenizer={resolve_model_dir(base)}"
                if args
                else (f"tokenizer={resolve_model_dir(base)}")
            )
            return out
    return out


def run_cli(argv: list[str]) -> None:
    """lm-eval's own command line, with the ``megacontext`` model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    register()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.argv = ["lm-eval", *with_tokenizer(argv)]
    cli_evaluate()


__all__ = [
    "MODEL_NAME",
    "SplitPrompt",
    "answer_split",
    "load_system",
    "register",
    "run_cli",
    "split_prompt",
    "stop_at",
    "with_tokenizer",
]
