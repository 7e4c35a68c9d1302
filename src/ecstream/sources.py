"""Readers for UniProt TSV, CSV, FASTA, Parquet and pandas DataFrames, all in chunks.

Every reader yields lists of :data:`Row` tuples ``(line, id, ec, sequence, split)`` of bounded
size (``split``: the split column's value, when one is chosen), so memory stays flat whatever the
input size. A text input (TSV, CSV, FASTA) is a file, a pipe such as ``/dev/fd/63`` or stdin
(``-``), opened once: gzip is recognised by its magic bytes and FASTA or table by the first line,
both peeked at without seeking, so pipes work. Text is decoded strictly as UTF-8 (a leading
byte-order mark is dropped).

An input that ends early or cannot be decoded (a cut or damaged gzip stream, bytes that are not
UTF-8, a CSV error, a last line without a line end) raises :class:`DamagedInputError` naming the
file and line, unless the caller passes ``allow_partial=True``: then reading stops there, the rows
before it are kept, and the place is counted in a :class:`Skips` and recorded in
:class:`SourceInfo`. Rows that cannot be read (wrong column count) are counted with their file
and line. Cleaning the sequence and assigning a label is left to the caller.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import os
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .remote import input_files, is_prefix, is_remote, open_input
from .skips import Skips

if TYPE_CHECKING:
    import pandas as pd

# (line or row number, id, EC field or None, sequence, split column value or None)
Row = tuple[int, str, "str | None", str, "str | None"]

CHUNK_ROWS = 8192
WRONG_COLUMN_COUNT = "wrong_column_count"
REPEATED_HEADER = "repeated_header"  # files joined end to end (cat a.tsv b.tsv)
TRUNCATED_INPUT = "truncated_or_corrupt_input"
STDIN = "-"  # the name of standard input, as in most Unix tools
TEXT_FORMATS = ("fasta", "tsv", "csv")
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
# far longer than any protein; bounds the memory a file without line ends can take
MAX_LINE_BYTES = 64 << 20

_FASTA = {".fasta", ".fa", ".faa", ".fas", ".fsa", ".pep", ".fna", ".ffn"}
_TSV = {".tsv", ".tab", ".txt"}
_CSV = {".csv"}
_PARQUET = {".parquet", ".pq", ".parq"}
_SPACE = str.maketrans("", "", " \t\r\n")  # what a FASTA sequence line may hold besides residues


class InputError(ValueError):
    """Input that cannot be read at all (unknown column, unknown format, missing file)."""


class DamagedInputError(InputError):
    """An input that ends early or cannot be decoded; ``allow_partial`` keeps the rows before."""


@dataclass(frozen=True)
class Columns:
    """Column names of a table input, matched case-insensitively (UniProt's by default)."""

    id: str = "Entry"
    ec: str | None = "EC number"
    sequence: str = "Sequence"
    split: str | None = None  # a column naming each row's split, for --split column:NAME


@dataclass
class SourceInfo:
    """What reading one source found, filled in while it is read."""

    name: str = ""
    format: str | None = None
    rows: int = 0  # rows handed out
    stopped: str | None = None  # with allow_partial: "FILE:LINE: why" where reading stopped early

    def partial(self) -> dict | None:
        """How much of a source that broke off was kept (for manifests and summaries)."""
        if self.stopped is None:
            return None
        return {"stopped_at": self.stopped, "rows_kept": self.rows}


def describe(source: Any) -> str:
    """How a source is named in messages and manifests."""
    if isinstance(source, str | os.PathLike):
        return "<stdin>" if str(source) == STDIN else str(source)
    return f"<{type(source).__name__}>"


def is_stream(source: Any) -> bool:
    """Whether a source can be read only once: stdin (``-``) or a pipe such as ``/dev/fd/63``."""
    if not isinstance(source, str | os.PathLike):
        return False
    if str(source) == STDIN:
        return True
    if is_remote(source):  # a remote file can be opened again
        return False
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _format_by_name(source: Any) -> str | None:
    """The format that the kind of source or its name gives; None: to be sniffed from its text."""
    if not isinstance(source, str | os.PathLike):
        if hasattr(source, "columns") and hasattr(source, "iloc"):
            return "dataframe"
        raise InputError(f"cannot read a {type(source).__name__}: give a path or a DataFrame")
    if str(source) == STDIN:
        return None
    remote = is_remote(source)
    # a remote file: by its name only (a text format is then told by its first line)
    path = Path(urlsplit(str(source)).path) if remote else Path(source)
    if not remote and not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not remote and path.is_dir():
        return "parquet"  # a directory is read as a dataset of Parquet parts
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    for fmt, exts in (("fasta", _FASTA), ("tsv", _TSV), ("csv", _CSV), ("parquet", _PARQUET)):
        if ext in exts:
            return fmt
    if not remote and path.is_file():  # a regular file can be opened again: Parquet's magic?
        with open(path, "rb") as fh:
            if fh.read(4) == b"PAR1":
                return "parquet"
    if remote and is_prefix(str(source)):  # a prefix, like a local directory
        return "parquet"
    return None


def detect_format(source: Any) -> str | None:
    """The format of a source (tsv, csv, fasta, parquet, dataframe), by name, then content.

    None for a stream (stdin, a pipe) without a telling name: its content can be read only once,
    so :func:`read_rows` sniffs it as it reads.
    """
    fmt = _format_by_name(source)
    if fmt is not None or is_stream(source):
        return fmt
    with contextlib.closing(_TextInput(source)) as text:
        try:
            return text.sniff()
        except _Damage as damage:
            raise DamagedInputError(f"{text.name}:{damage.line}: {damage.reason}") from None


class _Damage(Exception):
    """Where a text input breaks off or cannot be decoded (turned into an error or a skip)."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


class _Prefixed(io.RawIOBase):
    """``head``, then the rest of ``raw``: bytes peeked at on a pipe, which cannot seek back."""

    def __init__(self, head: bytes, raw: IO[bytes], owned: bool):
        self._head, self._raw, self._owned = head, raw, owned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        # one read of what is there, so a slow pipe streams instead of filling a buffer first
        read = getattr(self._raw, "readinto1", self._raw.readinto)
        return read(buffer)

    def close(self) -> None:
        if self._owned and not self.closed:
            self._raw.close()
        super().close()


def _why(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return f"the gzip data end early ({error})"
    if isinstance(error, zlib.error | gzip.BadGzipFile):
        # damaged deflate data can decode to wrong bytes before the damage shows
        return (
            f"the gzip data are damaged ({error}; gzip checks its data only at the end, so "
            "the rows before are unverified)"
        )
    return f"reading failed ({error})"


class _TextInput:
    """One text input opened once, read as strictly decoded lines with their line ends.

    Every way the text can break off or be undecodable raises :class:`_Damage` with the line.
    """

    def __init__(self, source: Any):
        self.name = describe(source)
        owned = str(source) != STDIN
        if is_remote(source):
            raw: IO[bytes] = open_input(str(source))
        else:
            raw = open(source, "rb") if owned else sys.stdin.buffer  # noqa: SIM115
        head = b""
        while len(head) < len(GZIP_MAGIC) and (more := raw.read(len(GZIP_MAGIC) - len(head))):
            head += more
        # a .gz name decides nothing (content does), but an empty one is a cut, not an input
        self._empty_gzip = not head and self.name.lower().endswith((".gz", ".gzip"))
        self._buffered = io.BufferedReader(_Prefixed(head, raw, owned), 1 << 16)
        self._gzip = head == GZIP_MAGIC
        self._fh: IO[bytes] = (
            gzip.GzipFile(fileobj=self._buffered, mode="rb") if self._gzip else self._buffered
        )
        self.line = 0  # the number of the last line read
        self._first: str | None = None  # the line sniff() read, not yet handed out

    def close(self) -> None:
        self._fh.close()
        self._buffered.close()

    def _next(self) -> str | None:
        """The next line with its line end, or None at the end of the input."""
        try:
            data = self._fh.readline(MAX_LINE_BYTES + 1)
        except (EOFError, zlib.error, OSError) as error:  # gzip.BadGzipFile is an OSError
            raise _Damage(self.line + 1, _why(error)) from None
        if not data:
            if self._empty_gzip:
                raise _Damage(1, "the file is empty: no gzip data")
            return None
        self.line += 1
        if self.line == 1 and data.startswith(BOM):
            data = data[len(BOM) :]
        if not data.endswith(b"\n"):
            if len(data) > MAX_LINE_BYTES:
                raise _Damage(self.line, f"a line longer than {MAX_LINE_BYTES >> 20} MiB")
            # a file cut in the middle of its last line would give a shorter last record
            raise _Damage(
                self.line, "the last line has no line end (if the file is complete, end it "
                "with a newline)"
            )  # fmt: skip
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = data[error.start : error.start + 1]
            raise _Damage(
                self.line, f"byte {error.start + 1} of the line ({bad!r}) is not UTF-8 text"
            ) from None

    def lines(self) -> Iterator[str]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while (text := self._next()) is not None:
            yield text

    def sniff(self) -> str:
        """The format told by the first line (kept to be handed out by :meth:`lines`)."""
        if self._first is None and self.line == 0:
            self._first = self._next()
        first = self._first or ""
        if first.startswith(">"):
            return "fasta"
        if "\t" in first:
            return "tsv"
        if "," in first:
            return "csv"
        raise InputError(f"{self.name}: cannot tell the format (not FASTA, TSV, CSV or Parquet)")


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
    *,
    allow_partial: bool = False,
    info: SourceInfo | None = None,
    limit: int | None = None,
) -> Iterator[list[Row]]:
    """Yield chunks of ``(line, id, ec, sequence, split)`` rows from any supported source.

    ``source`` is a path, ``"-"`` (stdin) or a DataFrame. ``columns.ec=None`` reads unlabelled
    tables (``ec`` is then ``None``); FASTA is always unlabelled. Unreadable rows are counted in
    ``skips``. An input that ends early or cannot be decoded raises :class:`DamagedInputError`,
    or with ``allow_partial`` stops there, keeping the rows before it; ``info`` receives the
    format, the number of rows and where reading stopped. ``limit``: stop after that many rows,
    reading nothing beyond them (so damage or bad rows after them neither fail nor count).
    """
    skips = skips if skips is not None else Skips()
    info = info if info is not None else SourceInfo()
    info.name = describe(source)
    fmt = fmt or _format_by_name(source)
    if fmt in TEXT_FORMATS and not isinstance(source, str | os.PathLike):
        raise InputError(f"{info.name}: a {fmt} input is a path, or '-' for stdin")
    local = str(source) != STDIN and not is_remote(source)
    if fmt in TEXT_FORMATS and local and not Path(source).exists():
        raise InputError(f"{source}: no such file or directory")
    if fmt in ("parquet", "dataframe"):
        info.format = fmt
        chunks = (
            _read_parquet(source, columns, chunk_rows)
            if fmt == "parquet"
            else _read_dataframe(source, columns, chunk_rows)
        )
        for chunk in chunks:
            if limit is not None:
                chunk = chunk[: limit - info.rows]
            info.rows += len(chunk)
            if chunk:
                yield chunk
            if limit is not None and info.rows >= limit:
                return
    elif fmt is None or fmt in TEXT_FORMATS:
        with contextlib.closing(_TextInput(source)) as text:
            rows = itertools.islice(_text_rows(text, fmt, columns, skips, info), limit)
            yield from _chunks(rows, text.name, skips, chunk_rows, allow_partial, info)
    else:
        raise InputError(f"{info.name}: unknown format {fmt!r}")


def _chunks(
    rows: Iterator[Row],
    name: str,
    skips: Skips,
    chunk_rows: int,
    allow_partial: bool,
    info: SourceInfo,
) -> Iterator[list[Row]]:
    """Rows in chunks; damage raises :class:`DamagedInputError`, or ends reading if allowed."""
    chunk: list[Row] = []
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                info.rows += len(chunk)
                yield chunk
                chunk = []
    except _Damage as damage:
        where = f"{name}:{damage.line}"
        if not allow_partial:
            raise DamagedInputError(
                f"{where}: {damage.reason}. The input is cut short or damaged, so it is refused; "
                f"--allow-partial (allow_partial=True) reads the {info.rows + len(chunk):,} rows "
                "before it"
            ) from None
        skips.add(TRUNCATED_INPUT, where, f"reading stopped: {damage.reason}", line=damage.line)
        info.stopped = f"{where}: {damage.reason}"
    if chunk:
        info.rows += len(chunk)
        yield chunk


def _text_rows(
    text: _TextInput, fmt: str | None, columns: Columns, skips: Skips, info: SourceInfo
) -> Iterator[Row]:
    fmt = fmt or text.sniff()
    info.format = fmt
    if fmt == "fasta":
        yield from _fasta_rows(text)
    else:
        yield from _delimited_rows(text, fmt, columns, skips)


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


def _csv_records(text: _TextInput) -> Iterator[tuple[int, list[str]]]:
    # strict: a quote left open or text after a closing quote is an error, not a guess that
    # could swallow the rows after it into one field
    reader = csv.reader(text.lines(), strict=True)
    try:
        for fields in reader:
            yield reader.line_num, fields
    except csv.Error as error:
        raise _Damage(text.line, f"CSV error: {error}") from None


def _delimited_rows(text: _TextInput, fmt: str, columns: Columns, skips: Skips) -> Iterator[Row]:
    if fmt == "tsv":  # UniProt's TSV: one row a line, no quoting
        lines = enumerate(text.lines(), 1)
        records = ((n, line.rstrip("\r\n").split("\t")) for n, line in lines)
    else:
        records = _csv_records(text)
    header_line, header = next(records, (0, None))
    if not header or header == [""]:
        raise InputError(f"{text.name}: empty input, no header row")
    i, e, s, p = _positions(header, columns, f"{text.name}:{header_line}")
    width = len(header)
    for line, fields in records:
        if fields == header:  # not a protein named "Entry" with sequence "Sequence"
            skips.add(REPEATED_HEADER, f"{text.name}:{line}", "the header row again", line=line)
            continue
        if len(fields) != width:
            if fields in ([], [""]):
                continue  # blank line
            skips.add(
                WRONG_COLUMN_COUNT,
                f"{text.name}:{line}",
                f"{len(fields)} columns, the header has {width}",
                line=line,
            )
            continue
        yield (
            line,
            fields[i],
            None if e is None else fields[e],
            fields[s],
            None if p is None else fields[p],
        )


def _fasta_rows(text: _TextInput) -> Iterator[Row]:
    header_line, name, parts = 0, None, []
    for line, content in enumerate(text.lines(), 1):
        if content.startswith(">"):
            if name is not None:
                yield (header_line, name, None, "".join(parts), None)
            fields = content[1:].split(maxsplit=1)
            header_line, name, parts = line, fields[0] if fields else "", []
        elif name is not None:
            # only spaces and line ends go: any other byte stays, to be refused by name later
            parts.append(content.translate(_SPACE))
        elif content.strip():
            raise InputError(f"{text.name}:{line}: FASTA must start with a '>' header line")
    # a record that the input broke off in the middle of never gets here: _Damage ends the loop
    if name is not None:
        yield (header_line, name, None, "".join(parts), None)


def _is_part(parts: Sequence[str]) -> bool:
    """Whether a file (its path's parts below a dataset's root) is a Parquet part: nothing
    hidden at any depth (``_delta_log/``, ``_temporary/``, ``.spark-staging/`` hold no parts)."""
    return Path(parts[-1]).suffix.lower() in _PARQUET and not any(
        p.startswith(("_", ".")) for p in parts
    )


def _parquet_files(source: Any) -> list[tuple[str, Any]]:
    """A Parquet input's files, each as its name and its path (or, in object storage, an opener
    of it): the file, or the part files of a directory or of a prefix."""
    if is_remote(source):
        files: list[tuple[str, Any]] = input_files(source, _is_part)  # opened one at a time
    elif not (path := Path(source)).exists():
        raise InputError(f"{source}: no such file or directory")
    elif path.is_file():
        files = [(str(path), path)]
    else:
        files = [
            (str(f), f)
            for f in sorted(path.rglob("*"))
            if f.is_file() and _is_part(f.relative_to(path).parts)
        ]
    if not files:
        raise InputError(f"{source}: a directory with no Parquet part files")
    return files


def _read_parquet(source: Any, columns: Columns, chunk_rows: int) -> Iterator[list[Row]]:
    import pyarrow as pa

    for name, part in _parquet_files(source):
        try:
            yield from _read_parquet_file(name, part, columns, chunk_rows)
        except (pa.ArrowException, OSError) as error:  # pyarrow's message names no file
            if isinstance(error, OSError) and error.errno is not None:
                raise  # a system error (a file gone, a full disk) names its file itself
            # a damaged footer is a plain OSError without errno (thrift cannot deserialize it)
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise InputError(f"{name}: damaged, or not a Parquet file ({text})") from error


def _read_parquet_file(
    name: str, part: Any, columns: Columns, chunk_rows: int
) -> Iterator[list[Row]]:
    """One Parquet file's rows, a batch at a time."""
    import pyarrow.parquet as pq

    # a file we open is ours to close: ParquetFile closes only what it opened itself
    opened = part() if callable(part) else contextlib.nullcontext(part)
    # pre_buffer (pyarrow's default) reads ahead the ranges of every row group at once:
    # memory would grow with the file, and a remote file would arrive in one request
    with opened as f, pq.ParquetFile(f, pre_buffer=False) as pf:
        names = pf.schema_arrow.names
        positions = _positions(names, columns, name)
        wanted = [names[k] for k in dict.fromkeys(k for k in positions if k is not None)]
        row = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
            try:
                values = [
                    batch.column(names[k]).to_pylist() if k is not None else [None] * batch.num_rows
                    for k in positions
                ]
            except UnicodeDecodeError as error:  # pyarrow does not check a string column's UTF-8
                raise InputError(
                    f"{name}: rows {row + 1:,}–{row + batch.num_rows:,}: damaged, a text column "
                    f"is not UTF-8 ({error})"
                ) from None
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
