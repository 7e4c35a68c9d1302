"""Predictors of every run kind behind one interface (:class:`~.base.Predictor`).

``load_model(run)`` reads the run's ``config.json`` and returns the predictor of its kind:
:mod:`.cnn` for a trained CNN, :mod:`.homolog` for the kNN and the hybrid.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import scoring_precision
from ..runs import RunError, read_config, warn_if_unchecked
from .base import Predictor, Scores, entries_of
from .cnn import CNNPredictor
from .homolog import HybridPredictor, KNNPredictor

KINDS = {"cnn": CNNPredictor, "knn": KNNPredictor, "hybrid": HybridPredictor}


def load_model(
    run: str | os.PathLike, device: str | None = None, precision: str = "32"
) -> Predictor:
    """Load a run for prediction: a CNN, a homology (kNN) or a hybrid run; ``precision``
    (``32`` or ``bf16``) is that of a CNN's forward pass (``config.SCORING_PRECISIONS``)."""
    config = read_config(run)  # which checks the run's files against its checksums
    warn_if_unchecked(Path(run))
    kind = config["kind"]
    if kind not in KINDS:
        raise RunError(f"{run}: unknown run kind {kind!r}; this ecstream knows {', '.join(KINDS)}")
    if kind == "knn" and scoring_precision(precision) != "32":
        raise ValueError(f"--precision: a {kind} run has no forward pass (it searches)")
    with entries_of(run):
        if kind == "knn":
            return KNNPredictor(run, config)
        return KINDS[kind](run, config, device, precision=precision)


__all__ = [
    "KINDS",
    "CNNPredictor",
    "HybridPredictor",
    "KNNPredictor",
    "Predictor",
    "Scores",
    "load_model",
]
