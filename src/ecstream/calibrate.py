"""Confidence you can act on: temperature scaling, confidence maps, calibration error, thresholds.

Everything here is fitted on the validation split and stored in the run:

- one temperature per level (Guo et al., 2017): the softmax of ``logits / T`` whose negative
  log-likelihood on validation is lowest;
- per level, a non-decreasing map from the confidence of the top prediction to how often that
  prediction is right (isotonic regression, interpolated between its blocks). Temperature
  alone left the deeper levels underconfident: a multi-label row splits its target mass, and
  a level of thousands of classes spreads it (BENCHMARKS.md, calibration table);
- per level, a threshold at which the stated classes reach a target precision
  (:data:`TARGET_PRECISION`) on validation (of those, the one with the best F1): ``predict``
  states a level only at or above it;
- for a homolog, the probability that its class is right at each level as a non-decreasing
  function of the hit's identity (isotonic regression on validation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ECE_BINS = 15
TARGET_PRECISION = 0.90
#: Identity bins of the homolog's calibration (lower edges; a hit below 0.3 is in the first).
IDENTITY_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the NLL of multi-hot ``targets`` (rows without any
    positive are ignored; several positives share the target mass equally)."""
    rows = targets.sum(axis=1) > 0
    if not rows.any():
        return 1.0
    z = torch.from_numpy(np.asarray(logits[rows], dtype=np.float64))
    q = torch.from_numpy(np.asarray(targets[rows], dtype=np.float64))
    q = q / q.sum(dim=1, keepdim=True)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -(q * torch.log_softmax(z / log_t.exp(), dim=1)).sum(dim=1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def fit_confidence_map(confidence: np.ndarray, correct: np.ndarray) -> list[list[float]]:
    """Knots ``[xs, ys]`` of a non-decreasing map from a level's top confidence to its accuracy.

    Isotonic regression of ``correct`` on ``confidence``; each block becomes a knot at its mean
    confidence, and the map runs linearly between knots from 0 (mapped to 0, or to the
    accuracy of a first block of confidences of 0) to 1 (mapped to 1, or to the accuracy of a
    last block that reached 1.0, where float32 softmax saturates), so distinct confidences
    mostly stay distinct (the ranking of a level's classes is kept).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) == 0:
        return [[0.0, 1.0], [0.0, 1.0]]
    # equal confidences are one point at their mean correctness, so the map is a function of
    # the confidence, not of the order of the validation rows (ties split across blocks did)
    x, at, n = np.unique(confidence, return_inverse=True, return_counts=True)
    y = np.bincount(at, weights=np.asarray(correct, dtype=np.float64)) / n
    fit = isotonic(x, y, n.astype(np.float64))
    starts = np.r_[True, fit[1:] != fit[:-1]]
    block = np.cumsum(starts) - 1
    xs = (np.bincount(block, weights=x * n) / np.bincount(block, weights=n)).tolist()
    ys = fit[starts].tolist()
    if xs[0] > 0.0:
        xs, ys = [0.0, *xs], [0.0, *ys]
    if xs[-1] < 1.0:  # strictly increasing knots: np.interp is undefined on repeated ones
        xs, ys = [*xs, 1.0], [*ys, ys[-1] if x[-1] >= 1.0 else 1.0]
    return [xs, ys]


def top_prediction(probs: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of each row's most probable class, and whether it is a true one. A row of
    zeros (a kNN's query without a hit) predicts nothing, so it is not right."""
    top = probs.argmax(axis=1)
    pick = np.arange(len(probs))
    conf = probs[pick, top]
    return conf, true[pick, top].astype(bool) & (conf > 0)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy in equal-width bins."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if len(confidence) == 0:
        return float("nan")
    _, accuracy, mean_conf, counts = reliability(confidence, correct, bins)
    used = counts > 0
    gaps = np.abs(accuracy[used] - mean_conf[used])
    return float((gaps * counts[used]).sum() / counts.sum())


def confidence_bin(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Equal-width bin of each confidence in [0, 1] (a bin holds its upper edge)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres, accuracy, mean confidence and count per bin (NaN where empty)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = confidence_bin(confidence, bins)
    counts = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
    return (edges[:-1] + edges[1:]) / 2, accuracy, mean_conf, counts


def precision_thresholds(
    probs: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    known: np.ndarray,
    parents: Sequence[np.ndarray],
    target: float = TARGET_PRECISION,
) -> list[float | None]:
    """Per level, the threshold whose stated classes reach ``target`` precision with the best
    F1 (micro, over the level's true classes); at equal F1, the lowest.

    Where precision stays above the target at every threshold (a hybrid, whose homologs are
    right 98% of the time), the lowest such threshold would state every class the CNN gives
    any probability to: the best F1 among the precise ones leaves that noise out, and where
    precision falls below the target first (a CNN), it is the lowest precise threshold.
    ``probs`` are consistent per-level probabilities, ``truth`` the multi-hot true classes and
    ``known`` which rows state each level. A class counts as stated at a threshold when it and
    its parent are stated, so the levels are chosen top-down. Where no threshold reaches the
    target the level gets ``None`` (not predicted), and so do the levels below it.
    """
    thresholds: list[float | None] = []
    above = None
    for level, (p, t) in enumerate(zip(probs, truth, strict=True)):
        if thresholds and thresholds[-1] is None:
            thresholds.append(None)
            continue
        under = np.ones(p.shape, dtype=bool) if above is None else above[:, parents[level]]
        candidate = under & known[:, level][:, None]
        true_total = int(t[known[:, level]].sum())
        chosen = _best_precise(p[candidate], t[candidate].astype(bool), target, true_total)
        thresholds.append(chosen)
        if chosen is not None:
            above = (p >= chosen) & under
    return thresholds


def _best_precise(
    values: np.ndarray, right: np.ndarray, target: float, true_total: int
) -> float | None:
    """The value ``v`` of the best F1 among those whose items at or above ``v`` are
    ≥ ``target`` right (the lowest at equal F1); ``true_total``: the true items in all."""
    if len(values) == 0:
        return None
    order = np.argsort(-values, kind="stable")
    v, r = values[order], right[order]
    hits = np.cumsum(r)
    stated = np.arange(1, len(v) + 1)
    last = np.r_[v[1:] != v[:-1], True]  # the end of each group of equal values
    ok = np.flatnonzero(last & (hits / stated >= target))
    if len(ok) == 0:
        return None
    f1 = 2 * hits[ok] / (stated[ok] + max(true_total, 1))
    return float(v[ok[::-1][np.argmax(f1[::-1])]])


def isotonic(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of ``y`` over sorted ``x`` (pool adjacent violators)."""
    del x  # already sorted by the caller; kept for readability at the call site
    level, weight, size = [], [], []
    for value, w in zip(y.tolist(), weights.tolist(), strict=True):
        level.append(value)
        weight.append(w)
        size.append(1)
        while len(level) > 1 and level[-2] > level[-1]:
            w2 = weight[-2] + weight[-1]
            merged = (level[-2] * weight[-2] + level[-1] * weight[-1]) / w2 if w2 else 0.0
            n = size[-2] + size[-1]
            del level[-1], weight[-1], size[-1]
            level[-1], weight[-1], size[-1] = merged, w2, n
    return np.repeat(level, size)


def identity_curve(identity: np.ndarray, correct: np.ndarray) -> list[float]:
    """P(the homolog is right) per bin of :data:`IDENTITY_EDGES`, non-decreasing. A bin without
    validation hits takes its neighbour's value (below it; at the low end, the first bin with
    hits), not 0: a hit in it is no evidence against the homolog. No hits at all: all 0."""
    edges = np.asarray(IDENTITY_EDGES)
    which = np.clip(np.searchsorted(edges, identity, side="right") - 1, 0, len(edges) - 1)
    counts = np.bincount(which, minlength=len(edges)).astype(float)
    hits = np.bincount(which, weights=correct.astype(float), minlength=len(edges))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(counts > 0, hits / counts, 0.0)
    fit = isotonic(edges, rate, counts)  # an empty bin after one with hits pools into it
    filled = np.flatnonzero(counts > 0)
    if len(filled):
        fit[: filled[0]] = fit[filled[0]]
    return fit.tolist()


def identity_confidence(identity: np.ndarray, curve: Sequence[float]) -> np.ndarray:
    """The calibrated probability of a homolog's class at each identity (NaN: no hit → 0)."""
    edges = np.asarray(IDENTITY_EDGES)
    x = np.nan_to_num(np.asarray(identity, float), nan=-1.0)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 1)
    return np.where(x < 0, 0.0, np.asarray(curve)[which])
