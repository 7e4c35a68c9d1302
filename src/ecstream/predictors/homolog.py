"""Homology predictors: the nearest homolog by MMseqs2 (kNN), and its hybrid with a CNN.

- ``knn``: a query takes the EC class of its best-scoring MMseqs2 hit (by bit score) in the
  training split; a query without any hit gets no class (``source`` = ``no_hit``).
- ``hybrid``: the homolog's class when the hit's identity is at or above the run's threshold,
  the CNN's otherwise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..labels import LabelPolicy
from ..mmseqs.search import SEARCH_SENSITIVITY, Hits, TargetDB, best_hits
from ..runs import RunError, read_config
from ..store import Store, StoreError
from .base import Predictor, Scores
from .cnn import CNNPredictor

TARGETS = "targets"  # the TargetDB of the training split inside a run directory
EXTRA_COLUMNS = ("source", "homolog", "identity")


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """Probability rows: 1 at the label, NaN everywhere for label -1 (no prediction)."""
    probs = np.zeros((len(labels), classes), dtype=np.float32)
    hit = labels >= 0
    probs[np.flatnonzero(hit), labels[hit]] = 1.0
    probs[~hit] = np.nan
    return probs


def _columns(hits: Hits, source: list[str]) -> dict[str, list]:
    has = hits.has_hit
    return {
        "source": source,
        "homolog": hits.best_id.tolist(),
        "identity": [f"{x:.3f}" if h else "" for x, h in zip(hits.best_fident, has, strict=True)],
    }


class KNNPredictor(Predictor):
    """Nearest-homolog classifier: the class of the best MMseqs2 hit in the training split."""

    kind = "knn"
    extra_columns = EXTRA_COLUMNS
    max_length = None  # whole sequences are searched, never truncated

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
        source = ["homolog" if h else "no_hit" for h in hits.has_hit]
        probs = one_hot(hits.best_label, len(self.policy.classes))
        return Scores(probs, _columns(hits, source), hits.max_fident)


def homolog_decides(hits: Hits, threshold: float) -> np.ndarray:
    """Where the hybrid takes the homolog's class: a hit with identity ≥ threshold."""
    return hits.has_hit & (np.nan_to_num(hits.best_fident, nan=-1.0) >= threshold)


class HybridPredictor(Predictor):
    """The homolog's class at or above an identity threshold, the CNN's below it or without hit."""

    kind = "hybrid"
    extra_columns = EXTRA_COLUMNS

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
        probs = np.where(use[:, None], one_hot(hits.best_label, cnn.probs.shape[1]), cnn.probs)
        source = ["homolog" if u else "cnn" for u in use]
        return Scores(probs.astype(np.float32), _columns(hits, source), hits.max_fident)


def training_targets(run: str | os.PathLike) -> TargetDB:
    """The searchable training split of any run (kept in ``RUN/targets``, made on first use)."""
    path = Path(run) / TARGETS
    if (path / TargetDB.META).is_file():
        return TargetDB(path)
    config = read_config(run)
    if config.get("kind") == "hybrid":
        return training_targets(config["knn_run"])
    store_path = config["store"]["path"]
    try:
        store = Store(store_path)
    except (StoreError, OSError) as exc:
        raise RunError(f"{run}: its training store {store_path} is needed: {exc}") from exc
    if store.fingerprint("train") != config["store"]["fingerprints"]["train"]:
        raise RunError(f"{store_path}: its training split changed since {run} was trained")
    return TargetDB.create(store, "train", path)
