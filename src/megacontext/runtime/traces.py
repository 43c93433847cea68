"""Focus traces: the JSONL telemetry a session writes to ``SESSION/traces/`` (one file per
session that refocused; see :meth:`megacontext.runtime.session.Session.refocus`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError

TRACES = "traces"


# What every line of a focus trace holds (see Session.refocus).
_REQUIRED = ("step", "tokens", "entries", "utilization", "expands", "collapses")


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The steps of a trace file; a typed error naming the line for anything else."""
    return read_steps(path)[0]


def read_steps(
    path: Path, first: int = 0, limit: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Steps ``first`` to ``first + limit`` of a trace file (all from ``first`` when ``limit`` is
    ``None``) and how many steps it holds. Only the steps returned are parsed: a long session's
    trace holds thousands of them."""
    if not path.is_file():
        raise InvalidInputError(
            f"{path} is not a file; traces are written to SESSION/traces/session-*.jsonl"
        )
    stop = None if limit is None else first + limit
    rows, total = [], 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if first <= total and (stop is None or total < stop):
                rows.append(_step(path, number, line))
            total += 1
    return rows, total


def _step(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise InvalidInputError(f"{path}:{number} is not JSON; is this a focus trace?") from None
    missing = [k for k in _REQUIRED if not isinstance(row, dict) or k not in row]
    if missing:
        raise InvalidInputError(
            f"{path}:{number} is not a focus trace step (no {', '.join(missing)}); traces "
            "are the SESSION/traces/session-*.jsonl files a session writes"
        )
    return row


def list_traces(session_dir: Path) -> list[Path]:
    """The trace files of a session directory, oldest first (their names sort by time)."""
    folder = session_dir / TRACES
    return sorted(folder.glob("session-*.jsonl")) if folder.is_dir() else []


def count_steps(path: Path) -> int:
    """The steps a trace file holds (its non-blank lines), without parsing them."""
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


__all__ = ["TRACES", "count_steps", "list_traces", "read_steps", "read_trace"]
