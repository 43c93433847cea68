"""Where MegaContext keeps things on a user's machine: the one place that defines each location.

* :func:`home` — the user's MegaContext state (the CLI's default session, ``default/``):
  ``$MEGACONTEXT_HOME``, else ``~/.megacontext``.
* :func:`model_cache` — real base models converted from GGUF into safetensors directories:
  ``$MEGACONTEXT_HOME/models`` when ``MEGACONTEXT_HOME`` is set, else under the user's cache
  directory (``$XDG_CACHE_HOME/megacontext/models``, by default ``~/.cache/megacontext/models``).
  A cache can be deleted at any time; the next load converts again.

This module imports nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MEGACONTEXT_HOME"


def home() -> Path:
    """The user's MegaContext directory (``$MEGACONTEXT_HOME`` or ``~/.megacontext``)."""
    configured = os.environ.get(HOME_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".megacontext"


def model_cache() -> Path:
    """Where converted base models are cached (see the module docstring)."""
    configured = os.environ.get(HOME_ENV, "").strip()
    if configured:
        return Path(configured).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "megacontext" / "models"


def default_tree() -> Path:
    """The session directory the CLI uses when no ``--tree`` is given."""
    return home() / "default"


__all__ = ["HOME_ENV", "default_tree", "home", "model_cache"]
