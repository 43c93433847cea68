"""The repository-QA benchmark: questions generated from code, and every system's answers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from megacontext.apps.code import scan_repo
from megacontext.apps.code.bench import BenchRepo, run_repo
from megacontext.apps.code.questions import KINDS, RepoQuestion, repo_questions
from megacontext.bench import SUITES
from megacontext.models.generation import contains_answer

FILES = {
    "shop/prices.py": '''
        """Prices."""

        TAX_RATE = 0.19
        CURRENCY = "EUR"
        lowercase_name = 3
        DUPLICATE = 1


        class PriceError(Exception):
            pass


        def zebra_total(items):
            if not items:
                raise PriceError("no items")
            if len(items) > 100:
                raise PriceError("too many")
            return subtotal


        def mixed_failures(x):
            if x:
                raise ValueError(x)
            raise KeyError(x)


        def two_returns(x):
            if x:
                return 1
            return 2
        ''',
    "shop/cart.py": """
        DUPLICATE = 2


        def checkout(cart):
            helper_only_here(cart)
            return zebra_total(cart.items)


        def helper_only_here(cart):
            cart.save()


        def save():
            return None


        class Cart:
            def save(self):
                return True
        """,
    "shop/broken.py": "def (:\n",
    "README.md": "Not Python: no questions come from it.\n",
}


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop-repo"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def by_question(questions: list[RepoQuestion]) -> dict[str, RepoQuestion]:
    return {q.question: q for q in questions}


def test_questions_are_unambiguous_and_carry_their_evidence(shop: Path) -> None:
    questions = by_question(repo_questions(scan_repo(shop), per_kind=100))
    prices = (shop / "shop/prices.py").read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(prices, 1) if text in line)

    defined = questions["In which file is the function `zebra_total` defined?"]
    assert (defined.answer, defined.path) == ("prices.py", "shop/prices.py")
    assert defined.lines == (line_of("def zebra_total"),) * 2
    assert "In which file is the class `PriceError` defined?" in questions
    # `save` is defined twice (a function and a method): no question names it.
    assert not any("`save`" in q for q in questions)

    constant = questions["What is the value of the constant `TAX_RATE` in shop/prices.py?"]
    assert constant.answer == "0.19" and constant.lines == (line_of("TAX_RATE"),) * 2
    assert questions["What is the value of the constant `CURRENCY` in shop/prices.py?"].answer == (
        "EUR"
    )
    assert not any("DUPLICATE" in q or "lowercase_name" in q for q in questions)

    raises = questions["Which exception does the function `zebra_total` raise?"]
    assert raises.answer == "PriceError"
    assert raises.lines == (line_of('raise PriceError("no items")'),) * 2
    assert not any("`mixed_failures` raise" in q for q in questions)  # two classes

    returns = questions["What does the function `zebra_total` return?"]
    assert returns.answer == "subtotal" and returns.lines == (line_of("return subtotal"),) * 2
    assert not any("`two_returns` return" in q for q in questions)

    caller = questions["Which function calls `zebra_total`?"]
    assert (caller.answer, caller.path) == ("checkout", "shop/cart.py")
    assert caller.lines == (6, 6)  # `return zebra_total(cart.items)`
    assert questions["Which function calls `helper_only_here`?"].answer == "checkout"
    # `save` is also called as some object's method (cart.save()): never asked about.
    assert {q.kind for q in questions.values()} == set(KINDS)


def test_question_sampling_is_seeded_and_bounded(shop: Path) -> None:
    scan = scan_repo(shop)
    once, again = repo_questions(scan, 1, seed=3), repo_questions(scan, 1, seed=3)
    assert once == again
    assert [q.kind for q in once] == list(KINDS)  # at most one per kind, in kind order
    every = repo_questions(scan, 100)
    assert len({q.question for q in every}) == len(every)
    others = {tuple(repo_questions(scan, 1, seed=s)) for s in range(8)}
    assert len(others) > 1  # the seed picks among the candidates


def test_a_citation_counts_when_it_contains_the_evidence() -> None:
    q = RepoQuestion("raises", "?", "E", "a/b.py", (10, 11))
    assert q.cites_evidence("a/b.py", (9, 12)) and q.cites_evidence("a/b.py", (10, 11))
    assert not q.cites_evidence("a/b.py", (11, 14))  # only part of it
    assert not q.cites_evidence("a/c.py", (1, 100)) and not q.cites_evidence("a/b.py", None)
    assert not q.cites_evidence(None, (1, 100))


def test_every_system_answers_the_same_questions_over_the_same_history(  # type: ignore[no-untyped-def]
    tiny_world, shop: Path, tmp_path: Path
) -> None:
    assert SUITES["repoqa"] == "megacontext.apps.code.bench"
    said: list[str] = []
    repo = BenchRepo("shop", shop, per_kind=100)
    results = {
        r.name: r for r in run_repo(tiny_world.base, tiny_world.bundle, repo, said.append, tmp_path)
    }
    prefix = "repoqa/shop/W1024/"
    systems = {name.removeprefix(prefix) for name in results if not name.endswith("/citations")}
    assert {"megacontext", "recency", "rag-bm25", "full"} <= systems  # the history fits: full too
    # The systems that cite are scored on their citations; recency and full cite nothing.
    assert f"{prefix}megacontext/citations" in results and f"{prefix}rag-bm25/citations" in results
    assert f"{prefix}recency/citations" not in results and f"{prefix}full/citations" not in results
    questions = [q.question for q in repo_questions(scan_repo(shop), 100)]
    for system in systems:
        result = results[prefix + system]
        answers = result.extra["answers"]
        assert [a["question"] for a in answers] == questions
        assert all(a["correct"] == contains_answer(a["answer"], a["expected"]) for a in answers)
        assert result.value == pytest.approx(sum(a["correct"] for a in answers) / len(answers))
        if system != "recency":
            assert result.baseline_name == prefix + "recency"
    # BM25 finds the one chunk naming `TAX_RATE`, and its citation points at its line.
    bm25 = results[prefix + "rag-bm25"].extra["answers"]
    where = next(a for a in bm25 if "TAX_RATE" in a["question"])
    assert where["cites_evidence"], (where["cited"], where["evidence"])
    assert where["cited"].startswith("shop/prices.py:")
    assert results[prefix + "megacontext"].extra["history_tokens"] > 0
    assert any("megacontext, question 1/" in line for line in said)
