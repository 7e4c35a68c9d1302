"""Whether a file holds the bytes recorded when it was written, checked once per process tree.

A store manifest records the size and XXH3-128 of each shard (:mod:`ecstream.store` describes
the fields), a finished run the same of each of its files (:func:`ecstream.runs.seal`).
:func:`check` hashes an open file and compares. A file that passed is remembered, keyed by its
identity (real path, device, inode, size, mtime_ns, ctime_ns) and the expected
checksum, so the other processes of the same job do not hash it again:

- in this process, in a memo that forked DataLoader workers inherit;
- in the rest of the process tree, as a stamp file ``cache_dir()/verified/SESSION/KEY`` in the
  user's cache. SESSION is ``$ECSTREAM_INTEGRITY_SESSION``, set at the first check of a process
  that has none and inherited by its children: spawned workers, and the DDP ranks Lightning
  starts by re-running the command. Every new command is a new tree and checks again, so damage
  at rest since the last run is found; it costs one read of the store per command. Set the
  variable yourself to share the checks of processes started separately (``torchrun``).

Any write changes a file's ctime (which nobody can set back) and a replacement its inode, so an
unchanged identity means unchanged bytes, except for a write within the same timestamp tick as
the check. As git does with "racily clean" entries, an identity whose mtime or ctime lies within
:data:`RACY_NS` of the check is not remembered: its next use hashes it again.

Nothing is ever written into a store: stores may be shared and read-only.

:class:`StoreError` and :class:`IntegrityError` are defined here, below every module that raises
them; :mod:`ecstream.store` re-exports both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import hashing
from .atomic import OutputBusyError, write_text
from .cache import cache_dir

#: How close to a check a file's last change may be for the check to be remembered.
RACY_NS = 2_000_000_000
SESSION_VARIABLE = "ECSTREAM_INTEGRITY_SESSION"
STORE_REMEDY = "rebuild the store or restore the file"
#: Stamps of sessions older than this are removed when a new session starts.
STAMP_MAX_AGE_S = 3 * 24 * 3600

_memo: set[str] = set()


class StoreError(Exception):
    """A store that cannot be built or opened, with the reason."""


class IntegrityError(StoreError):
    """Stored bytes or a manifest that are not what was written: damaged, truncated, missing,
    or pointing outside their store. The message is one line and names the file."""


@dataclass(frozen=True)
class Identity:
    """What changes whenever a file's bytes may have changed."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fh: BinaryIO) -> Identity:
        st = os.fstat(fh.fileno())
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Checked:
    """A file's identity when it was checked; ``settled``: that identity alone proves the bytes
    later (the file did not change within :data:`RACY_NS` of the check)."""

    identity: Identity
    settled: bool


def check(
    fh: BinaryIO,
    path: Path,
    expected: dict[str, Any] | None,
    *,
    force: bool = False,
    remedy: str = STORE_REMEDY,
) -> Checked:
    """Make sure the open file ``fh`` (found at ``path``) holds the bytes ``expected`` describes
    (``{"bytes": n, "xxh3_128": hex}``); :class:`IntegrityError` naming ``path`` otherwise.

    ``expected=None`` (a store from before checksums) checks nothing and only returns the
    identity. ``force`` hashes even a file checked before (``ecstream info --verify``).
    ``remedy``: what the error tells the user to do (a run's file is not rebuilt but retrained).
    """
    started = time.time_ns()
    before = Identity.of(fh)
    if expected is None:
        return Checked(before, _settled(before, started))
    if before.size != expected["bytes"]:
        raise IntegrityError(
            f"{path}: {before.size:,} bytes where {expected['bytes']:,} were recorded; "
            f"the file is truncated or damaged: {remedy}"
        )
    key = _key(path, before, expected)
    if not force and (key in _memo or _stamped(key)):
        _memo.add(key)
        return Checked(before, True)
    found = hashing.file_checksum(fh)
    if Identity.of(fh) != before:
        raise IntegrityError(f"{path}: the file changed while it was being checked")
    if found[hashing.CHECKSUM] != expected.get(hashing.CHECKSUM):
        raise IntegrityError(
            f"{path}: its checksum differs from the one recorded when it was written; the file "
            f"is damaged: {remedy}"
        )
    settled = _settled(before, started)
    if settled:
        _memo.add(key)
        _stamp(key, path, before, expected)
    return Checked(before, settled)


def _settled(identity: Identity, started: int) -> bool:
    return max(identity.mtime_ns, identity.ctime_ns) < started - RACY_NS


def _key(path: Path, identity: Identity, expected: dict[str, Any]) -> str:
    real = os.path.realpath(path)
    return hashing.text_digest(real, *asdict(identity).values(), expected[hashing.CHECKSUM])[:32]


# --------------------------------------------------------------------------- stamps


def session() -> str:
    """This process tree's session (see the module doc), started here if there is none."""
    if name := os.environ.get(SESSION_VARIABLE):
        # a folder of the cache: one plain name, never a path out of it (../)
        return (
            name
            if Path(name).name == name and name not in (".", "..")
            else hashing.text_digest(name)[:32]
        )
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[SESSION_VARIABLE] = name  # children inherit it
    _prune_sessions()
    return name


def _stamps() -> Path:
    return cache_dir() / "verified" / session()


def _stamped(key: str) -> bool:
    try:
        return (_stamps() / key).is_file()
    except OSError:
        return False


def _stamp(key: str, path: Path, identity: Identity, expected: dict[str, Any]) -> None:
    """Record a passed check for the process tree; best effort (a cache may be unwritable)."""
    record = {"path": os.path.realpath(path), **asdict(identity), "checksum": expected}
    # another process of the tree stamping the same file (OutputBusyError) is as good as us
    with contextlib.suppress(OSError, OutputBusyError):
        write_text(_stamps() / key, json.dumps(record) + "\n")


def _prune_sessions() -> None:
    """Remove the stamps of old sessions, so that the cache does not grow without bound."""
    root = cache_dir() / "verified"
    cutoff = time.time() - STAMP_MAX_AGE_S
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)


def forget() -> None:
    """Forget this process's memo (the stamps stay): the next use of a file hashes it again
    unless its stamp is found. For tests and for a long-lived process that wants a new check."""
    _memo.clear()
