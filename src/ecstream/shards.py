"""Arrow IPC shards: writing them in chunks, and reading records back by position.

A split is a list of Arrow IPC files (``shard-00000.arrow``, …) with the columns ``id`` (string),
``sequence`` (binary: residue letters, one byte each), ``length`` (int32), ``label`` (int16) and
``ec`` (string, the EC field as read). Readers never convert rows to Python objects: a
:class:`ShardView` records where each record batch's buffers lie inside the file, so a gather is a
few numpy index operations on one flat byte array. That array is either the memory-mapped file
(``in_memory=False``) or a copy of the file in RAM (``in_memory=True``): the same positions, the
same code, hence byte-identical batches.

Arrow is parsed only from checked bytes: a shard with a recorded checksum is hashed first
(:func:`ecstream.integrity.check`, once per process tree); one without (a store from before
checksums) gets pyarrow's full validation, so that a bad offset is an error, not a crash. Every
process that maps a shard again (a DataLoader worker) compares the file's identity with the one
that was checked, and checks again if it differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from . import alphabet, integrity
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
BATCH_ROWS = 16384  # records per Arrow record batch inside a shard
SHARD_ROWS = 1 << 20  # records per shard file


class SplitWriter:
    """Appends records to one split's shards in bounded chunks and fingerprints them."""

    def __init__(self, directory: Path, batch_rows: int = BATCH_ROWS, shard_rows: int = SHARD_ROWS):
        self.directory = directory
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
        batch = pa.record_batch(
            [
                pa.array(ids, pa.string()),
                pa.array(seqs, pa.binary()),
                pa.array(lengths),
                pa.array(np.asarray(labels, dtype=np.int16)),
                pa.array(ecs, pa.string()),
            ],
            schema=SCHEMA,
        )
        self._writer.write_batch(batch)
        self.digest.update(ids, seqs, labels)
        self._in_shard += len(ids)
        self._shard_residues += int(lengths.sum())
        self._buf = ([], [], [], [])

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
    expected: dict[str, Any] | None = None  # size and checksum recorded; None: validated instead
    checked: integrity.Checked | None = None
    # the checked bytes, mapped when they were checked; never pickled (a spawned worker maps the
    # file again), but a forked one inherits the very mapping that was checked
    mapped: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "mapped": None}

    @classmethod
    def open(cls, path: Path, expected: dict[str, Any] | None, *, force: bool = False):
        """Check a shard's bytes (``expected`` checksum, else pyarrow's full validation), then
        find its buffers. ``force`` hashes it even if this process tree checked it already."""
        with open_shard(path) as fh:
            checked = integrity.check(fh, path, expected, force=force)
            u8 = _mapped(fh)
        view = cls.scan(path, u8, validate=expected is None)
        view.expected, view.checked, view.mapped = expected, checked, u8
        return view

    @classmethod
    def scan(cls, path: Path, u8: np.ndarray, validate: bool) -> ShardView:
        """Find the buffers in a shard's bytes; ``validate``: first run pyarrow's full validation
        of every record batch (offsets, UTF-8), for bytes that no checksum vouches for."""
        try:
            return cls._scan(path, u8, validate)
        except (pa.ArrowException, ValueError, OSError) as error:
            raise IntegrityError(
                f"{path}: not a readable ecstream shard ({_first_line(error)}); the file is "
                "damaged: rebuild the store or restore the file"
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


class ShardBytes:
    """One shard's bytes (memory-mapped or in RAM) with typed views for gathers.

    Uses the mapping that was checked where there is one (this process, or a forked worker);
    elsewhere (a spawned worker) the file is opened again, and its identity must still be the
    one that was checked, or it is checked again.
    """

    def __init__(self, view: ShardView, in_memory: bool):
        self.view = view
        if view.mapped is not None:
            self.u8 = np.array(view.mapped) if in_memory else view.mapped
        else:
            self.u8 = self._open(in_memory)
        usable = len(self.u8) // 8 * 8
        self.i32 = self.u8[:usable].view(np.int32)
        self.i16 = self.u8[:usable].view(np.int16)

    def _open(self, in_memory: bool) -> np.ndarray:
        view = self.view
        with open_shard(view.path) as fh:
            self._recheck(fh)
            fh.seek(0)
            if not in_memory:
                return _mapped(fh)
            u8 = np.fromfile(fh, dtype=np.uint8)
            if integrity.Identity.of(fh) != view.checked.identity:
                raise IntegrityError(f"{view.path}: the file changed while it was read")
            return u8

    def _recheck(self, fh: BinaryIO) -> None:
        view, now = self.view, integrity.Identity.of(fh)
        if now == view.checked.identity and (view.checked.settled or view.expected is None):
            return
        if view.expected is None:  # no checksum to check again: the positions may be wrong now
            raise IntegrityError(
                f"{view.path}: the file changed after it was validated; open the store again"
            )
        # the same bytes as recorded, hence the same buffer positions as scanned
        view.checked = integrity.check(fh, view.path, view.expected)

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The Arrow record batches of this shard, parsed from its checked bytes."""
        reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self.u8)))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record batch index and index within it, for local row numbers."""
        chunk = np.searchsorted(self.view.chunk_starts, rows, side="right") - 1
        return chunk, rows - self.view.chunk_starts[chunk]

    def spans(self, chunk, j, offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, ...]:
        """Byte ranges [start, end) of a variable-length column for located rows."""
        o = offsets[chunk] // 4 + j
        start = self.i32[o] + data[chunk]
        end = self.i32[o + 1] + data[chunk]
        return start, end

    def labels(self, chunk, j) -> np.ndarray:
        return self.i16[self.view.labels[chunk] // 2 + j].astype(np.int64)

    def strings(self, chunk, j, offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
        """Values of a string column for located rows, as a numpy str array."""
        start, end = self.spans(chunk, j, offsets, data)
        lengths = end - start
        width = int(lengths.max(initial=0))
        if width == 0:
            return np.full(len(start), "", dtype=str)
        columns = np.arange(width)
        index = np.minimum(start[:, None] + columns, len(self.u8) - 1)
        raw = np.where(columns < lengths[:, None], self.u8[index], 0).astype(np.uint8)
        if raw.max() < 128:  # ASCII: one vectorised conversion
            return raw.view(f"S{width}").ravel().astype(str)
        return np.array(
            [
                self.u8[a:b].tobytes().decode()
                for a, b in zip(start.tolist(), end.tolist(), strict=True)
            ],
            dtype=str,
        )


class SplitData:
    """The shards of one split, addressed by row number ``0 … n-1`` in stored order.

    Every shard is checked when the split is opened (``checksums``: what the manifest recorded
    per shard, see :meth:`ShardView.open`). Mapping the bytes is lazy and per process: a pickled
    SplitData (a DataLoader or Keras worker) maps or loads its files again in the worker, which
    only compares their identity with the checked one, instead of shipping bytes.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[Path],
        fingerprint: str,
        in_memory: bool = False,
        checksums: Sequence[dict[str, Any]] | None = None,
    ):
        self.name, self.fingerprint, self.in_memory = name, fingerprint, in_memory
        if checksums is not None and len(checksums) != len(paths):
            raise ValueError(f"{len(paths)} shards but {len(checksums)} checksums")
        self.views = [
            ShardView.open(p, checksums[k] if checksums is not None else None)
            for k, p in enumerate(paths)
        ]
        self.starts = np.concatenate([[0], np.cumsum([v.rows for v in self.views])]).astype(
            np.int64
        )
        self.n = int(self.starts[-1])
        self._shards: list[ShardBytes] | None = None

    @property
    def residues(self) -> int:
        return sum(v.residues for v in self.views)

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The Arrow record batches of the split in stored order, parsed from checked bytes."""
        for shard in self.shards:
            yield from shard.record_batches()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": None}

    @property
    def shards(self) -> list[ShardBytes]:
        if self._shards is None:
            self._shards = [ShardBytes(v, self.in_memory) for v in self.views]
        return self._shards

    def _groups(self, rows: np.ndarray):
        """(shard, positions in ``rows``, chunk, index in chunk) for each shard touched."""
        if len(self.views) == 1:
            shard = self.shards[0]
            yield shard, slice(None), *shard.locate(rows)
            return
        which = np.searchsorted(self.starts, rows, side="right") - 1
        if len(rows) and which.min() == which.max():  # one shard: no grouping needed
            shard = self.shards[which[0]]
            yield shard, slice(None), *shard.locate(rows - self.starts[which[0]])
            return
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            shard = self.shards[k]
            yield shard, sel, *shard.locate(rows[sel] - self.starts[k])

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for shard, sel, chunk, j in self._groups(rows):
            start, end = shard.spans(chunk, j, shard.view.seq_offsets, shard.view.seq_data)
            out[sel] = end - start
        return out

    def strings(self, rows: np.ndarray, column: str = "id") -> np.ndarray:
        """Values of the ``id`` or ``ec`` column for rows, in order, as a numpy str array."""
        parts = []
        for shard, sel, chunk, j in self._groups(rows):
            view = shard.view
            offsets, data = getattr(view, f"{column}_offsets"), getattr(view, f"{column}_data")
            parts.append((sel, shard.strings(chunk, j, offsets, data)))
        if len(parts) == 1 and isinstance(parts[0][0], slice):
            return parts[0][1]
        out = np.empty(len(rows), dtype=object)
        for sel, values in parts:
            out[sel] = values
        return out.astype(str)

    def gather(
        self,
        rows: np.ndarray,
        width: int | Callable[[np.ndarray], int],
        padding: str = "post",
        truncating: str = "post",
    ) -> tuple[bytearray, int, np.ndarray, np.ndarray]:
        """Residue letters of rows as one ``bytearray`` of ``B × W`` (0 = padding), W, labels and
        full lengths. ``width`` is W, or a function of the full lengths that returns it.

        The rows are joined from memoryview slices of the shard bytes and zero runs: one copy,
        in C, with no per-residue work in Python.
        """
        labels = np.empty(len(rows), dtype=np.int64)
        starts = np.empty(len(rows), dtype=np.int64)
        lengths = np.empty(len(rows), dtype=np.int64)
        source = np.zeros(len(rows), dtype=np.int64)
        views = []
        for k, (shard, sel, chunk, j) in enumerate(self._groups(rows)):
            start, end = shard.spans(chunk, j, shard.view.seq_offsets, shard.view.seq_data)
            labels[sel], starts[sel], lengths[sel], source[sel] = (
                shard.labels(chunk, j),
                start,
                end - start,
                k,
            )
            views.append(memoryview(shard.u8))
        width = width if isinstance(width, int) else width(lengths)
        keep = np.minimum(lengths, width)
        if truncating == "pre":
            starts += lengths - keep
        zeros = memoryview(bytes(width))
        parts: list = []
        add = parts.append
        for v, a, k in zip(source.tolist(), starts.tolist(), keep.tolist(), strict=True):
            if padding == "post":
                add(views[v][a : a + k])
                add(zeros[: width - k])
            else:
                add(zeros[: width - k])
                add(views[v][a : a + k])
        return bytearray().join(parts), width, labels, lengths


def read_batches(
    paths: Iterable[Path], checksums: Sequence[dict[str, Any]] | None = None
) -> Iterator[pa.RecordBatch]:
    """The Arrow record batches of shard files, in order, each file checked first: against its
    ``checksums`` entry, or without one by pyarrow's full validation."""
    yield from SplitData("", list(paths), "", checksums=checksums).record_batches()


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
