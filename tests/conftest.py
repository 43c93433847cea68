"""Shared test configuration: deterministic seeds and thread counts, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Every test starts on one torch thread, whatever a test before it on this worker set: the
    thread count changes float sums, and byte-for-byte comparisons (a cluster's gists against a
    serial ingest's) must not depend on which tests ran earlier in the same process."""
    try:
        import torch
    except ImportError:  # core-only environments
        return
    torch.set_num_threads(1)


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


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty metadata database: a SQLite file, then the test PostgreSQL (emptied)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/meta.sqlite"
    import sqlalchemy as sa

    from megacontext.store.metadata import schema

    url = str(request.getfixturevalue("postgres_url"))
    engine = sa.create_engine(url)
    schema.drop_all(engine)
    engine.dispose()
    return url


# The tiny world most tests share: a random-init base of the tiny base's architecture, and a
# GistNet (K=4) and LensNet of small shapes, saved as a focus bundle. Built once per session.
@dataclass(frozen=True)
class TinyWorld:
    base_dir: Path
    base: Any  # BaseAdapter
    gistnet: Any  # GistNet
    lensnet: Any  # LensNet
    bundle_dir: Path
    bundle: Any  # Bundle (loaded from bundle_dir)
    K: int = 4


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    import torch

    from megacontext.models import load_base
    from megacontext.models.bundle import load_bundle, save_bundle
    from megacontext.models.gistnet import GistNet, GistNetConfig
    from megacontext.models.lensnet import LensNet, LensNetConfig
    from megacontext.models.tiny import make_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny-world")
    base_dir = make_tiny_model_dir("default", root / "base")
    base = load_base(base_dir)
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=base.d_model, K=4, width=32, n_heads=2, key_dim=8))
    lens = LensNet(LensNetConfig(d_model=base.d_model, width=32, n_heads=2, n_layers=1))
    bundle_dir = save_bundle(
        root / "focus", {"gistnet": gist, "lensnet": lens}, fingerprints=base.fingerprints
    )
    bundle = load_bundle(bundle_dir, fingerprints=base.fingerprints)
    return TinyWorld(
        base_dir, base, bundle.get("gistnet"), bundle.get("lensnet"), bundle_dir, bundle
    )


@pytest.fixture(scope="session")
def wide_bundle(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A focus bundle with 32-token blocks: the lexical index ranks blocks, and the tiny world's
    4-token blocks split every word across blocks."""
    import torch

    from megacontext.models.bundle import load_bundle, save_bundle
    from megacontext.models.gistnet import GistNet, GistNetConfig
    from megacontext.models.lensnet import LensNet, LensNetConfig

    base = tiny_world.base
    torch.manual_seed(0)
    gist = GistNet(GistNetConfig(d_model=base.d_model, K=32, width=32, n_heads=2, key_dim=8))
    lens = LensNet(LensNetConfig(d_model=base.d_model, width=32, n_heads=2, n_layers=1))
    path = save_bundle(
        tmp_path_factory.mktemp("wide") / "focus",
        {"gistnet": gist, "lensnet": lens},
        fingerprints=base.fingerprints,
    )
    return load_bundle(path, fingerprints=base.fingerprints)
