"""Prediction of files of any size: records streamed in chunks, scored, written in input order.

Which sequences a run scores whole, and how it scores them, is the predictor's (see
:mod:`ecstream.predictors`); this module is the driver: read, clean, score, write.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from .allocator import release_free_memory
from .alphabet import SequenceError, clean_sequence
from .atomic import atomic_open, check_not_input, check_plain_output, write_json
from .config import TOP_K
from .hierarchy import decode, partial, top_numbers
from .kinds import is_whole
from .predictors.base import Predictor
from .records import groups
from .runs import check_outside_runs_and_stores
from .skips import Skips
from .sources import CHUNK_ROWS, Columns, InputError, SourceInfo, describe, is_stream, read_rows
from .version import __version__

PREDICT_COLUMNS = Columns(id="Entry", ec=None, sequence="Sequence")
STDOUT = "-"


class _Utf8:
    """Text written to a binary stream as UTF-8 (stdout, whatever the locale says)."""

    def __init__(self, binary: IO[bytes]):
        self._binary = binary

    def write(self, text: str) -> int:
        return self._binary.write(text.encode("utf-8"))


@contextlib.contextmanager
def _output(out: str | os.PathLike) -> Iterator[Any]:
    """A text file written atomically, or stdout for ``"-"`` (streamed as rows are scored)."""
    if str(out) == STDOUT:
        sys.stdout.flush()  # anything printed before goes first
        yield _Utf8(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with atomic_open(Path(out), "w", encoding="utf-8", newline="") as fh:
            yield fh


class TsvWriter:
    """Rows of a TSV that csv readers and pandas read back exactly, whatever the ids hold.

    A field holding a tab, a quote or a line end is quoted; the csv module quotes a carriage
    return only when it is part of the line end, so a row holding one is quoted whole.
    """

    def __init__(self, fh: Any):
        self._plain = csv.writer(fh, delimiter="\t", lineterminator="\n")
        self._quoted = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL)

    def row(self, fields: Sequence[str]) -> None:
        quoted = any("\r" in f for f in fields)
        (self._quoted if quoted else self._plain).writerow(fields)


def predict_file(
    model: Predictor,
    source: Any,
    out: str | os.PathLike,
    *,
    top_k: int = TOP_K,
    min_confidence: float | None = None,
    columns: Columns = PREDICT_COLUMNS,
    fmt: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int | str], None] | None = None,
    allow_partial: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Score every record of ``source`` into a TSV at ``out``, in input order.

    Columns: the seven-class view (``ec_class`` … ``top_k``), then the EC numbers decoded at the
    run's thresholds (or ``min_confidence`` at every level): ``ec_number`` (numbers joined by
    ``;``, partial ones allowed, empty when no level clears its threshold), ``confidence`` (of
    the first number at its deepest stated level), ``depth`` (levels it states) and
    ``ec_top_k`` (the ``top_k`` most probable numbers of the deepest level). A sidecar
    ``OUT.json`` records the run, a hash of its model, the ecstream version and the thresholds.

    ``source`` may be ``"-"`` (stdin) and ``out`` ``"-"`` (stdout, written as rows are scored, so
    not atomic, and without sidecar); a file is written atomically and never replaces the input
    or the run. A record that cannot be scored (no sequence, characters that are not letters)
    keeps its row, with the ``error`` column saying why. A line that cannot be read as a record
    at all (wrong column count) has no id to give a row: it is counted under ``unreadable`` with
    its file and line. An input that ends early or cannot be decoded is refused (nothing is
    written to a file) unless ``allow_partial``: then the records before the break are
    predicted and ``partial`` says where it stopped. Returns counts and the speed.

    A CNN run on CPU scores several slices of ``config.SCORE_ROWS`` records at once, in
    threads (``Predictor.parallel_parts``), PyTorch's thread count shared out among them for
    the duration, process-wide; the output is that of one slice after the other. A kNN or
    hybrid run searches :data:`~ecstream.mmseqs.search.SEARCH_ROWS` records or so at once
    (``Predictor.search_ahead``), whatever ``chunk_rows``: a search pays a fixed cost. So its
    rows reach ``out`` (stdout too) a group at a time. Before each such search ``progress``
    gets a message (text); otherwise the number of records written so far.

    ``shard=(i, n)`` scores part ``i`` (from 0) of ``n``: the records ``[i·N/n, (i+1)·N/n)`` of
    the ``N`` in the input, counted by a first pass (cheap next to scoring; it works for gzip,
    not for stdin). Each part has the header, so the parts concatenated in order, with the
    repeated headers dropped, are the output of one machine; each counts the unreadable lines
    of its own stretch of the input, so the parts' counts add up to one machine's.
    """
    if not isinstance(model, Predictor):
        raise TypeError(f"give a loaded model (ecstream.load_model(run)), got {model!r}")
    if not is_whole(top_k) or top_k < 1:
        raise ValueError(f"--top-k must be a whole number of at least 1, got {top_k!r}")
    if str(out) != STDOUT:
        for written in (out, sidecar(out)):  # both refused before anything is scored
            check_not_input(written, [source, model.run])
            check_outside_runs_and_stores(written)
            check_plain_output(Path(written))
    classes = model.policy.classes
    header = [
        "id", "ec_class", "class_name", "probability", *(f"p_{k}" for k in classes), "top_k",
        "ec_number", "confidence", "depth", "ec_top_k", "length", "handled",
        *model.extra_columns, "error",
    ]  # fmt: skip
    thresholds = model.level_thresholds(min_confidence)
    skips, info = Skips(), SourceInfo()
    counts = {"records": 0, "scored": 0, "errors": 0}
    start = time.perf_counter()
    part = None if shard is None else part_bounds(source, shard, columns, fmt, allow_partial)
    if part is not None:  # a part counts the unreadable lines of its stretch of the input only
        skips.lines_window = part.lines
    chunks = read_rows(
        source, columns, skips, fmt, chunk_rows, allow_partial=allow_partial, info=info
    )
    if part is not None:
        chunks = _only(chunks, part.first, part.end)
    first = next(chunks, None)  # an input that cannot be opened fails before any output exists
    with _output(out) as fh:
        writer = TsvWriter(fh)
        writer.row(header)
        every = _announced(model, itertools.chain([first] if first else [], chunks), progress)
        for rows, lines in _scored_parts(model, _parts(model, every), top_k, thresholds):
            _write_part(rows, lines, writer, counts)
            del rows, lines  # the written part's arrays go back now: see ecstream.allocator
            release_free_memory()
            if progress:
                progress(counts["records"])
        if str(out) != STDOUT:  # an earlier sidecar goes before the TSV it describes does:
            with contextlib.suppress(FileNotFoundError):  # a kill between the two leaves a
                os.unlink(sidecar(out))  # TSV without one, never beside another run's
    if str(out) != STDOUT:
        write_json(sidecar(out), _provenance(model, thresholds, min_confidence))
    seconds = time.perf_counter() - start
    return {
        **counts,
        "format": info.format,
        "unreadable": skips.to_dict(),
        "unreadable_lines": skips.lines(),
        "partial": info.partial(),
        "seconds": seconds,
        "per_second": counts["records"] / max(seconds, 1e-9),
    }


def _announced(
    model: Predictor, chunks: Iterable[list], progress: Callable[[int | str], None] | None
) -> Iterator[list]:
    """The chunks as they come; to a homology predictor, each group of ``search_rows`` or so
    records announced (:meth:`~ecstream.predictors.base.Predictor.search_ahead`) as its
    first chunk is taken, so that one search serves the group's chunks."""
    if not model.search_rows:
        yield from chunks
        return
    for group in groups(chunks, model.search_rows):
        if progress:
            progress(f"homology search of the next {sum(map(len, group)):,} records (MMseqs2)")
        model.search_ahead([seq for rows in group for seq in _cleaned(rows)[1]])
        yield from group
        group.clear()  # before the next group is read: one group's rows held at a time


def _cleaned(rows: list) -> tuple[list[str], list[bytes], list[int], dict[int, str]]:
    """The ids and cleaned sequences of the rows that can be scored, their places among the
    rows, and the others' errors by place."""
    ids, seqs, keep, errors = [], [], [], {}
    for k, (_, rid, _, seq, _) in enumerate(rows):
        try:
            seqs.append(clean_sequence(seq).encode())
        except SequenceError as error:
            errors[k] = str(error)
            continue
        keep.append(k)
        ids.append(rid)
    return ids, seqs, keep, errors


def _parts(model: Predictor, chunks: Iterable[list]) -> Iterator[list]:
    """The input's rows in parts of ``model.score_rows`` (a chunk whole when it has none)."""
    for chunk in chunks:
        step = model.score_rows or len(chunk) or 1
        yield from (chunk[a : a + step] for a in range(0, len(chunk), step))


def _scored_parts(
    model: Predictor, parts: Iterator[list], top_k: int, thresholds: list
) -> Iterator[tuple[list, _Lines]]:
    """Each part with its scored lines, in input order. Where the model scores several parts
    at once (:meth:`~ecstream.predictors.base.Predictor.parallel_parts`), as many are scored
    in threads ahead of the one being written, so that reading, decoding and writing, which
    use one core, overlap with scoring."""
    with model.parallel_parts() as workers:
        if workers <= 1:
            for rows in parts:
                yield rows, _Lines.of(model, rows, top_k, thresholds)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="ecstream-score") as pool:
            pending: deque[tuple[list, Future[_Lines]]] = deque()

            def submit(rows: list) -> None:
                pending.append((rows, pool.submit(_Lines.of, model, rows, top_k, thresholds)))

            try:
                for rows in itertools.islice(parts, workers):
                    submit(rows)
                while True:
                    for rows in itertools.islice(parts, 1):  # one more, as one is taken
                        submit(rows)
                    if not pending:
                        return
                    yield _result(pending.popleft())  # held here by nothing once written
            finally:  # an error or an early stop: start no more parts
                pool.shutdown(cancel_futures=True)


def _result(entry: tuple[list, Future[_Lines]]) -> tuple[list, _Lines]:
    """A part and its lines, once its thread has scored them (its error raised here)."""
    rows, lines = entry
    return rows, lines.result()


def _write_part(rows: list, lines: _Lines, writer: TsvWriter, counts: dict) -> None:
    """Write one scored part, in input order (a record that could not be cleaned: its error)."""
    at = {k: j for j, k in enumerate(lines.keep)}
    for k, (_, rid, _, seq, _) in enumerate(rows):
        if k in lines.errors:
            writer.row(lines.error(rid, len(seq.strip()), lines.errors[k]))
        else:
            writer.row(lines.row(at[k]))
    counts["records"] += len(rows)
    counts["scored"] += len(lines.keep)
    counts["errors"] += len(lines.errors)


@dataclass(frozen=True)
class Part:
    """Part ``i`` of ``n`` of an input: its records ``[first, end)``, and the input lines
    ``[lines[0], lines[1])`` it answers for (from the line of its first record to that of the
    next part's; the first part from line 0, the last to the end), so that each unreadable
    line is counted by exactly one part."""

    first: int
    end: int
    lines: tuple[int, int | None]


def part_bounds(
    source: Any, shard: tuple[int, int], columns: Columns, fmt: str | None, allow_partial: bool
) -> Part:
    """Part ``shard = (i, n)`` of ``source``, found by a counting pass."""
    i, n = shard
    if not (is_whole(i) and is_whole(n)) or n < 1:
        raise ValueError(f"--shard {i}/{n}: two whole numbers, part I (from 0) of N parts")
    if not 0 <= i < n:
        raise ValueError(f"--shard {i}/{n}: the part must be in 0 … {n - 1}")
    if is_stream(source):
        raise InputError(f"--shard reads {describe(source)} twice (to count it): give a file")

    def rows() -> Iterator[tuple]:
        for chunk in read_rows(source, columns, Skips(), fmt, allow_partial=allow_partial):
            yield from chunk

    total = sum(1 for _ in rows())
    first, end = i * total // n, (i + 1) * total // n
    if total == 0:  # nothing to score: the first part answers for every line
        return Part(0, 0, (0, None) if i == 0 else (0, 0))
    # a second pass, to the next part's first record, for the lines (memory stays flat)
    wanted: dict[int, int] = {}
    if i:
        wanted[first] = 0
    if i < n - 1:
        wanted[end] = 0
    for k, row in enumerate(itertools.islice(rows(), max(wanted, default=-1) + 1)):
        if k in wanted:
            wanted[k] = row[0]
    return Part(first, end, (wanted.get(first, 0) if i else 0, wanted[end] if i < n - 1 else None))


def _only(chunks: Iterator[list], first: int, end: int) -> Iterator[list]:
    """The rows numbered ``[first, end)`` of a stream of row chunks. Reading stops in the chunk
    that holds row ``end``, not at a chunk that ends at ``end - 1``: the lines before row
    ``end`` belong to this part's count of unreadable lines (:class:`Part`)."""
    seen = 0
    for rows in chunks:
        part = rows[max(first - seen, 0) : max(end - seen, 0)]
        seen += len(rows)
        if part:
            yield part
        if seen > end:
            return


def sidecar(out: str | os.PathLike) -> Path:
    """Where the provenance of a predictions file is written: ``OUT.json``."""
    return Path(f"{out}.json")


def _provenance(model: Predictor, thresholds: list, min_confidence: float | None) -> dict:
    return {
        "run": str(Path(model.run).resolve()),
        "kind": model.kind,
        "model_sha256": model.model_hash(),
        "ecstream_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "thresholds": thresholds,
        "thresholds_from": "--min-confidence"
        if min_confidence is not None
        else ("the run's calibration" if model.thresholds is not None else "uncalibrated default"),
        "levels": model.vocab.depth,
        "scoring_precision": model.precision,
    }


class _Lines:
    """The output rows of one part of scored sequences."""

    def __init__(
        self, model: Predictor, ids, seqs, top_k: int, thresholds: list, keep, errors
    ) -> None:
        self.model, self.ids, self.seqs, self.top_k = model, ids, seqs, top_k
        self.keep, self.errors = keep, errors  # the part's rows scored; the others' errors
        classes = model.policy.classes
        self.blank = [""] * (len(classes) + 4 + 4)  # class … top_k, ec_number … ec_top_k
        if seqs:
            self.scores = model.score(ids, seqs)
            self.calls = decode(self.scores.levels, model.vocab, thresholds)
            self.top = top_numbers(self.scores.levels[-1], model.vocab, top_k)
            # the part's rankings at once, and Python floats (formatted 3x faster than numpy's)
            probs = self.scores.probs
            self.missing = np.isnan(probs).all(axis=1).tolist()
            self.best = np.argmax(probs, axis=1).tolist()
            self.ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k].tolist()
            self.p = probs.tolist()

    @classmethod
    def of(cls, model: Predictor, rows: list, top_k: int, thresholds: list) -> _Lines:
        """Clean and score a part's records (one that cannot be cleaned keeps its error)."""
        ids, seqs, keep, errors = _cleaned(rows)
        return cls(model, ids, seqs, top_k, thresholds, keep, errors)

    def error(self, rid: str, length: int, message: str) -> list[str]:
        extra = [""] * len(self.model.extra_columns)
        return [rid, *self.blank, str(length), "", *extra, message]

    def row(self, j: int) -> list[str]:
        model, scores = self.model, self.scores
        classes, names = model.policy.classes, model.policy.names
        extras = [str(scores.extra[c][j]) for c in model.extra_columns]
        length = len(self.seqs[j])
        tail = [str(length), model.handled(length), *extras, ""]
        if self.missing[j]:  # e.g. no homolog found: no class, not an error
            classes_blank = self.blank[: len(self.blank) - 4]
            return [self._id(j), *classes_blank, "", "", "0", "", *tail]
        p, best, calls = self.p[j], self.best[j], self.calls[j]
        ec = [
            ";".join(c.number for c in calls),
            f"{calls[0].confidence:.4f}" if calls else "",
            str(calls[0].depth if calls else 0),
            "; ".join(f"{partial(n)} ({q:.3f})" for n, q in self.top[j] if q > 0),
        ]
        return [
            self._id(j), classes[best], names[best], f"{p[best]:.4f}", *(f"{v:.4f}" for v in p),
            "; ".join(f"{classes[r]} ({p[r]:.3f})" for r in self.ranked[j]), *ec, *tail,
        ]  # fmt: skip

    def _id(self, j: int) -> str:
        return self.ids[j]
