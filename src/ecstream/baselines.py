"""Making the homology runs: a kNN run (a searchable training split) and a hybrid run.

Both are run directories like a CNN run (``RUN/config.json`` with ``kind``), so ``evaluate``
and ``predict`` treat all three alike and their outputs compare row by row. Nothing is trained:
a kNN run is the training split made searchable and scored on validation; a hybrid run is the
identity threshold, chosen on validation, at which the homolog's class replaces the CNN's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import write_json
from .mmseqs.binary import MMseqs
from .mmseqs.search import MAX_SEQS, SEARCH_SENSITIVITY, Hits, TargetDB
from .predictors.cnn import CNNPredictor
from .predictors.homolog import TARGETS, KNNPredictor, homolog_decides
from .records import concat
from .runs import RunError, base_config, new_run, read_config, record_seen
from .store import Store, open_store

#: Identity thresholds the hybrid tries on validation.
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def make_knn_run(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    threads: int | None = None,
    sensitivity: float = SEARCH_SENSITIVITY,
) -> dict:
    """Make a kNN run: a searchable database of the training split, scored on validation."""
    store = open_store(store_path)
    with new_run(out) as work:
        return _fill_knn(store, work, threads, sensitivity)


def _fill_knn(store: Store, out: Path, threads: int | None, sensitivity: float) -> dict:
    mm = MMseqs.find(threads)
    TargetDB.create(store, "train", out / TARGETS, mm.threads)
    config = {
        **base_config("knn", store),
        "search": {
            "tool": "mmseqs easy-search",
            "sensitivity": sensitivity,
            "max_seqs": MAX_SEQS,
            "version": mm.version,
        },
    }
    write_json(out / "config.json", config)
    record_seen(out, store)
    val = concat(store.records("val"))
    hits = KNNPredictor(out, config, threads).hits(val.ids, val.seqs)
    result = {
        "val_acc": float((hits.best_label == val.labels).mean()) if len(val) else float("nan"),
        "val_no_hit": int((~hits.has_hit).sum()),
        "val_records": len(val),
    }
    write_json(out / "config.json", {**config, "validation": result})
    return result


def threshold_curve(
    labels: np.ndarray, cnn: np.ndarray, hits: Hits
) -> tuple[float, dict[str, float]]:
    """Accuracy of the hybrid at every threshold of :data:`THRESHOLDS`, and the best threshold.

    ``cnn`` holds the CNN's predicted labels. Ties go to the lowest threshold: the homolog
    decides wherever it does no worse.
    """
    curve = {}
    for t in THRESHOLDS:
        pred = np.where(homolog_decides(hits, float(t)), hits.best_label, cnn)
        curve[f"{t:.2f}"] = float((pred == labels).mean())
    best = max(curve, key=lambda t: (curve[t], -float(t)))
    return float(best), curve


def make_hybrid_run(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    cnn_run: str | os.PathLike,
    knn_run: str | os.PathLike,
) -> dict:
    """Make a hybrid run: choose the identity threshold that maximises validation accuracy."""
    store = open_store(store_path)
    cnn_config, knn_config = read_config(cnn_run), read_config(knn_run)
    for run, config in ((cnn_run, cnn_config), (knn_run, knn_config)):
        if config["store"]["fingerprints"]["train"] != store.fingerprint("train"):
            raise RunError(f"{run} was not trained on {store.path}'s training split")
    if cnn_config["kind"] != "cnn" or knn_config["kind"] != "knn":
        raise RunError("a hybrid needs a CNN run (--cnn) and a kNN run (--knn)")
    with new_run(out) as work:  # refuses a used --out before the searches, not after
        val = concat(store.records("val"))
        cnn = CNNPredictor(cnn_run, cnn_config).score(val.ids, val.seqs).probs.argmax(1)
        hits = KNNPredictor(knn_run, knn_config).hits(val.ids, val.seqs)
        best, curve = threshold_curve(val.labels, cnn, hits)
        result = {
            "val_acc": curve[f"{best:.2f}"],
            "val_acc_cnn": float((cnn == val.labels).mean()),
            "val_acc_knn": float((hits.best_label == val.labels).mean()),
            "val_records": len(val),
            "accuracy_by_threshold": curve,
        }
        config = {
            **base_config("hybrid", store),
            "cnn_run": str(Path(cnn_run).resolve()),
            "knn_run": str(Path(knn_run).resolve()),
            "threshold": best,
            "validation": result,
        }
        write_json(work / "config.json", config)
        record_seen(work, store)
    return {"threshold": best, **result}
