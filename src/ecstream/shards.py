"""Arrow IPC shards: writing them in chunks, and reading records back by position.

A split is a list of Arrow IPC files (``shard-00000.arrow``, …) with the columns ``id`` (string),
``sequence`` (binary: residue letters, one byte each), ``length`` (int32), ``label`` (int16) and
``ec`` (string, the EC field as read). Readers never convert rows to Python objects: a
:class:`ShardView` records where each record batch's buffers lie inside the file, and a
:class:`Region` puts all shards of a split side by side in one flat byte array, so a gather is a
few numpy index operations whatever the number of shards. That array is either the
memory-mapped files (``in_memory=False``) or a copy of them in RAM (``in_memory=True``): the same
positions, the same code, hence byte-identical batches.

Arrow is parsed only from checked bytes: a shard with a recorded checksum is hashed first
(:func:`ecstream.integrity.check`, once per process tree); one without (a store from before
checksums) gets pyarrow's full validation, so that a bad offset is an error, not a crash. Every
process that maps a shard again (a DataLoader worker) compares the file's identity with the one
that was checked, and checks again if it differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pyarrow as pa

from . import alphabet, integrity
from .allocator import build_pool
from .hashing import RecordDigest, file_checksum
from .integrity import IntegrityError

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("sequence", pa.binary()),
        ("length", pa.int32()),
        ("label", pa.int16()),
        ("ec", pa.string()),
    ]
)
#: Records per Arrow record batch inside a shard, at most. A build holds the batches being filled
#: (one per split writer, six of them) as Python objects: small batches keep each to a few MB.
BATCH_ROWS = 4096
SHARD_ROWS = 1 << 20  # records per shard file
SHARD_NAME = re.compile(r"shard-\d{5,}\.arrow")  # shard-00000.arrow, … (five digits or more)
#: Records the split writers of one build hold together, at most. With each writer's own cap
#: alone, six writers filling at their splits' paces were nearly full at once more often the
#: longer a build ran, and held more together (BENCHMARKS.md, scale: build_probe.py).
BUILD_BUFFER_ROWS = 8192


class SharedBuffer:
    """Caps the records that several :class:`SplitWriter` hold together at ``rows``: the add
    that reaches it flushes the writer holding most."""

    def __init__(self, rows: int = BUILD_BUFFER_ROWS):
        self.rows = rows
        self.held = 0
        self.writers: list[SplitWriter] = []

    def added(self) -> None:
        """Count one record more, flushing the fullest writer at the cap."""
        self.held += 1
        if self.held >= self.rows:
            max(self.writers, key=lambda w: w.buffered)._flush()


class SplitWriter:
    """Appends records to one split's shards in bounded chunks and fingerprints them."""

    def __init__(
        self,
        directory: Path,
        batch_rows: int = BATCH_ROWS,
        shard_rows: int = SHARD_ROWS,
        shared: SharedBuffer | None = None,
    ):
        self.directory = directory
        self.shared = shared
        if shared is not None:
            shared.writers.append(self)
        self.batch_rows = batch_rows
        self.shard_rows = shard_rows
        self.records = 0
        self.residues = 0
        self.shards: list[str] = []
        #: per shard: size, checksum, records and residues, as the manifest records them
        self.checksums: list[dict[str, Any]] = []
        self.digest = RecordDigest()
        self._buf: tuple[list, list, list, list] = ([], [], [], [])
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._in_shard = 0

    @property
    def buffered(self) -> int:
        """Records added and not yet written."""
        return len(self._buf[0])

    def add(self, rid: str, seq: bytes, label: int, ec: str) -> int:
        """Append one record; returns its row number within the split."""
        ids, seqs, labels, ecs = self._buf
        ids.append(rid)
        seqs.append(seq)
        labels.append(label)
        ecs.append(ec)
        row = self.records
        self.records += 1
        self.residues += len(seq)
        if len(ids) >= self.batch_rows:
            self._flush()
        if self.shared is not None:
            self.shared.added()
        return row

    def _flush(self) -> None:
        ids, seqs, labels, ecs = self._buf
        if not ids:
            return
        if self._writer is None or self._in_shard >= self.shard_rows:
            self._close_shard()
            name = f"shard-{len(self.shards):05d}.arrow"
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.directory / name), "wb")
            self._writer = pa.ipc.new_file(self._sink, SCHEMA)
            self.shards.append(name)
            self._in_shard = self._shard_residues = 0
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
        pool = build_pool()
        columns = (ids, seqs, lengths, np.asarray(labels, dtype=np.int16), ecs)
        batch = pa.record_batch(
            [pa.array(c, f.type, memory_pool=pool) for c, f in zip(columns, SCHEMA, strict=True)],
            schema=SCHEMA,
        )
        self._writer.write_batch(batch)
        self.digest.update(ids, seqs, labels)
        self._in_shard += len(ids)
        self._shard_residues += int(lengths.sum())
        self._buf = ([], [], [], [])
        if self.shared is not None:
            self.shared.held -= len(ids)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
            # hashed from the file, so the checksum is of the bytes that were really written
            checksum = file_checksum(self.directory / self.shards[-1])
            counts = {"records": self._in_shard, "residues": self._shard_residues}
            self.checksums.append(checksum | counts)

    def close(self) -> str:
        """Flush, close, and return the split's fingerprint."""
        self._flush()
        self._close_shard()
        return self.digest.hexdigest()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The record batches written so far (of a closed writer), checked."""
        return read_batches([self.directory / s for s in self.shards], self.checksums)

    def extend(self, other: SplitWriter) -> None:
        """Append the shards of a closed writer after this one's records (moving the files):
        its records follow, in order, in the rows and the fingerprint."""
        self._flush()
        self._close_shard()
        self.directory.mkdir(parents=True, exist_ok=True)
        for batch in other.batches():  # read before the files move
            self.digest.update(
                batch.column("id").to_pylist(),
                batch.column("sequence").to_pylist(),
                batch.column("label").to_pylist(),
            )
        for name, checksum in zip(other.shards, other.checksums, strict=True):
            new = f"shard-{len(self.shards):05d}.arrow"
            os.rename(other.directory / name, self.directory / new)
            self.shards.append(new)
            self.checksums.append(checksum)
        self.records += other.records
        self.residues += other.residues


def open_shard(path: Path) -> BinaryIO:
    """Open a shard for reading; a missing or unreadable file is an error naming it."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise IntegrityError(
            f"{path}: missing; the store is incomplete: rebuild it or restore the file"
        ) from None
    except OSError as error:
        raise IntegrityError(f"{path}: cannot be read ({error.strerror})") from None


def _mapped(fh: BinaryIO) -> np.ndarray:
    """A whole open file as a read-only uint8 array over a memory mapping."""
    if os.fstat(fh.fileno()).st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype=np.uint8)
    # a plain ndarray over the mapping: np.memmap's subclass hooks cost more than a gather
    return np.memmap(fh, dtype=np.uint8, mode="r").view(np.ndarray)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class ShardView:
    """Where the buffers of every record batch of one shard file lie, in bytes from its start,
    and the check its bytes passed."""

    path: Path
    rows: int
    residues: int
    label_counts: dict[int, int]  # records per stored label value
    chunk_starts: np.ndarray  # int64 [chunks + 1]: first row of each record batch
    seq_offsets: np.ndarray  # int64 [chunks]: byte position of the int32 offsets of `sequence`
    seq_data: np.ndarray  # int64 [chunks]: byte position of the residue bytes
    id_offsets: np.ndarray
    id_data: np.ndarray
    labels: np.ndarray  # int64 [chunks]: byte position of the int16 labels
    ec_offsets: np.ndarray
    ec_data: np.ndarray
    size: int = 0  # bytes of the file
    expected: dict[str, Any] | None = None  # size and checksum recorded; None: validated instead
    checked: integrity.Checked | None = None
    # the file that was checked, kept open so that this process (or a forked worker) maps the
    # very file that was checked; never pickled (a spawned worker opens it again and compares)
    file: BinaryIO | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "file": None}

    @classmethod
    def open(cls, path: Path, expected: dict[str, Any] | None, *, force: bool = False):
        """Check a shard's bytes (``expected`` checksum, else pyarrow's full validation), then
        find its buffers. ``force`` hashes it even if this process tree checked it already."""
        fh = open_shard(path)
        try:
            checked = integrity.check(fh, path, expected, force=force)
            u8 = _mapped(fh)
            view = cls.scan(path, u8, validate=expected is None)
        except BaseException:
            fh.close()
            raise
        view.size, view.expected, view.checked, view.file = len(u8), expected, checked, fh
        return view

    def reopen(self) -> BinaryIO:
        """The checked file, open: the one this process checked, or the file at ``path`` if its
        identity is still the checked one (else it is checked again)."""
        if self.file is not None and not self.file.closed:
            return self.file
        fh = open_shard(self.path)
        try:
            now = integrity.Identity.of(fh)
            if now != self.checked.identity or not (self.checked.settled or self.expected is None):
                if self.expected is None:  # no checksum: the positions may be wrong now
                    raise IntegrityError(
                        f"{self.path}: the file changed after it was validated; open the store "
                        "again"
                    )
                # the same bytes as recorded, hence the same buffer positions as scanned
                self.checked = integrity.check(fh, self.path, self.expected)
        except BaseException:
            fh.close()
            raise
        self.file = fh
        return fh

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The Arrow record batches of this shard, parsed from its checked bytes (a mapping of
        their own, which lives as long as the batches)."""
        u8 = _mapped(self.reopen())
        reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(u8)))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)

    @classmethod
    def scan(cls, path: Path, u8: np.ndarray, validate: bool) -> ShardView:
        """Find the buffers in a shard's bytes; ``validate``: first run pyarrow's full validation
        of every record batch (offsets, UTF-8), for bytes that no checksum vouches for."""
        try:
            return cls._scan(path, u8, validate)
        except (pa.ArrowException, ValueError, OSError) as error:
            raise IntegrityError(
                f"{path}: not a readable ecstream shard ({_first_line(error)}); the file is "
                f"damaged: {integrity.STORE_REMEDY}"
            ) from None

    @classmethod
    def _scan(cls, path: Path, u8: np.ndarray, validate: bool) -> ShardView:
        buffer = pa.py_buffer(u8)
        base = buffer.address
        reader = pa.ipc.open_file(pa.BufferReader(buffer))
        if not reader.schema.equals(SCHEMA):
            raise ValueError(f"schema {reader.schema}")
        cols: dict[str, list] = {name: [] for name in ("id", "sequence", "label", "ec")}
        counts, residues, labels = [], 0, {}
        found_at: dict[str, int] = {}
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if validate:
                batch.validate(full=True)
            counts.append(batch.num_rows)
            for name, positions in cols.items():
                array = batch.column(name)
                if array.null_count or array.offset:
                    raise ValueError(f"unexpected nulls or slicing in column {name!r}")
                found = []
                for b in array.buffers()[1:]:
                    if b is None or b.size == 0:  # nothing is read from an empty buffer
                        found.append(0)
                        continue
                    at = b.address - base
                    # gathers read typed views at these positions: they must lie in the file,
                    # aligned as the IPC format writes them
                    if at % 8 or not 0 <= at <= at + b.size <= len(u8):
                        raise ValueError(f"a buffer of column {name!r} lies outside the file")
                    found.append(at)
                positions.append(found)
                found_at[name] = found[-1]  # the data buffer (the last one) of the column
            seqs = batch.column("sequence")
            offsets = np.frombuffer(seqs.buffers()[1], dtype=np.int32, count=len(seqs) + 1)
            residues += int(offsets[-1]) - int(offsets[0])
            if validate:  # bytes no checksum vouches for must at least be residue letters
                start = found_at["sequence"] + int(offsets[0])
                tokens = alphabet.TABLE[u8[start : start + int(offsets[-1] - offsets[0])]]
                if tokens.size and (
                    tokens.min() == alphabet.PAD or tokens.max() == alphabet.INVALID
                ):
                    raise ValueError("a residue byte is not a letter")
            # the label buffer itself, 2 bytes a record (Array.to_numpy would import pandas)
            values = np.frombuffer(
                batch.column("label").buffers()[1], dtype=np.int16, count=batch.num_rows
            )
            for value, count in zip(*np.unique(values, return_counts=True), strict=True):
                labels[int(value)] = labels.get(int(value), 0) + int(count)
        pos = {k: np.asarray(v, dtype=np.int64).reshape(len(counts), -1) for k, v in cols.items()}
        return cls(
            path=path,
            rows=int(sum(counts)),
            residues=int(residues),
            label_counts=labels,
            chunk_starts=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
            seq_offsets=pos["sequence"][:, 0],
            seq_data=pos["sequence"][:, 1],
            id_offsets=pos["id"][:, 0],
            id_data=pos["id"][:, 1],
            labels=pos["label"][:, 0],
            ec_offsets=pos["ec"][:, 0],
            ec_data=pos["ec"][:, 1],
        )


class ShardSource(Protocol):
    """Where the shards of a split come from when they are not on local disk
    (:mod:`ecstream.remote`): each is fetched into a local file, checked on arrival."""

    #: bytes of shards one process keeps mapped at most (the bound of the local cache)
    budget: int

    def fetch(self, k: int) -> Path:
        """A local file holding shard ``k``'s checked bytes; waits for it to arrive."""
        ...

    def prefetch(self, shards: Sequence[int]) -> None:
        """Start fetching these shards, in this order, ahead of their use."""
        ...

    def discard(self, path: Path, entry: os.stat_result) -> None:
        """Remove a fetched file that failed its check, if it is still the one ``entry`` saw."""
        ...


_PAGE = mmap.ALLOCATIONGRANULARITY
_MAP_FIXED = 0x10  # the same on Linux and the BSDs; the mmap module does not export it
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


class Region:
    """The shards of a split side by side in one range of addresses (or one array in RAM).

    A gather then reads records of any shard with the same few numpy operations as from one
    shard: with one mapping per shard, every batch paid a round of numpy calls per shard it
    touched, which grew with the number of shards (BENCHMARKS.md, pipeline section). Each shard
    has a slot at a page-aligned offset; a memory-mapped slot is the file mapped there
    (``MAP_FIXED`` over a reserved, inaccessible range), an empty one stays inaccessible. RAM
    mode copies the files into the same offsets, so both read the same bytes at the same
    positions.
    """

    def __init__(self, sizes: Sequence[int], in_memory: bool):
        self.sizes = list(sizes)
        slots = [-(-s // _PAGE) * _PAGE for s in self.sizes]
        self.bases = np.concatenate([[0], np.cumsum(slots, dtype=np.int64)])[:-1]
        self.total = max(int(sum(slots)), _PAGE)
        self.in_memory = in_memory
        self.filled = [False] * len(self.sizes)
        if in_memory:
            self.u8 = np.zeros(self.total, dtype=np.uint8)
        else:
            self._libc = _libc()
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
            self._address = self._mmap(None, self.total, 0, flags, -1)
            memory = (ctypes.c_uint8 * self.total).from_address(self._address)
            # unmapped when the last array over it is gone, not before
            weakref.finalize(memory, self._libc.munmap, self._address, self.total)
            self.u8 = np.frombuffer(memory, dtype=np.uint8)
            self.u8.flags.writeable = False
        self.i32 = self.u8.view(np.int32)  # slots are page-aligned: every view is aligned too
        self.i16 = self.u8.view(np.int16)

    def _mmap(self, address: int | None, size: int, prot: int, flags: int, fd: int) -> int:
        found = self._libc.mmap(address, size, prot, flags, fd, 0)
        if found in (None, ctypes.c_void_p(-1).value):
            code = ctypes.get_errno()
            raise OSError(code, f"cannot map {size:,} bytes: {os.strerror(code)}")
        return found

    def put(self, k: int, fh: BinaryIO) -> None:
        """Fill slot ``k`` with the open file ``fh`` (mapped, or copied in RAM mode)."""
        size, base = self.sizes[k], int(self.bases[k])
        if size and self.in_memory:
            fh.seek(0)
            if fh.readinto(memoryview(self.u8)[base : base + size]) != size:
                raise IntegrityError(f"{fh.name}: shorter than when it was checked")
        elif size:
            flags = mmap.MAP_SHARED | _MAP_FIXED
            self._mmap(self._address + base, size, mmap.PROT_READ, flags, fh.fileno())
        self.filled[k] = True

    def drop(self, k: int) -> None:
        """Empty slot ``k`` (its address range becomes inaccessible again)."""
        if not self.in_memory and self.sizes[k]:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE | _MAP_FIXED
            slot = -(-self.sizes[k] // _PAGE) * _PAGE
            self._mmap(self._address + int(self.bases[k]), slot, 0, flags, -1)
        self.filled[k] = False


@dataclass
class _Chunks:
    """The record batches of every shard known so far, in row order, with their buffers'
    positions in the :class:`Region` (int64 arrays, one entry per record batch)."""

    starts: np.ndarray  # first row (of the split) of each record batch
    seq_offsets: np.ndarray
    seq_data: np.ndarray
    id_offsets: np.ndarray
    id_data: np.ndarray
    labels: np.ndarray
    ec_offsets: np.ndarray
    ec_data: np.ndarray

    @classmethod
    def of(cls, views: Sequence[ShardView | None], starts: np.ndarray, bases: np.ndarray):
        known = [(k, v) for k, v in enumerate(views) if v is not None]
        fields = {name: [] for name in cls.__dataclass_fields__}
        for k, v in known:
            fields["starts"].append(v.chunk_starts[:-1] + starts[k])
            for name in ("seq_offsets", "seq_data", "id_offsets", "id_data", "labels"):
                fields[name].append(getattr(v, name) + bases[k])
            fields["ec_offsets"].append(v.ec_offsets + bases[k])
            fields["ec_data"].append(v.ec_data + bases[k])
        return cls(
            **{
                name: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
                for name, parts in fields.items()
            }
        )


class SplitData:
    """The shards of one split, addressed by row number ``0 … n-1`` in stored order.

    Every local shard is checked when the split is opened (``checksums``: what the manifest
    recorded per shard, see :meth:`ShardView.open`). Mapping the bytes is lazy and per process:
    a pickled SplitData (a DataLoader or Keras worker) maps or loads its files again in the
    worker, which only compares their identity with the checked one, instead of shipping bytes.

    With a ``source`` (a store on object storage), shards are fetched when a read first needs
    them, checked on arrival and again against the manifest's record and residue counts, and a
    process keeps at most ``source.budget`` bytes of them mapped (the least recently used go).
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        fingerprint: str,
        in_memory: bool = False,
        checksums: Sequence[dict[str, Any]] | None = None,
        source: ShardSource | None = None,
    ):
        self.name, self.fingerprint, self.in_memory = name, fingerprint, in_memory
        if checksums is not None and len(checksums) != len(paths):
            raise ValueError(f"{len(paths)} shards but {len(checksums)} checksums")
        if source is not None and checksums is None:
            raise ValueError("a remote split needs the shard checksums of its manifest")
        self.paths, self.checksums, self.source = list(paths), checksums, source
        self.views: list[ShardView | None]
        if source is None:
            self.views = [
                ShardView.open(p, checksums[k] if checksums is not None else None)
                for k, p in enumerate(paths)
            ]
            rows, sizes = [v.rows for v in self.views], [v.size for v in self.views]
        else:  # nothing is fetched before a read needs it
            self.views = [None] * len(paths)
            rows = [c["records"] for c in checksums]
            sizes = [c["bytes"] for c in checksums]
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.n = int(self.starts[-1])
        self.sizes = sizes
        slots = [-(-s // _PAGE) * _PAGE for s in sizes]
        self.bases = np.concatenate([[0], np.cumsum(slots, dtype=np.int64)])[:-1]
        self._chunks: _Chunks | None = None
        self._region: Region | None = None
        self._used: dict[int, None] = {}  # mapped shards of a remote split, least recent first

    @property
    def residues(self) -> int:
        return sum(v.residues for v in self.views if v is not None)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_region": None, "_used": {}}

    # --- bytes: the region, and which shards it holds ---------------------------------------
    @property
    def region(self) -> Region:
        if self._region is None:
            self._region = Region(self.sizes, self.in_memory)
            if self.source is None:
                for k, view in enumerate(self.views):
                    self._put(k, view)
        return self._region

    def _put(self, k: int, view: ShardView) -> None:
        fh = view.reopen()
        self.region.put(k, fh)
        if self.in_memory and integrity.Identity.of(fh) != view.checked.identity:
            raise IntegrityError(f"{view.path}: the file changed while it was read")

    def _need(self, rows: np.ndarray) -> None:
        """Make sure the shards holding ``rows`` are in the region (a remote split)."""
        region = self.region
        if self.source is None or len(rows) == 0 or self.complete:
            return
        which = np.unique(np.searchsorted(self.starts, rows, side="right") - 1).tolist()
        for k in which:
            if not region.filled[k]:
                self._fetch(k)
            self._used.pop(k, None)
            self._used[k] = None
        self._evict(keep=set(which))

    def _fetch(self, k: int) -> None:
        for attempt in range(3):
            path = self.source.fetch(k)
            entry = None
            with contextlib.suppress(OSError):
                entry = os.stat(path)
            try:
                return self._open_fetched(k, path)
            except IntegrityError:
                # its bytes were checked on arrival: an entry gone since (another process let it
                # go) or changed since (damage in the local cache, not in the store) is fetched
                # again; bytes that fail after a fresh download are the error
                if attempt == 2:
                    raise
                if entry is not None and path.exists():
                    expected = self.checksums[k]
                    if _bytes_match(path, expected):  # the store's own bytes: no fetch helps
                        raise
                    self.source.discard(path, entry)
                self.views[k] = None

    def _open_fetched(self, k: int, path: Path) -> None:
        view, expected = self.views[k], self.checksums[k]
        if view is None or view.path != path:
            view = ShardView.open(path, expected)
            if (view.rows, view.residues) != (expected["records"], expected["residues"]):
                raise IntegrityError(
                    f"{self.paths[k]}: holds {view.rows:,} records and {view.residues:,} "
                    f"residues, the manifest says {expected['records']:,} and "
                    f"{expected['residues']:,}; the store is damaged: rebuild it"
                )
            self.views[k], self._chunks = view, None
        self._put(k, view)

    def _evict(self, keep: set[int]) -> None:
        mapped = sum(self.sizes[k] for k in self._used)
        for k in list(self._used):
            if mapped <= self.source.budget:
                break
            if k in keep:
                continue
            self._region.drop(k)
            view = self.views[k]
            if view is not None and view.file is not None:
                view.file.close()
                view.file = None
            del self._used[k]
            mapped -= self.sizes[k]

    @property
    def complete(self) -> bool:
        """Whether every shard is in this process's region (a remote split that fits its
        budget, once fetched: reads then cost what they cost from local disk)."""
        return self._region is not None and all(self._region.filled)

    def fetch_all(self) -> None:
        """Fetch and check every shard of a remote split now (as many as the budget maps)."""
        for k in range(len(self.paths)):
            self._need(self.starts[k : k + 1])

    def prefetch(self, rows: np.ndarray) -> None:
        """Start fetching the shards of ``rows`` (upcoming batches), in order of first need."""
        if self.source is None or len(rows) == 0:
            return
        which = np.searchsorted(self.starts, rows, side="right") - 1
        _, first = np.unique(which, return_index=True)
        # a shard mapped already is never fetched again: asking would hold a slot for good
        filled = self.region.filled
        self.source.prefetch([k for k in which[np.sort(first)].tolist() if not filled[k]])

    @property
    def chunks(self) -> _Chunks:
        if self._chunks is None:
            self._chunks = _Chunks.of(self.views, self.starts, self.bases)
        return self._chunks

    def close(self) -> None:
        """Close the checked files this split holds open, for a split read once and let go
        (the arrays and batches read keep their mappings: np.memmap holds its own descriptor);
        a later read opens them again and checks they are still the files checked."""
        for view in self.views:
            if view.file is not None:
                view.file.close()

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The Arrow record batches of the split in stored order, parsed from checked bytes."""
        for k in range(len(self.paths)):
            if self.source is not None:  # in the cache (again, if it was evicted), and checked
                self._need(self.starts[k : k + 1])
            yield from self.views[k].record_batches()

    # --- reads by row number -------------------------------------------------------------------
    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record batch (in :attr:`chunks`) and index within it, for rows of the split."""
        self._need(rows)
        starts = self.chunks.starts
        chunk = np.searchsorted(starts, rows, side="right") - 1
        return chunk, rows - starts[chunk]

    def _spans(self, chunk, j, offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, ...]:
        """Byte ranges [start, end) in the region of a variable-length column."""
        i32 = self._region.i32
        o = offsets[chunk] // 4 + j
        return i32[o] + data[chunk], i32[o + 1] + data[chunk]

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        chunk, j = self._locate(rows)
        start, end = self._spans(chunk, j, self.chunks.seq_offsets, self.chunks.seq_data)
        return (end - start).astype(np.int64)

    def strings(self, rows: np.ndarray, column: str = "id") -> np.ndarray:
        """Values of the ``id`` or ``ec`` column for rows, in order, as a numpy str array."""
        chunk, j = self._locate(rows)
        offsets = getattr(self.chunks, f"{column}_offsets")
        start, end = self._spans(chunk, j, offsets, getattr(self.chunks, f"{column}_data"))
        u8 = self._region.u8
        lengths = end - start
        width = int(lengths.max(initial=0))
        if width == 0:
            return np.full(len(start), "", dtype=str)
        columns = np.arange(width)
        index = np.minimum(start[:, None] + columns, len(u8) - 1)
        raw = np.where(columns < lengths[:, None], u8[index], 0).astype(np.uint8)
        if raw.max() < 128:  # ASCII: one vectorised conversion
            return raw.view(f"S{width}").ravel().astype(str)
        return np.array(
            [u8[a:b].tobytes().decode() for a, b in zip(start.tolist(), end.tolist(), strict=True)],
            dtype=str,
        )

    def spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the residues of rows begin in the region, their full lengths and their labels
        (each int64): the numpy half of a batch, whose cost is per call, not per row (so
        :class:`~ecstream.batches.Batches` looks up several steps at once); :meth:`assemble`
        is the other half."""
        chunk, j = self._locate(rows)
        chunks, region = self.chunks, self._region
        starts, end = self._spans(chunk, j, chunks.seq_offsets, chunks.seq_data)
        labels = region.i16[chunks.labels[chunk] // 2 + j].astype(np.int64)
        return starts, (end - starts).astype(np.int64), labels

    def assemble(
        self, begin: list[int], end: list[int], gap: list[int], padding: str = "post"
    ) -> bytearray:
        """The residue letters of rows, ``[begin, end)`` in the region (from :meth:`spans`, the
        region still mapped), each followed (``padding="post"``) or preceded (``"pre"``) by
        ``gap`` zero bytes, as one ``bytearray``: 0 = padding.

        The rows are joined from memoryview slices of the region and zero runs: one copy, in
        C, with no per-residue work in Python (a plain loop: faster here than ``map``/``chain``).
        """
        view, pads = memoryview(self.region.u8), _zero_runs(max(gap, default=0))
        parts: list = []
        add = parts.append
        if padding == "post":
            for a, b, g in zip(begin, end, gap, strict=True):
                add(view[a:b])
                add(pads[g])
        else:
            for a, b, g in zip(begin, end, gap, strict=True):
                add(pads[g])
                add(view[a:b])
        return bytearray().join(parts)


_ZERO_RUNS: list[memoryview] = []


def _bytes_match(path: Path, expected: dict[str, Any]) -> bool:
    """Whether a file holds the bytes a manifest recorded (size and checksum)."""
    try:
        got = file_checksum(path)
    except OSError:
        return False
    return all(got[key] == expected.get(key) for key in got)


def _zero_runs(width: int) -> list[memoryview]:
    """Runs of zero bytes, run ``n`` of length ``n``, for every ``n`` up to ``width`` at least:
    a row's padding by index, not by slicing (the row loop is the stream's own cost). A wider
    batch gets a new list (never a list changed in place: a thread may be indexing the old)."""
    global _ZERO_RUNS
    runs = _ZERO_RUNS
    if len(runs) <= width:
        zeros = memoryview(bytes(width))
        runs = _ZERO_RUNS = [zeros[:n] for n in range(width + 1)]
    return runs


def read_batches(
    paths: Iterable[Path], checksums: Sequence[dict[str, Any]] | None = None
) -> Iterator[pa.RecordBatch]:
    """The Arrow record batches of shard files, in order, each file checked first: against its
    ``checksums`` entry, or without one by pyarrow's full validation."""
    split = SplitData("", list(paths), "", checksums=checksums)
    try:
        yield from split.record_batches()
    finally:
        split.close()


def fingerprint_batches(batches: Iterable[pa.RecordBatch]) -> tuple[str, int]:
    """A split's fingerprint and record count, recomputed from its (checked) record batches."""
    digest, records = RecordDigest(), 0
    for batch in batches:
        digest.update(
            batch.column("id").to_pylist(),
            batch.column("sequence").to_pylist(),
            batch.column("label").to_pylist(),
        )
        records += batch.num_rows
    return digest.hexdigest(), records
