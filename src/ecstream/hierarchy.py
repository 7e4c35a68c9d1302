"""From per-level scores to EC numbers: consistent probabilities and decoding at a confidence.

A full-EC model scores every class of the four levels (:class:`~ecstream.labels.ECVocabulary`).
Two rules turn those scores into what a biologist reads:

- **Consistency by decoding**: a class is never more probable than its parent. Each level's
  probabilities (after its temperature) are capped by their parent's, top-down
  (``p'(2.7.7) = min(p(2.7.7), p'(2.7))``). A calibrated run then maps each level's
  probabilities to the accuracy they had on validation (:func:`calibrated`) and raises every
  parent to at least its most probable child, bottom-up: a confident ``2.7.7.7`` is evidence
  for ``2.7``. (Capping again after the maps instead would re-rank the deepest level, whose
  own ranking the lift keeps.) Either way the confidence of a full number never exceeds that
  of its prefixes.
- **Stop where the evidence stops**: a level is stated when its probability reaches that
  level's threshold (chosen on validation for a target precision, or one ``--min-confidence``
  for all); a number ends at its deepest stated level (``2.7.-.-``), and every branch that
  clears the thresholds becomes a number of its own (several numbers for a multi-function
  protein).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .labels import LEVELS, ECVocabulary


@dataclass(frozen=True)
class Call:
    """One decoded EC number: ``2.7.7.7`` or a partial ``2.7.-.-``, with its confidence."""

    number: str
    depth: int  # levels stated
    confidence: float  # consistent probability at its deepest stated level


def split_levels(scores: np.ndarray, vocab: ECVocabulary) -> list[np.ndarray]:
    """Columns of a ``[B, sum(sizes)]`` array, one block per level."""
    o = vocab.offsets
    return [scores[:, o[k] : o[k + 1]] for k in range(vocab.depth)]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float32, computed in place on a copy
    (a full-EC run scores thousands of classes a row: float64 temporaries would double them)."""
    z = np.array(logits, dtype=np.float32)
    z /= np.float32(temperature)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def level_probabilities(
    logits: np.ndarray, vocab: ECVocabulary, temperatures: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Per-level softmax of a full-EC model's logits, each with its level's temperature."""
    temperatures = temperatures or [1.0] * vocab.depth
    return [softmax(z, t) for z, t in zip(split_levels(logits, vocab), temperatures, strict=True)]


def consistent(probs: Sequence[np.ndarray], vocab: ECVocabulary) -> list[np.ndarray]:
    """Cap every class's probability by its parent's, level by level from the top."""
    out = [np.asarray(probs[0])]
    for level in range(1, len(probs)):  # np.take: numpy's faster path for a column gather
        out.append(np.minimum(probs[level], np.take(out[-1], vocab.parents[level], axis=1)))
    return out


def lift(probs: Sequence[np.ndarray], vocab: ECVocabulary) -> list[np.ndarray]:
    """Raise every class to at least its most probable child, level by level from the bottom."""
    out = list(probs)
    for level in range(len(out) - 1, 0, -1):
        parents, child = vocab.parents[level], out[level]
        if (np.diff(parents) < 0).any():  # reduceat needs each parent's children together
            order = np.argsort(parents, kind="stable")
            parents, child = parents[order], child[:, order]
        starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
        up = out[level - 1].copy()
        columns = parents[starts]
        up[:, columns] = np.maximum(up[:, columns], np.maximum.reduceat(child, starts, axis=1))
        out[level - 1] = up
    return out


def calibrated(
    probs: Sequence[np.ndarray], vocab: ECVocabulary, maps: Sequence[Sequence] | None = None
) -> list[np.ndarray]:
    """Consistent probabilities; with a run's confidence ``maps``, also :func:`mapped`."""
    out = consistent(probs, vocab)
    return mapped(out, vocab, maps) if maps else out


def mapped(
    consistent_probs: Sequence[np.ndarray], vocab: ECVocabulary, maps: Sequence[Sequence]
) -> list[np.ndarray]:
    """Consistent probabilities mapped to validation accuracy by a run's confidence ``maps``
    (knots ``[xs, ys]`` per level, :func:`~ecstream.calibrate.fit_confidence_map`), lifted."""
    pairs = zip(consistent_probs, maps, strict=True)
    return lift([apply_map(p, xs, ys) for p, (xs, ys) in pairs], vocab)


def apply_map(p: np.ndarray, xs: Sequence[float], ys: Sequence[float]) -> np.ndarray:
    """``np.interp(p, xs, ys)`` as float32 for probabilities in [0, 1] (``xs[0] = 0``). Nearly
    all of a deep level's thousands of probabilities lie on the first segment: those take its
    line, and only the others the (float64) search of ``np.interp``."""
    if len(xs) > 2 and xs[-2] >= xs[-1]:  # maps fitted before 2026-11-30 could end in a
        xs, ys = xs[:-1], ys[:-1]  # second knot at 1.0, which np.interp would take for 1.0
    x0, x1, y0, y1 = float(xs[0]), float(xs[1]), float(ys[0]), float(ys[1])
    out = np.asarray(p, dtype=np.float32) - x0
    out *= (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
    out += y0
    far = p >= x1
    out[far] = np.interp(p[far], xs, ys)
    return out


def stated(
    probs: Sequence[np.ndarray], vocab: ECVocabulary, thresholds: Sequence[float | None]
) -> list[np.ndarray]:
    """Which classes a decoding states: at or above their level's threshold, under a stated
    parent. A level without a threshold (``None``) is never stated, nor any below it."""
    out: list[np.ndarray] = []
    for level, p in enumerate(probs):
        t = thresholds[level]
        s = np.zeros(p.shape, dtype=bool) if t is None else p >= t
        if level:
            s &= np.take(out[-1], vocab.parents[level], axis=1)
        out.append(s)
    return out


def decode(
    probs: Sequence[np.ndarray], vocab: ECVocabulary, thresholds: Sequence[float | None]
) -> list[list[Call]]:
    """The EC numbers of each row at the thresholds, most confident first (empty: none)."""
    levels = len(probs)
    marks = stated(probs, vocab, thresholds)
    leaves = []
    for level in range(levels):
        leaf = marks[level].copy()
        if level + 1 < levels:
            rows, cols = _nonzero(marks[level + 1])
            leaf[rows, vocab.parents[level + 1][cols]] = False  # has a stated child
        leaves.append(leaf)
    calls: list[list[Call]] = [[] for _ in range(len(probs[0]))]
    for level in range(levels):
        rows, cols = _nonzero(leaves[level])
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            calls[r].append(
                Call(partial(vocab.classes[level][c]), level + 1, float(probs[level][r, c]))
            )
    for row in calls:
        row.sort(key=lambda call: (-call.confidence, -call.depth, call.number))
    return calls


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask, in the same (row-major) order, through the flat index:
    numpy's 1-D path is an order of magnitude faster on a sparse mask of thousands of columns
    (a decoding's marks: a few stated classes a row)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


@functools.cache  # a vocabulary's few thousand keys, written on every row of a prediction
def partial(key: str) -> str:
    """An EC prefix written as a number: ``2.7`` → ``2.7.-.-``."""
    parts = key.split(".")
    return ".".join(parts + ["-"] * (LEVELS - len(parts)))


def top_numbers(deepest: np.ndarray, vocab: ECVocabulary, k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of the deepest level, per row, with probabilities, most
    probable first; of equal probabilities the class listed first in the vocabulary wins."""
    level = vocab.depth - 1
    best = top_indices(deepest, k)
    return [
        [(vocab.classes[level][c], float(deepest[r, c])) for c in row]
        for r, row in enumerate(best.tolist())
    ]


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``scores`` [N, C] (finite), the columns of the ``min(k, C)`` largest values
    (k ≥ 1), ordered by value (descending), then column: ``np.argsort(-scores,
    kind="stable")[:, :k]``, without sorting thousands of columns a row.

    ``torch.topk`` selects ``k + 1`` (a partial selection, several times faster than numpy's
    ``argpartition`` on a full-EC row); its order among equal values is unspecified, so the
    selection is sorted again, and a row whose ``k``-th and ``k + 1``-th values are equal (a
    tie across the cut; a class capped at its parent's probability ties with its siblings:
    about 1% of the test proteins' rows) is sorted whole.
    """
    import torch  # here: the numpy-only users of this module need not load it

    width = scores.shape[1]
    k = min(k, width)
    take = min(k + 1, width)
    writable = np.require(scores, requirements="CW")  # torch.from_numpy warns on a read-only one
    values, columns = torch.topk(torch.from_numpy(writable), take, dim=1)
    values, columns = values.numpy(), columns.numpy()
    order = np.lexsort((columns, -values))  # per row: value descending, then column
    values = np.take_along_axis(values, order, axis=1)
    best = np.take_along_axis(columns, order, axis=1)[:, :k]
    if take > k and len(tied := np.flatnonzero(values[:, k - 1] == values[:, k])):
        best[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return best
