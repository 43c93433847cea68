"""``megacontext bench service``: what the HTTP service costs, and how it holds under load.

A real ``megacontext serve`` process on loopback (the suite starts it, with the base asked for)
over a tree of held-out text; requests with httpx.

* ``ask_p50_ms_service`` / ``ask_p99_ms_service``: ``POST /v1/trees/T/ask`` at W_max 512, one
  request at a time; baseline: the same question through the Session in this process (opened
  read-only and asked, as the service does for each request), measured in the same run.
  ``service_overhead_ratio_p50`` = service p50 / in-process p50 (goal ≤ 1.10).
* A bounded load test: ``clients`` threads for ``seconds`` each loop over a mix of ask (60 %),
  ingest of a small text (20 %, into one shared tree, so writers collide and retry on 409) and
  provenance (20 %). ``load_<route>_p50_ms`` / ``_p99_ms`` per route, ``load_requests``,
  ``load_errors`` (responses that are neither 2xx nor a retried 409/429) and
  ``load_lost_ingests`` (acknowledged ingests missing from the tree afterwards; must be 0).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from megacontext.bench import BenchOptions, Progress, Result, median

W_MAX = 512
QUESTIONS = (
    "What is the pass key?",
    "Who wrote the letter?",
    "Which function parses the arguments?",
    "Where does the story begin?",
)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    root: Path, base: str, *extra: str, w_max: int = W_MAX
) -> tuple[subprocess.Popen[bytes], str]:
    """A ``megacontext serve`` process on a free loopback port (``extra``: more of its flags),
    once it answers. Its log goes to ``ROOT/serve-PORT.log`` (a pipe nobody reads would fill up
    and stall the server)."""
    port = _port()
    command = [sys.executable, "-m", "megacontext.cli", "serve", "--root", str(root)]
    command += ["--port", str(port), "--base", base, "--w-max", str(w_max)]
    command += ["--rate-limit", "read=100000,write=100000,ask=100000", *extra]
    # No quality canary: it runs on the model lane at start, and the suite measures requests.
    command += ["--canary-interval", "0"]
    log = root / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"megacontext serve did not start:\n{tail}")
        time.sleep(0.3)


def create_key(root: Path) -> str:
    """A read-write key of tenant ``bench`` (through the CLI: the suite drives the service as a
    user does, and bench sits below the server package)."""
    command = [sys.executable, "-m", "megacontext.cli", "keys", "create", "--root", str(root)]
    done = subprocess.run(
        [*command, "--tenant", "bench", "--scopes", "read,write"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _retrying(http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    """One logical request: 409 (another writer) and 429 are retried after Retry-After."""
    while True:
        response = http.request(method, path, **kw)
        if response.status_code not in (409, 429):
            return response
        time.sleep(float(response.headers.get("retry-after", "1")) * random.random())


def ask_latency(
    url: str, key: str, session_dir: Path, base: str, repeats: int, progress: Progress
) -> list[Result]:
    from megacontext.models.bundle import load_bundle, resolve_focus
    from megacontext.models.loading import load_base
    from megacontext.runtime import SessionConfig, open_session

    headers = {"Authorization": f"Bearer {key}"}
    config = SessionConfig(W_max=W_MAX, trace=False)
    # Loaded once, as the service loads them once: the baseline is the per-request work.
    adapter = load_base(base)
    bundle = load_bundle(
        resolve_focus("default", adapter.fingerprints, adapter.source),
        fingerprints=adapter.fingerprints,
    )
    service_ms: list[float] = []
    local_ms: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        for r in range(-1, repeats):  # round -1 warms both paths up and is not counted
            progress(f"ask latency {r + 1}/{repeats}" if r >= 0 else "ask latency: warm-up")
            for question in QUESTIONS:  # alternate, so machine noise hits both alike
                body = {"question": question, "max_new_tokens": 16}
                start = time.perf_counter()
                http.post("/v1/trees/bench/ask", json=body).raise_for_status()
                service_ms.append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                with open_session(
                    session_dir, base=adapter, focus=bundle, config=config, readonly=True
                ) as mc:
                    mc.ask(question, max_new_tokens=16)
                local_ms.append(1000 * (time.perf_counter() - start))
            if r < 0:
                service_ms, local_ms = [], []
    ratio_note = "goal <= 1.10; baseline: open read-only + ask in this process"
    return [
        Result(
            "ask_p50_ms_service",
            median(service_ms),
            "ms",
            "in-process open + ask p50",
            median(local_ms),
            note=ratio_note,
        ),
        Result("ask_p99_ms_service", _percentile(service_ms, 99), "ms"),
        Result("ask_p50_ms_inprocess", median(local_ms), "ms"),
        Result(
            "service_overhead_ratio_p50",
            median(service_ms) / median(local_ms),
            "x",
            note=ratio_note,
        ),
    ]


def load_test(url: str, key: str, clients: int, seconds: float, progress: Progress) -> list[Result]:
    headers = {"Authorization": f"Bearer {key}"}
    latencies: dict[str, list[float]] = {"ask": [], "ingest": [], "provenance": []}
    acknowledged: list[tuple[int, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(number: int) -> None:
        rng = random.Random(number)
        with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
            i = 0
            while time.monotonic() < stop_at:
                roll, i = rng.random(), i + 1
                start = time.perf_counter()
                if roll < 0.6:
                    route, body = "ask", {"question": rng.choice(QUESTIONS), "max_new_tokens": 8}
                    response = _retrying(http, "POST", "/v1/trees/bench/ask", json=body)
                elif roll < 0.8:
                    route, text = "ingest", f"client {number} note {i}: the tide turned at {i}.\n"
                    response = _retrying(
                        http, "POST", "/v1/trees/bench/sources", json={"text": text}
                    )
                else:
                    route = "provenance"
                    response = _retrying(http, "GET", "/v1/trees/bench/provenance?start=0&stop=64")
                elapsed = 1000 * (time.perf_counter() - start)
                with lock:
                    latencies[route].append(elapsed)
                    if response.status_code >= 400:
                        errors.append(f"{route} {response.status_code}: {response.text[:200]}")
                    elif route == "ingest":
                        done = response.json()
                        acknowledged.append((done["start"], done["stop"]))

    progress(f"load test: {clients} clients for {seconds:.0f} s")
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        listed = http.get("/v1/trees/bench/sources").json()["sources"]
    present = {(s["start"], s["stop"]) for s in listed}
    lost = [span for span in acknowledged if span not in present]
    results = [
        Result("load_requests", sum(len(v) for v in latencies.values()), "count"),
        Result("load_errors", len(errors), "count", note="; ".join(errors[:3])),
        Result("load_lost_ingests", len(lost), "count", note="acknowledged, then missing"),
    ]
    for route, values in latencies.items():
        results.append(Result(f"load_{route}_p50_ms", _percentile(values, 50), "ms"))
        results.append(Result(f"load_{route}_p99_ms", _percentile(values, 99), "ms"))
    return results


def run(quick: bool, progress: Progress, options: BenchOptions) -> list[Result]:
    from megacontext.data import heldout_texts

    base = options.base_name()
    with tempfile.TemporaryDirectory(prefix="mc-bench-service-") as tmp:
        root = Path(tmp)
        key = create_key(root)
        process, url = start_server(root, base)
        try:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
                http.post("/v1/trees", json={"name": "bench"}).raise_for_status()
                progress("ingesting the history")
                for text in heldout_texts()[: 2 if quick else 6]:
                    http.post("/v1/trees/bench/sources", json={"text": text}).raise_for_status()
            session_dir = root / "tenants" / "bench" / "trees" / "bench"
            results = ask_latency(url, key, session_dir, base, 2 if quick else 8, progress)
            results += load_test(url, key, 8, 10.0 if quick else 60.0, progress)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return results


__all__ = ["ask_latency", "load_test", "run", "start_server"]
