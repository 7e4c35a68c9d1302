"""Stores and inputs on object storage: filesystems by URI, and the local cache of shards.

A location with a scheme (``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``, any fsspec
protocol) is remote. ``s3://`` gets pyarrow's S3 filesystem, configured here (endpoint from the
URI's ``?endpoint_override=`` or ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, credentials
the usual AWS way); other schemes get pyarrow's filesystem for them, else fsspec's through
pyarrow's ``FSSpecHandler``.

Shards are read through a **bounded local cache** of whole shards, ``cache_dir()/shards``, named
by their XXH3-128 checksum (so stores share entries and a name says what its bytes must be):

- a shard is hashed while it arrives and renamed into the cache (:mod:`ecstream.atomic`) only if
  its size and checksum are the manifest's; a process that finds another one fetching the same
  shard waits for it;
- each read has a timeout and a failed fetch (an error, a timeout, wrong bytes) is retried with
  growing pauses until :attr:`RemoteSettings.deadline` seconds have passed; then
  :class:`RemoteError` names the shard (``…/train/shard-00003.arrow: failed after …``).
  Nothing is ever served from bytes that did not pass;
- a split's shards are fetched ahead of the stream, in plan order, by a few threads
  (:meth:`RemoteSplit.prefetch`), at most ``cache_bytes`` ahead;
- the cache holds at most ``cache_bytes`` (``$ECSTREAM_CACHE_BYTES``): room is made (least
  recently used entries first) before an entry goes in. Processes that add at the same moment
  can overshoot by an entry each, and a shard a process has mapped keeps its disk space until
  unmapped.

Object stores have no rename and no locks: a remote build (:func:`publish`) removes an old
manifest first, writes its shards, and writes the manifest last, so the manifest is the commit
and a store is complete or absent; two builds to one prefix at once are not kept apart (a reader
then gets a checksum error, never other data).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import xxhash

from .atomic import OutputBusyError, atomic_path, write_bytes
from .cache import cache_dir
from .hashing import CHECKSUM
from .integrity import IntegrityError, StoreError
from .shards import SHARD_NAME

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BLOCK = 8 << 20  # bytes per read of a download, and per ranged read of a remote input
_ADDING = threading.Lock()  # one entry enters the cache at a time in a process


class RemoteError(StoreError):
    """Object storage that could not be read or written in time; the message names the object."""


def is_remote(location: Any) -> bool:
    """Whether ``location`` is a URI with a scheme (``s3://…``), not a local path."""
    return isinstance(location, str | URI) and bool(_SCHEME.match(str(location)))


class URI(str):
    """A remote location, spelled as its URI, with the few ``Path`` manners callers use."""

    def __truediv__(self, name: str) -> URI:
        base, _, query = self.partition("?")  # options (?endpoint_override=…) stay at the end
        return URI(f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else ""))

    def resolve(self) -> URI:
        return self

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RemoteSettings:
    """How remote reads behave; every field can be set in the environment."""

    timeout: float = 30.0  # seconds for one request to connect or answer
    deadline: float = 120.0  # seconds of retries before a fetch fails
    pause: float = 0.2  # first pause between retries; doubles up to 5 s
    cache_bytes: int = 20 << 30  # the bound of the local shard cache
    prefetch_threads: int = 4

    @classmethod
    def from_env(cls) -> RemoteSettings:
        env = os.environ

        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name, default))
            except ValueError:
                raise StoreError(f"${name} must be a number, got {env[name]!r}") from None

        return cls(
            timeout=number("ECSTREAM_REMOTE_TIMEOUT", cls.timeout),
            deadline=number("ECSTREAM_REMOTE_DEADLINE", cls.deadline),
            pause=number("ECSTREAM_REMOTE_PAUSE", cls.pause),
            cache_bytes=int(number("ECSTREAM_CACHE_BYTES", cls.cache_bytes)),
            prefetch_threads=int(number("ECSTREAM_PREFETCH_THREADS", cls.prefetch_threads)),
        )


# --------------------------------------------------------------------------- filesystems


def filesystem(uri: str, settings: RemoteSettings | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem for ``uri`` and the path inside it (``bucket/prefix``)."""
    from pyarrow import fs

    settings = settings or RemoteSettings.from_env()
    parts = urlsplit(str(uri))
    if parts.scheme == "s3":
        options = dict(parse_qsl(parts.query))
        endpoint = options.get("endpoint_override") or os.environ.get(
            "AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL")
        )
        scheme = options.get("scheme")
        if endpoint and "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        s3 = fs.S3FileSystem(
            region=options.get("region", os.environ.get("AWS_REGION", "us-east-1")),
            endpoint_override=endpoint,
            scheme=scheme or "https",
            connect_timeout=settings.timeout,
            request_timeout=settings.timeout,
            # one attempt per call: the retries, with their deadline, are ours
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
        )
        return s3, f"{parts.netloc}{parts.path}".rstrip("/")
    try:
        return fs.FileSystem.from_uri(str(uri))
    except (ValueError, NotImplementedError):  # a scheme pyarrow does not know: fsspec may
        try:
            import fsspec
        except ImportError:
            raise StoreError(f"{uri}: no filesystem for {parts.scheme}:// here") from None
        try:
            handler, path = fsspec.core.url_to_fs(str(uri))
        except (ImportError, ValueError) as error:
            raise StoreError(f"{uri}: no filesystem for {parts.scheme}:// ({error})") from None
        return fs.PyFileSystem(fs.FSSpecHandler(handler)), path.rstrip("/")


def _retrying(what: str, attempt, settings: RemoteSettings):
    """``attempt()`` until it succeeds or the deadline passes; then one line naming ``what``."""
    started, pause, tries = time.monotonic(), settings.pause, 0
    while True:
        tries += 1
        try:
            return attempt()
        except (OSError, IntegrityError) as error:  # pyarrow's network errors are OSErrors
            last = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            if isinstance(error, FileNotFoundError):
                raise RemoteError(f"{what}: not found") from None
        waited = time.monotonic() - started
        if waited + pause > settings.deadline:
            raise RemoteError(
                f"{what}: failed after {tries} attempts over {waited:.0f} s ({last}); "
                "check the network and the object store, then run it again"
            )
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def read_bytes(uri: str, settings: RemoteSettings | None = None) -> bytes:
    """A small remote object (a manifest) whole, with retries."""
    settings = settings or RemoteSettings.from_env()
    handler, path = filesystem(uri, settings)

    def attempt() -> bytes:
        with handler.open_input_stream(path) as stream:
            return stream.read()

    return _retrying(str(uri), attempt, settings)


def exists(uri: str) -> bool:
    from pyarrow import fs

    handler, path = filesystem(uri)
    return handler.get_file_info(path).type == fs.FileType.File


class _RemoteFile(io.RawIOBase):
    """A remote object as a seekable raw file whose every read is a ranged read, tried again
    (on a fresh handle) until the deadline: an outage in the middle of an input is ridden out,
    or fails as one line naming the object, never as a short read taken for the end.

    Each ranged read is a request of its own, so an object replaced in the middle of a read
    would be read on from its new bytes: after every read (and after a failed or short one,
    before it is tried again) the object's size and modification time are checked against
    those it had when opened, one metadata request each (S3 reads are consistent, so bytes
    read before an unchanged check are the opened object's). pyarrow does not give the ETag:
    a rewrite of the same size within the same second (S3 keeps the time in seconds), or on a
    filesystem that reports neither, goes unseen."""

    def __init__(self, uri: str, handler: Any, path: str, settings: RemoteSettings):
        self._uri, self._settings = uri, settings
        self._open = lambda: handler.open_input_file(path)
        self._version = lambda: _object_version(handler.get_file_info(path))
        self._opened = _retrying(uri, self._version, settings)
        self._file = _retrying(uri, self._open, settings)
        self._size = self._file.size()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        if whence not in bases or bases[whence] + offset < 0:
            raise ValueError(f"{self._uri}: cannot seek to {offset} from {whence}")
        self._pos = bases[whence] + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(self._size - self._pos, 0))
        if want == 0:
            return 0

        def attempt() -> Any:
            if self._file is None:  # the last try broke the connection: start afresh
                self._file = self._open()
            try:
                data = self._file.read_at(want, self._pos)
                if len(data) != want:
                    raise OSError(f"{len(data)} of {want} bytes arrived")
            except OSError:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None
                self._unchanged()  # a shorter or removed object is not an outage to wait out
                raise
            self._unchanged()
            return data

        data = _retrying(self._uri, attempt, self._settings)
        buffer[:want] = memoryview(data)
        self._pos += want
        return want

    def _unchanged(self) -> None:
        """Raise :class:`RemoteError` if the object is not the one opened (an ``OSError`` of
        the check itself is an outage, tried again by the caller)."""
        try:
            now = self._version()
        except FileNotFoundError:
            raise RemoteError(f"{self._uri}: removed while it was being read") from None
        if now != self._opened:
            raise RemoteError(
                f"{self._uri}: the object changed while it was being read (size, modified: "
                f"{self._opened} then {now}); nothing read after the change was used: run it "
                "again"
            )

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        super().close()


def _object_version(info: Any) -> tuple[int, str]:
    """What tells one version of an object from the next: its size and modification time."""
    from pyarrow import fs

    if info.type != fs.FileType.File:
        raise FileNotFoundError(info.path)  # gone (or replaced by a prefix) since it was opened
    return info.size, str(info.mtime)


def input_files(
    uri: str, wanted: Callable[[Sequence[str]], bool]
) -> list[tuple[str, Callable[[], Any]]]:
    """A remote input's files: the object itself, or the objects under the prefix that
    ``wanted`` takes (given their path's parts below the prefix), sorted. Each as its URI and
    an opener of a seekable file (Parquet reads its footer first)."""
    from pyarrow import fs

    settings = RemoteSettings.from_env()
    handler, path = filesystem(uri, settings)
    info = _retrying(str(uri), lambda: handler.get_file_info(path), settings)
    if info.type == fs.FileType.File:
        paths = [path]
    elif info.type == fs.FileType.Directory:
        listing = _retrying(
            str(uri), lambda: handler.get_file_info(fs.FileSelector(path, recursive=True)), settings
        )
        paths = sorted(
            f.path for f in listing
            if f.type == fs.FileType.File and wanted(f.path[len(path) :].strip("/").split("/"))
        )  # fmt: skip
    else:
        raise RemoteError(f"{uri}: not found")
    scheme = urlsplit(str(uri)).scheme

    def opener(p: str) -> Callable[[], Any]:
        return lambda: _RemoteFile(f"{scheme}://{p}", handler, p, settings)

    return [(f"{scheme}://{p}", opener(p)) for p in paths]


def is_prefix(uri: str) -> bool:
    """Whether a remote URI names a directory (a prefix with objects under it), not an object."""
    from pyarrow import fs

    settings = RemoteSettings.from_env()
    handler, path = filesystem(uri, settings)
    info = _retrying(str(uri), lambda: handler.get_file_info(path), settings)
    return info.type == fs.FileType.Directory


def open_input(uri: str) -> io.BufferedReader:
    """A remote file opened for sequential reads (``predict`` of a remote text input)."""
    settings = RemoteSettings.from_env()
    handler, path = filesystem(uri, settings)
    # ranged reads of 8 MiB: one request each, however small the reads of the text reader
    return io.BufferedReader(_RemoteFile(str(uri), handler, path, settings), _BLOCK)


# --------------------------------------------------------------------------- the shard cache


def _shard_cache() -> Path:
    return cache_dir() / "shards"


def _download(handler: Any, path: str, dest: Path, expected: dict[str, Any]) -> None:
    """One attempt: stream ``path`` into ``dest``, hashing as it arrives; wrong bytes raise."""
    digest, size = xxhash.xxh3_128(), 0
    with handler.open_input_stream(path) as stream, open(dest, "wb") as out:
        while block := stream.read(_BLOCK):
            digest.update(block)
            size += len(block)
            out.write(block)
    if size != expected["bytes"] or digest.hexdigest() != expected[CHECKSUM]:
        raise IntegrityError(
            f"arrived with {size:,} bytes and a checksum other than its manifest's "
            f"({expected['bytes']:,} bytes)"
        )


def fetch_shard(uri: str, expected: dict[str, Any], settings: RemoteSettings) -> Path:
    """The local cache file of a remote shard, fetched and checked if it is not there yet."""
    local = _shard_cache() / f"{expected[CHECKSUM]}.arrow"
    started = time.monotonic()
    while True:
        if local.is_file() and local.stat().st_size == expected["bytes"]:
            _used(local)
            return local
        locked = False
        try:
            with atomic_path(local) as tmp:
                handler, path = filesystem(uri, settings)
                _retrying(uri, partial(_download, handler, path, tmp, expected), settings)
                # room is made before the entry goes in, both under one lock: the threads of a
                # process never hold more than the bound between them
                _ADDING.acquire()
                locked = True
                _evict(settings.cache_bytes - expected["bytes"], keep=local)
            _used(local)
            return local
        except OutputBusyError:  # another process fetches it now: wait for its result
            if time.monotonic() - started > settings.deadline + settings.timeout:
                raise RemoteError(f"{uri}: another process has been fetching it too long") from None
            time.sleep(0.05)
        finally:
            if locked:
                _ADDING.release()


def _marker(local: Path) -> Path:
    return local.with_name(f"{local.name}.used")


def _used(local: Path) -> None:
    """Note that an entry was just used, on a marker beside it: touching the entry itself would
    change its identity, and another process checking it would see a file that changed."""
    marker = _marker(local)
    with contextlib.suppress(OSError, OutputBusyError):
        if not marker.exists():
            write_bytes(marker, b"")
        os.utime(marker)


def _evict(limit: int, keep: Path) -> None:
    """Remove the least recently used cache entries until the cache holds ``limit`` bytes."""
    entries = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(_shard_cache()):
            if entry.name.endswith(".arrow") and entry.is_file():
                path = Path(entry.path)
                try:
                    used = _marker(path).stat().st_mtime
                except OSError:
                    used = entry.stat().st_mtime
                entries.append((used, entry.stat().st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()  # a process that mapped it keeps reading its bytes
                _marker(path).unlink()
            total -= size


@dataclass
class RemoteSplit:
    """Where one split's shards come from (a :class:`ecstream.shards.ShardSource`): their URIs
    and checksums, the cache, and threads that fetch ahead of the stream."""

    uris: Sequence[str]
    checksums: Sequence[dict[str, Any]]
    settings: RemoteSettings = field(default_factory=RemoteSettings.from_env)
    _pending: dict[int, Future] = field(default_factory=dict, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def budget(self) -> int:
        return self.settings.cache_bytes

    def __getstate__(self) -> dict:  # a worker process starts threads of its own
        return {"uris": self.uris, "checksums": self.checksums, "settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def fetch(self, k: int) -> Path:
        with self._lock:
            pending = self._pending.pop(k, None)
        try:
            if pending is not None:
                return pending.result()
            return fetch_shard(self.uris[k], self.checksums[k], self.settings)
        except Exception:
            # the command stops here: fetches still queued would each retry until their own
            # deadline before the process could exit
            self.cancel()
            raise

    def discard(self, path: Path, entry: os.stat_result) -> None:
        """Remove a cache entry that failed its check, so that the next fetch downloads it
        anew: unless another process has replaced it since (``entry``: the file that failed)."""
        with contextlib.suppress(OSError):
            now = os.stat(path)
            same = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
            if all(getattr(now, a) == getattr(entry, a) for a in same):
                path.unlink()  # a process that mapped it keeps its bytes
                _marker(path).unlink()

    def cancel(self) -> None:
        """Drop the fetches not yet started (those under way end by their deadline)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            self._pending.clear()

    def prefetch(self, shards: Sequence[int]) -> None:
        """Fetch these shards in this order in the background, no more than the cache holds."""
        if self.settings.prefetch_threads < 1:
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.settings.prefetch_threads, thread_name_prefix="ecstream-prefetch"
                )
            ahead = sum(self.checksums[k]["bytes"] for k in self._pending)
            for k in shards:
                if k in self._pending:
                    continue
                ahead += self.checksums[k]["bytes"]
                if ahead > self.budget:
                    break
                self._pending[k] = self._pool.submit(
                    fetch_shard, self.uris[k], self.checksums[k], self.settings
                )


# --------------------------------------------------------------------------- remote builds


_STORE_OBJECT = re.compile(rf"^(manifest\.json|(train|val|test)/{SHARD_NAME.pattern})$")


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A local temporary directory to build a remote store in, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="ecstream-build-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_destination(uri: str, manifest: str, force: bool) -> set[str]:
    """The objects under ``uri`` (a remote store's place), if a build may publish there: a
    prefix holding other objects is refused, and a store unless ``force``. Checked before a
    build starts (it may take hours) and again when it publishes."""
    from pyarrow import fs

    settings = RemoteSettings.from_env()
    handler, root = filesystem(uri, settings)
    found = _retrying(
        str(uri),
        lambda: handler.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)),
        settings,
    )
    names = {info.path[len(root) + 1 :] for info in found if info.type == fs.FileType.File}
    if foreign := sorted(n for n in names if not _STORE_OBJECT.match(n)):
        raise StoreError(f"{uri} holds other objects ({', '.join(foreign[:3])}); refusing it")
    if manifest in names and not force:
        raise StoreError(f"{uri} already exists; use --force (force=True) to replace it")
    return names


def publish(local: Path, uri: str, manifest: str, force: bool) -> None:
    """Upload the store built at ``local`` to ``uri``: shards first, the manifest last.

    An existing store there is replaced only with ``force``: its manifest is removed first (the
    store is then absent, never mixed), and its shards that the new one does not name after.
    A prefix holding anything but an ecstream store is refused.
    """
    from pyarrow import fs

    settings = RemoteSettings.from_env()
    handler, root = filesystem(uri, settings)
    names = check_destination(uri, manifest, force)
    if manifest in names:
        _retrying(f"{uri}/{manifest}", lambda: handler.delete_file(f"{root}/{manifest}"), settings)
    ours = sorted(str(p.relative_to(local)) for p in local.rglob("*.arrow"))
    if isinstance(handler, fs.LocalFileSystem):  # a file:// URI: folders exist before files
        for folder in sorted({f"{root}/{name}".rsplit("/", 1)[0] for name in ours} | {root}):
            handler.create_dir(folder, recursive=True)
    for name in [*ours, manifest]:
        _retrying(
            f"{uri}/{name}",
            lambda name=name: fs.copy_files(
                str(local / name), f"{root}/{name}", destination_filesystem=handler
            ),
            settings,
        )
    for name in sorted(names - {*ours, manifest}):
        with contextlib.suppress(OSError):
            handler.delete_file(f"{root}/{name}")


def write_object(uri: str, data: bytes) -> None:
    """Write a small object whole (a manifest with a new report), with retries."""
    settings = RemoteSettings.from_env()
    handler, path = filesystem(uri, settings)

    def attempt() -> None:
        with handler.open_output_stream(path) as out:
            out.write(data)

    _retrying(str(uri), attempt, settings)
