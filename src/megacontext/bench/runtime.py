"""``megacontext bench runtime``: what a session costs at decode, refocus and ingest (issue 7 §4).

Results (goals from DESIGN §9 and issue 7 in parentheses):

* ``decode_overhead_ratio``: milliseconds per generated token of a session (a long ingested
  history, ``W_max`` = 512, refocus on its normal schedule: LensNet, allocator, KV reuse) against
  the bare base decoding greedily with its own KV cache over a context of the same ``W_max``, in
  the same run; ``ratio`` = session / bare (≤ 1.10). ``decode_tokens_per_s`` is the session's
  rate on its own.
* ``refocus_step_ms``: median cost of one refocus step, split into ``refocus_fetch_ms`` (gathering
  LensNet's input vectors from the tree), ``refocus_lensnet_ms`` (features + LensNet forward),
  ``refocus_allocator_ms`` (planning), ``refocus_apply_ms`` (applying the plan to the working
  context) and ``refocus_kv_recompute_ms`` (the extra time of the next forward, which recomputes
  the KV cache from the first edited entry, D10, over a plain one-token decode forward).
* ``ingest_tokens_per_s``: token ids appended to a session per second (gisting, keys, lexical
  index, storage), and ``ingest_vs_prefill_ratio``: the same over the base's prefill tokens/s
  (512-token windows) measured in the same run.
* ``ask_process_s``, ``ask_load_s``, ``ask_focus_ms``, ``ask_answer_ms``: what ``megacontext
  ask`` costs in a fresh process, split as its ``--json`` reports it — opening the session
  read-only (loading the base and the focus bundle), refocusing for the question until focus
  converges, and answering (prefill of the working context, then decoding).
* ``first_answer_s`` and ``first_answer_vs_{rag_minilm,full_8k}_ratio``: one question over a
  fresh 100k-token history (16k with ``--quick``), ingest included, against RAG-MiniLM
  (embedding included) and against the last 8k tokens prefilled whole (:func:`first_answer`).
* ``rss_ratio_<N>_vs_10k``: peak RSS of a fresh process that opens a session and ingests N tokens
  in 10k-token ``ingest`` calls, over the same for 10k tokens (≤ 1.2: memory must not grow with
  the history; one call's transient memory grows with the call's size, so every size uses the
  same calls). Full runs measure
  1M and 10M tokens; when the projected ingest time of 10M tokens exceeds
  ``$MEGACONTEXT_BENCH_RSS_BUDGET_S`` (default 600 s) the largest size that fits is measured
  instead and the result is named after it. ``--quick`` measures 200k.

The focus bundle is the one shipped for the base (``resolve_focus``). Without it the suite times an
untrained stand-in in the shapes of the base's own recipes (those ``train focus --base`` trains;
for SmolLM2 a GistNet over its layer-15 hidden states): every cost above depends on the shapes,
not the weights, except how many edits LensNet asks for (at most ``max_edits`` per step), so the
refocus results say which bundle was used. The base is ``$MEGACONTEXT_BENCH_BASE`` (default: the
embedded default base).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megacontext.bench import BenchOptions, Progress, Result, median, peak_rss_bytes
from megacontext.errors import InvalidInputError
from megacontext.eval.leaderboard import length_label

W_MAX = 512
INGEST_CHUNK = 16_384
RSS_CHUNK = 10_000  # = the reference size: every size sees the same per-call working memory
PREFILL_WINDOW = 512
BENCH_THREADS = 1
RSS_BUDGET_ENV = "MEGACONTEXT_BENCH_RSS_BUDGET_S"
RSS_FALLBACK_SIZES = (10_000_000, 5_000_000, 4_000_000, 2_000_000)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    history_tokens: int  # ingested before decoding; also the ingest-throughput sample
    new_tokens: int  # generated per repeat
    repeats: int
    rss_sizes: tuple[int, ...]  # the first is the reference
    rss_budget_s: float  # time allowed for the largest RSS point
    first_answer_tokens: int  # the fresh history a first question is asked over


QUICK = Plan(
    history_tokens=4 * INGEST_CHUNK,
    new_tokens=64,
    repeats=3,
    rss_sizes=(10_000, 200_000),
    rss_budget_s=float("inf"),
    first_answer_tokens=16_000,
)
FULL = Plan(
    history_tokens=16 * INGEST_CHUNK,
    new_tokens=128,
    repeats=5,
    rss_sizes=(10_000, 1_000_000, 10_000_000),
    rss_budget_s=600.0,
    first_answer_tokens=100_000,
)
# The full-context comparison: the last 8k tokens prefilled whole (SmolLM2's trained context is
# 8192 positions; the answer's tokens fit inside it).
FULL_CONTEXT = 8192
ANSWER_TOKENS = 16


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- models


def _recipe_shape(kind: str, base_name: str) -> dict[str, Any]:
    """The module shape of the packaged recipe ``train focus`` would use for the base
    (``gist-smollm2.yaml`` for SmolLM2, else ``gist-default.yaml``; the same for ``lens``)."""
    from megacontext.train.focus import recipe

    _, settings = recipe(kind, base_name)
    return dict((settings.get(kind) or {}).get(f"{kind}net") or {})


def stand_in_bundle(base: Any, path: Path, seed: int = 0) -> Path:
    """Save an untrained GistNet + LensNet in the shapes of the base's own recipes (those
    ``megacontext train focus --base`` trains: for SmolLM2, a GistNet over the base's layer-15
    hidden states); returns ``path``.

    Used when no trained focus bundle exists: costs depend on the shapes, not on the weights.
    """
    from megacontext.models.bundle import save_bundle
    from megacontext.models.gistnet import GistNet, GistNetConfig
    from megacontext.models.lensnet import LensNet, LensNetConfig

    torch.manual_seed(seed)
    gist_shape = _recipe_shape("gist", base.source)
    lens_shape = _recipe_shape("lens", base.source)
    gistnet = GistNet(GistNetConfig(d_model=base.d_model, **gist_shape))
    lensnet = LensNet(LensNetConfig(d_model=base.d_model, **lens_shape))
    return save_bundle(
        path,
        {"gistnet": gistnet, "lensnet": lensnet},
        fingerprints=base.fingerprints,
        training={"stand_in": "untrained, the base's recipe shapes, for megacontext bench runtime"},
    )


def focus_bundle(base: Any, scratch: Path, progress: Progress) -> tuple[Path, str]:
    """The focus bundle for ``base`` when one exists, else a stand-in; and a label saying which."""
    from megacontext.models.bundle import resolve_focus
    from megacontext.models.errors import NoFocusBundleError

    try:
        return resolve_focus("default", base.fingerprints, base.source), "packaged"
    except NoFocusBundleError as exc:
        progress(
            f"{exc}: timing an untrained stand-in in the shapes of the base's GistNet/LensNet "
            "recipes "
            "(quality is not measured by this suite)"
        )
    return stand_in_bundle(base, scratch / "stand-in-focus"), "untrained stand-in"


def history_ids(base: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded token ids of ``base``'s vocabulary, never a special token."""
    special = {t for t in (base.bos_token_id, base.eos_token_id) if t is not None}
    low = max(special, default=-1) + 1
    if low >= base.vocab_size:
        low = 0
    rng = np.random.default_rng(seed)
    return rng.integers(low, base.vocab_size, size=n, dtype=np.int64)


# ----------------------------------------------------------------------------- decode


@torch.no_grad()
def bare_decode_seconds(base: Any, context: np.ndarray, new_tokens: int) -> float:
    """Seconds per token of plain greedy decoding with the base's own KV cache.

    ``context`` is prefilled first (not timed); then ``new_tokens`` one-token forwards.
    """
    ids = torch.as_tensor(context, device=base.device)[None]
    positions = torch.arange(ids.shape[1], device=base.device)[None]
    out = base.forward(base.embed(ids), positions, base.new_cache())
    cache, length = out.cache, ids.shape[1]
    token = out.logits[0, -1].argmax()
    start = time.perf_counter()
    for _ in range(new_tokens):
        step = base.embed(token.view(1, 1))
        out = base.forward(step, torch.tensor([[length]], device=base.device), cache)
        cache, length = out.cache, length + 1
        token = out.logits[0, -1].argmax()
    return (time.perf_counter() - start) / new_tokens


def session_decode_seconds(session: Any, new_tokens: int) -> float:
    """Seconds per token of ``session.generate`` (greedy), over exactly ``new_tokens`` tokens.

    A generation that stops early (end-of-text) is continued by another call, which refocuses
    first as every call does.
    """
    generated, elapsed = 0, 0.0
    while generated < new_tokens:
        before = session.tree.num_tokens
        start = time.perf_counter()
        for _ in session.generate(max_new_tokens=new_tokens - generated):
            pass
        elapsed += time.perf_counter() - start
        generated += session.tree.num_tokens - before
    return elapsed / generated


@dataclass(frozen=True)
class RefocusSplit:
    """Median milliseconds of each part of a refocus step, and what the steps did."""

    total: float
    fetch: float
    lensnet: float
    allocator: float
    apply: float
    kv_recompute: float
    steps: int
    edits_per_step: float
    recomputed_entries: float  # mean entries recomputed after a step with edits


def refocus_split(log: Sequence[Any]) -> RefocusSplit:
    """Split the refocus steps of a session's ``timing_log`` into parts (milliseconds).

    The KV recompute of a step is charged to it as the time of the forward that follows it
    beyond a plain one-token decode forward (the median of those in the same log); a step
    without edits recomputes nothing.
    """
    from megacontext.runtime import ForwardTiming, StepTelemetry

    plain = [
        f.fetch_s + f.forward_s for f in log if isinstance(f, ForwardTiming) and f.entries == 1
    ]
    if not plain:
        raise InvalidInputError("the timing log holds no plain decode step; generate more tokens")
    plain_s = median(plain)
    parts: dict[str, list[float]] = {
        k: [] for k in ("total", "fetch", "lensnet", "allocator", "apply", "kv_recompute")
    }
    edits: list[int] = []
    recomputed: list[int] = []
    for i, item in enumerate(log):
        if not isinstance(item, StepTelemetry):
            continue
        following = log[i + 1] if i + 1 < len(log) else None
        recompute = 0.0
        if isinstance(following, ForwardTiming) and following.entries > 1:
            recompute = max(0.0, following.fetch_s + following.forward_s - plain_s)
            recomputed.append(following.entries - 1)
        own = {k: item.seconds.get(k, 0.0) for k in ("fetch", "lensnet", "allocator", "apply")}
        own["kv_recompute"] = recompute
        own["total"] = sum(own.values())
        for key, value in own.items():
            parts[key].append(1000.0 * value)
        edits.append(item.expands + item.collapses)
    if not edits:
        raise InvalidInputError("the timing log holds no refocus step; generate more tokens")
    return RefocusSplit(
        **{k: median(v) for k, v in parts.items()},
        steps=len(edits),
        edits_per_step=float(np.mean(edits)),
        recomputed_entries=float(np.mean(recomputed)) if recomputed else 0.0,
    )


def decode_breakdown(log: Sequence[Any], total_s: float) -> dict[str, float]:
    """Where a session's decoding time went, as shares of ``total_s`` (its wall time).

    ``recompute_share``: forwards that recomputed more than the new entry (after a refocus edit
    or a collapse that made room); ``refocus_share``: the refocus steps themselves.
    """
    from megacontext.runtime import ForwardTiming, StepTelemetry

    forwards = [f for f in log if isinstance(f, ForwardTiming)]
    recompute = [f.fetch_s + f.forward_s for f in forwards if f.entries > 1]
    steps = [sum(s.seconds.values()) for s in log if isinstance(s, StepTelemetry)]
    return {
        "forwards": len(forwards),
        "recompute_forwards": len(recompute),
        "recompute_share": sum(recompute) / total_s,
        "refocus_share": sum(steps) / total_s,
    }


@torch.no_grad()
def prefill_tokens_per_s(base: Any, ids: np.ndarray, window: int = PREFILL_WINDOW) -> float:
    """Tokens per second of the base reading ``ids`` in ``window``-token forwards (no cache)."""
    windows = len(ids) // window
    if windows < 1:
        raise InvalidInputError(f"prefill needs at least {window} tokens, got {len(ids)}")
    positions = torch.arange(window, device=base.device)[None]
    start = time.perf_counter()
    for w in range(windows):
        chunk = torch.as_tensor(ids[w * window : (w + 1) * window], device=base.device)[None]
        base.forward(base.embed(chunk), positions, use_cache=False)
    return windows * window / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux ``clear_refs``); False if unable."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def rss_probe_main(tokens: int, base_name: str, focus: Path, workdir: Path) -> dict[str, Any]:
    """In this (fresh) process: open a session, ingest ``tokens`` ids, report peak RSS."""
    from megacontext.models.bundle import load_bundle
    from megacontext.models.loading import load_base
    from megacontext.runtime import SessionConfig, open_session

    torch.set_num_threads(BENCH_THREADS)
    base = load_base(base_name)
    bundle = load_bundle(focus, fingerprints=base.fingerprints)
    loaded = peak_rss_bytes()
    # Loading's transient peak is not the session's: count from here on where the OS allows.
    reset = reset_peak_rss()
    elapsed = 0.0
    with open_session(workdir, base, bundle, SessionConfig(W_max=W_MAX, trace=False)) as session:
        done = 0
        while done < tokens:
            n = min(RSS_CHUNK, tokens - done)
            ids = history_ids(base, n, seed=done)
            start = time.perf_counter()
            session.ingest(ids)
            elapsed += time.perf_counter() - start
            done += n
        ingested = session.tree.num_tokens
    return {
        "tokens": ingested,
        "seconds": elapsed,
        "peak_rss": peak_rss_bytes(),
        "rss_after_load": loaded,
        "peak_reset_after_load": reset,
    }


def rss_probe(tokens: int, focus: Path, base_name: str) -> dict[str, Any]:
    """Run :func:`rss_probe_main` in a fresh subprocess (nothing else inflates its peak RSS).

    Returns ``{"tokens", "seconds", "peak_rss", "rss_after_load", "peak_reset_after_load"}``
    (bytes, seconds; the peak counts from after the models loaded when the OS allows).
    """
    name = base_name
    with tempfile.TemporaryDirectory(prefix="mc-bench-rss-") as scratch:
        command = [
            sys.executable,
            "-m",
            "megacontext.bench.runtime",
            "rss",
            "--tokens",
            str(tokens),
            "--base",
            name,
            "--focus",
            str(focus),
            "--dir",
            str(Path(scratch) / "session"),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InvalidInputError(
            f"the RSS probe for {tokens} tokens failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


ASK_QUESTIONS = (
    "What is the pass key?",
    "Which function parses the arguments?",
    "Who wrote the letter, and when?",
)


def ask_latency(path: Path, repeats: int, progress: Progress) -> list[Result]:
    """What `megacontext ask` costs a person: the real command in a fresh process (`--json`,
    16 answer tokens at most), split as it reports it — opening the session read-only (loading
    the base and the focus bundle), focusing for the question until focus converges, answering
    (the working context's prefill and the decode) — and the process's wall time (Python's
    start and imports included). Medians over ``repeats`` × the questions."""
    parts: dict[str, list[float]] = {"load": [], "focus": [], "decode": [], "wall": []}
    runs = [q for _ in range(repeats) for q in ASK_QUESTIONS]
    for number, question in enumerate(runs, 1):
        progress(f"ask latency: `megacontext ask` {number}/{len(runs)}")
        command = [sys.executable, "-m", "megacontext.cli", "ask", question]
        command += ["--tree", str(path), "--max-new-tokens", "16", "--json"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise InvalidInputError(
                f"`megacontext ask` failed in the runtime bench:\n{done.stderr}"
            )
        seconds = json.loads(done.stdout)["seconds"]
        for part in ("load", "focus", "decode"):
            parts[part].append(float(seconds[part]))
        parts["wall"].append(wall)
    return [
        Result("ask_process_s", median(parts["wall"]), "s", note="`megacontext ask` wall time"),
        Result("ask_load_s", median(parts["load"]), "s", note="open read-only: base + bundle"),
        Result("ask_focus_ms", 1000.0 * median(parts["focus"]), "ms", note="refocus to converge"),
        Result("ask_answer_ms", 1000.0 * median(parts["decode"]), "ms", note="prefill + decode"),
    ]


def first_answer(
    base: Any, bundle: Any, tokens: int, scratch: Path, progress: Progress
) -> list[Result]:
    """Time to the first answer over a fresh history, ingest included (issue 16 §3).

    The demo's document (:func:`megacontext.eval.demo.build_document`: held-out text with one
    planted fact) of ``tokens`` tokens, one question about it, through the demo's own code for
    each system: MegaContext (a new session ingests the history, then ``ask`` refocuses and
    answers at ``W_max`` 512), RAG-MiniLM (every 32-token chunk embedded, retrieval, the answer
    at the same budget) when its encoder is installed, and the full context (the last 8k tokens
    prefilled whole, then the answer). Each value is the seconds from the first token of history
    to the last token of the answer; whether each answer was right is in ``extra``.
    """
    from megacontext.eval.demo import (
        baseline_answers,
        baseline_systems,
        build_document,
        megacontext_answers,
    )
    from megacontext.eval.memory import Recency
    from megacontext.models.prompting import PromptFormat
    from megacontext.runtime import SessionConfig

    document = build_document(base, tokens, facts=1, seed=0, w_max=W_MAX)
    prompt = PromptFormat.for_base(base, PromptFormat.default_style(base))
    label = length_label(len(document.ids))

    def quiet(_stage: str, _done: int, _total: int) -> None:
        pass

    progress(f"first answer over {label} tokens: MegaContext (ingest, then ask)")
    config = SessionConfig(W_max=W_MAX, trace=False, prompt=prompt.style)
    answers, ingest_s = megacontext_answers(
        base, bundle, document, scratch / "first-answer", config, ANSWER_TOKENS, quiet
    )
    ours = ingest_s + answers[0].seconds
    extra: dict[str, Any] = {
        "history_tokens": len(document.ids),
        "ingest_s": ingest_s,
        "answer_s": answers[0].seconds,
        "correct": answers[0].correct,
    }
    results = [Result("first_answer_s", ours, "s", note=f"history {label}", extra=extra)]
    others: dict[str, tuple[Any, int, str]] = {
        "full_8k": (
            lambda: Recency(base),
            FULL_CONTEXT - ANSWER_TOKENS,
            f"the last {length_label(FULL_CONTEXT)} tokens prefilled whole, then the answer",
        ),
    }
    rag = baseline_systems(base, ["rag-minilm"]).get("rag-minilm")
    if rag is not None:
        others["rag_minilm"] = (
            rag,
            W_MAX,
            f"RAG-MiniLM at W_max {W_MAX}: every chunk embedded, retrieval, the answer",
        )
    for name, (factory, budget, description) in others.items():
        progress(f"first answer over {label} tokens: {name}")
        theirs, observe_s = baseline_answers(
            base, prompt, name, factory, document, budget, ANSWER_TOKENS, quiet
        )
        results.append(
            Result(
                f"first_answer_vs_{name}_ratio",
                ours,
                "s",
                baseline_name=description,
                baseline_value=observe_s + theirs[0].seconds,
                note=f"history {label}, ingest or embedding included",
                extra={"observe_s": observe_s, "correct": theirs[0].correct},
            )
        )
    return results


def _largest_that_fits(seconds_per_token: float, budget_s: float, wanted: int) -> int:
    for size in (wanted, *RSS_FALLBACK_SIZES):
        if size <= wanted and size * seconds_per_token <= budget_s:
            return size
    return 0


# ----------------------------------------------------------------------------- the suite


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    with _threads(BENCH_THREADS), tempfile.TemporaryDirectory(prefix="mc-bench-rt-") as tmp:
        return _run(QUICK if quick else FULL, Path(tmp), progress, options.base_name())


def _run(plan: Plan, scratch: Path, progress: Progress, base_name: str) -> list[Result]:
    from megacontext.models.bundle import load_bundle
    from megacontext.models.loading import load_base
    from megacontext.runtime import SessionConfig, open_session

    torch.manual_seed(0)
    base = load_base(base_name)
    focus_dir, focus_label = focus_bundle(base, scratch, progress)
    bundle = load_bundle(focus_dir, fingerprints=base.fingerprints)
    focus_note = f"focus bundle: {focus_label}"
    results: list[Result] = []

    # Ingest a long history chunk by chunk: the ingest throughput sample.
    history = history_ids(base, plan.history_tokens)
    config = SessionConfig(W_max=W_MAX, trace=False)
    rates: list[float] = []
    bare_s: list[float] = []
    session_s: list[float] = []
    with open_session(scratch / "session", base, bundle, config) as session:
        for lo in range(0, len(history), INGEST_CHUNK):
            progress(f"ingest {lo + INGEST_CHUNK:,}/{len(history):,} tokens")
            chunk = history[lo : lo + INGEST_CHUNK]
            start = time.perf_counter()
            session.ingest(chunk)
            rates.append(len(chunk) / (time.perf_counter() - start))
        progress("base prefill throughput")
        prefill = median(
            prefill_tokens_per_s(base, history[: 8 * PREFILL_WINDOW]) for _ in range(plan.repeats)
        )

        # Decode: session vs bare base, interleaved so that machine noise hits both alike.
        context = history[-(W_MAX - plan.new_tokens) :]
        for _ in session.generate(max_new_tokens=2):  # builds the KV cache (a prefill)
            pass
        session.timing_log = []
        for r in range(plan.repeats):
            progress(f"decode {plan.new_tokens} tokens, repeat {r + 1}/{plan.repeats}")
            bare_s.append(bare_decode_seconds(base, context, plan.new_tokens))
            session_s.append(session_decode_seconds(session, plan.new_tokens))
        split = refocus_split(session.timing_log)
        breakdown = decode_breakdown(session.timing_log, sum(session_s) * plan.new_tokens)
        session.timing_log = None
    results += ask_latency(scratch / "session", plan.repeats, progress)
    results += first_answer(base, bundle, plan.first_answer_tokens, scratch, progress)

    ingest = median(rates)
    results.append(Result("ingest_tokens_per_s", ingest, "tokens/s", note=focus_note))
    results.append(
        Result(
            "ingest_vs_prefill_ratio",
            ingest,
            "tokens/s",
            baseline_name=f"base_prefill_tokens_per_s ({PREFILL_WINDOW}-token windows)",
            baseline_value=prefill,
            note="ingest = gisting + keys + lexical index + storage",
        )
    )
    results.append(
        Result(
            "decode_overhead_ratio",
            1000.0 * median(session_s),
            "ms/token",
            baseline_name=f"bare base greedy decode, own KV cache, context {W_MAX}",
            baseline_value=1000.0 * median(bare_s),
            note=f"goal ratio <= 1.10; history {length_label(plan.history_tokens)}, W_max {W_MAX}",
            extra=breakdown,
        )
    )
    results.append(Result("decode_tokens_per_s", 1.0 / median(session_s), "tokens/s"))
    refocus_extra = {
        "steps": split.steps,
        "edits_per_step": split.edits_per_step,
        "recomputed_entries": split.recomputed_entries,
        "focus_bundle": focus_label,
    }
    results.append(
        Result("refocus_step_ms", split.total, "ms", note=focus_note, extra=refocus_extra)
    )
    for part in ("fetch", "lensnet", "allocator", "apply", "kv_recompute"):
        results.append(Result(f"refocus_{part}_ms", getattr(split, part), "ms"))

    # Peak RSS by history size, each in a fresh process.
    reference, *sizes = plan.rss_sizes
    progress(f"peak RSS at {length_label(reference)} tokens (subprocess)")
    ref = rss_probe(reference, focus_dir, base_name)
    seconds_per_token = 1.0 / ingest
    budget = float(os.environ.get(RSS_BUDGET_ENV, plan.rss_budget_s))
    for wanted in sizes:
        size = wanted
        if wanted == max(sizes):
            size = _largest_that_fits(seconds_per_token, budget, wanted)
            label = length_label(wanted)
            if size == 0:
                progress(f"skipping the {label}-token RSS point: over {budget:.0f} s")
                continue
            if size != wanted:
                progress(
                    f"{label} tokens would take ~{wanted * seconds_per_token:.0f} s; "
                    f"measuring {length_label(size)} (set {RSS_BUDGET_ENV} to allow more)"
                )
        eta = size * seconds_per_token
        progress(f"peak RSS at {length_label(size)} tokens (subprocess, ~{eta:.0f} s)")
        probe = rss_probe(size, focus_dir, base_name)
        seconds_per_token = max(seconds_per_token, probe["seconds"] / probe["tokens"])
        results.append(
            Result(
                f"rss_ratio_{length_label(size)}_vs_{length_label(reference)}",
                probe["peak_rss"] / 2**20,
                "MiB",
                baseline_name=f"peak RSS at {length_label(reference)} tokens",
                baseline_value=ref["peak_rss"] / 2**20,
                note="goal ratio <= 1.2",
                extra={
                    "tokens": probe["tokens"],
                    "ingest_seconds": probe["seconds"],
                    "peak_rss_after_load_mib": probe["rss_after_load"] / 2**20,
                    "peak_counted_after_load": probe["peak_reset_after_load"],
                },
            )
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m megacontext.bench.runtime rss --tokens N --base B --focus DIR --dir DIR``."""
    parser = argparse.ArgumentParser(prog="python -m megacontext.bench.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    rss = sub.add_parser("rss", help="ingest N tokens into a fresh session; print peak RSS JSON")
    rss.add_argument("--tokens", type=int, required=True)
    rss.add_argument("--base", default="default")
    rss.add_argument("--focus", type=Path, required=True)
    rss.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(rss_probe_main(args.tokens, args.base, args.focus, args.dir)))


if __name__ == "__main__":
    main()
