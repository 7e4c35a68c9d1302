"""Homology predictors: the nearest homolog by MMseqs2 (kNN), and its hybrid with a CNN.

- ``knn``: a query takes the EC numbers of its best-scoring MMseqs2 hit (by bit score) in the
  training split, all of them, at every level; how probable each level is right comes from
  the hit's identity (a curve fitted on validation). A query without any hit gets nothing
  (``source`` = ``no_hit``).
- ``hybrid``: level by level, the homolog's number while the hit's identity is at or above
  that level's threshold (chosen on validation), and the CNN's below it (under the homolog's
  number where the homolog decided the level above). The CNN may predict the seven classes
  only; then deeper levels come from the homolog alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..cache import scratch
from ..calibrate import identity_confidence
from ..hierarchy import consistent, split_levels
from ..labels import ECVocabulary, LabelPolicy
from ..mmseqs.search import (
    SEARCH_SENSITIVITY,
    Hits,
    TargetDB,
    best_hits,
    with_profile_fallback,
)
from ..runs import RunError, read_calibration, read_config
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


def _source(homolog: bool, profile: bool, otherwise: str) -> str:
    """What decided a prediction: ``homolog``, ``profile`` (a homolog found by the profile
    fallback), or ``otherwise`` (``cnn`` in a hybrid, ``no_hit`` in a kNN run)."""
    return ("profile" if profile else "homolog") if homolog else otherwise


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
        if "vocabulary" not in config:
            raise RunError(
                f"{run}: a kNN run made by ecstream 0.1.0 transfers classes only; make it again "
                "('ecstream train STORE --model knn') for full EC numbers"
            )
        self.vocab = ECVocabulary.from_dict(config["vocabulary"])
        self.target = TargetDB(self.run / TARGETS)
        self.threads = threads
        self.sensitivity = float(config.get("search", {}).get("sensitivity", SEARCH_SENSITIVITY))
        calibration = read_calibration(run) or {}
        self.curves = calibration.get("identity_curves")  # {"search": [...], "profile": [...]}
        self.thresholds = calibration.get("thresholds")
        # kNN runs made before the profile fallback existed have none
        self.fallback = bool(config.get("search", {}).get("profile_fallback", False))

    def hits(self, ids: list[str], seqs: list[bytes]) -> Hits:
        """Best hits; queries without one are searched again by profile, if the run says so."""
        with scratch("knn") as work:
            hits = best_hits(
                zip(ids, seqs, strict=True), self.target, Path(work) / "search", self.threads,
                sensitivity=self.sensitivity,
            )  # fmt: skip
            if self.fallback:
                hits = with_profile_fallback(hits, seqs, self.target, Path(work) / "profile",
                                             self.threads)  # fmt: skip
            return hits

    def model_files(self) -> list[Path]:
        meta = [self.run / TARGETS / n for n in (TargetDB.META, "labels.npy", "ids.arrow")]
        return [*meta, *super().model_files()]

    def homolog_levels(self, hits: Hits) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per level: the best hit's classes (multi-hot), and them weighted by the probability
        that the homolog is right at that level and identity (1 before calibration)."""
        targets, _ = self.vocab.targets(self.target.ecs(hits.best_target).tolist())
        multi_hot = [b.astype(bool) for b in split_levels(targets, self.vocab)]
        weighted = []
        for level, block in enumerate(multi_hot):
            if self.curves is None:
                conf = np.where(hits.has_hit, 1.0, 0.0)
            else:
                conf = identity_confidence(hits.best_fident, self.curves["search"][level])
                if "profile" in self.curves:  # a profile hit is trusted as profile hits were
                    by_profile = identity_confidence(
                        hits.best_fident, self.curves["profile"][level]
                    )
                    conf = np.where(hits.by_profile, by_profile, conf)
            weighted.append((block * conf[:, None]).astype(np.float32))
        return multi_hot, weighted

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        hits = self.hits(ids, seqs)
        source = [
            _source(h, p, "no_hit") for h, p in zip(hits.has_hit, hits.by_profile, strict=True)
        ]
        probs = one_hot(hits.best_label, len(self.policy.classes))
        levels = consistent(self.homolog_levels(hits)[1], self.vocab)
        return Scores(
            probs, levels, _columns(hits, source), hits.max_fident, profile=hits.by_profile
        )


def homolog_decides(
    hits: Hits, threshold: float, profile_threshold: float | None = None
) -> np.ndarray:
    """Where the hybrid takes the homolog's class: a hit with identity ≥ ``threshold``, or, for
    a hit of the profile fallback, ≥ ``profile_threshold`` (never, when it is ``None``)."""
    identity = np.nan_to_num(hits.best_fident, nan=-1.0)
    found = hits.has_hit & ~hits.by_profile & (identity >= threshold)
    if profile_threshold is not None:
        found |= hits.by_profile & (identity >= profile_threshold)
    return found


class HybridPredictor(Predictor):
    """Per level, the homolog's number at or above an identity threshold, the CNN's below."""

    kind = "hybrid"
    extra_columns = (*EXTRA_COLUMNS, "homolog_depth")  # levels taken from the homolog

    def __init__(self, run: str | os.PathLike, config: dict, device: str | None = None):
        self.run, self.config = Path(run), config
        self.cnn = CNNPredictor(config["cnn_run"], read_config(config["cnn_run"]), device)
        self.knn = KNNPredictor(config["knn_run"], read_config(config["knn_run"]))
        self.policy, self.max_length = self.cnn.policy, self.cnn.max_length
        self.vocab = self.knn.vocab
        # identity thresholds per level; a hybrid of ecstream 0.1.0 had one, for level 1
        self.identity = [float(t) for t in config.get("identity_thresholds", [config["threshold"]])]
        self.identity += [self.identity[-1]] * (self.vocab.depth - len(self.identity))
        self.profile_identity = config.get("profile_thresholds")
        self.thresholds = (read_calibration(run) or {}).get("thresholds")
        if not self.knn.policy.same_classes(self.policy):
            raise RunError(f"{run}: its CNN and kNN runs have different classes")
        if self.cnn.vocab.depth > 1 and self.cnn.vocab.classes != self.vocab.classes:
            raise RunError(f"{run}: its CNN and kNN runs know different EC numbers")

    def model_files(self) -> list[Path]:
        return [*super().model_files(), *self.cnn.model_files(), *self.knn.model_files()]

    def handled(self, length: int) -> str:
        return self.cnn.handled(length)  # the search takes whole sequences; the CNN says how

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
        levels, decided = combine(
            self.vocab, cnn.levels, *self.knn.homolog_levels(hits), hits, self.identity,
            self.profile_identity,
        )  # fmt: skip
        use = decided[0]
        probs = np.where(use[:, None], one_hot(hits.best_label, cnn.probs.shape[1]), cnn.probs)
        source = [_source(u, p, "cnn") for u, p in zip(use, hits.by_profile, strict=True)]
        scores = Scores(
            probs.astype(np.float32), levels, _columns(hits, source), hits.max_fident,
            profile=hits.by_profile,
        )  # fmt: skip
        scores.extra["homolog_depth"] = decided.sum(axis=0).tolist()
        return scores


def combine(
    vocab: ECVocabulary,
    cnn: list[np.ndarray],
    hit: list[np.ndarray],
    homolog: list[np.ndarray],
    hits: Hits,
    identity: list[float],
    profile_identity: list[float | None] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The hybrid's consistent probabilities per level, and where the homolog decided
    (``bool [levels, N]``): at level L while the hit's identity ≥ ``identity[L]`` (a profile
    hit's: ≥ ``profile_identity[L]``) and it decided the level above; below, the CNN's classes
    under the homolog's."""
    n = len(hits)
    profile_identity = profile_identity or [None] * vocab.depth
    decided = np.zeros((vocab.depth, n), dtype=bool)
    levels = []
    for level in range(vocab.depth):
        decided[level] = homolog_decides(hits, identity[level], profile_identity[level])
        decided[level] &= hit[level].any(axis=1)  # a partial number says nothing down here
        if level:
            decided[level] &= decided[level - 1]
        mine = cnn[level] if level < len(cnn) else np.zeros_like(homolog[level])
        if level:  # under a homolog's number, the CNN may only go deeper along it
            under = hit[level - 1][:, vocab.parents[level]]
            mine = np.where(decided[level - 1][:, None], mine * under, mine)
        levels.append(np.where(decided[level][:, None], homolog[level], mine))
    return consistent(levels, vocab), decided


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
