"""Predictors of every run kind behind one interface (:class:`~.base.Predictor`).

``load_model(run)`` reads the run's ``config.json`` and returns the predictor of its kind:
:mod:`.cnn` for a trained CNN, :mod:`.homolog` for the kNN and the hybrid.
"""

from __future__ import annotations

import os

from ..runs import RunError, read_config
from .base import Predictor, Scores
from .cnn import CNNPredictor
from .homolog import HybridPredictor, KNNPredictor

KINDS = {"cnn": CNNPredictor, "knn": KNNPredictor, "hybrid": HybridPredictor}


def load_model(run: str | os.PathLike, device: str | None = None) -> Predictor:
    """Load a run for prediction: a CNN, a homology (kNN) or a hybrid run."""
    config = read_config(run)
    kind = config["kind"]
    if kind not in KINDS:
        raise RunError(f"{run}: unknown run kind {kind!r}; this ecstream knows {', '.join(KINDS)}")
    if kind == "knn":
        return KNNPredictor(run, config)
    return KINDS[kind](run, config, device)


__all__ = [
    "KINDS",
    "CNNPredictor",
    "HybridPredictor",
    "KNNPredictor",
    "Predictor",
    "Scores",
    "load_model",
]
