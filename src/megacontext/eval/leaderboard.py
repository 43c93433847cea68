"""The long-context leaderboard: ``megacontext bench longctx --json`` documents → tables and plots.

Input: one or more JSON documents written by ``megacontext bench longctx --json PATH`` (DESIGN §9),
whose results are named ``TASK@LENGTH/W_MAX/SYSTEM`` (``LENGTH`` as ``4096``, ``100k``, ``1M``)
and carry ``extra.ci95`` (the 95% bootstrap interval), ``samples``, ``skipped``,
``tokens_processed`` and ``seconds``. When several documents hold the same cell, the later file
wins.

Output, in one directory:

* ``leaderboard.md``: per task a table of systems × (length, W_max) with the value and its 95%
  interval, the best value of each column in bold, then a summary ranking (mean rank over every
  cell a system was measured in; QA tasks rank by accuracy, higher is better; ``longdoc`` by NLL,
  lower is better). A QA result that carries ``extra.answer_nll`` also gets a ``TASK.nll`` table
  (the answer's NLL after each system's context, lower is better), not ranked;
* ``leaderboard.html``: the same tables and every plot embedded (base64 PNG), self-contained;
* PNG plots: ``TASK_W<W_MAX>.png`` (score vs history length per system, with the 95% intervals
  as error bars) for every task and budget, and ``longdoc_nll_vs_budget_<LENGTH>.png`` (NLL vs
  W_max per system) for every length of ``longdoc``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError
from megacontext.eval.tasks import TASKS

SUITE = "longctx"
# The structured fields of a result that place it in the grid (its name is only a label).
CELL_FIELDS = ("task", "length", "budget", "system")
LOWER_IS_BETTER_UNITS = {"nats", "nll", "bits", "bpb", "perplexity"}
MARKDOWN = "leaderboard.md"
ANSWER_NLL_SUFFIX = ".nll"
WINS_RULE = (
    "wins = cells where it is best (ties count for each; a cell where every system scores the "
    "same has no winner)"
)
HTML = "leaderboard.html"


@dataclass(frozen=True)
class Cell:
    """One measured (task, length, budget, system) from a longctx document."""

    task: str
    length: int
    budget: int
    system: str
    value: float
    unit: str
    ci: tuple[float, float]
    samples: int
    skipped: int
    tokens_processed: int
    seconds: float
    source: str

    @property
    def derived(self) -> bool:
        """An answer-NLL cell of a QA task (task ``TASK.nll``), shown beside its accuracy."""
        return self.task.endswith(ANSWER_NLL_SUFFIX)

    @property
    def lower_is_better(self) -> bool:
        return self.task == "longdoc" or self.unit.lower() in LOWER_IS_BETTER_UNITS

    @property
    def measured(self) -> bool:
        return math.isfinite(self.value)


def length_label(n: int) -> str:
    """``4096 → '4096'``, ``100000 → '100k'``, ``1000000 → '1M'`` (as in result names)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def parse_length(text: str) -> int:
    """``'4096' → 4096``, ``'100k' → 100000``, ``'1M' → 1000000``."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    number = text[:-1] if scale != 1 else text
    return round(float(number) * scale)


# ----------------------------------------------------------------------------- reading


def _number(value: Any, what: str, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{where}: {what} must be a number, got {value!r}")
    return float(value)


def _count(value: Any, what: str, where: str) -> int:
    number = _number(value, what, where)
    if not math.isfinite(number):
        return 0
    if number < 0 or number != int(number):
        raise InvalidInputError(f"{where}: {what} must be a count (integer >= 0), got {value!r}")
    return int(number)


def read_document(path: str | Path) -> list[Cell]:
    """Read one ``bench longctx --json`` document into cells.

    Raises:
        InvalidInputError: The file is missing, not JSON, not a longctx document, has no
            results, or holds a result whose name or numbers are malformed; the message names
            the file and the problem.
    """
    path = Path(path)
    where = str(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{where}: not a JSON document ({exc}); write one with "
            "`megacontext bench longctx --json PATH`"
        ) from None
    if not isinstance(document, dict) or "results" not in document:
        raise InvalidInputError(
            f"{where}: not a benchmark document (expected an object with 'suite' and 'results'); "
            "write one with `megacontext bench longctx --json PATH`"
        )
    if document.get("suite") != SUITE:
        raise InvalidInputError(
            f"{where}: suite is {document.get('suite')!r}, not {SUITE!r}; the leaderboard reads "
            "`megacontext bench longctx --json PATH` documents only"
        )
    results = document["results"]
    if not isinstance(results, list) or not results:
        raise InvalidInputError(f"{where}: the document has no results; rerun the benchmark")
    cells = []
    for i, row in enumerate(results):
        cell = _cell(row, f"{where}: result {i}", where)
        cells.append(cell)
        nll = _answer_nll_cell(cell, row, f"{where}: result {i}")
        if nll is not None:
            cells.append(nll)
    return cells


def _answer_nll_cell(cell: Cell, row: dict[str, Any], where: str) -> Cell | None:
    """The ``TASK.nll`` cell of a QA result that carries ``extra.answer_nll``."""
    extra = row.get("extra") or {}
    if "answer_nll" not in extra:
        return None
    value = _number(extra["answer_nll"], "extra.answer_nll", where)
    low, high = _interval(extra, "answer_nll_ci95", value, where)
    return dataclasses.replace(
        cell, task=cell.task + ANSWER_NLL_SUFFIX, value=value, unit="nats", ci=(low, high)
    )


def _interval(extra: dict[str, Any], key: str, value: float, where: str) -> tuple[float, float]:
    """``extra[key]`` as a checked ``(low, high)`` interval (``(value, value)`` when absent)."""
    raw = extra.get(key, [value, value])
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise InvalidInputError(f"{where}: extra.{key} must be [low, high], got {raw!r}")
    low, high = (_number(v, f"extra.{key}", where) for v in raw)
    if math.isfinite(low) and math.isfinite(high) and low > high:
        raise InvalidInputError(f"{where}: extra.{key} low {low} exceeds high {high}")
    return low, high


def _cell(row: Any, where: str, source: str) -> Cell:
    if not isinstance(row, dict) or not isinstance(row.get("name"), str):
        raise InvalidInputError(f"{where}: expected an object with a 'name', got {row!r}")
    name = row["name"]
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise InvalidInputError(f"{where} ({name}): 'extra' must be an object")
    missing = [k for k in CELL_FIELDS if k not in extra]
    if missing:
        raise InvalidInputError(
            f"{where} ({name}): extra lacks {', '.join(missing)}; every longctx result names its "
            "task, length, budget and system (documents from before that: rerun `megacontext "
            "bench longctx`)"
        )
    value = _number(row.get("value"), "'value'", f"{where} ({name})")
    low, high = _interval(extra, "ci95", value, f"{where} ({name})")
    unit = row.get("unit", "")
    task, system = extra["task"], extra["system"]
    if not isinstance(task, str) or not task or not isinstance(system, str) or not system:
        raise InvalidInputError(f"{where} ({name}): extra.task and extra.system must be names")
    return Cell(
        task=task,
        length=_count(extra["length"], "extra.length", where),
        budget=_count(extra["budget"], "extra.budget", where),
        system=system,
        value=value,
        unit=unit if isinstance(unit, str) else str(unit),
        ci=(low, high),
        samples=_count(extra.get("samples"), "extra.samples", where),
        skipped=_count(extra.get("skipped"), "extra.skipped", where),
        tokens_processed=_count(extra.get("tokens_processed"), "extra.tokens_processed", where),
        seconds=_number(extra.get("seconds"), "extra.seconds", where),
        source=source,
    )


def read_documents(paths: Sequence[str | Path]) -> list[Cell]:
    """Read and merge documents; a cell in a later file replaces the same cell of an earlier one."""
    if not paths:
        raise InvalidInputError(
            "no result files given; pass one or more `megacontext bench longctx --json` files"
        )
    merged: dict[tuple[str, int, int, str], Cell] = {}
    for path in paths:
        for cell in read_document(path):
            merged[(cell.task, cell.length, cell.budget, cell.system)] = cell
    return list(merged.values())


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Ranking:
    """One system's place in the summary."""

    system: str
    mean_rank: float
    wins: int
    cells: int  # cells ranked in (measured or skipped)
    measured: int  # cells with a value
    mean_accuracy: float  # over QA cells, nan when none
    mean_nll: float  # over longdoc cells, nan when none


def _tasks(cells: Iterable[Cell]) -> list[str]:
    order = list(TASKS)
    names = {c.task for c in cells}

    def key(task: str) -> tuple[int, str, bool]:
        own = task.removesuffix(ANSWER_NLL_SUFFIX)
        return (order.index(own) if own in order else len(order), own, own != task)

    return sorted(names, key=key)


def _systems(cells: Iterable[Cell]) -> list[str]:
    return sorted({c.system for c in cells})


def _columns(cells: Iterable[Cell]) -> list[tuple[int, int]]:
    return sorted({(c.length, c.budget) for c in cells})


def _best(cells: Sequence[Cell]) -> float:
    values = [c.value for c in cells if c.measured]
    if not values:
        return math.nan
    return min(values) if cells[0].lower_is_better else max(values)


def _ranks(column: Sequence[Cell]) -> dict[str, float]:
    """Average ranks (1 = best) of the systems of one column; ties share a rank.

    A system that ran but has no value (every sample skipped: its context did not fit) ranks
    last, tied with the other such systems.
    """
    measured = [c for c in column if c.measured]
    sign = 1.0 if measured and measured[0].lower_is_better else -1.0
    ordered = sorted(measured, key=lambda c: sign * c.value)
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1].value == ordered[i].value:
            j += 1
        for k in range(i, j + 1):
            ranks[ordered[k].system] = (i + j) / 2 + 1
        i = j + 1
    skipped = [c.system for c in column if not c.measured]
    for system in skipped:
        ranks[system] = (len(measured) + 1 + len(column)) / 2
    return ranks


def rank_systems(cells: Sequence[Cell]) -> list[Ranking]:
    """Mean rank of each system over every (task, length, budget) cell it was measured in.

    Answer-NLL cells are not ranked: their task is ranked by its accuracy already.
    """
    cells = [c for c in cells if not c.derived]
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.task, cell.length, cell.budget), []).append(cell)
    ranks: dict[str, list[float]] = {s: [] for s in _systems(cells)}
    wins = dict.fromkeys(ranks, 0)
    for column in groups.values():
        for system, rank in _ranks(column).items():
            ranks[system].append(rank)
        best = _best(column)
        distinct = {c.value for c in column if c.measured}
        if len(distinct) > 1:  # a column where every system scores the same has no winner
            for cell in column:  # every system that ties for the best value wins the cell
                wins[cell.system] += cell.measured and cell.value == best
    out = []
    for system, values in ranks.items():
        own = [c for c in cells if c.system == system and c.measured]
        qa = [c.value for c in own if not c.lower_is_better]
        nll = [c.value for c in own if c.lower_is_better]
        out.append(
            Ranking(
                system=system,
                mean_rank=sum(values) / len(values) if values else math.nan,
                wins=wins[system],
                cells=len(values),
                measured=len(own),
                mean_accuracy=sum(qa) / len(qa) if qa else math.nan,
                mean_nll=sum(nll) / len(nll) if nll else math.nan,
            )
        )
    return sorted(out, key=lambda r: (math.isnan(r.mean_rank), r.mean_rank, r.system))


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}f}"


def cell_text(cell: Cell | None) -> str:
    """``'0.850 [0.700, 0.950]'``; ``'skipped (n)'`` when every sample was over budget."""
    if cell is None:
        return ""
    if not cell.measured:
        return f"skipped ({cell.skipped})" if cell.skipped else "—"
    return f"{_fmt(cell.value)} [{_fmt(cell.ci[0])}, {_fmt(cell.ci[1])}]"


@dataclass(frozen=True)
class Table:
    """One task's table: header, then one row per system; ``bold[r][c]`` marks column bests."""

    task: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: list[list[bool]]


def task_tables(cells: Sequence[Cell]) -> list[Table]:
    tables = []
    for task in _tasks(cells):
        own = [c for c in cells if c.task == task]
        columns = _columns(own)
        systems = _systems(own)
        lookup = {(c.system, c.length, c.budget): c for c in own}
        best = {col: _best([c for c in own if (c.length, c.budget) == col]) for col in columns}
        lower = own[0].lower_is_better
        metric = (
            "answer NLL (nats/token of the answer after each system's context), lower is better"
            if own[0].derived
            else f"NLL ({own[0].unit or 'nats'}/token), lower is better"
            if lower
            else (f"{own[0].unit or 'accuracy'}, higher is better")
        )
        header = ["system"] + [f"{length_label(n)} / W{b}" for n, b in columns]
        rows, bold = [], []
        for system in systems:
            row, marks = [system], [False]
            for col in columns:
                cell = lookup.get((system, *col))
                row.append(cell_text(cell))
                marks.append(cell is not None and cell.measured and cell.value == best[col])
            rows.append(row)
            bold.append(marks)
        caption = f"{task}: {metric}; value [95% interval]; columns are history length / W_max"
        tables.append(Table(task, caption, header, rows, bold))
    return tables


def _markdown_table(header: list[str], rows: list[list[str]], bold: list[list[bool]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, marks in zip(rows, bold, strict=True):
        shown = [f"**{v}**" if b and v else v for v, b in zip(row, marks, strict=True)]
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in shown) + " |")
    return "\n".join(lines)


def _summary_rows(ranking: Sequence[Ranking]) -> list[list[str]]:
    return [
        [
            str(i + 1),
            r.system,
            _fmt(r.mean_rank, 2),
            str(r.wins),
            f"{r.measured}/{r.cells}",
            _fmt(r.mean_accuracy),
            _fmt(r.mean_nll),
        ]
        for i, r in enumerate(ranking)
    ]


SUMMARY_HEADER = [
    "#",
    "system",
    "mean rank",
    "wins",
    "measured/cells",
    "mean accuracy",
    "mean NLL",
]


# ----------------------------------------------------------------------------- plots


def _figure() -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")


def _error_bars(cells: Sequence[Cell]) -> list[list[float]]:
    below = [max(0.0, c.value - c.ci[0]) if math.isfinite(c.ci[0]) else 0.0 for c in cells]
    above = [max(0.0, c.ci[1] - c.value) if math.isfinite(c.ci[1]) else 0.0 for c in cells]
    return [below, above]


def _color(cells: Sequence[Cell], system: str) -> str:
    """The same colour for a system in every plot (matplotlib's cycle, by sorted name)."""
    return f"C{_systems(cells).index(system) % 10}"


def _draw_systems(
    axes: Any, cells: Sequence[Cell], own: Sequence[Cell], x: Callable[[Cell], int]
) -> None:
    """One line per system over ``x`` (length or budget), 95% intervals as error bars."""
    for system in _systems(own):
        points = sorted((c for c in own if c.system == system), key=x)
        axes.errorbar(
            [x(c) for c in points],
            [c.value for c in points],
            yerr=_error_bars(points),
            marker="o",
            capsize=3,
            label=system,
            color=_color(cells, system),
        )


def plot_vs_length(cells: Sequence[Cell], task: str, budget: int, path: Path) -> Path:
    """Score vs history length, one line per system, 95% intervals as error bars."""
    figure = _figure()
    axes = figure.add_subplot()
    own = [c for c in cells if c.task == task and c.budget == budget and c.measured]
    _draw_systems(axes, cells, own, lambda c: c.length)
    lengths = sorted({c.length for c in own})
    if lengths:
        axes.set_xscale("log")
        axes.set_xticks(lengths, [length_label(n) for n in lengths])
        axes.minorticks_off()
    lower = bool(own) and own[0].lower_is_better
    axes.set_xlabel("history length (tokens)")
    axes.set_ylabel("NLL (nats/token, lower is better)" if lower else "accuracy")
    if not lower:
        axes.set_ylim(-0.05, 1.05)
    axes.set_title(f"{task} — W_max {budget}")
    axes.grid(alpha=0.3)
    if own:
        axes.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def plot_nll_vs_budget(cells: Sequence[Cell], length: int, path: Path) -> Path:
    """``longdoc`` NLL vs W_max at one history length, one line per system."""
    figure = _figure()
    axes = figure.add_subplot()
    own = [c for c in cells if c.task == "longdoc" and c.length == length and c.measured]
    _draw_systems(axes, cells, own, lambda c: c.budget)
    budgets = sorted({c.budget for c in own})
    if budgets:
        axes.set_xscale("log", base=2)
        axes.set_xticks(budgets, [str(b) for b in budgets])
        axes.minorticks_off()
    axes.set_xlabel("budget W_max (entries)")
    axes.set_ylabel("NLL (nats/token, lower is better)")
    axes.set_title(f"longdoc — history {length_label(length)} tokens")
    axes.grid(alpha=0.3)
    if own:
        axes.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def make_plots(cells: Sequence[Cell], out_dir: Path) -> list[Path]:
    paths = []
    for task in _tasks(cells):
        for budget in sorted({c.budget for c in cells if c.task == task}):
            paths.append(plot_vs_length(cells, task, budget, out_dir / f"{task}_W{budget}.png"))
    for length in sorted({c.length for c in cells if c.task == "longdoc"}):
        name = f"longdoc_nll_vs_budget_{length_label(length)}.png"
        paths.append(plot_nll_vs_budget(cells, length, out_dir / name))
    return paths


# ----------------------------------------------------------------------------- documents


def _sources(paths: Sequence[Path]) -> list[dict[str, str]]:
    out = []
    for path in paths:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        out.append(
            {
                "file": str(path),
                "date": str(document.get("date", "")),
                "machine": str(document.get("machine", "")),
                "command": str(document.get("command", "")),
                "quick": str(document.get("quick", "")),
            }
        )
    return out


def render_markdown(
    cells: Sequence[Cell], plots: Sequence[Path], sources: Sequence[dict[str, str]]
) -> str:
    summary = _summary_rows(rank_systems(cells))
    parts = [
        "# Long-context leaderboard",
        "",
        "Every system reads with the same frozen base, tokenizer, budget and seeded samples "
        "(DESIGN D14). Cells show the value and its 95% bootstrap interval; the best value of "
        "each column is bold. QA tasks report exact-match accuracy (higher is better), "
        "`longdoc` the NLL of the continuation in nats per token (lower is better).",
        "",
        "## Summary",
        "",
        "Mean rank over every (task, length, W_max) cell a system ran in (1 = best; a system "
        "whose context did not fit the budget, every sample skipped, ranks last in that cell); "
        f"{WINS_RULE}; mean accuracy over QA cells and mean NLL over `longdoc` cells, measured "
        "cells only.",
        "",
        _markdown_table(SUMMARY_HEADER, summary, [[False] * len(SUMMARY_HEADER) for _ in summary]),
    ]
    for table in task_tables(cells):
        parts += ["", f"## {table.task}", "", table.caption, ""]
        parts.append(_markdown_table(table.header, table.rows, table.bold))
        own = [p for p in plots if p.name.startswith(f"{table.task}_")]
        if own:
            parts.append("")
            parts += [f"![{p.stem}]({p.name})" for p in own]
    parts += ["", "## Sources", ""]
    for source in sources:
        quick = " (--quick)" if source["quick"] == "True" else ""
        parts.append(
            f"- `{source['file']}`{quick}: {source['date']}, {source['machine']}; "
            f"`{source['command']}`"
        )
    return "\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
td.best { font-weight: bold; background: #eef7ee; }
caption { caption-side: top; text-align: left; padding-bottom: 0.3rem; color: #555; }
img { max-width: 100%; margin: 0.5rem 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _html_table(
    header: list[str], rows: list[list[str]], bold: list[list[bool]], caption: str = ""
) -> str:
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row, marks in zip(rows, bold, strict=True):
        cells = "".join(
            f'<td class="best">{html.escape(v)}</td>' if b else f"<td>{html.escape(v)}</td>"
            for v, b in zip(row, marks, strict=True)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render_html(
    cells: Sequence[Cell], plots: Sequence[Path], sources: Sequence[dict[str, str]]
) -> str:
    rows = _summary_rows(rank_systems(cells))
    body = [
        "<h1>Long-context leaderboard</h1>",
        "<p>Every system reads with the same frozen base, tokenizer, budget and seeded samples. "
        "Cells show the value and its 95% bootstrap interval; the best value of each column is "
        "highlighted. QA tasks report exact-match accuracy (higher is better), "
        "<code>longdoc</code> the NLL in nats per token (lower is better).</p>",
        "<h2>Summary</h2>",
        _html_table(
            SUMMARY_HEADER,
            rows,
            [[False] * len(SUMMARY_HEADER) for _ in rows],
            "mean rank over every (task, length, W_max) cell a system ran in (1 = best; "
            f"skipped = last); {WINS_RULE}",
        ),
    ]
    for table in task_tables(cells):
        body.append(f"<h2>{html.escape(table.task)}</h2>")
        body.append(_html_table(table.header, table.rows, table.bold, table.caption))
        own = [p for p in plots if p.name.startswith(f"{table.task}_")]
        if own:
            body.append('<div class="plots">' + "".join(_img(p) for p in own) + "</div>")
    body.append("<h2>Sources</h2><ul>")
    for source in sources:
        body.append(
            f"<li><code>{html.escape(source['file'])}</code>: {html.escape(source['date'])}, "
            f"{html.escape(source['machine'])}; <code>{html.escape(source['command'])}</code>"
            f"{' (--quick)' if source['quick'] == 'True' else ''}</li>"
        )
    body.append("</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>MegaContext long-context leaderboard</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def build_leaderboard(json_paths: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``leaderboard.md``, ``leaderboard.html`` and the PNG plots into ``out_dir``.

    Args:
        json_paths: ``megacontext bench longctx --json`` documents; a cell in a later file
            replaces the same cell of an earlier one.
        out_dir: Created if missing; existing files of the same names are replaced.

    Returns:
        The path of ``leaderboard.md``.

    Raises:
        InvalidInputError: No files, or a file that is not a valid longctx document (the
            message names the file and the problem).
    """
    paths = [Path(p) for p in json_paths]
    cells = read_documents(paths)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(cells, out)
    sources = _sources(paths)
    markdown = out / MARKDOWN
    markdown.write_text(render_markdown(cells, plots, sources), encoding="utf-8")
    (out / HTML).write_text(render_html(cells, plots, sources), encoding="utf-8")
    return markdown
