"""Outputs: every file and directory ecstream writes appears complete or not at all.

This is the one implementation, and every writer goes through it:

- An output is written under a unique temporary name beside its final path (same directory,
  hence same file system, so the final rename is atomic) and renamed into place only when it is
  complete; on any failure the temporary is removed. Temporary names are hidden and carry the
  writer's pid and a random tag (``.NAME.tmp-PID-TAG``), so two writers never share one.
- While it is written, an output is **claimed** with an exclusive lock (``flock`` on a hidden
  ``.NAME.lock`` beside it). A second writer to the same path gets :class:`OutputBusyError`
  at once instead of racing the first. The kernel drops the lock when its process dies, even
  by ``kill -9``, and the next writer then removes the temporaries the dead one left behind.
- A directory that replaces another (``build --force``) is swapped in with one atomic
  ``renameat2(RENAME_EXCHANGE)`` where the file system has it, so the path always holds a
  complete directory; elsewhere the old one is moved aside first and :func:`recover` puts it
  back if a crash came between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"  # every temporary name contains it: ".NAME.tmp-PID-TAG"
ASIDE_MARK = ".replaced-"  # a replaced directory waiting to be removed: ".NAME.replaced-PID-TAG"
LEGACY_MARKS = (".building-", ".old-")  # temporaries of ecstream 0.1.0, cleaned the same way


class OutputBusyError(RuntimeError):
    """Another process is writing the same output right now (``holder``: its pid, as text)."""

    def __init__(self, message: str, holder: str = "?"):
        super().__init__(message)
        self.holder = holder


class OutputIsInputError(ValueError):
    """An output path that would replace one of the command's inputs."""


class OutputRefusedError(ValueError):
    """An output path that must not be written: a symbolic link, a device, a pipe or a socket,
    or a folder that holds more than the output it would be replaced by."""


class JSONFileError(ValueError):
    """A JSON file that cannot be read; the message names the file and the position."""


def _sibling(path: Path, mark: str) -> Path:
    return path.with_name(f".{path.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh, unique hidden name beside ``path`` for writing it."""
    return _sibling(Path(path), TEMP_MARK)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _leftovers(path: Path) -> list[Path]:
    """Temporaries and set-aside copies that writers of ``path`` may have left behind."""
    marks = (TEMP_MARK, ASIDE_MARK, *LEGACY_MARKS)
    prefix = f".{path.name}"
    if not path.parent.is_dir():
        return []
    return [
        p
        for p in path.parent.iterdir()
        if p.name.startswith(prefix) and any(p.name[len(prefix) :].startswith(m) for m in marks)
    ]


# --------------------------------------------------------------------------- claims (locks)


@contextmanager
def claim(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive claim on writing ``path``; raise :class:`OutputBusyError` if taken.

    On entry, a crash's leftovers are dealt with: an interrupted directory swap is recovered
    and stale temporaries of ``path`` are removed (nobody else can be writing them now).
    """
    path = Path(path)
    _refuse_special(path)  # a link is checked where a rename would replace it
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # it names the lock: say what it was for
            error.add_note(f"writing {path} needs a writable {path.parent}")
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"{path} is being written by another ecstream process (pid {holder}); "
                "wait for it to finish or choose another output",
                holder,
            ) from None
        try:  # the previous holder may have removed the lock file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:  # a full disk: name the lock, not (later) the output or nothing
            error.filename = error.filename or str(lock)
            raise
        recover(path)
        for stale in _leftovers(path):
            _remove(stale)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def check_plain_output(path: Path) -> None:
    """Refuse an output to be renamed into place that is a link, a device, a pipe or a socket:
    the rename would replace that entry itself with a plain file or folder (as root, even
    ``/dev/null``), and whatever it leads to would never see the output."""
    if path.is_symlink():
        raise OutputRefusedError(
            f"{path} is a symbolic link; an output is written under a new name and renamed "
            "into place, which would replace the link itself: give the path it points to"
        )
    _refuse_special(path)


def _refuse_special(path: Path) -> None:
    """Refuse a device, a pipe or a socket (also behind a link): nothing ecstream writes is
    streamed into one but stdout (``--out -``)."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OutputRefusedError(
            f"{path} is a device, pipe or socket, not a file; give a file path "
            "(predict writes to standard output with --out -)"
        )


def check_not_input(out: str | os.PathLike[str], inputs: Iterable[Any]) -> None:
    """Refuse an output that is one of the inputs, or a directory that holds one (outputs
    inside a run or a store: ``runs.check_outside_runs_and_stores``)."""
    out = Path(out).resolve()
    for source in inputs:
        if not isinstance(source, str | os.PathLike) or str(source) == "-":
            continue
        src = Path(source).resolve()
        if src == out or out in src.parents:
            raise OutputIsInputError(
                f"the output {out} would replace the input {source}; choose another output"
            )


def enclosing(path: str | os.PathLike[str], marker: str, fmt: str) -> Path | None:
    """The nearest folder above ``path`` holding a JSON file ``marker`` whose ``format`` is
    ``fmt`` (a store's manifest, a run's config), if any; other tools' files of that name are
    passed over."""
    for parent in Path(path).resolve().parents:
        if (parent / marker).is_file():
            with contextlib.suppress(JSONFileError, AttributeError, OSError):
                if read_json(parent / marker).get("format") == fmt:
                    return parent
    return None


# --------------------------------------------------------------------------- files


def _name_output(error: BaseException, tmp: Path, path: Path) -> None:
    """Let a system error (a full disk…) name the output, not its temporary or nothing."""
    # an OSError without errno (pyarrow's, say) prints only its message: a filename set on it
    # would replace that message with "[Errno None] None: …"
    if (
        isinstance(error, OSError)
        and error.errno is not None
        and (not error.filename or str(error.filename).startswith(str(tmp)))
    ):
        error.filename = str(path)
        if error.filename2 == error.filename:  # a rename onto it: "is a directory: OUT"
            error.filename2 = None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file at; it replaces ``path`` when the block succeeds.

    For writers that take a path (``torch.save``, ``savefig``). ``path`` is claimed meanwhile.
    """
    path = Path(path)
    check_plain_output(path)
    with claim(path):
        tmp = temporary_sibling(path)
        try:
            yield tmp
            if tmp.is_file():
                _fsync(tmp)
            os.replace(tmp, path)
        except BaseException as error:
            _remove(tmp)
            _name_output(error, tmp, path)
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


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's content; :class:`JSONFileError` names the file and where it is broken."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise JSONFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise JSONFileError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None


# --------------------------------------------------------------------------- directories


@contextmanager
def atomic_dir(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``path`` when the block succeeds.

    ``path`` must be absent or an empty directory when the block ends, unless ``replace``: then
    an existing directory is swapped for the new one (:func:`swap_dir`); whether it may be
    replaced is the caller's decision. ``path`` is claimed meanwhile.
    """
    with claim(path), claimed_dir(path, replace) as tmp:
        yield tmp


@contextmanager
def claimed_dir(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """:func:`atomic_dir` for a caller that holds the claim on ``path`` already (one that
    claims its output before long work, so that a second writer fails before it starts)."""
    path = Path(path)
    check_plain_output(path)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
        if replace:
            swap_dir(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException as error:
        _remove(tmp)
        _name_output(error, tmp, path)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_dir(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` at ``path``, replacing any directory there."""
    if not path.exists():
        os.rename(new, path)
        return
    if _exchange(new, path):  # ``new`` now holds the old directory
        shutil.rmtree(new, ignore_errors=True)
        return
    aside = _sibling(path, ASIDE_MARK)
    os.rename(path, aside)
    os.rename(new, path)  # a crash right before this line is undone by recover()
    shutil.rmtree(aside, ignore_errors=True)


def recover(path: str | os.PathLike[str]) -> None:
    """Undo a directory swap that a crash interrupted: put the set-aside directory back."""
    path = Path(path)
    if path.exists():
        return
    aside = sorted(
        (p for p in _leftovers(path) if ASIDE_MARK in p.name and p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    if aside:
        os.rename(aside[-1], path)
