"""Benchmark suites and the result contract of DESIGN §9.

A suite is a module exposing ``run(quick: bool, progress: Progress, options: BenchOptions) ->
list[Result]``; it is registered in :data:`SUITES` by module path so that running one suite
imports only what it needs. :class:`BenchOptions` carries what every suite takes from the command
line (the base, the prompt style), defined once here.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megacontext.errors import InvalidInputError

SUITES: dict[str, str] = {
    "core": "megacontext.bench.core",
    "models": "megacontext.bench.models",
    "storage": "megacontext.bench.storage",
    "gist": "megacontext.bench.gist",
    "longctx": "megacontext.bench.longctx",
    "runtime": "megacontext.bench.runtime",
    "crash": "megacontext.bench.crash",
    "service": "megacontext.bench.service",
    "explorer": "megacontext.bench.explorer",
    "scaleout": "megacontext.bench.scaleout",
    # An application's suite lives with the application (apps sit above bench and use its
    # contract); the registry names it by module path, so bench imports nothing of it.
    "repoqa": "megacontext.apps.code.bench",
    "knowledge": "megacontext.apps.knowledge.bench",
    "humaneval": "megacontext.apps.code.humaneval",
}

Progress = Callable[[str], None]
# Deprecated spelling of --base, still honoured (read here only).
BASE_ENV = "MEGACONTEXT_BENCH_BASE"


@dataclass(frozen=True)
class BenchOptions:
    """Settings every suite takes (``megacontext bench SUITE --base NAME --prompt STYLE``).

    Attributes:
        base: The base model by name or path; ``None``: ``$MEGACONTEXT_BENCH_BASE`` if set, else
            the default base.
        prompt: How questions are put to the base (``raw``, ``chat``, ``chat-cue``); ``None``
            uses the base's default style.
    """

    base: str | None = None
    prompt: str | None = None
    cluster: str | None = None  # a dask scheduler's address: suites that can, run on it

    def base_name(self) -> str:
        if self.base is not None:
            return self.base
        from megacontext.models.catalog import DEFAULT  # (imports torch: only when needed)

        return os.environ.get(BASE_ENV, "").strip() or DEFAULT


@dataclass(frozen=True)
class Result:
    """One measured number. ``baseline`` and ``ratio`` come from the same run (DESIGN §9)."""

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    note: str = ""
    extra: dict[str, Any] | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.baseline_name is not None and self.baseline_value is not None:
            out["baseline"] = {"name": self.baseline_name, "value": self.baseline_value}
            out["ratio"] = self.ratio
        if self.note:
            out["note"] = self.note
        if self.extra:
            out["extra"] = self.extra
        return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's memory since exec (or the last reset).

    Reads ``VmHWM`` from ``/proc/self/status``. ``ru_maxrss`` is not used where that exists: a
    child inherits the RSS its parent had at fork time into ``ru_maxrss``, so a probe started by
    a big process would report its parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def median(samples: Iterable[float]) -> float:
    return float(statistics.median(list(samples)))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def reproduce_command(suite: str) -> str:
    """The command line that reproduces this run, with the ``MEGACONTEXT_*`` environment
    variables that shape it (grid slices, the base, time budgets) in front."""
    import shlex

    settings = [
        f"{key}={shlex.quote(value)}"
        for key, value in sorted(os.environ.items())
        if key.startswith("MEGACONTEXT_")
    ]
    argv = ["megacontext", *sys.argv[1:]] if sys.argv[1:] else ["megacontext", "bench", suite]
    return " ".join([*settings, *(shlex.quote(a) for a in argv)])


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the ``with`` block and restore them after (suites read
    their settings — bundles, corpora, endpoints — from the environment, as users set them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_suite(
    name: str,
    quick: bool,
    progress: Progress | None = None,
    options: BenchOptions | None = None,
) -> dict[str, Any]:
    """Run one registered suite and return the JSON document of DESIGN §9."""
    import importlib

    if name not in SUITES:
        known = ", ".join(sorted(SUITES))
        raise InvalidInputError(f"unknown benchmark suite {name!r}; known suites: {known}")
    module = importlib.import_module(SUITES[name])
    options = options or BenchOptions()
    results: list[Result] = module.run(
        quick=quick, progress=progress or (lambda _msg: None), options=options
    )
    return {
        "suite": name,
        "base": options.base_name(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": reproduce_command(name),
        "quick": quick,
        "results": [r.to_json() for r in results],
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
