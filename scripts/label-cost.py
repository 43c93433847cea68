"""What LensNet's counterfactual labels cost per working context on a base: every legal single
edit of each sample's WC scored (a validation sample's labelling), seconds per sample.

Run it on two commits to compare labelling code (the samples are the same: same seed, corpus
and GistNet bundle):

.venv/bin/python scripts/label-cost.py --base smollm2 --bundle runs/focus-smollm2/gist/bundle
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from megacontext.models.bundle import load_bundle
from megacontext.models.loading import load_base
from megacontext.train.config import packaged_config
from megacontext.train.lens import counterfactual_labels, make_samples
from megacontext.train.lens.run import LensRunConfig, _prose_stream
from megacontext.train.streams import corpus_streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--bundle", required=True, help="a focus bundle holding a GistNet")
    parser.add_argument("--recipe", default="lens-smollm2.yaml", help="a packaged LensNet recipe")
    parser.add_argument("--corpus", default="runs/corpus")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labels-out", help="save the labels (.npz) to compare two commits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = LensRunConfig.from_dict(packaged_config(args.recipe))
    base = load_base(args.base)
    gistnet = load_bundle(args.bundle, fingerprints=base.fingerprints).get("gistnet")
    special = tuple(t for t in (base.bos_token_id, base.eos_token_id) if t is not None)
    text = _prose_stream(corpus_streams(args.corpus, base, "val"))
    cfg = run.lens
    cfg.label_candidates = 1  # building the samples labels one edit each; timed below: all
    samples = make_samples(
        base, gistnet, text, cfg, args.samples, cfg.seed + 1, special, subsample=True
    )
    seconds, edits, saved = [], [], {}
    for sample in samples:
        start = time.perf_counter()
        labels, _, _ = counterfactual_labels(
            base, sample, batch=cfg.label_batch, descent=cfg.descent_labels
        )
        seconds.append(time.perf_counter() - start)
        saved[f"sample{len(saved)}"] = labels
        edits.append(int(np.isfinite(labels[sample.wc.levels > 0]).sum()))
    if args.labels_out:
        np.savez(args.labels_out, **saved)
    print(
        json.dumps(
            {
                "base": args.base,
                "samples": len(samples),
                "kinds": [s.kind for s in samples],
                "wc_size": [s.wc.size for s in samples],
                "gists_labelled": edits,
                "seconds": [round(s, 2) for s in seconds],
                "median_s_per_sample": round(statistics.median(seconds), 2),
                "threads": args.threads,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
