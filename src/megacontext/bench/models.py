"""Benchmark suite ``models``: the base-model layer (``megacontext bench models --base NAME``).

Each measurement is a function ``(quick, progress, options) -> list[Result]`` listed in
:data:`MEASUREMENTS`; ``run`` calls them in order:

* the base itself (``--base``; a real base such as ``smollm2``): first load (GGUF conversion into
  an empty cache) and cached load seconds, prefill tokens/s at 512, 2,048 and 8,192 tokens and
  decode ms/token at contexts of 512 and 4,096, each in fp32 and bf16 with 1 and 2 threads, and
  the peak RSS of a process that loads it and prefills 8,192 tokens;
* the adapter's overhead over calling the same model directly;
* RoPE relativity at huge offsets on tiny random-init models; the from-scratch training speed;
  the tiny base's quality.

``adapter_forward_overhead_ratio`` compares the adapter's ``forward`` with calling the same
transformers model directly on the same inputs, interleaving the two in one process so that
machine noise hits both alike; the ratio is median time (adapter) / median time (direct).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megacontext.bench import BenchOptions, Progress, Result, median

# A random-init model of the default base's architecture and size class (Llama, tied
# embeddings, vocab 8k), used when the packaged default base is not built.
BENCH_MODEL_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 8192,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
}


BENCH_THREADS = 1


def _bench_base(progress: Progress, workdir: Path, name: str) -> tuple[Any, str]:
    """The base under test, else (the tiny base not built) a random-init model of its
    architecture."""
    from megacontext.models import MissingModelFilesError, load_base
    from megacontext.models.tiny import make_tiny_model_dir

    try:
        base = load_base(name, progress=False)
        return base, base.source
    except MissingModelFilesError:
        if name not in ("default", "tiny"):
            raise
        progress("tiny base not built; using a random-init model of its architecture")
        path = make_tiny_model_dir(BENCH_MODEL_CONFIG, workdir / "bench-model", seed=0)
        return load_base(path), "random-init Llama (d=256, 6 layers, vocab 8192)"


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median CPU seconds per call of each function, run alternately ``repeats`` times.

    Process CPU time (one thread) rather than wall time: on a shared machine it is far less
    disturbed by other processes. The order alternates (A B, B A, ...) so neither side always
    runs first.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for repeat in range(repeats):
        order = list(fns.items())
        for name, fn in order if repeat % 2 == 0 else reversed(order):
            start = time.process_time()
            fn()
            samples[name].append(time.process_time() - start)
    return {name: median(values) for name, values in samples.items()}


def adapter_forward_overhead(
    quick: bool, progress: Progress, options: BenchOptions
) -> list[Result]:
    """Adapter forward vs the HF model called directly: prefill and one-token decode steps."""
    import torch

    torch.manual_seed(0)
    length, repeats, steps = (128, 10, 16) if quick else (512, 30, 64)
    # One thread: on a shared machine, multi-threaded BLAS under contention is ~10x noisier
    # (spin-waiting threads), and the ratio, not the absolute speed, is what is measured.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        return _measure_overhead(length, repeats, steps, progress, options.base_name())
    finally:
        torch.set_num_threads(threads_before)


def _measure_overhead(
    length: int, repeats: int, steps: int, progress: Progress, name: str
) -> list[Result]:
    import torch

    with tempfile.TemporaryDirectory(prefix="megacontext-bench-") as tmp:
        base, label = _bench_base(progress, Path(tmp), name)
        model = base.model
        vocab = min(base.vocab_size, len(base.tokenizer))
        ids = torch.randint(3, vocab, (1, length))
        pos = torch.arange(length).unsqueeze(0)

        def direct_prefill() -> Any:
            return model(input_ids=ids, position_ids=pos, use_cache=True).logits

        def adapter_prefill() -> Any:
            return base.forward(base.embed(ids), pos, None).logits

        def direct_decode() -> None:
            cache = base.new_cache()
            model(input_ids=ids[:, :8], position_ids=pos[:, :8], cache=cache, use_cache=True)
            for i in range(8, 8 + steps):
                model(input_ids=ids[:, i : i + 1], position_ids=pos[:, i : i + 1], cache=cache)

        def adapter_decode() -> None:
            cache = base.forward(base.embed(ids[:, :8]), pos[:, :8], None).cache
            for i in range(8, 8 + steps):
                base.forward(base.embed(ids[:, i : i + 1]), pos[:, i : i + 1], cache)

        with torch.inference_mode():
            progress(f"prefill {length} tokens x {repeats} repeats ({label})")
            prefill = _interleaved({"direct": direct_prefill, "adapter": adapter_prefill}, repeats)
            progress(f"decode {steps} steps x {repeats} repeats")
            decode = _interleaved({"direct": direct_decode, "adapter": adapter_decode}, repeats)
    threads = torch.get_num_threads()
    note = f"{label}; {threads} thread(s); median CPU time of {repeats} interleaved repeats"
    return [
        Result(
            "adapter_forward_overhead_ratio",
            prefill["adapter"] / prefill["direct"],
            "x",
            note=f"prefill of {length} tokens, time(adapter)/time(direct), goal <= 1.05; {note}",
        ),
        Result(
            "adapter_forward_tokens_per_s",
            length / prefill["adapter"],
            "tokens/s",
            baseline_name="hf_direct_forward_tokens_per_s",
            baseline_value=length / prefill["direct"],
            note=note,
        ),
        Result(
            "adapter_decode_overhead_ratio",
            decode["adapter"] / decode["direct"],
            "x",
            note=f"{steps} one-token steps with a KV cache, time(adapter)/time(direct); {note}",
        ),
    ]


PREFILL_LENGTHS = (512, 2048, 8192)
DECODE_CONTEXTS = (512, 4096)
SPEED_DTYPES = ("float32", "bfloat16")
SPEED_THREADS = (1, 2)


def base_speed(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """Load times, prefill and decode speed, and peak RSS of the base under test.

    Load: ``load_first_s`` converts the GGUF into an empty, temporary model cache (real bases
    only); ``load_cached_s`` loads from the user's cache. Speeds are medians of wall time over
    ``repeats`` runs; ratios compare bf16 with fp32 and 2 threads with 1 in the same run.
    """
    import os
    import subprocess
    import sys

    import torch

    from megacontext.models.catalog import real_base
    from megacontext.models.loading import load_base

    name = options.base_name()
    lengths = (512, 2048) if quick else PREFILL_LENGTHS
    contexts = (512,) if quick else DECODE_CONTEXTS
    repeats, steps = (1, 8) if quick else (3, 32)
    results: list[Result] = []
    entry = real_base(name)
    if entry is not None and not quick:
        progress(f"{entry.name}: first load (conversion into an empty cache)")
        with tempfile.TemporaryDirectory(prefix="megacontext-bench-cache-") as cache:
            code = (
                "import time, json; t = time.perf_counter();"
                "from megacontext.models import load_base;"
                f"b = load_base({entry.name!r}, progress=False);"
                "print(json.dumps({**b.load_seconds, 'wall_s': time.perf_counter() - t}))"
            )
            env = {**os.environ, "MEGACONTEXT_HOME": cache}
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            first = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(
            Result(
                "load_first_s",
                first["wall_s"],
                "s",
                note=f"{entry.name}: GGUF sha256 check, conversion {first['convert_s']:.1f} s, "
                "load; fresh process, empty cache",
            )
        )
    started = time.perf_counter()
    base = load_base(name, progress=False)
    base.fingerprint  # noqa: B018  (part of what a session's open costs)
    results.append(
        Result(
            "load_cached_s",
            time.perf_counter() - started,
            "s",
            note=f"{base.source}: cache check (sha256 of every file), load, fingerprint",
        )
    )
    label = base.source
    vocab = min(base.vocab_size, len(base.tokenizer))
    threads_before = torch.get_num_threads()
    try:
        for dtype in SPEED_DTYPES:
            base.model.to(getattr(torch, dtype))
            for threads in SPEED_THREADS:
                torch.set_num_threads(threads)
                tag = f"{dtype}_{threads}t"
                for length in lengths:
                    progress(f"{label}: prefill {length} tokens, {dtype}, {threads} thread(s)")
                    ids = torch.randint(3, vocab, (1, length), generator=_seeded())
                    seconds = median(_prefill_seconds(base, ids) for _ in range(repeats))
                    results.append(
                        Result(f"prefill_tokens_per_s_{length}_{tag}", length / seconds, "tok/s")
                    )
                for context in contexts:
                    progress(f"{label}: decode at context {context}, {dtype}, {threads} thread(s)")
                    ids = torch.randint(3, vocab, (1, context + steps), generator=_seeded())
                    per_token = _decode_seconds(base, ids, context, steps)
                    results.append(
                        Result(f"decode_ms_per_token_{context}_{tag}", 1000 * per_token, "ms")
                    )
    finally:
        torch.set_num_threads(threads_before)
        base.model.to(torch.float32)
    by_name = {r.name: r.value for r in results}
    derived = []
    for length in lengths:
        for threads in SPEED_THREADS:
            fp32 = by_name[f"prefill_tokens_per_s_{length}_float32_{threads}t"]
            derived.append(
                Result(
                    f"prefill_bf16_vs_fp32_{length}_{threads}t",
                    by_name[f"prefill_tokens_per_s_{length}_bfloat16_{threads}t"],
                    "tok/s",
                    baseline_name="fp32, same run",
                    baseline_value=fp32,
                )
            )
        for dtype in SPEED_DTYPES:
            derived.append(
                Result(
                    f"prefill_2t_vs_1t_{length}_{dtype}",
                    by_name[f"prefill_tokens_per_s_{length}_{dtype}_2t"],
                    "tok/s",
                    baseline_name="1 thread, same run",
                    baseline_value=by_name[f"prefill_tokens_per_s_{length}_{dtype}_1t"],
                )
            )
    if not quick:
        progress(f"{label}: peak RSS of load + prefill of {max(lengths)} tokens (subprocess)")
        code = (
            "import torch, json; torch.set_num_threads(2);"
            "from megacontext.bench import peak_rss_bytes;"
            "from megacontext.models import load_base;"
            f"b = load_base({name!r}, progress=False);"
            f"ids = torch.randint(3, {vocab}, (1, {max(lengths)}));"
            "torch.no_grad().__enter__();"
            f"b.forward(b.embed(ids), torch.arange({max(lengths)})[None], None);"
            "print(json.dumps({'peak': peak_rss_bytes()}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
        derived.append(
            Result(
                f"peak_rss_prefill_{max(lengths)}",
                peak / 2**20,
                "MiB",
                note=f"{label} in fp32: load and one prefill, fresh process",
            )
        )
    return results + derived


def _seeded() -> Any:
    import torch

    return torch.Generator().manual_seed(0)


def _prefill_seconds(base: Any, ids: Any) -> float:
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        base.forward(base.embed(ids), torch.arange(ids.shape[1])[None], None)
        return time.perf_counter() - start


def _decode_seconds(base: Any, ids: Any, context: int, steps: int) -> float:
    """Seconds per one-token step with a KV cache holding ``context`` positions."""
    import torch

    with torch.inference_mode():
        positions = torch.arange(ids.shape[1])[None]
        cache = base.forward(base.embed(ids[:, :context]), positions[:, :context], None).cache
        start = time.perf_counter()
        for i in range(context, context + steps):
            base.forward(base.embed(ids[:, i : i + 1]), positions[:, i : i + 1], cache)
        return (time.perf_counter() - start) / steps


RELATIVITY_OFFSETS = (10**4, 10**6, 10**7, 10**8, 10**9)


def rope_relativity_errors(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """Mean KL when every position is shifted by a large constant, fp32 and bf16.

    Tiny random-init Llama (rope theta 1e4) and Qwen3 (theta 1e6, QK-norm) models; the same
    measurement as the portability suite's relativity check, pushed to 1e6 and 1e7.
    """
    import torch

    from megacontext.models import load_base
    from megacontext.models.portability import relativity_error
    from megacontext.models.tiny import make_tiny_model_dir

    results: list[Result] = []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        with tempfile.TemporaryDirectory(prefix="megacontext-bench-") as tmp:
            for family in ("llama", "qwen3"):
                path = make_tiny_model_dir(family, Path(tmp) / family, seed=0)
                for dtype in ("float32", "bfloat16"):
                    base = load_base(path, dtype=dtype)
                    for offset in RELATIVITY_OFFSETS:
                        progress(f"relativity {family} {dtype} offset {offset:.0e}")
                        for exact in (False, True):
                            phases = "f64phases" if exact else "hfphases"
                            results.append(
                                Result(
                                    f"rope_relativity_kl_{family}_{dtype}_{phases}_"
                                    f"offset_{offset:.0e}",
                                    relativity_error(base, offset, exact=exact),
                                    "nats",
                                    note=(
                                        "mean KL vs positions from 0; tiny random-init "
                                        "model; f64phases = adapter given mu (float64 phases)"
                                    ),
                                )
                            )
    finally:
        torch.set_num_threads(threads_before)
    return results


def train_throughput(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """From-scratch training speed of the default recipe's model, and its MFU."""
    from megacontext.train.metrics import measure_train_throughput

    progress("training throughput of the default recipe")
    m = measure_train_throughput(steps=2 if quick else 6)
    return [
        Result("train_tokens_per_s", m["tokens_per_s"], "tokens/s"),
        Result(
            "train_mfu",
            m["mfu"],
            "fraction",
            note=f"model FLOP/s over a measured matmul peak of {m['matmul_peak_flops']:.3g} FLOP/s",
        ),
    ]


def tiny_base_quality(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """Validation bits per byte (vs a unigram model) and passkey accuracy of the tiny base."""
    from megacontext.models.loading import TINY_BASE_DIR
    from megacontext.train.metrics import evaluate_base_dir

    if not (Path(TINY_BASE_DIR) / "config.json").is_file():
        progress("tiny base not built: skipping its quality")
        return []
    progress("tiny base: validation bpb and passkey")
    m = evaluate_base_dir(
        TINY_BASE_DIR, n_windows=16 if quick else 64, n_passkey=20 if quick else 100
    )
    return [
        Result(
            "default_val_bpb",
            m["val_bpb"],
            "bits/byte",
            baseline_name="unigram_bpb",
            baseline_value=m["unigram_bpb"],
        ),
        Result("default_passkey_acc", m["passkey_acc"], "fraction", note="goal >= 0.9"),
    ]


MEASUREMENTS: list[Callable[[bool, Progress, BenchOptions], list[Result]]] = [
    base_speed,
    adapter_forward_overhead,
    rope_relativity_errors,
    train_throughput,
    tiny_base_quality,
]


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    """Run every measurement of the suite in order."""
    results: list[Result] = []
    for measure in MEASUREMENTS:
        results.extend(measure(quick, progress, options))
    return results


__all__ = [
    "BENCH_MODEL_CONFIG",
    "BENCH_THREADS",
    "MEASUREMENTS",
    "adapter_forward_overhead",
    "base_speed",
    "rope_relativity_errors",
    "run",
]
