"""Readers for UniProt TSV, CSV, FASTA, Parquet and pandas DataFrames, all in chunks.

Every reader yields lists of :data:`Row` tuples ``(line, id, ec, sequence, split)`` of bounded
size (``split``: the split column's value, when one is chosen), so memory stays flat whatever the
input size; ``.gz`` input is recognised by its magic bytes. Rows that cannot be read (wrong
column count, a truncated gzip) are counted in a :class:`Skips` with their file and line.
Cleaning the sequence and assigning a label is left to the caller.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .skips import Skips

if TYPE_CHECKING:
    import pandas as pd

# (line or row number, id, EC field or None, sequence, split column value or None)
Row = tuple[int, str, "str | None", str, "str | None"]

CHUNK_ROWS = 8192
WRONG_COLUMN_COUNT = "wrong_column_count"
TRUNCATED_INPUT = "truncated_or_corrupt_input"

_FASTA = {".fasta", ".fa", ".faa", ".fas", ".fsa", ".pep", ".fna", ".ffn"}
_TSV = {".tsv", ".tab", ".txt"}
_CSV = {".csv"}
_PARQUET = {".parquet", ".pq", ".parq"}


class InputError(ValueError):
    """Input that cannot be read at all (unknown column, unknown format, missing file)."""


@dataclass(frozen=True)
class Columns:
    """Column names of a table input, matched case-insensitively (UniProt's by default)."""

    id: str = "Entry"
    ec: str | None = "EC number"
    sequence: str = "Sequence"
    split: str | None = None  # a column naming each row's split, for --split column:NAME


def describe(source: Any) -> str:
    """How a source is named in messages and manifests."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"<{type(source).__name__}>"


def detect_format(source: Any) -> str:
    """The format of a source (tsv, csv, fasta, parquet, dataframe), by name, then content."""
    if not isinstance(source, str | os.PathLike):
        if hasattr(source, "columns") and hasattr(source, "iloc"):
            return "dataframe"
        raise InputError(f"cannot read a {type(source).__name__}: give a path or a DataFrame")
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    for fmt, exts in (("fasta", _FASTA), ("tsv", _TSV), ("csv", _CSV), ("parquet", _PARQUET)):
        if ext in exts:
            return fmt
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return "parquet"
    with _open_text(path) as fh:
        first = fh.readline()
    if first.startswith(">"):
        return "fasta"
    if "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    raise InputError(f"{path}: cannot tell the format (not FASTA, TSV, CSV or Parquet)")


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - wrapped below
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def source_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file, or of every file under a directory."""
    p = Path(path)
    return (
        sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.is_dir()
        else p.stat().st_size
    )


def read_rows(
    source: Any,
    columns: Columns = Columns(),
    skips: Skips | None = None,
    fmt: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[list[Row]]:
    """Yield chunks of ``(line, id, ec, sequence, split)`` rows from any supported source.

    ``columns.ec=None`` reads unlabelled tables (``ec`` is then ``None``); FASTA is always
    unlabelled. Unreadable rows are counted in ``skips``.
    """
    skips = skips if skips is not None else Skips()
    fmt = fmt or detect_format(source)
    if fmt == "fasta":
        yield from _read_fasta(Path(source), skips, chunk_rows)
    elif fmt in ("tsv", "csv"):
        yield from _read_delimited(Path(source), fmt, columns, skips, chunk_rows)
    elif fmt == "parquet":
        yield from _read_parquet(Path(source), columns, chunk_rows)
    elif fmt == "dataframe":
        yield from _read_dataframe(source, columns, chunk_rows)
    else:
        raise InputError(f"{describe(source)}: unknown format {fmt!r}")


def _find(header: list[str], name: str, where: str, flag: str) -> int:
    lowered = [h.strip().lower() for h in header]
    try:
        return lowered.index(name.strip().lower())
    except ValueError:
        raise InputError(
            f"{where}: no column named {name!r} (columns: {', '.join(h.strip() for h in header)}); "
            f"choose one with {flag}"
        ) from None


def _positions(header: list[str], columns: Columns, where: str) -> tuple[int | None, ...]:
    """Indices of the id, EC, sequence and split columns (EC and split optional)."""
    i = _find(header, columns.id, where, "--id-column")
    e = None if columns.ec is None else _find(header, columns.ec, where, "--ec-column")
    s = _find(header, columns.sequence, where, "--sequence-column")
    p = (
        None
        if columns.split is None
        else _find(header, columns.split, where, "--split column:NAME")
    )
    return i, e, s, p


def _read_delimited(
    path: Path, fmt: str, columns: Columns, skips: Skips, chunk_rows: int
) -> Iterator[list[Row]]:
    line = 0
    chunk: list[Row] = []
    with _open_text(path) as fh:
        try:
            if fmt == "tsv":
                records = ((n, text.rstrip("\r\n").split("\t")) for n, text in enumerate(fh, 1))
            else:
                reader = csv.reader(fh)
                records = ((reader.line_num, fields) for fields in reader)
            header_line, header = next(records, (0, None))
            if not header or header == [""]:
                raise InputError(f"{path}: empty input, no header row")
            i, e, s, p = _positions(header, columns, f"{path}:{header_line}")
            width = len(header)
            for line, fields in records:
                if len(fields) != width:
                    if fields in ([], [""]):
                        continue  # blank line
                    skips.add(
                        WRONG_COLUMN_COUNT,
                        f"{path}:{line}",
                        f"{len(fields)} columns, the header has {width}",
                    )
                    continue
                chunk.append(
                    (
                        line,
                        fields[i],
                        None if e is None else fields[e],
                        fields[s],
                        None if p is None else fields[p],
                    )
                )
                if len(chunk) >= chunk_rows:
                    yield chunk
                    chunk = []
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            skips.add(TRUNCATED_INPUT, f"{path}:{line + 1}", f"reading stopped: {exc}")
        except csv.Error as exc:
            skips.add(TRUNCATED_INPUT, f"{path}:{line + 1}", f"CSV error, reading stopped: {exc}")
    if chunk:
        yield chunk


def _read_fasta(path: Path, skips: Skips, chunk_rows: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    header_line, name, parts = 0, None, []
    line = 0
    with _open_text(path) as fh:
        try:
            for line, text in enumerate(fh, 1):
                if text.startswith(">"):
                    if name is not None:
                        chunk.append((header_line, name, None, "".join(parts), None))
                        if len(chunk) >= chunk_rows:
                            yield chunk
                            chunk = []
                    fields = text[1:].split(maxsplit=1)
                    header_line, name, parts = line, fields[0] if fields else "", []
                elif name is not None:
                    parts.append("".join(text.split()))
                elif text.strip():
                    raise InputError(f"{path}:{line}: FASTA must start with a '>' header line")
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            skips.add(TRUNCATED_INPUT, f"{path}:{line + 1}", f"reading stopped: {exc}")
            name = None  # the record being read when the file broke off is incomplete
    if name is not None:
        chunk.append((header_line, name, None, "".join(parts), None))
    if chunk:
        yield chunk


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and not f.name.startswith(("_", ".")) and f.suffix.lower() in _PARQUET
    )
    if not files:
        raise InputError(f"{path}: a directory with no Parquet part files")
    return files


def _read_parquet(path: Path, columns: Columns, chunk_rows: int) -> Iterator[list[Row]]:
    import pyarrow.parquet as pq

    for part in _parquet_files(path):
        with pq.ParquetFile(part) as pf:
            names = pf.schema_arrow.names
            positions = _positions(names, columns, str(part))
            wanted = [names[k] for k in dict.fromkeys(k for k in positions if k is not None)]
            row = 0
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
                values = [
                    batch.column(names[k]).to_pylist() if k is not None else [None] * batch.num_rows
                    for k in positions
                ]
                yield _rows(row, *values)
                row += batch.num_rows


def _read_dataframe(df: pd.DataFrame, columns: Columns, chunk_rows: int) -> Iterator[list[Row]]:
    positions = _positions([str(c) for c in df.columns], columns, "<DataFrame>")
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start : start + chunk_rows]
        values = [
            part.iloc[:, k].tolist() if k is not None else [None] * len(part) for k in positions
        ]
        yield _rows(start, *values)


def _rows(first: int, ids: list, ecs: list, seqs: list, splits: list) -> list[Row]:
    """Rows from column lists (row numbers start at ``first + 1``); nulls become ''/None."""
    return [
        (first + k + 1, _text(ids[k]), _nullable(ecs[k]), _text(seqs[k]), _nullable(splits[k]))
        for k in range(len(ids))
    ]


def _text(value: Any) -> str:
    if value is None or value != value:  # None or NaN
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _nullable(value: Any) -> str | None:
    return None if value is None or value != value else str(value)
