"""Atomic outputs: every file and directory ecstream writes appears complete or not at all.

This is the one implementation. An output is written under a unique temporary name beside its
final path (same directory, hence same file system: the rename is atomic) and renamed into place
only when it is complete; on any failure the temporary is removed. Temporary names start with
``.`` and carry the writer's pid and a random tag, so two writers never share one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"  # every temporary name contains it: ".NAME.tmp-PID-TAG"


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh, unique hidden name beside ``path`` for writing it."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file at; it replaces ``path`` when the block succeeds.

    For writers that take a path (``torch.save``, ``savefig``, ``np.savez``). The parent
    directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_file():
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` for writing whose file appears at ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """JSON, indented for people, written atomically."""
    write_text(path, json.dumps(obj, indent=1) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``path`` when the block succeeds.

    ``path`` must be absent or an empty directory when the block ends, unless ``replace``: then
    an existing directory is swapped for the new one (:func:`swap_dir`); whether it may be
    replaced is the caller's decision.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if replace:
            swap_dir(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def swap_dir(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` at ``path``, moving an existing one aside first."""
    if not path.exists():
        os.rename(new, path)
        return
    old = temporary_sibling(path)
    os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)
