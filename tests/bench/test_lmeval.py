"""`megacontext lm-eval`: lm-eval's own evaluator drives MegaContext's memory systems."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from megacontext.bench.lmeval import (
    answer_split,
    register,
    split_prompt,
    stop_at,
    with_tokenizer,
)
from megacontext.errors import InvalidInputError

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."


def test_a_prompt_splits_into_history_question_and_cue() -> None:
    prompt = "Remember this.\nline one\nline two\nWhat is the key? The key is"
    split = split_prompt(prompt, "The key is")
    assert split.history == "Remember this.\nline one\nline two"
    assert (split.question, split.cue) == ("What is the key?", "The key is")
    assert split_prompt(prompt, None).question == "What is the key? The key is"
    assert split_prompt(prompt, "not there").cue == ""
    with pytest.raises(InvalidInputError, match="line break"):
        split_prompt("everything on one line? yes", None)


def test_answers_stop_at_the_first_stop_string() -> None:
    assert stop_at("12345\n\nQuestion: more", ["\n\n", "Question:"]) == "12345"
    assert stop_at("12345", []) == "12345"
    assert stop_at("a.b", ".") == "a"


def test_the_base_tokenizer_is_passed_for_ruler_unless_given(tiny_world) -> None:  # type: ignore[no-untyped-def]
    base = str(tiny_world.base_dir)
    argv = with_tokenizer(["--model", "megacontext", "--model_args", f"base={base}"])
    assert argv[-1] == f"base={base},tokenizer={Path(base)}"
    given = ["--model_args", "base=x,tokenizer=/tok"]
    assert with_tokenizer(given) == given


@pytest.mark.slow
def test_lm_eval_scores_a_pass_key_task_through_a_memory_system(tmp_path: Path) -> None:
    """A generation task of lm-eval's own format (a local JSON dataset, exact match) run by its
    evaluator on the shipped tiny base: its scores are exactly what the same memory system
    answers through MegaContext's own path, and recency at a budget that cuts the pass key off
    finds none while the whole history finds some."""
    from megacontext.data import heldout_texts

    rng = random.Random(0)
    filler = heldout_texts()[0].split("\n")[:60]
    rows = []
    for _ in range(4):
        key = str(rng.randrange(10_000, 99_999))
        lines = list(filler)
        lines.insert(rng.randrange(5, 20), NEEDLE.format(key=key))
        rows.append(
            {
                "input": "\n".join(lines) + "\nWhat is the pass key?",
                "gen_prefix": "The pass key is",
                "target": key,
            }
        )
    data = tmp_path / "passkey.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "passkey.yaml").write_text(
        f"""task: mc_passkey
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{input}}}}"
doc_to_target: "{{{{target}}}}"
gen_prefix: "{{{{gen_prefix}}}}"
target_delimiter: " "
generation_kwargs:
  max_gen_toks: 8
  until: ["."]
filter_list:
  - name: first
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
        encoding="utf-8",
    )
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = register()
    scores, direct = {}, {}
    for system, budget in (("full", 4096), ("recency", 64)):
        lm = model(base="default", system=system, W_max=budget)
        results = simple_evaluate(
            model=lm,
            tasks=["mc_passkey"],
            task_manager=TaskManager(include_path=str(tmp_path)),
        )
        scores[system] = results["results"]["mc_passkey"]["exact_match,first"]
        hits = []
        for row in rows:
            split = split_prompt(f"{row['input']} {row['gen_prefix']}", row["gen_prefix"])
            text = answer_split(lm.adapter, lm.make_system, lm.prompt, split, budget, 8)
            hits.append(re.findall(r"\d+", text)[:1] == [row["target"]])
        direct[system] = sum(hits) / len(hits)
    assert scores == direct
    assert scores["recency"] == 0.0 < scores["full"], scores
