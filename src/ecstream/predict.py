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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .alphabet import SequenceError, clean_sequence
from .atomic import atomic_open, check_not_input
from .config import TOP_K
from .predictors.base import Predictor, Scores
from .skips import Skips
from .sources import CHUNK_ROWS, Columns, SourceInfo, read_rows

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
    columns: Columns = PREDICT_COLUMNS,
    fmt: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    allow_partial: bool = False,
) -> dict:
    """Score every record of ``source`` into a TSV at ``out``, in input order.

    ``source`` may be ``"-"`` (stdin) and ``out`` ``"-"`` (stdout, written as rows are scored, so
    not atomic); a file is written atomically and never replaces the input or the run. A record
    that cannot be scored (no sequence, characters that are not letters) keeps its row, with the
    ``error`` column saying why. A line that cannot be read as a record at all (wrong column
    count) has no id to give a row: it is counted under ``unreadable`` with its file and line.
    An input that ends early or cannot be decoded is refused (nothing is written to a file)
    unless ``allow_partial``: then the records before the break are predicted and ``partial``
    says where it stopped. Returns counts and the speed.
    """
    if str(out) != STDOUT:
        check_not_input(out, [source, model.run])
    classes, names = model.policy.classes, model.policy.names
    header = [
        "id", "ec_class", "class_name", "probability", *(f"p_{k}" for k in classes),
        "top_k", "length", "handled", *model.extra_columns, "error",
    ]  # fmt: skip
    extra_blank = [""] * len(model.extra_columns)
    no_class = [""] * (len(classes) + 4)  # class, name, probability, p_*, top_k
    skips, info = Skips(), SourceInfo()
    counts = {"records": 0, "scored": 0, "errors": 0}
    start = time.perf_counter()
    chunks = read_rows(
        source, columns, skips, fmt, chunk_rows, allow_partial=allow_partial, info=info
    )
    first = next(chunks, None)  # an input that cannot be opened fails before any output exists
    with _output(out) as fh:
        writer = TsvWriter(fh)
        writer.row(header)
        for rows in itertools.chain([first] if first else [], chunks):
            ids, seqs, keep, errors = [], [], [], {}
            for k, (_, rid, _, seq, _) in enumerate(rows):
                try:
                    seqs.append(clean_sequence(seq).encode())
                except SequenceError as error:
                    errors[k] = str(error)
                    continue
                keep.append(k)
                ids.append(rid)
            scores = model.score(ids, seqs) if seqs else Scores(np.zeros((0, len(classes))))
            at = {k: j for j, k in enumerate(keep)}
            for k, (_, rid, _, seq, _) in enumerate(rows):
                if k in errors:
                    length = str(len(seq.strip()))
                    writer.row([rid, *no_class, length, "", *extra_blank, errors[k]])
                    continue
                j = at[k]
                p = scores.probs[j]
                extras = [str(scores.extra[c][j]) for c in model.extra_columns]
                length = len(seqs[j])
                if np.isnan(p).all():  # e.g. no homolog found: no class, not an error
                    writer.row([rid, *no_class, str(length), model.handled(length), *extras, ""])
                    continue
                best = int(np.argmax(p))
                ranked = np.argsort(-p, kind="stable")[:top_k]
                writer.row([
                    rid, classes[best], names[best], f"{p[best]:.4f}", *(f"{v:.4f}" for v in p),
                    "; ".join(f"{classes[r]} ({p[r]:.3f})" for r in ranked),
                    str(length), model.handled(length), *extras, "",
                ])  # fmt: skip
            counts["records"] += len(rows)
            counts["scored"] += len(keep)
            counts["errors"] += len(errors)
            if progress:
                progress(counts["records"])
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
