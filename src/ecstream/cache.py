"""Where ecstream keeps what it can recompute: the per-user cache (MMseqs2 search results,
integrity stamps) and scratch directories of running tasks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """``$ECSTREAM_CACHE``, else ``$XDG_CACHE_HOME/ecstream`` (``~/.cache/ecstream``).

    Everything in it can be recomputed: it is safe to delete at any time.
    """
    if env := os.environ.get("ECSTREAM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecstream"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A private scratch directory for one task (an MMseqs2 search), removed afterwards.

    It lives in the system's temporary directory under ``ecstream/``, named with the pid of its
    process; on entry, the directories of processes that died before removing theirs (kill -9)
    are removed.
    """
    base = Path(tempfile.gettempdir()) / "ecstream"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.rsplit("-", 2)[-2] if old.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
