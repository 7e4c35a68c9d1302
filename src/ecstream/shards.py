"""Arrow IPC shards: writing them in chunks, and reading records back by position.

A split is a list of Arrow IPC files (``shard-00000.arrow``, …) with the columns ``id`` (string),
``sequence`` (binary: residue letters, one byte each), ``length`` (int32), ``label`` (int16) and
``ec`` (string, the EC field as read). Readers never convert rows to Python objects: a
:class:`ShardView` records where each record batch's buffers lie inside the file, so a gather is a
few numpy index operations on one flat byte array. That array is either the memory-mapped file
(``in_memory=False``) or a copy of the file in RAM (``in_memory=True``): the same positions, the
same code, hence byte-identical batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .hashing import RecordDigest

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
            self._in_shard = 0
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
        self._buf = ([], [], [], [])

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> str:
        """Flush, close, and return the split's fingerprint."""
        self._flush()
        self._close_shard()
        return self.digest.hexdigest()


@dataclass
class ShardView:
    """Where the buffers of every record batch of one shard file lie, in bytes from its start."""

    path: Path
    rows: int
    chunk_starts: np.ndarray  # int64 [chunks + 1]: first row of each record batch
    seq_offsets: np.ndarray  # int64 [chunks]: byte position of the int32 offsets of `sequence`
    seq_data: np.ndarray  # int64 [chunks]: byte position of the residue bytes
    id_offsets: np.ndarray
    id_data: np.ndarray
    labels: np.ndarray  # int64 [chunks]: byte position of the int16 labels
    ec_offsets: np.ndarray
    ec_data: np.ndarray

    @classmethod
    def scan(cls, path: Path) -> ShardView:
        with pa.memory_map(str(path), "r") as mm:  # only to find the buffers' positions
            base = mm.read_buffer(mm.size()).address
            mm.seek(0)
            reader = pa.ipc.open_file(mm)
            if not reader.schema.equals(SCHEMA):
                raise ValueError(f"{path}: not an ecstream shard (schema {reader.schema})")
            cols = {name: [] for name in ("id", "sequence", "label", "ec")}
            counts = []
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                counts.append(batch.num_rows)
                for name, positions in cols.items():
                    array = batch.column(name)
                    if array.null_count or array.offset:
                        raise ValueError(f"{path}: unexpected nulls or slicing in column {name!r}")
                    buffers = array.buffers()[1:]
                    positions.append([b.address - base if b is not None else 0 for b in buffers])
        pos = {k: np.asarray(v, dtype=np.int64).reshape(len(counts), -1) for k, v in cols.items()}
        return cls(
            path=path,
            rows=int(sum(counts)),
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
    """One shard's bytes (memory-mapped or in RAM) with typed views for gathers."""

    def __init__(self, view: ShardView, in_memory: bool):
        self.view = view
        if in_memory:
            self.u8 = np.fromfile(view.path, dtype=np.uint8)
        else:
            # a plain ndarray over the mapping: np.memmap's subclass hooks cost more than a gather
            self.u8 = np.memmap(view.path, dtype=np.uint8, mode="r").view(np.ndarray)
        usable = len(self.u8) // 8 * 8
        self.i32 = self.u8[:usable].view(np.int32)
        self.i16 = self.u8[:usable].view(np.int16)

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

    Opening is lazy and per process: a pickled SplitData (a DataLoader or Keras worker) maps or
    loads its files again in the worker instead of shipping bytes between processes.
    """

    def __init__(self, name: str, paths: list[Path], fingerprint: str, in_memory: bool = False):
        self.name, self.fingerprint, self.in_memory = name, fingerprint, in_memory
        self.views = [ShardView.scan(p) for p in paths]
        self.starts = np.concatenate([[0], np.cumsum([v.rows for v in self.views])]).astype(
            np.int64
        )
        self.n = int(self.starts[-1])
        self._shards: list[ShardBytes] | None = None

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


def read_batches(paths: Iterable[Path]) -> Iterator[pa.RecordBatch]:
    """The Arrow record batches of shard files, in order, memory-mapped."""
    for path in paths:
        with pa.memory_map(str(path), "r") as mm:
            reader = pa.ipc.open_file(mm)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def fingerprint_file(paths: list[Path]) -> tuple[str, int]:
    """Recompute a split's fingerprint and record count from its shard files."""
    digest, records = RecordDigest(), 0
    for batch in read_batches(paths):
        digest.update(
            batch.column("id").to_pylist(),
            batch.column("sequence").to_pylist(),
            batch.column("label").to_pylist(),
        )
        records += batch.num_rows
    return digest.hexdigest(), records
