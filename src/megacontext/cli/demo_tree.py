"""``megacontext demo-tree``: the working context over a long real text, refocused on a detail.

Tokenizes a long real text (the Python standard library's own source, always on disk), builds a
MegaContext tree with a simple mean-pool gister, assembles a working context that covers the whole
history within a small budget, and steers the focus allocator toward a chosen phrase until that
span is raw tokens again. Everything is printed readably; nothing is downloaded.

This is the foundation demo (the tree, the working context and the allocator, no trained model);
the main demo, ``megacontext demo``, answers questions with the default models
(:mod:`megacontext.cli.demo`).
"""

from __future__ import annotations

import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from megacontext.cli.output import console
from megacontext.core import (
    DEFAULT_W_MAX,
    AllocatorConfig,
    MeanPoolGister,
    MegaContextTree,
    MemoryBackend,
    WorkingContext,
    default_protected_recent,
)
from megacontext.errors import InvalidInputError

LEVEL_GLYPHS = {0: "·", 1: "░", 2: "▒", 3: "▓"}


@dataclass
class TreeDemoConfig:
    min_tokens: int = 120_000
    w_max: int = DEFAULT_W_MAX
    protected_recent: int | None = None  # default: the sessions' rule for w_max
    K: int = 32
    vocab_size: int = 4096
    query: str = "class ArgumentParser("
    seed: int = 0
    text_path: Path | None = None


def stdlib_text(min_chars: int) -> tuple[str, list[str]]:
    """Concatenate top-level standard-library modules, in name order, until ``min_chars``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    parts: list[str] = []
    names: list[str] = []
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# ===== {path.relative_to(root)} =====\n{text}")
        names.append(str(path.relative_to(root)))
        total += len(parts[-1])
        if total >= min_chars:
            break
    return "".join(parts), names


def timeline(wc: WorkingContext, width: int = 96, mark: int | None = None) -> str:
    """One character per 1/width of the history: the level of the entry covering it."""
    starts, _ = wc.spans()
    cells = []
    for column in range(width):
        position = min(wc.num_tokens - 1, column * wc.num_tokens // width)
        entry = int(np.searchsorted(starts, position, side="right")) - 1
        glyph = LEVEL_GLYPHS.get(int(wc.levels[entry]), "█")
        if mark is not None and column == min(width - 1, mark * width // wc.num_tokens):
            glyph = "[bold red]▼[/bold red]" if wc.levels[entry] else "[bold green]▼[/bold green]"
        cells.append(glyph)
    return "".join(cells)


def describe(wc: WorkingContext) -> Table:
    table = Table(show_header=True, header_style="bold")
    table.add_column("level")
    table.add_column("entries", justify="right")
    table.add_column("tokens each", justify="right")
    table.add_column("tokens covered", justify="right")
    for level, count in sorted(wc.level_histogram().items(), reverse=True):
        name = "raw tokens" if level == 0 else f"LOD{level} gists"
        width = wc.K**level
        table.add_row(name, f"{count:,}", f"{width:,}", f"{count * width:,}")
    table.add_row(
        "[bold]total[/bold]", f"[bold]{wc.size}[/bold] / {wc.W_max}", "", f"{wc.num_tokens:,}"
    )
    return table


def run_tree_demo(config: TreeDemoConfig, console: Console) -> None:  # noqa: PLR0915  (a narrative: each statement prints one step of the demo)
    from tokenizers import ByteLevelBPETokenizer

    started = time.perf_counter()
    console.rule("[bold]MegaContext tree demo[/bold]")
    if config.text_path is not None:
        if not config.text_path.is_file():
            raise InvalidInputError(f"--text {config.text_path} is not a readable file")
        text = config.text_path.read_text(encoding="utf-8", errors="replace")
        sources = [str(config.text_path)]
    else:
        text, sources = stdlib_text(min_chars=config.min_tokens * 4)
    console.print(
        f"Text: {len(text):,} characters from {len(sources)} file(s) "
        f"({', '.join(sources[:3])}{', …' if len(sources) > 3 else ''})"
    )

    with console.status("training a byte-level BPE tokenizer on the text"):
        tokenizer = ByteLevelBPETokenizer()
        tokenizer.train_from_iterator(
            [text[i : i + 100_000] for i in range(0, len(text), 100_000)],
            vocab_size=config.vocab_size,
            show_progress=False,
        )
        encoding = tokenizer.encode(text)
    ids = np.asarray(encoding.ids, dtype=np.uint32)
    console.print(f"Tokens: {ids.size:,} (vocabulary {tokenizer.get_vocab_size():,})")

    gister = MeanPoolGister.random(tokenizer.get_vocab_size(), 64, seed=config.seed)
    tree = MegaContextTree(
        MemoryBackend(gister.dim), gister, K=config.K, vocab_size=tokenizer.get_vocab_size()
    )
    with Progress(
        TextColumn("building the tree"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} tokens"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("append", total=int(ids.size))
        for lo in range(0, ids.size, 8192):
            tree.append(ids[lo : lo + 8192])
            bar.update(task, completed=min(ids.size, lo + 8192))
    levels = ", ".join(f"LOD{lv}: {tree.count(lv):,}" for lv in range(1, tree.num_levels + 1))
    console.print(f"Tree: {tree.num_tokens:,} tokens; gists per level: {levels}")

    wc = WorkingContext.assemble(
        tree.num_tokens,
        config.w_max,
        K=config.K,
        protected_recent=(
            default_protected_recent(config.w_max)
            if config.protected_recent is None
            else config.protected_recent
        ),
    )
    wc.check_invariants()
    console.print(
        Panel(
            describe(wc),
            title=f"Working context: {tree.num_tokens:,} tokens of history in {wc.size} entries",
            subtitle="coarse far past, raw recent tokens; every token covered exactly once",
        )
    )
    legend = "  ".join(f"{g} LOD{lv}" if lv else f"{g} raw" for lv, g in LEVEL_GLYPHS.items())
    console.print(f"timeline (oldest → newest):  {legend}  █ coarser")

    char_at = text.find(config.query)
    if char_at < 0:
        raise InvalidInputError(
            f"the phrase {config.query!r} does not occur in the text; pass --query with a phrase "
            "that does"
        )
    target = (
        int(np.searchsorted(np.asarray([o[0] for o in encoding.offsets]), char_at, "right")) - 1
    )
    console.print(timeline(wc, mark=target))
    entry = wc.entry_at(target)
    console.print(
        f"\nFocus target: {config.query!r} at token {target:,}; it is inside a "
        f"LOD{int(wc.levels[entry])} gist covering {wc.K ** int(wc.levels[entry]):,} tokens."
    )

    from megacontext.focus import FocusEngine

    engine = FocusEngine(AllocatorConfig(max_edits=4, cooldown_steps=2))
    step = 0
    while wc.levels[wc.entry_at(target)] > 0:
        step += 1
        plan = engine.step(wc, focus_scores(wc, target)).plan
        if not plan.edits:
            console.print("[yellow]the allocator found no legal edit; stopping[/yellow]")
            break
        wc.check_invariants()
        edits = ", ".join(f"{e.kind.value} L{e.level}#{e.index}" for e in plan.edits)
        console.print(f"step {step}: {edits}  → {wc.size}/{wc.W_max} entries")
        console.print(timeline(wc, mark=target))

    entry = wc.entry_at(target)
    reached = wc.levels[entry] == 0
    if not reached:
        console.print(
            f"[yellow]The target is still inside a LOD{int(wc.levels[entry])} gist: no legal edit "
            "can pay for more detail at this budget (try a larger --w-max).[/yellow]"
        )
    starts, ends = wc.spans()
    # Show the raw run around the target: the entries next to it that are tokens too.
    lo, hi = entry, entry
    while lo > 0 and wc.levels[lo - 1] == 0 and target - int(starts[lo - 1]) <= 16:
        lo -= 1
    while hi + 1 < wc.size and wc.levels[hi + 1] == 0 and int(starts[hi + 1]) - target < 48:
        hi += 1
    lo, hi = int(starts[lo]), int(ends[hi])
    window = tree.tokens(lo, hi)
    console.print(
        Panel(
            tokenizer.decode(window.tolist()),
            title=(
                f"raw tokens {lo:,}–{hi:,} now in the working context (read back from the tree)"
                if reached
                else f"tokens {lo:,}–{hi:,} under the gist (read back from the tree)"
            ),
        )
    )
    console.print(describe(wc))
    stats = engine.state.stats
    console.print(
        f"[bold]Summary:[/bold] {tree.num_tokens:,} tokens in {wc.size}/{wc.W_max} entries "
        f"({tree.num_tokens / wc.size:,.0f} tokens per entry); "
        f"{'reached' if reached else 'did not reach'} the target in {stats.steps} "
        f"refocus steps ({stats.expands} expands, {stats.collapses} collapses, swap rate "
        f"{stats.swap_rate:.1f}); invariants checked after every step; "
        f"{time.perf_counter() - started:.1f} s."
    )


def focus_scores(wc: WorkingContext, target: int) -> np.ndarray:
    """Hand-made scores standing in for LensNet: open what covers the target, give back the rest.

    The entry covering the target scores +1; raw tokens far from it score −0.1 (the cheapest
    detail to give back when an expansion must be paid for); everything else is neutral.
    """
    scores = np.zeros(wc.size)
    scores[(wc.levels == 0)] = -0.1
    starts, ends = wc.spans()
    near = (ends > target - 4 * wc.K) & (starts < target + 4 * wc.K)
    scores[near] = 0.0
    scores[wc.entry_at(target)] = 1.0
    return scores


def demo_tree(
    tokens: Annotated[
        int, typer.Option(help="Minimum history length to build, in tokens.")
    ] = 120_000,
    w_max: Annotated[
        int, typer.Option("--w-max", help="Working-context budget in entries.")
    ] = DEFAULT_W_MAX,
    query: Annotated[
        str, typer.Option(help="A phrase in the text to bring back into full detail.")
    ] = "class ArgumentParser(",
    text: Annotated[
        Path | None,
        typer.Option(help="Use this text file instead of the Python standard library's source."),
    ] = None,
) -> None:
    """Show the working context covering a long real text, then refocus it on a phrase.

    Builds a MegaContext tree over >= 100k tokens of real text, assembles a 512-entry working
    context that covers all of it (coarse far past, raw recent tokens), and steers the focus
    allocator until the chosen phrase is raw tokens again.

    Example: megacontext demo-tree --query "class HTTPConnection" --w-max 1024
    """
    run_tree_demo(
        TreeDemoConfig(min_tokens=tokens, w_max=w_max, query=query, text_path=text), console
    )
