"""HumanEval: the sandbox, the programs it runs, and both systems over real problems."""

from __future__ import annotations

import pytest

from megacontext.apps.code.humaneval import (
    load_problems,
    program_of,
    run_problems,
    run_sandboxed,
    solution_of,
)
from megacontext.errors import InvalidInputError


def test_the_canonical_solutions_pass_and_an_empty_body_fails() -> None:
    problems = load_problems(4)
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(4)]
    for problem in problems:
        source = solution_of(problem, problem["canonical_solution"], "raw")
        solved = run_sandboxed(program_of(problem, source))
        assert solved.passed and solved.status == "passed", solved.detail
        empty = run_sandboxed(program_of(problem, solution_of(problem, "    pass\n", "raw")))
        assert not empty.passed and empty.status == "failed"
        assert "AssertionError" in empty.detail or "TypeError" in empty.detail


def test_the_sandbox_bounds_time_memory_files_and_isolation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run_sandboxed("while True:\n    pass\n", timeout_s=1).status == "timeout"
    sleeper = run_sandboxed("import time\ntime.sleep(30)\n", timeout_s=1)
    assert sleeper.status == "timeout"  # wall time too, not only CPU
    hog = run_sandboxed("x = bytearray(2 * 1024 ** 3)\n", memory_bytes=512 * 1024**2)
    assert hog.status == "failed" and "MemoryError" in hog.detail
    big = run_sandboxed("open('big', 'wb').write(b'0' * (4 * 1024 ** 2))\n", file_bytes=1024**2)
    assert not big.passed
    # A fresh, isolated interpreter in an empty directory of its own.
    probe = "import os, sys\nassert os.listdir('.') == ['candidate.py'], os.listdir('.')\n"
    probe += "assert sys.flags.isolated and 'MEGACONTEXT_SECRET' not in os.environ\n"
    import os

    os.environ["MEGACONTEXT_SECRET"] = "x"
    try:
        assert run_sandboxed(probe).passed
    finally:
        del os.environ["MEGACONTEXT_SECRET"]
    with pytest.raises(InvalidInputError, match="must be positive"):
        run_sandboxed("pass", timeout_s=0)


def test_both_systems_complete_and_are_judged_by_the_sandbox(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    memory = tmp_path / "memory.py"
    memory.write_text("def helper(x):\n    return sorted(x)\n" * 20)
    said: list[str] = []
    results = run_problems(
        tiny_world.base, tiny_world.bundle, load_problems(2), [memory], said.append, 5.0
    )
    by_name = {r.name: r for r in results}
    assert set(by_name) == {"humaneval/pass@1/base", "humaneval/pass@1/megacontext"}
    mc = by_name["humaneval/pass@1/megacontext"]
    assert mc.baseline_name == "humaneval/pass@1/base"
    for result in results:
        outcomes = result.extra["outcomes"]
        assert [o["task_id"] for o in outcomes] == ["HumanEval/0", "HumanEval/1"]
        assert result.value == sum(o["passed"] for o in outcomes) / 2
        assert sum(result.extra["statuses"].values()) == 2
    assert mc.extra["memory_tokens"] > 0 and mc.extra["memory"] == ["memory.py"]
    assert said[0] == "base: problem 1/2"


def test_a_chat_answer_is_read_for_its_code_block() -> None:
    (problem,) = load_problems(1)
    whole = problem["prompt"] + problem["canonical_solution"]
    body = problem["canonical_solution"]
    without_imports = "\n".join(x for x in whole.splitlines() if not x.startswith("from "))
    answers = {
        f"Sure! Here it is:\n```python\n{without_imports}\n```\nIt compares pairs.": True,
        f"```\n{body}```": True,  # a body alone goes under the prompt's signature
        "I cannot help with that.": False,
    }
    for answer, passes in answers.items():
        source = solution_of(problem, answer, "chat")
        assert run_sandboxed(program_of(problem, source)).passed is passes, answer
