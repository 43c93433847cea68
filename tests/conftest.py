"""Shared test configuration: deterministic seeds and thread counts, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

settings.register_profile(
    "megacontext",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("megacontext")


def pytest_configure(config: object) -> None:
    try:
        import torch
    except ImportError:  # core-only environments
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)


# A real PostgreSQL server for the metadata and lexical-index tests (session-wide).
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
ENV_URL = "MEGACONTEXT_TEST_POSTGRES_URL"


def _server_binaries() -> bool:
    return bool(
        shutil.which("initdb")
        or shutil.which("pg_config")
        or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """$MEGACONTEXT_TEST_POSTGRES_URL, else a cluster started by scripts/postgres.sh."""
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    in_ci = os.environ.get("CI", "").lower() == "true"
    if not _server_binaries():
        message = "no PostgreSQL server binaries (install the Debian package postgresql)"
        if in_ci:
            pytest.fail(f"{message}; CI must run the PostgreSQL tests")
        pytest.skip(message)
    done = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start failed:\n{done.stderr}")
    values = dict(line.split("=", 1) for line in done.stdout.split())
    try:
        yield values[ENV_URL]
    finally:
        subprocess.run([str(SCRIPT), "stop", values["MEGACONTEXT_PG_DIR"]], timeout=60, check=False)
