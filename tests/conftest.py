"""Shared test configuration: deterministic seeds and thread counts, hypothesis profiles."""

from __future__ import annotations

import os

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
