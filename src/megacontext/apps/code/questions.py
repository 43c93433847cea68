"""Questions about a repository generated from its code's own structure, with known answers.

The repository-QA benchmark (``megacontext bench repoqa``) asks what a developer asks of a
codebase, and knows the answer because it read the code with :mod:`ast`:

============  =================================================  ===========================
kind          question                                           answer
============  =================================================  ===========================
defined-in    In which file is the function/class ``X`` defined?  the file's name
constant      What is the value of ``NAME`` in ``PATH``?           the literal's value
raises        Which exception does ``F`` raise?                   the one exception class
returns       What does ``F`` return?                             the one returned expression
caller        Which function calls ``H``?                         the one calling function
============  =================================================  ===========================

Only unambiguous questions are asked: the subject is defined once in the repository (no
overloads, no same-named methods), a function raises exactly one exception class and returns
exactly one expression, a function is called from exactly one function. Every question carries
its **evidence** — the file and lines that hold the answer — so that a citation can be checked
(does the cited span contain them?). Generation is deterministic (sorted candidates, a seeded
sample per kind) and reads only Python files; answers are graded by containment
(:func:`~megacontext.models.generation.contains_answer`).
"""

from __future__ import annotations

import ast
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from megacontext.apps.code.repo import RepoScan

KINDS = ("defined-in", "constant", "raises", "returns", "caller")
MAX_ANSWER_CHARS = 40  # longer literals and expressions make poor short-answer questions


@dataclass(frozen=True)
class RepoQuestion:
    """One question, its expected answer and where in the repository the answer is."""

    kind: str
    question: str
    answer: str
    path: str  # the evidence: a file of the scan …
    lines: tuple[int, int]  # … and its lines, 1-based inclusive

    def cites_evidence(self, path: str | None, lines: tuple[int, int] | None) -> bool:
        """Whether a citation of ``path:lines`` contains the evidence lines."""
        if path != self.path or lines is None:
            return False
        return lines[0] <= self.lines[0] and self.lines[1] <= lines[1]


@dataclass(frozen=True)
class _Def:
    name: str
    path: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _own_nodes(function: ast.AST) -> Iterable[ast.AST]:
    """The nodes of ``function``'s body, not those of functions or classes nested in it."""
    todo = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))


def _short(text: str) -> bool:
    return 0 < len(text) <= MAX_ANSWER_CHARS and "\n" not in text


def _raised_class(node: ast.Raise) -> str | None:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    if isinstance(exc, ast.Name):
        return exc.id
    if isinstance(exc, ast.Attribute):
        return exc.attr
    return None


def _called_name(node: ast.Call) -> tuple[str | None, bool]:
    """The called name, and whether it surely names a function of this repository: a bare
    name or ``self.NAME``/``cls.NAME``; ``obj.NAME(…)`` may be any object's method."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id, True
    if isinstance(func, ast.Attribute):
        own = isinstance(func.value, ast.Name) and func.value.id in ("self", "cls")
        return func.attr, own
    return None, False


class _Reader:
    """The repository's definitions, constants and calls, gathered in one pass per file."""

    def __init__(self, scan: RepoScan):
        self.defs: dict[str, list[_Def]] = defaultdict(list)
        self.constants: dict[str, list[tuple[str, ast.Assign, str]]] = defaultdict(list)
        self.callers: dict[str, set[str]] = defaultdict(set)  # callee → calling functions
        self.unsure: set[str] = set()  # names also called as some object's method
        self.call_lines: dict[tuple[str, str], tuple[str, int]] = {}  # (callee, caller) → site
        for file in scan.files:
            if PurePosixPath(file.path).suffix != ".py":
                continue
            try:
                tree = ast.parse(file.text)
            except (SyntaxError, ValueError):
                continue  # not Python this interpreter reads: no questions from it
            self._read(file.path, tree)

    def _read(self, path: str, tree: ast.Module) -> None:
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target = statement.targets[0]
                if isinstance(target, ast.Name) and isinstance(statement.value, ast.Constant):
                    value = statement.value.value
                    if isinstance(value, int | float | str) and not isinstance(value, bool):
                        self.constants[target.id].append((path, statement, str(value)))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.defs[node.name].append(_Def(node.name, path, node))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in _own_nodes(node):
                    if not isinstance(inner, ast.Call):
                        continue
                    callee, sure = _called_name(inner)
                    if callee is None:
                        continue
                    if not sure:
                        self.unsure.add(callee)
                        continue
                    self.callers[callee].add(node.name)
                    self.call_lines.setdefault((callee, node.name), (path, inner.lineno))

    def unique(self, name: str) -> _Def | None:
        found = self.defs.get(name, [])
        return found[0] if len(found) == 1 and not name.startswith("__") else None


def _lines(node: ast.AST) -> tuple[int, int]:
    first = int(getattr(node, "lineno", 1))
    return first, int(getattr(node, "end_lineno", None) or first)


def _candidates(reader: _Reader) -> dict[str, list[RepoQuestion]]:
    out: dict[str, list[RepoQuestion]] = {kind: [] for kind in KINDS}
    for name in sorted(reader.defs):
        found = reader.unique(name)
        if found is None:
            continue
        node = found.node
        what = "class" if isinstance(node, ast.ClassDef) else "function"
        out["defined-in"].append(
            RepoQuestion(
                "defined-in",
                f"In which file is the {what} `{name}` defined?",
                PurePosixPath(found.path).name,
                found.path,
                (node.lineno, node.lineno),
            )
        )
        if isinstance(node, ast.ClassDef):
            continue
        raises = [n for n in _own_nodes(node) if isinstance(n, ast.Raise) and n.exc is not None]
        classes = {_raised_class(n) for n in raises}
        if len(classes) == 1 and None not in classes:
            (exc,) = classes
            assert exc is not None
            site = min(raises, key=lambda n: n.lineno)
            out["raises"].append(
                RepoQuestion(
                    "raises",
                    f"Which exception does the function `{name}` raise?",
                    exc,
                    found.path,
                    _lines(site),
                )
            )
        returns = [n for n in _own_nodes(node) if isinstance(n, ast.Return) and n.value]
        values = {ast.unparse(n.value) for n in returns if n.value is not None}
        if len(values) == 1:
            (value,) = values
            first = min(returns, key=lambda n: n.lineno)
            if _short(value) and isinstance(first.value, ast.Constant | ast.Name | ast.Attribute):
                out["returns"].append(
                    RepoQuestion(
                        "returns",
                        f"What does the function `{name}` return?",
                        value,
                        found.path,
                        _lines(first),
                    )
                )
        calling = reader.callers.get(name, set())
        if len(calling) == 1 and name not in reader.unsure:
            (caller,) = calling
            if reader.unique(caller) is not None and caller != name:
                path, line = reader.call_lines[(name, caller)]
                out["caller"].append(
                    RepoQuestion(
                        "caller",
                        f"Which function calls `{name}`?",
                        caller,
                        path,
                        (line, line),
                    )
                )
    for name in sorted(reader.constants):
        defs = reader.constants[name]
        if len(defs) != 1 or name in reader.defs or not name.isupper():
            continue
        path, assign, value = defs[0]
        if _short(value.strip()) and value == value.strip():
            out["constant"].append(
                RepoQuestion(
                    "constant",
                    f"What is the value of the constant `{name}` in {path}?",
                    value,
                    path,
                    _lines(assign),
                )
            )
    return out


def repo_questions(scan: RepoScan, per_kind: int, seed: int = 0) -> list[RepoQuestion]:
    """Up to ``per_kind`` questions of every kind about ``scan``'s Python files, sampled with
    ``seed`` from every unambiguous candidate; in kind order, then by file and line."""
    candidates = _candidates(_Reader(scan))
    rng = random.Random(seed)
    chosen: list[RepoQuestion] = []
    for kind in KINDS:
        pool = candidates[kind]
        picked = rng.sample(pool, min(per_kind, len(pool)))
        chosen += sorted(picked, key=lambda q: (q.path, q.lines, q.question))
    return chosen


__all__ = ["KINDS", "RepoQuestion", "repo_questions"]
