"""How many independent families an accuracy rests on, and how far it could move with them.

Proteins of one family are usually all right or all wrong together, so a test set of a thousand
proteins in a few large families measures far less than a thousand independent proteins would
(the strict remote split's test is such a set: BENCHMARKS.md, families section). The interval
here resamples whole families (a cluster bootstrap), the unit that varies from one split to
another; the family mean weighs each family once. The families are MMseqs2 clusters, made
greedily around representatives: two proteins in different clusters can still be related, so
the interval is, if anything, still too narrow.

Plain numbers only: whether each protein was right, its family (from
:func:`ecstream.mmseqs.cluster.families_of`) and, optionally, its band of identity.
"""

from __future__ import annotations

import numpy as np

from .identity import BANDS

#: Resamples of the families for the interval, and its seed: the same inputs give the same
#: interval.
RESAMPLES = 2000
SEED = 0
#: The interval's coverage: the 2.5th to the 97.5th percentile of the resampled accuracies.
LEVEL = 0.95
#: Fewer families than this get no interval: resampling a handful of families gives an
#: interval far narrower than the uncertainty (one family: none at all).
MIN_FAMILIES = 10
_CELLS = 1 << 20  # resampled families held at once (three int64 arrays of this many cells)


def family_accuracy(
    right: np.ndarray, family: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Accuracy of proteins in families: ``n``, ``families``, ``largest_family`` (its share of
    the proteins), ``accuracy``, ``family_mean`` (the mean of each family's accuracy) and
    ``interval`` (:data:`LEVEL` of the accuracies of samples of whole families, drawn with
    replacement; ``None`` below :data:`MIN_FAMILIES` families); ``None`` figures where there
    is no protein."""
    right = np.asarray(right, dtype=bool)
    size, (hits,) = _per_family(family, right)
    n = len(right)
    out: dict = {"n": n, "families": len(size), "largest_family": None, "accuracy": None,
                 "family_mean": None, "interval": None}  # fmt: skip
    if not n:
        return out
    return out | {
        "largest_family": float(size.max() / n),
        "accuracy": float(hits.sum() / n),
        "family_mean": float(np.mean(hits / size)),
        "interval": _interval(hits, size, resamples, seed),
    }


def paired_difference(
    right_a: np.ndarray,
    right_b: np.ndarray,
    family: np.ndarray | None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """How much more often A is right than B on the same proteins: ``n``, ``families``,
    ``accuracy_a``, ``accuracy_b``, ``difference`` (A's minus B's) and its ``interval``
    (:data:`LEVEL`, resampling whole families, the same draws for both, so that what a family
    does to both runs cancels; ``None`` below :data:`MIN_FAMILIES` families, or without
    ``family``); ``None`` figures where there is no protein."""
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    n = len(right_a)
    if len(right_b) != n or (family is not None and len(family) != n):
        raise ValueError("A, B and the families must cover the same proteins")
    out: dict = {"n": n, "families": None, "accuracy_a": None, "accuracy_b": None,
                 "difference": None, "interval": None}  # fmt: skip
    if not n:
        return out if family is None else out | {"families": 0}
    out |= {
        "accuracy_a": float(right_a.mean()),
        "accuracy_b": float(right_b.mean()),
        "difference": float(right_a.mean() - right_b.mean()),
    }
    if family is None:
        return out
    size, (hits_a, hits_b) = _per_family(family, right_a, right_b)
    return out | {
        "families": len(size),
        "interval": _interval(hits_a - hits_b, size, resamples, seed),
    }


def _per_family(family: np.ndarray, *rights: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Proteins per family, and per ``rights`` how many of each family's are right."""
    _, index = np.unique(np.asarray(family), return_inverse=True)
    if not len(index):
        return np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in rights]
    size = np.bincount(index).astype(np.int64)
    return size, [np.bincount(index, weights=r).astype(np.int64) for r in rights]


def _interval(count: np.ndarray, size: np.ndarray, resamples: int, seed: int) -> list[float] | None:
    """:data:`LEVEL` interval of ``sum(count) / sum(size)`` over samples of whole families
    drawn with replacement (``count``, ``size``: per family); ``None`` below
    :data:`MIN_FAMILIES` families."""
    f = len(size)
    if f < MIN_FAMILIES:
        return None
    rng = np.random.default_rng(seed)
    resampled = np.empty(resamples)
    step = max(1, _CELLS // f)
    for start in range(0, resamples, step):
        draws = rng.integers(0, f, size=(min(step, resamples - start), f))
        resampled[start : start + len(draws)] = count[draws].sum(1) / size[draws].sum(1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return [float(low), float(high)]


def family_report(
    y_true: np.ndarray, y_pred: np.ndarray, family: np.ndarray, bands: np.ndarray | None
) -> dict:
    """:func:`family_accuracy` of all proteins and of each band of identity (``bands``: a band
    name of :data:`ecstream.identity.BANDS` per protein) when known; each with
    ``largest_class``: the accuracy, family mean and interval of always guessing the
    selection's most common class (what a model must beat, known only from the labels)."""

    def summary(sel: np.ndarray) -> dict:
        truth, fam = y_true[sel], family[sel]
        out = family_accuracy(truth == y_pred[sel], fam)
        if len(truth):
            guess = family_accuracy(truth == np.bincount(truth).argmax(), fam)
            out["largest_class"] = {k: guess[k] for k in ("accuracy", "family_mean", "interval")}
        return out

    report = {"all": summary(np.ones(len(y_true), bool))}
    if bands is not None:
        report["bands"] = {b: summary(bands == b) for b in BANDS}
    return report
