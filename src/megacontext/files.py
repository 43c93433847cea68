"""Small file helpers every layer shares: content hashes and atomic replacement.

This module imports nothing from the package, so every layer (``core`` included) can use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a whole file, read in chunks (memory stays flat for any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new file, never half.

    Writes a temporary file beside it, fsyncs it, and renames it over ``path``.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


__all__ = ["sha256_file", "write_text_atomic"]
