"""The per-user cache directory: MMseqs2 search results and integrity stamps live under it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ECSTREAM_CACHE``, else ``$XDG_CACHE_HOME/ecstream`` (``~/.cache/ecstream``).

    Everything in it can be recomputed: it is safe to delete at any time.
    """
    if env := os.environ.get("ECSTREAM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecstream"
