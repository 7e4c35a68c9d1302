"""Prediction of files of any size: records streamed in chunks, scored, written in input order.

Which sequences a run scores whole, and how it scores them, is the predictor's (see
:mod:`ecstream.predictors`); this module is the driver: read, clean, score, write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .alphabet import SequenceError, clean_sequence
from .atomic import atomic_open
from .config import TOP_K
from .predictors.base import Predictor, Scores
from .skips import Skips
from .sources import CHUNK_ROWS, Columns, read_rows

PREDICT_COLUMNS = Columns(id="Entry", ec=None, sequence="Sequence")


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
) -> dict:
    """Score every record of ``source`` into a TSV at ``out`` (written atomically), input order.

    A record that cannot be scored (no sequence, characters that are not letters) keeps its row,
    with the ``error`` column saying why. A line that cannot be read as a record at all (wrong
    column count, a truncated gzip) has no id to give a row: it is counted under ``unreadable``
    with its file and line. Returns counts and the speed.
    """
    classes, names = model.policy.classes, model.policy.names
    header = [
        "id", "ec_class", "class_name", "probability", *(f"p_{k}" for k in classes),
        "top_k", "length", "handled", *model.extra_columns, "error",
    ]  # fmt: skip
    extra_blank = [""] * len(model.extra_columns)
    no_class = [""] * (len(classes) + 4)  # class, name, probability, p_*, top_k
    skips = Skips()
    counts = {"records": 0, "scored": 0, "errors": 0}
    start = time.perf_counter()
    with atomic_open(Path(out), "w") as fh:
        fh.write("\t".join(header) + "\n")
        for rows in read_rows(source, columns, skips, fmt, chunk_rows):
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
                    fields = [rid, *no_class, length, "", *extra_blank, errors[k]]
                    fh.write("\t".join(fields) + "\n")
                    continue
                j = at[k]
                p = scores.probs[j]
                extras = [str(scores.extra[c][j]) for c in model.extra_columns]
                length = len(seqs[j])
                if np.isnan(p).all():  # e.g. no homolog found: no class, not an error
                    fields = [rid, *no_class, str(length), model.handled(length)]
                    fh.write("\t".join([*fields, *extras, ""]) + "\n")
                    continue
                best = int(np.argmax(p))
                ranked = np.argsort(-p, kind="stable")[:top_k]
                fields = [
                    rid, classes[best], names[best], f"{p[best]:.4f}", *(f"{v:.4f}" for v in p),
                    "; ".join(f"{classes[r]} ({p[r]:.3f})" for r in ranked),
                    str(length), model.handled(length), *extras, "",
                ]  # fmt: skip
                fh.write("\t".join(fields) + "\n")
            counts["records"] += len(rows)
            counts["scored"] += len(keep)
            counts["errors"] += len(errors)
            if progress:
                progress(counts["records"])
    seconds = time.perf_counter() - start
    return {
        **counts,
        "unreadable": skips.to_dict(),
        "unreadable_lines": skips.lines(),
        "seconds": seconds,
        "per_second": counts["records"] / max(seconds, 1e-9),
    }
