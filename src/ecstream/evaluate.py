"""Evaluation: honest metrics (torchmetrics), a confusion matrix and learning curves (matplotlib).

``evaluate(run, source, out)`` scores a store split or a labelled file with any run (CNN, kNN or
hybrid) and writes ``metrics.json``, ``confusion.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from . import alphabet
from .labels import LabelPolicy
from .predict import Scorer, load_model
from .runs import RunError, read_metrics, write_json
from .skips import Skips
from .sources import Columns, describe, read_rows
from .store import INVALID_CHARACTERS, MISSING_SEQUENCE, MANIFEST, open_store

Records = Iterator[tuple[list[str], list[bytes], np.ndarray]]


def is_store(source: Any) -> bool:
    return isinstance(source, str | os.PathLike) and (Path(source) / MANIFEST).is_file()


def labelled_records(
    source: Any, policy: LabelPolicy, skips: Skips, columns: Columns = Columns(), fmt=None
) -> Records:
    """Records of a labelled file, labelled by the run's policy; the rest counted in ``skips``."""
    name = describe(source)
    for rows in read_rows(source, columns, skips, fmt):
        ids, seqs, labels = [], [], []
        for line, rid, ec, seq, _ in rows:
            clean = alphabet.clean(seq.strip())
            if clean is None:
                reason = MISSING_SEQUENCE if not seq.strip() else INVALID_CHARACTERS
                skips.add(reason, f"{name}:{line}", rid)
                continue
            label, reason = policy.assign(ec)
            if reason:
                skips.add(reason, f"{name}:{line}", f"{rid}: {ec!r}")
                continue
            ids.append(rid)
            seqs.append(clean.encode())
            labels.append(label)
        if ids:
            yield ids, seqs, np.asarray(labels, dtype=np.int64)


def metrics(y_true: np.ndarray, y_pred: np.ndarray, policy: LabelPolicy) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    c = len(policy.classes)
    t, p = torch.from_numpy(y_true), torch.from_numpy(y_pred)
    per = {
        name: fn(p, t, num_classes=c, average="none").tolist()
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    confusion = multiclass_confusion_matrix(p, t, num_classes=c).tolist()
    return {
        "n": len(y_true),
        "accuracy": float(multiclass_accuracy(p, t, num_classes=c, average="micro"))
        if len(t)
        else float("nan"),
        "macro_f1": float(multiclass_f1_score(p, t, num_classes=c, average="macro"))
        if len(t)
        else float("nan"),
        "per_class": {
            key: {
                "name": name,
                "precision": per["precision"][i],
                "recall": per["recall"][i],
                "f1": per["f1"][i],
                "support": int(sum(confusion[i])),
            }
            for i, (key, name) in enumerate(zip(policy.classes, policy.names, strict=True))
        },
        "confusion": {"classes": list(policy.classes), "rows_true_columns_predicted": confusion},
    }


def predictions(model: Scorer, records: Records) -> tuple[np.ndarray, np.ndarray, dict]:
    """True labels, predicted labels and the extra columns (concatenated) of all records."""
    truth, predicted, extra = [], [], {}
    for ids, seqs, labels in records:
        scores = model.score(ids, seqs)
        truth.append(labels)
        predicted.append(scores.probs.argmax(1))
        for k, v in scores.extra.items():
            extra.setdefault(k, []).extend(v)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(truth), cat(predicted), extra


def evaluate(
    run: str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    split: str = "test",
    columns: Columns = Columns(),
    fmt: str | None = None,
) -> dict:
    """Score a store split or a labelled file with a run; write metrics.json and the plots."""
    model = load_model(run)
    skips = Skips()
    if is_store(source):
        store = open_store(source)
        if store.policy != model.policy:
            raise RunError(f"{source}: its classes differ from those the run was trained on")
        records: Records = store.records(split)
        where = {"store": str(Path(source).resolve()), "split": split}
    else:
        records = labelled_records(source, model.policy, skips, columns, fmt)
        where = {"file": describe(source)}
    y_true, y_pred, extra = predictions(model, records)
    if len(y_true) == 0:
        raise RunError(
            f"{describe(source)}: no labelled record to evaluate ({'; '.join(skips.lines())})"
        )
    result = {
        "run": str(Path(run).resolve()),
        "kind": getattr(model, "kind", "cnn"),
        "source": where,
        **metrics(y_true, y_pred, model.policy),
        "set_aside": skips.to_dict(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from . import plots

    plots.confusion(result, out / "confusion.png")
    history = read_metrics(run)
    if history:
        plots.learning_curves(history, out / "learning_curves.png")
    write_json(out / "metrics.json", result)
    return result
