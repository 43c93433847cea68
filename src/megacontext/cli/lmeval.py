"""``megacontext lm-eval``: EleutherAI's lm-evaluation-harness with MegaContext as a model."""

from __future__ import annotations

import typer


def lm_eval(ctx: typer.Context) -> None:
    """Run lm-eval's own command line with the `megacontext` model registered.

    Every argument goes to lm-eval unchanged (see `lm-eval run --help`); `--model megacontext`
    puts each generation task's prompt through a memory system: its body is the history, its
    last line the question. Model arguments: base (a base name or path), system (megacontext,
    recency, full, rag-bm25, ... as in `bench longctx`), W_max (positions the base reads),
    prompt (raw, chat, chat-cue). RULER's tasks size their haystacks with a tokenizer: the
    base's own is passed for you unless --model_args names one. Needs lm-eval (a dev extra).

    Example: megacontext lm-eval --model megacontext --model_args
    base=smollm2,system=recency,W_max=512 --tasks niah_single_1
    --metadata '{"max_seq_lengths":[4096]}' --limit 20 --output_path results/
    """
    from megacontext.bench.lmeval import run_cli

    run_cli(list(ctx.args))
