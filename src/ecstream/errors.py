"""How a failure is told to a person: one line naming what went wrong and where.

The CLI prints :func:`describe` of any exception on one line; ``--debug`` (or
``ECSTREAM_DEBUG=1``) shows the traceback instead. Errors that ecstream raises on purpose carry
their whole message; system errors are named by what they mean for the user (a full disk, a
read-only directory) with the file concerned.
"""

from __future__ import annotations

import errno
import os

from .alphabet import SequenceError
from .atomic import JSONFileError, OutputBusyError, OutputIsInputError
from .labels import ECError
from .mmseqs.binary import MMseqsError, MMseqsNotFound
from .runs import RunError
from .sources import InputError
from .store import StoreError

DEBUG_VAR = "ECSTREAM_DEBUG"

_SYSTEM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit of this system or process was reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error (the disk or network file system failed)",
}


def debugging(argv: list[str]) -> bool:
    """Whether the user asked for tracebacks (``--debug`` anywhere, or ``ECSTREAM_DEBUG``)."""
    return "--debug" in argv or os.environ.get(DEBUG_VAR, "").lower() not in ("", "0", "false")


#: Errors that ecstream raises on purpose, with a message meant for people.
EXPECTED: tuple[type[BaseException], ...] = (
    InputError, StoreError, RunError, MMseqsNotFound, MMseqsError, OutputBusyError,
    OutputIsInputError, JSONFileError, SequenceError, ECError, ValueError, OSError,
)  # fmt: skip


def describe(exc: BaseException) -> str:
    """One line for a person: what failed, and the file it concerns where there is one, then
    any notes added on the way up (how to continue: ``train``'s resume command)."""
    notes = [str(n).strip() for n in getattr(exc, "__notes__", ()) if str(n).strip()]
    return "; ".join([_describe(exc), *notes])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in _SYSTEM:
        where = exc.filename or ""
        if exc.filename2:
            where += f" → {exc.filename2}"
        return f"{_SYSTEM[exc.errno]}: {where}" if where else _SYSTEM[exc.errno]
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:  # re-raised from a DataLoader worker: its last line
        last = text.splitlines()[-1]
        for name in (f"{type(exc).__module__}.{type(exc).__qualname__}", type(exc).__name__):
            last = last.removeprefix(f"{name}: ")
        text = last
    if isinstance(exc, EXPECTED):
        return text or type(exc).__name__
    return (
        f"{type(exc).__name__}: {text} (unexpected: please report it; --debug shows where "
        "it happened)"
    )
