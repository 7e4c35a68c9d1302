"""The homology baseline (nearest homolog by MMseqs2) and the hybrid of it with a CNN.

- ``knn``: a query takes the EC class of its best-scoring MMseqs2 hit (by bit score) in the
  training split; a query without any hit gets no class (``source`` = ``no_hit``).
- ``hybrid``: the homolog's class when the hit's identity is at or above a threshold, the CNN's
  otherwise. The threshold is the one that maximises accuracy on the validation split.

Both are runs like a CNN run (``RUN/config.json`` with ``kind``), so ``evaluate`` and ``predict``
treat all three alike and their outputs compare row by row.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .homology import MAX_SEQS, SEARCH_SENSITIVITY, Hits, MMseqs, TargetDB, best_hits
from .labels import LabelPolicy
from .predict import CNNPredictor, Scorer, Scores
from .runs import RunError, base_config, new_run, read_config, write_json
from .store import Store, open_store

TARGETS = "targets"  # the TargetDB of the training split inside a run directory
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


class KNNPredictor(Scorer):
    """Nearest-homolog classifier: the class of the best MMseqs2 hit in the training split."""

    kind = "knn"
    extra_columns = ("source", "homolog", "identity")
    max_length = sys.maxsize  # whole sequences are searched, never truncated

    def __init__(self, run: str | os.PathLike, config: dict, threads: int | None = None):
        self.run, self.config = Path(run), config
        self.policy = LabelPolicy.from_dict(config["labels"])
        self.target = TargetDB(self.run / TARGETS)
        self.threads = threads
        self.sensitivity = float(config.get("search", {}).get("sensitivity", SEARCH_SENSITIVITY))

    def hits(self, ids: list[str], seqs: list[bytes]) -> Hits:
        with tempfile.TemporaryDirectory(prefix="ecstream-knn-") as work:
            return best_hits(
                zip(ids, seqs, strict=True), self.target, work, self.threads,
                sensitivity=self.sensitivity,
            )  # fmt: skip

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        hits = self.hits(ids, seqs)
        return Scores(_one_hot(hits.best_label, len(self.policy.classes)), _extra(hits))


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """Probability rows: 1 at the label, NaN everywhere for label -1 (no prediction)."""
    probs = np.zeros((len(labels), classes), dtype=np.float32)
    hit = labels >= 0
    probs[np.flatnonzero(hit), labels[hit]] = 1.0
    probs[~hit] = np.nan
    return probs


def _extra(hits: Hits) -> dict[str, list]:
    has = hits.has_hit
    return {
        "source": ["homolog" if h else "no_hit" for h in has],
        "homolog": hits.best_id.tolist(),
        "identity": [f"{x:.3f}" if h else "" for x, h in zip(hits.best_fident, has, strict=True)],
        "max_identity": hits.max_fident.tolist(),
    }


class HybridPredictor(Scorer):
    """The homolog's class at or above an identity threshold, the CNN's below it or without hit."""

    kind = "hybrid"
    extra_columns = ("source", "homolog", "identity")

    def __init__(self, run: str | os.PathLike, config: dict, device: str | None = None):
        self.run, self.config = Path(run), config
        self.cnn = CNNPredictor(config["cnn_run"], read_config(config["cnn_run"]), device)
        self.knn = KNNPredictor(config["knn_run"], read_config(config["knn_run"]))
        self.policy, self.max_length = self.cnn.policy, self.cnn.max_length
        self.threshold = float(config["threshold"])
        if self.knn.policy != self.policy:
            raise RunError(f"{run}: its CNN and kNN runs have different classes")

    @property
    def batch_size(self) -> int:
        """Sequences per forward pass of the CNN."""
        return self.cnn.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.cnn.batch_size = value

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        cnn = self.cnn.score(ids, seqs)
        hits = self.knn.hits(ids, seqs)
        use = homolog_decides(hits, self.threshold)
        probs = np.where(use[:, None], _one_hot(hits.best_label, cnn.probs.shape[1]), cnn.probs)
        extra = _extra(hits)
        extra["source"] = ["homolog" if u else "cnn" for u in use]
        return Scores(probs.astype(np.float32), extra)


def homolog_decides(hits: Hits, threshold: float) -> np.ndarray:
    """Where the hybrid takes the homolog's class: a hit with identity ≥ threshold."""
    return hits.has_hit & (np.nan_to_num(hits.best_fident, nan=-1.0) >= threshold)


def load(run: str | os.PathLike, config: dict, device: str | None = None):
    """The predictor of a ``knn`` or ``hybrid`` run."""
    if config["kind"] == "knn":
        return KNNPredictor(run, config)
    if config["kind"] == "hybrid":
        return HybridPredictor(run, config, device)
    raise RunError(f"{run}: unknown run kind {config['kind']!r}")


def train_targets(run: str | os.PathLike) -> TargetDB:
    """The searchable training split of any run (kept in ``RUN/targets``, made on first use)."""
    path = Path(run) / TARGETS
    if (path / TargetDB.META).is_file():
        return TargetDB(path)
    config = read_config(run)
    if config.get("kind") == "hybrid":
        return train_targets(config["knn_run"])
    store_path = config["store"]["path"]
    try:
        store = open_store(store_path)
    except Exception as exc:
        raise RunError(f"{run}: its training store {store_path} is needed: {exc}") from exc
    if store.fingerprint("train") != config["store"]["fingerprints"]["train"]:
        raise RunError(f"{store_path}: its training split changed since {run} was trained")
    return TargetDB.create(store, "train", path)


# --- making the runs ------------------------------------------------------------------------


def _val_records(store: Store) -> tuple[list[str], list[bytes], np.ndarray]:
    ids, seqs, labels = [], [], []
    for i, s, y in store.records("val"):
        ids += i
        seqs += s
        labels.append(y)
    return ids, seqs, np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def train_knn(
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
    ids, seqs, labels = _val_records(store)
    hits = KNNPredictor(out, config, threads).hits(ids, seqs)
    val = {
        "val_acc": float((hits.best_label == labels).mean()) if len(labels) else float("nan"),
        "val_no_hit": int((~hits.has_hit).sum()),
        "val_records": len(labels),
    }
    write_json(out / "config.json", {**config, "validation": val})
    return val


def train_hybrid(
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
    if cnn_config.get("kind", "cnn") != "cnn" or knn_config.get("kind") != "knn":
        raise RunError("a hybrid needs a CNN run (--cnn) and a kNN run (--knn)")
    with new_run(out) as work:  # refuses a used --out before the searches, not after
        ids, seqs, labels = _val_records(store)
        cnn = CNNPredictor(cnn_run, cnn_config).score(ids, seqs).probs.argmax(1)
        hits = KNNPredictor(knn_run, knn_config).hits(ids, seqs)
        curve = {}
        for t in THRESHOLDS:
            pred = np.where(homolog_decides(hits, float(t)), hits.best_label, cnn)
            curve[f"{t:.2f}"] = float((pred == labels).mean())
        best = max(curve, key=lambda t: (curve[t], -float(t)))  # ties: the lower threshold
        val = {
            "val_acc": curve[best],
            "val_acc_cnn": float((cnn == labels).mean()),
            "val_acc_knn": float((hits.best_label == labels).mean()),
            "val_records": len(labels),
            "accuracy_by_threshold": curve,
        }
        config = {
            **base_config("hybrid", store),
            "cnn_run": str(Path(cnn_run).resolve()),
            "knn_run": str(Path(knn_run).resolve()),
            "threshold": float(best),
            "validation": val,
        }
        write_json(work / "config.json", config)
    return {"threshold": float(best), **val}
