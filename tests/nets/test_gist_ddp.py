"""GistNet trained by two processes under torch.distributed DDP (gloo, loopback) follows the
single-process run with the same global batch: the same losses step by step, the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from megacontext.errors import InvalidInputError
from megacontext.models.tiny import make_tiny_model_dir
from megacontext.train.distributed import launch
from megacontext.train.gist import GistRunConfig, GistTrainConfig, run_gist

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
]


def corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.mkdir()
    for split, n in (("train", 12), ("val", 4)):
        with (path / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for i in range(n):
                text = " ".join(rng.choice(WORDS, size=900)) + "\n"
                doc = {"source": "gutenberg", "name": f"{split}{i}", "text": text}
                out.write(json.dumps(doc) + "\n")
    return path


def run_config(tmp_path: Path, name: str, base: Path, data: Path) -> GistRunConfig:
    gist = GistTrainConfig(
        prefix_blocks=4,
        lead_tokens=8,
        horizon=16,
        steps=6,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=0,
        final_eval_windows=4,
        lod2_probability=0.5,
        gistnet={"K": 8, "width": 32, "n_layers": 1, "n_heads": 2, "key_dim": 8},
    )
    return GistRunConfig(
        base=str(base),
        corpus_dir=str(data),
        threads=1,
        out_dir=str(tmp_path / name),
        val_windows=4,
        gist=gist,
    )


@pytest.mark.slow
def test_two_processes_follow_one_with_the_same_global_batch(tmp_path: Path) -> None:
    base = make_tiny_model_dir("default", tmp_path / "base", seed=0)
    data = corpus(tmp_path / "corpus")
    one = run_config(tmp_path, "one", base, data)
    two = run_config(tmp_path, "two", base, data)
    run_gist(one, log=lambda _m: None)
    launch(2, run_gist, two)
    single = json.loads((Path(one.out_dir) / "history.json").read_text())["history"]
    ddp = json.loads((Path(two.out_dir) / "history.json").read_text())["history"]
    assert [h["level"] for h in ddp] == [h["level"] for h in single]
    assert {1, 2} <= {h["level"] for h in single}  # both kinds of step were exercised
    np.testing.assert_allclose(
        [h["loss"] for h in ddp], [h["loss"] for h in single], rtol=1e-4, atol=1e-6
    )
    w1 = load_file(str(Path(one.out_dir) / "bundle" / "weights.safetensors"))
    w2 = load_file(str(Path(two.out_dir) / "bundle" / "weights.safetensors"))
    assert w1.keys() == w2.keys()
    for name in w1:
        np.testing.assert_allclose(w2[name], w1[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_batch_that_does_not_split_is_refused(tmp_path: Path) -> None:
    base = make_tiny_model_dir("default", tmp_path / "base", seed=0)
    data = corpus(tmp_path / "corpus")
    odd = run_config(tmp_path, "odd", base, data)
    odd.gist.batch_size = 3
    with pytest.raises(Exception, match="does not split over 2 processes"):
        launch(2, run_gist, odd)
    with pytest.raises(InvalidInputError, match="--nproc must be >= 1"):
        launch(0, run_gist, odd)
