"""Where ecstream keeps what it can recompute: the per-user cache (MMseqs2 search results and
clusters, integrity stamps), how an entry of arrays is kept and checked, and scratch
directories of running tasks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .atomic import OutputBusyError, atomic_open
from .notices import notify


def cache_dir() -> Path:
    """``$ECSTREAM_CACHE``, else ``$XDG_CACHE_HOME/ecstream`` (``~/.cache/ecstream``).

    Everything in it can be recomputed: it is safe to delete at any time.
    """
    if env := os.environ.get("ECSTREAM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecstream"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A private scratch directory for one task (an MMseqs2 search or clustering), removed
    afterwards.

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


class CacheWarning(UserWarning):
    """A result that could not be kept in the cache: the next run of its task computes it again."""


def cached_arrays(
    path: Path,
    key: str,
    names: tuple[str, ...],
    rows: int,
    valid: Callable[[dict[str, np.ndarray]], bool] = lambda arrays: True,
) -> dict[str, np.ndarray] | None:
    """A cache entry's arrays if it is whole and this task's (its key, exactly ``names``, one
    row per item, ``valid``); ``None`` otherwise, and the task runs again. A damaged entry is
    caught by the zip's CRC-32s, a foreign one by its key."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in saved.files}
        whole = str(arrays.pop("key")) == key and set(arrays) == set(names)
        whole = whole and all(a.shape == (rows,) for a in arrays.values()) and valid(arrays)
    except Exception:  # any damage: BadZipFile, EOFError, zlib.error, KeyError, ValueError…
        whole = False
    return arrays if whole else None


def keep_arrays(path: Path, key: str, arrays: dict[str, np.ndarray], what: str) -> None:
    """Keep a task's result (``what``: its kind, for the warning); best effort: a cache that
    cannot be written (a full disk, a path that is not a folder) costs a warning and the next
    run of the task, never this command."""
    try:
        # another process writing the same entry writes the same bytes: let it
        with contextlib.suppress(OutputBusyError), atomic_open(path, "wb") as fh:
            np.savez(fh, key=np.array(key), **arrays)
    except (OSError, ValueError) as error:  # ValueError: a link or a pipe in its place
        why = str(error)
        if isinstance(error, OSError) and error.strerror:
            why = error.strerror + (f": {error.filename}" if error.filename else "")
        # once per process for each kind of entry (each has a folder of its own)
        message = f"{what} cannot be cached ({why}); later ones run again"
        notify(path.parent, message, CacheWarning, once=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
