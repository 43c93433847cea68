"""Training checkpoints: one file, written atomically, so a run killed at any moment resumes
from its last complete checkpoint (base models, GistNet)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_payload(path: Path) -> dict[str, Any]:
    """What :func:`save_atomically` wrote (our own files: optimizer state needs full pickle)."""
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return payload
