"""Making the homology runs: a kNN run (a searchable training split) and a hybrid run.

Both are run directories like a CNN run (``RUN/config.json`` with ``kind``), so ``evaluate``
and ``predict`` treat all three alike and their outputs compare row by row. Nothing is trained:
a kNN run is the training split made searchable, with, per level, how often its homolog is
right at each identity (on validation); a hybrid run is, per level, the identity at which the
homolog's number replaces the CNN's, chosen on validation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import write_json
from .labels import level_keys
from .mmseqs.binary import MMseqs
from .mmseqs.search import MAX_SEQS, SEARCH_SENSITIVITY, Hits, TargetDB
from .predictors.cnn import CNNPredictor
from .predictors.homolog import TARGETS, HybridPredictor, KNNPredictor, combine, homolog_decides
from .records import Records
from .runs import CALIBRATION, RunError, base_config, new_run, read_config, record_seen
from .store import Store, open_store
from .tuning import (
    calibrate_homolog,
    homolog_curves,
    top_prediction,
    truth,
    validation_sample,
)

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
    vocab = store.vocabulary()
    config = {
        **base_config("knn", store),
        "search": {
            "tool": "mmseqs easy-search",
            "sensitivity": sensitivity,
            "max_seqs": MAX_SEQS,
            "version": mm.version,
        },
        "vocabulary": vocab.to_dict(),
    }
    write_json(out / "config.json", config)
    record_seen(out, store)
    val = validation_sample(store, every_row=True)
    knn = KNNPredictor(out, config, threads)
    hits = knn.hits(val.ids, val.seqs)
    curves = homolog_curves(vocab, knn.target.ecs(hits.best_target), hits.best_fident, val.ecs)
    write_json(out / CALIBRATION, {"identity_curves": curves})
    calibrate_homolog(out, KNNPredictor(out, config, threads), val, {"identity_curves": curves})
    single = single_class(val)
    result = {
        "val_acc": float((hits.best_label == val.labels)[single].mean()) if single.any() else 0.0,
        "val_no_hit": int((~hits.has_hit).sum()),
        "val_records": len(val),
    }
    write_json(out / "config.json", {**config, "validation": result})
    return result


def single_class(records: Records) -> np.ndarray:
    """Which records have all their numbers in one class (what class accuracy is measured on)."""
    return np.array([len(level_keys(e, 1)) == 1 for e in records.ecs], dtype=bool)


def threshold_curve(
    labels: np.ndarray, cnn: np.ndarray, hits: Hits, rows: np.ndarray | None = None
) -> tuple[float, dict[str, float]]:
    """Class accuracy of the hybrid at every threshold of :data:`THRESHOLDS` (over ``rows``,
    default all), and the best threshold.

    ``cnn`` holds the CNN's predicted labels. Ties go to the lowest threshold: the homolog
    decides wherever it does no worse.
    """
    rows = np.ones(len(labels), dtype=bool) if rows is None else rows
    curve = {}
    for t in THRESHOLDS:
        pred = np.where(homolog_decides(hits, float(t)), hits.best_label, cnn)
        curve[f"{t:.2f}"] = float((pred == labels)[rows].mean()) if rows.any() else 0.0
    return _lowest_best(curve), curve


def _lowest_best(curve: dict[str, float]) -> float:
    return float(max(curve, key=lambda t: (curve[t], -float(t))))


def make_hybrid_run(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    cnn_run: str | os.PathLike,
    knn_run: str | os.PathLike,
) -> dict:
    """Make a hybrid run: per level, the identity threshold that maximises validation accuracy
    (level 1: class accuracy as a class run measures it; deeper: the top prediction's)."""
    store = open_store(store_path)
    cnn_config, knn_config = read_config(cnn_run), read_config(knn_run)
    for run, config in ((cnn_run, cnn_config), (knn_run, knn_config)):
        if config["store"]["fingerprints"]["train"] != store.fingerprint("train"):
            raise RunError(f"{run} was not trained on {store.path}'s training split")
    if cnn_config["kind"] != "cnn" or knn_config["kind"] != "knn":
        raise RunError("a hybrid needs a CNN run (--cnn) and a kNN run (--knn)")
    with new_run(out) as work:  # refuses a used --out before the searches, not after
        val = validation_sample(store, every_row=True)
        cnn = CNNPredictor(cnn_run, cnn_config).score(val.ids, val.seqs)
        knn = KNNPredictor(knn_run, knn_config)
        hits = knn.hits(val.ids, val.seqs)
        multi_hot, weighted = knn.homolog_levels(hits)
        single = single_class(val)
        cnn_class = cnn.probs.argmax(1)
        best, curve = threshold_curve(val.labels, cnn_class, hits, single)
        identity, curves = [best], {"1": curve}
        true, known = truth(knn.vocab, val.ecs)
        for level in range(1, knn.vocab.depth):
            rows = known[:, level]
            curve = {}
            for t in THRESHOLDS:
                chosen = [*identity, *[float(t)] * (knn.vocab.depth - level)]
                levels, _ = combine(knn.vocab, cnn.levels, multi_hot, weighted, hits, chosen)
                _, right = top_prediction(levels[level][rows], true[level][rows])
                curve[f"{t:.2f}"] = float(right.mean()) if rows.any() else 0.0
            identity.append(_lowest_best(curve))
            curves[str(level + 1)] = curve
        result = {
            "val_acc": curves["1"][f"{identity[0]:.2f}"],
            "val_acc_cnn": float((cnn_class == val.labels)[single].mean()) if single.any() else 0.0,
            "val_acc_knn": (
                float((hits.best_label == val.labels)[single].mean()) if single.any() else 0.0
            ),
            "val_records": int(single.sum()),
            "accuracy_by_threshold": curves["1"],
        }
        config = {
            **base_config("hybrid", store),
            "cnn_run": str(Path(cnn_run).resolve()),
            "knn_run": str(Path(knn_run).resolve()),
            "threshold": identity[0],
            "identity_thresholds": identity,
            "validation": result,
        }
        write_json(work / "config.json", config)
        record_seen(work, store)
        extra = {"identity_thresholds": identity, "accuracy_by_threshold": curves}
        calibrate_homolog(work, HybridPredictor(work, config), val, extra)
    return {"threshold": identity[0], "identity_thresholds": identity, **result}
