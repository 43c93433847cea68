"""Shared fixtures: tiny random-init model directories of every supported family."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from megacontext.models import BaseAdapter, load_base
from megacontext.models.loading import DEFAULT_BASE_ENV
from megacontext.models.tiny import TINY_FAMILIES, make_tiny_model_dir

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved HF model directory per tiny family, built once per test session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: make_tiny_model_dir(family, root / family, seed=0) for family in TINY_FAMILIES}


@pytest.fixture(scope="session")
def load_tiny(tiny_dirs: dict[str, Path]) -> Callable[..., BaseAdapter]:
    """Load a fresh adapter over a tiny family's directory in a given dtype."""

    def load(family: str, dtype: str = "float32") -> BaseAdapter:
        torch.manual_seed(0)
        if family != "default":
            return load_base(tiny_dirs[family], dtype=dtype)
        # "default" goes through the name, pointed at a tiny model of the default's architecture.
        previous = os.environ.get(DEFAULT_BASE_ENV)
        os.environ[DEFAULT_BASE_ENV] = str(tiny_dirs["default"])
        try:
            return load_base("default", dtype=dtype)
        finally:
            if previous is None:
                del os.environ[DEFAULT_BASE_ENV]
            else:
                os.environ[DEFAULT_BASE_ENV] = previous

    return load
