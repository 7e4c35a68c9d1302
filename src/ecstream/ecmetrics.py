"""Metrics the field reports, per EC level, accumulated chunk by chunk (bounded memory).

For each level (1 = class … 4 = full number), over the records whose true numbers state it:

- **micro and weighted precision/recall/F1 over EC sets**, as CLEAN reports NEW-392 and
  Price-149: a record's predicted set at a level is the level-prefixes of its decoded numbers
  that state the level (a partial prediction counts only at the levels it states);
- **Fmax**, as ProteInfer reports: the best protein-centric F1 over thresholds τ = 0.01…1.00
  on the consistent probabilities (precision averaged over records with a prediction, recall
  over all);
- **accuracy of the top prediction** (the most probable class is one of the true ones);
- the **precision-vs-coverage** curve of the top prediction's confidence, its **expected
  calibration error**, and accuracy per band of identity to the training split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from .calibrate import ECE_BINS, confidence_bin, top_prediction
from .hierarchy import Call
from .identity import BANDS, band_index
from .labels import ECVocabulary, level_keys, stated_levels

TAUS = np.round(np.arange(1, 101) / 100, 2)  # Fmax thresholds 0.01 … 1.00


class LevelScores:
    """Accumulates one level's metrics over chunks of records."""

    def __init__(self, level: int, vocab: ECVocabulary):
        self.level, self.vocab = level, vocab
        self.records = 0
        self.tp = Counter()  # per class: decoded set metrics
        self.fp = Counter()
        self.fn = Counter()
        self.top_right = 0
        self.predicted_records = 0  # records with a decoded class at this level
        # Fmax: per threshold, sum of precisions (records with a prediction), their count,
        # and sum of recalls
        self.f_precision = np.zeros(len(TAUS))
        self.f_predicted = np.zeros(len(TAUS))
        self.f_recall = np.zeros(len(TAUS))
        # top prediction: confidence histogram (100 bins) of right and of all
        self.conf_all = np.zeros(100)
        self.conf_right = np.zeros(100)
        self.conf_sum = np.zeros(ECE_BINS)
        self.ece_all = np.zeros(ECE_BINS)
        self.ece_right = np.zeros(ECE_BINS)
        self.band_all = np.zeros(len(BANDS))
        self.band_right = np.zeros(len(BANDS))
        self.profile_all = self.profile_right = 0  # hits of the kNN's profile fallback

    def update(
        self,
        texts: Sequence[str],
        probs: np.ndarray | None,
        calls: Sequence[Sequence[Call]],
        identity: np.ndarray | None = None,
        profile: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add records: their true EC fields, consistent probabilities of this level (``None``
        for a model without scores at this level), decoded numbers, identities, and which
        records' homolog came from the profile fallback. Returns each record's top prediction
        at this level: 1 right, 0 wrong, -1 not measured (the level unstated, or no scores)."""
        level = self.level
        top_right = np.full(len(texts), -1, dtype=np.int8)
        keep = np.array([stated_levels(t) >= level for t in texts], dtype=bool)
        if not keep.any():
            return top_right
        rows = np.flatnonzero(keep)
        truth = [set(level_keys(texts[r], level)) for r in rows]
        self.records += len(rows)
        for r, true in zip(rows.tolist(), truth, strict=True):
            predicted = {_prefix(c.number, level) for c in calls[r] if c.depth >= level}
            self.predicted_records += bool(predicted)
            for c in predicted & true:
                self.tp[c] += 1
            for c in predicted - true:
                self.fp[c] += 1
            for c in true - predicted:
                self.fn[c] += 1
        if probs is None:
            return top_right
        p = probs[rows]
        right = np.zeros(p.shape, dtype=bool)
        for i, true in enumerate(truth):
            for c in true:
                if (k := self.vocab.index(level, c)) is not None:
                    right[i, k] = True
        n_true = np.array([len(t) for t in truth], dtype=float)
        # Fmax, from per-record counts of predicted and right classes at each threshold
        pred_at = _counts_at(p)
        right_at = _counts_at(np.where(right, p, 0.0))
        has = pred_at > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            self.f_precision += np.where(has, right_at / np.maximum(pred_at, 1), 0).sum(axis=0)
            self.f_recall += (right_at / np.maximum(n_true, 1)[:, None]).sum(axis=0)
        self.f_predicted += has.sum(axis=0)
        # top prediction
        conf, ok = top_prediction(p, right)  # all zero: no prediction, not class 1
        self.top_right += int(ok.sum())
        top_right[rows] = ok
        fine = np.minimum(_hundredths(conf), 99)
        np.add.at(self.conf_all, fine, 1)
        np.add.at(self.conf_right, fine, ok)
        coarse = confidence_bin(conf)  # the bins of calibrate.expected_calibration_error
        np.add.at(self.ece_all, coarse, 1)
        np.add.at(self.ece_right, coarse, ok)
        np.add.at(self.conf_sum, coarse, conf)
        if identity is not None:
            bands = band_index(np.asarray(identity)[rows])
            np.add.at(self.band_all, bands, 1)
            np.add.at(self.band_right, bands, ok)
        if profile is not None:
            mine = np.asarray(profile)[rows]
            self.profile_all += int(mine.sum())
            self.profile_right += int(ok[mine].sum())
        return top_right

    def result(self) -> dict:
        """The level's metrics as plain numbers (JSON)."""
        tp, fp, fn = (sum(c.values()) for c in (self.tp, self.fp, self.fn))
        micro_p = tp / (tp + fp) if tp + fp else 0.0
        micro_r = tp / (tp + fn) if tp + fn else 0.0
        out = {
            "level": self.level,
            "records": self.records,
            "predicted_records": self.predicted_records,
            "coverage": self.predicted_records / self.records if self.records else 0.0,
            "micro": {"precision": micro_p, "recall": micro_r, "f1": _f1(micro_p, micro_r)},
            "weighted": self._weighted(),
        }
        if not self.conf_all.sum():
            return out
        n = self.records
        precision = self.f_precision / np.maximum(self.f_predicted, 1)
        recall = self.f_recall / max(n, 1)
        f = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f))
        # precision vs coverage of the top prediction, thresholds high to low
        covered = np.cumsum(self.conf_all[::-1])
        right = np.cumsum(self.conf_right[::-1])
        used = self.ece_all > 0
        gap = np.abs(self.ece_right[used] - self.conf_sum[used])  # per bin: |hits - Σ conf|
        out |= {
            "fmax": float(f[best]),
            "fmax_threshold": float(TAUS[best]),
            "top_accuracy": self.top_right / n,
            "ece": float(gap.sum() / n),
            "precision_coverage": {
                "threshold": [round(1 - k / 100, 2) for k in range(1, 101)],
                "coverage": (covered / n).tolist(),
                "precision": np.where(covered > 0, right / np.maximum(covered, 1), np.nan).tolist(),
            },
            "identity_bands": {
                band: {"n": int(all_), "accuracy": float(right_ / all_) if all_ else None}
                for band, all_, right_ in zip(BANDS, self.band_all, self.band_right, strict=True)
            },
            "profile_hits": {
                "n": self.profile_all,
                "accuracy": self.profile_right / self.profile_all if self.profile_all else None,
            },
        }
        return out

    def _weighted(self) -> dict:
        """Per-class precision/recall/F1 averaged with weights = true support (sklearn's
        ``average="weighted"``, what CLEAN reports)."""
        # sorted: a sum of floats in set order would change in the last digit with the
        # process's hash seed, and two evaluations of one run would differ
        classes = sorted(set(self.tp) | set(self.fp) | set(self.fn))
        support = {c: self.tp[c] + self.fn[c] for c in classes}
        total = sum(support.values())
        if not total:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        sums = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        for c in classes:
            p = self.tp[c] / (self.tp[c] + self.fp[c]) if self.tp[c] + self.fp[c] else 0.0
            r = self.tp[c] / support[c] if support[c] else 0.0
            for key, value in (("precision", p), ("recall", r), ("f1", _f1(p, r))):
                sums[key] += value * support[c]
        return {k: v / total for k, v in sums.items()}


def _hundredths(values: np.ndarray) -> np.ndarray:
    """Per value, the largest k in 0…100 with value ≥ k/100, compared in the values' own dtype,
    as a decoding compares a probability with its threshold (a float32 0.53 is below 0.53 in
    float64 but is stated at a threshold of 0.53)."""
    values = np.asarray(values)
    taus = (np.arange(101) / 100).astype(values.dtype)
    scaled = np.nan_to_num(values.astype(np.float64) * 100, nan=0.0)  # NaN: at no threshold
    k = np.clip(np.floor(scaled), 0, 100).astype(np.int64)
    k -= (values < taus[k]) & (k > 0)  # v·100 rounded up to k
    k += (k < 100) & (values >= taus[np.minimum(k + 1, 100)])  # rounded down below k + 1
    return k


def _counts_at(values: np.ndarray) -> np.ndarray:
    """Per row, how many values are ≥ each threshold of :data:`TAUS` ([B, len(TAUS)])."""
    values = np.asarray(values)
    # most of a deep level's values are below the first threshold: bin only the others
    rows, cols = np.nonzero(values >= np.asarray(TAUS[0], values.dtype))
    hist = np.zeros((values.shape[0], 101), dtype=np.int64)
    np.add.at(hist, (rows, _hundredths(values[rows, cols])), 1)  # v counts for τ ≤ v
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]


def _prefix(number: str, level: int) -> str:
    return ".".join(number.split(".")[:level])


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0
