"""What a run learns from its validation split after training: how far to trust it.

- a CNN run: one temperature and one confidence map per level, and per level a threshold
  that reaches
  :data:`~ecstream.calibrate.TARGET_PRECISION` on validation (``calibration.json``), with the
  expected calibration error before and after and a reliability diagram;
- a kNN run: per level, the probability that the homolog's class is right as a function of its
  identity, and the thresholds of those probabilities;
- a hybrid run: per level, the identity at and above which the homolog's number is taken
  instead of the CNN's, and the thresholds of the result.

Validation is read as a seeded sample of at most :data:`CALIBRATION_RECORDS` records, so
memory does not grow with the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import plots
from .atomic import write_json
from .calibrate import (
    TARGET_PRECISION,
    expected_calibration_error,
    fit_confidence_map,
    fit_temperature,
    identity_curve,
    precision_thresholds,
    top_prediction,
)
from .hashing import hash64, unit_interval
from .hierarchy import consistent, level_probabilities, mapped, split_levels
from .labels import ECVocabulary
from .predictors.base import Predictor
from .predictors.cnn import CNNPredictor
from .records import Records, concat
from .runs import CALIBRATION, read_config
from .store import Store

CALIBRATION_RECORDS = 20_000
_SAMPLE_SALT = 0xCA11B


def validation_sample(store: Store, every_row: bool, limit: int = CALIBRATION_RECORDS) -> Records:
    """The validation records (a seeded sample of ``limit`` when there are more)."""
    n = store.num_records("val") if every_row else store.single_class_records("val")
    share = min(1.0, limit / max(n, 1))
    chunks, seen = [], 0
    for chunk in store.records("val"):
        if not every_row and seen + len(chunk) > n:
            chunk = chunk.take(np.arange(len(chunk)) < n - seen)
        seen += len(chunk)
        if share < 1.0:
            chunk = chunk.take(unit_interval(hash64(chunk.seqs), _SAMPLE_SALT, 0) < share)
        chunks.append(chunk)
        if seen >= n:
            break
    return concat(chunks)


def truth(vocab: ECVocabulary, ecs: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per level, multi-hot true classes ``[N, C_level]``; and which levels each row states."""
    targets, known = vocab.targets(list(ecs))
    return split_levels(targets, vocab), known


def calibration_report(
    vocab: ECVocabulary,
    levels_before: Sequence[np.ndarray],
    levels_after: Sequence[np.ndarray],
    ecs: Sequence[str],
    extra: dict,
) -> dict:
    """ECE before/after and the precision thresholds of consistent per-level probabilities."""
    true, known = truth(vocab, ecs)
    report = {
        **extra,
        "target_precision": TARGET_PRECISION,
        "thresholds": precision_thresholds(levels_after, true, known, vocab.parents),
        "validation_records": len(ecs),
        "ece_before": [],
        "ece_after": [],
        "reliability": [],
    }
    for level in range(vocab.depth):
        rows = known[:, level]
        for key, probs in (("ece_before", levels_before), ("ece_after", levels_after)):
            conf, right = top_prediction(probs[level][rows], true[level][rows])
            report[key].append(expected_calibration_error(conf, right))
        report["reliability"].append(
            {
                "before": top_prediction(levels_before[level][rows], true[level][rows]),
                "after": top_prediction(levels_after[level][rows], true[level][rows]),
            }
        )
    return report


def _save(run: Path, report: dict) -> dict:
    curves = report.pop("reliability")
    plots.reliability(curves, run / "reliability.png")
    write_json(run / CALIBRATION, report)
    return report


def calibrate_cnn(run: Path, store: Store) -> dict:
    """Fit a CNN run's temperatures, confidence maps and thresholds on validation; write
    ``calibration.json`` (with the ECE of the temperatures alone, which it improves on)."""
    predictor = CNNPredictor(run, read_config(run, training_ok=True), calibrated=False)
    vocab = predictor.vocab
    val = validation_sample(store, every_row=vocab.depth > 1)
    logits = predictor.all_logits(val.seqs)
    true, known = truth(vocab, val.ecs)
    blocks = split_levels(logits, vocab)
    temperatures = [
        fit_temperature(blocks[k][known[:, k]], true[k][known[:, k]]) for k in range(vocab.depth)
    ]
    before = consistent(level_probabilities(logits, vocab), vocab)
    tempered = level_probabilities(logits, vocab, temperatures)
    scaled = consistent(tempered, vocab)
    rows = [known[:, k] for k in range(vocab.depth)]
    tops = [top_prediction(scaled[k][rows[k]], true[k][rows[k]]) for k in range(vocab.depth)]
    # a class run's seven probabilities stay a distribution (p_1 … p_7 sum to 1): maps only
    # for full-EC runs (a class run's ECE before and after is in its calibration.json)
    maps = [fit_confidence_map(c, r) for c, r in tops] if vocab.depth > 1 else None
    after = mapped(scaled, vocab, maps) if maps else scaled
    extra = {
        "temperatures": temperatures,
        "confidence_maps": maps,
        "ece_temperature_only": [expected_calibration_error(*top) for top in tops],
    }
    return _save(run, calibration_report(vocab, before, after, val.ecs, extra))


def calibrate_homolog(run: Path, predictor: Predictor, val: Records, extra: dict) -> dict:
    """Thresholds (and the reliability diagram) of a kNN or hybrid run's probabilities."""
    scores = predictor.score(val.ids, val.seqs)
    report = calibration_report(predictor.vocab, scores.levels, scores.levels, val.ecs, extra)
    return _save(run, report)


def homolog_curves(
    vocab: ECVocabulary,
    best_ec: Sequence[str],
    identity: np.ndarray,
    ecs: Sequence[str],
    profile: np.ndarray,
    agrees: Sequence[np.ndarray] | None = None,
    decided: np.ndarray | None = None,
) -> dict[str, list[list[float]]]:
    """Per kind of hit and level: P(the homolog's class is right) by identity bin,
    non-decreasing. Kinds: ``search``, and ``profile`` for the fallback's hits; for a hybrid,
    whose CNN ``agrees`` or not at each level, also ``search+cnn`` and ``profile+cnn`` (the
    plain kinds then hold the rows the CNN disagrees with), fitted on the rows where the
    homolog ``decided`` the level (``bool [levels, N]``; all by default)."""
    true, known = truth(vocab, ecs)
    hit, _ = truth(vocab, best_ec)
    kinds = {"search": ~profile, "profile": profile}
    curves: dict[str, list[list[float]]] = {}
    for name, mine in kinds.items():
        for suffix in ("", "+cnn") if agrees is not None else ("",):
            curves[name + suffix] = []
            for level in range(vocab.depth):
                pooled = mine & known[:, level] & (hit[level].sum(axis=1) > 0)
                if decided is not None:
                    pooled &= decided[level]
                rows = pooled
                if agrees is not None:
                    rows = pooled & (agrees[level] if suffix else ~agrees[level])
                if not rows.any():  # e.g. no profile hit the CNN agreed with: the kind's own
                    rows = pooled
                right = (hit[level][rows] & true[level][rows]).any(axis=1)
                curves[name + suffix].append(identity_curve(identity[rows], right))
    return curves


def cnn_maps(
    vocab: ECVocabulary, levels: Sequence[np.ndarray], decided: np.ndarray, ecs: Sequence[str]
) -> list[list[list[float]]]:
    """Per level, a hybrid's confidence map of the rows its CNN decides (where the homolog
    did not ``decided``): the CNN's top confidence there against how often it was right."""
    true, known = truth(vocab, ecs)
    maps = []
    for level in range(vocab.depth):  # a row of zeros (no class the CNN scores) says nothing
        rows = known[:, level] & ~decided[level] & (levels[level].max(axis=1) > 0)
        maps.append(fit_confidence_map(*top_prediction(levels[level][rows], true[level][rows])))
    return maps
