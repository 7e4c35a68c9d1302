"""Bands of identity to the training split: the one definition, for reports and evaluation.

Plain numbers only: an identity in [0, 1] (MMseqs2's ``fident`` of a query's closest training
relative) or NaN for a query without any hit.
"""

from __future__ import annotations

import itertools

import numpy as np

#: Lower edges of the identity bands, high to low.
BAND_EDGES: tuple[float, ...] = (0.9, 0.5, 0.3)
NO_HIT = "no_hit"


def _edge(x: float) -> str:
    return f"{x:g}"


#: Band names, high identity first: ``>=0.9``, ``0.5-0.9``, ``0.3-0.5``, ``<0.3``, ``no_hit``.
BANDS: tuple[str, ...] = (
    f">={_edge(BAND_EDGES[0])}",
    *(f"{_edge(lo)}-{_edge(hi)}" for hi, lo in itertools.pairwise(BAND_EDGES)),
    f"<{_edge(BAND_EDGES[-1])}",
    NO_HIT,
)


def band_index(identity: np.ndarray) -> np.ndarray:
    """Index into :data:`BANDS` for identities in [0, 1]; NaN (no hit) maps to ``no_hit``."""
    x = np.asarray(identity, dtype=np.float64)
    index = (x[..., None] < np.asarray(BAND_EDGES)).sum(axis=-1)
    return np.where(np.isnan(x), len(BANDS) - 1, index)


def identity_bands(identity: np.ndarray) -> np.ndarray:
    """Band name (one of :data:`BANDS`) of each identity."""
    return np.asarray(BANDS)[band_index(identity)]


def band_counts(identity: np.ndarray) -> dict[str, int]:
    """How many identities fall in each band, every band present."""
    counts = np.bincount(band_index(identity).ravel(), minlength=len(BANDS))
    return {name: int(c) for name, c in zip(BANDS, counts, strict=True)}


def band_accuracy(y_true: np.ndarray, y_pred: np.ndarray, identity: np.ndarray) -> dict:
    """Per band of identity to the training split: records, accuracy, balanced accuracy (the
    mean of each true class's recall), the ``classes`` present and ``majority``, the share of
    the band's largest class.

    A band of proteins without homologs is often a few large families of one class, so its
    accuracy rewards leaning towards that class: ``majority`` is what always guessing it
    scores, and balanced accuracy is at most 1/(classes present) for any constant guess.
    """
    names = identity_bands(identity)
    out = {}
    for band in BANDS:
        sel = names == band
        n = int(sel.sum())
        out[band] = dict(n=n, accuracy=None, balanced_accuracy=None, classes=0, majority=None)
        if n:
            truth, right = y_true[sel], y_true[sel] == y_pred[sel]
            classes, counts = np.unique(truth, return_counts=True)
            recall = [right[truth == c].mean() for c in classes]
            out[band] |= {
                "accuracy": float(right.mean()),
                "balanced_accuracy": float(np.mean(recall)),
                "classes": len(classes),
                "majority": float(counts.max() / n),
            }
    return out
