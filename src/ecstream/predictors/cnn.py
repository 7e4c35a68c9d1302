"""A trained CNN run, ready to score sequences on CPU or GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import alphabet
from ..batches import padded_width
from ..config import PREDICT_BATCH_SIZE
from ..hierarchy import consistent, level_probabilities
from ..labels import ECVocabulary, LabelPolicy
from ..model import ECClassifier, ModelConfig
from ..runs import RunError, read_calibration
from .base import Predictor, Scores


def letters_matrix(seqs: list[bytes], width: int) -> np.ndarray:
    """Residue letters of sequences, post-padded with 0 and truncated to ``width``."""
    letters = np.zeros((len(seqs), width), dtype=np.uint8)
    for i, s in enumerate(seqs):
        row = np.frombuffer(s, dtype=np.uint8)[:width]
        letters[i, : len(row)] = row
    return letters


class CNNPredictor(Predictor):
    """Scores sequences with a run's best weights (``RUN/model.pt``), calibrated on validation
    (``RUN/calibration.json``) unless ``calibrated=False``."""

    kind = "cnn"

    def __init__(
        self,
        run: str | os.PathLike,
        config: dict,
        device: str | None = None,
        calibrated: bool = True,
    ):
        self.run, self.config = Path(run), config
        self.policy = LabelPolicy.from_dict(config["labels"])
        self.vocab = (
            ECVocabulary.from_dict(config["vocabulary"])
            if "vocabulary" in config
            else ECVocabulary.first_level()
        )
        self.max_length = int(config["train"]["max_length"])
        self.batch_size = PREDICT_BATCH_SIZE
        weights = self.run / "model.pt"
        if not weights.is_file():
            raise RunError(f"{run}: no model.pt (training did not finish an epoch)")
        payload = torch.load(weights, map_location="cpu", weights_only=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = ECClassifier(ModelConfig.from_dict(payload["model"]))
        self.model.load_state_dict(payload["state_dict"])
        self.model.to(self.device).eval()
        calibration = read_calibration(run) if calibrated else None
        self.temperatures = calibration["temperatures"] if calibration else [1.0] * self.vocab.depth
        self.thresholds = calibration["thresholds"] if calibration else None
        self.report_uncalibrated = False  # evaluate compares calibration with none

    def model_files(self) -> list[Path]:
        return [self.run / "model.pt", *super().model_files()]

    @torch.inference_mode()
    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits for a uint8 token batch ``[B, L]``."""
        x = torch.from_numpy(tokens).to(self.device)
        return self.model(x).float().cpu().numpy()

    def all_logits(self, seqs: list[bytes]) -> np.ndarray:
        """Logits of sequences (upper-case letters) in input order, scored in length-sorted
        batches of ``batch_size`` (little padding)."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(seqs), self.model.config.num_classes), dtype=np.float32)
        for start in range(0, len(seqs), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = padded_width(int(lengths[idx[-1]]), self.max_length)
            tokens = alphabet.encode(letters_matrix([seqs[i] for i in idx], width))
            out[idx] = self.logits(tokens)
        return out

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        logits = self.all_logits(seqs)
        levels = consistent(level_probabilities(logits, self.vocab, self.temperatures), self.vocab)
        raw = None
        if self.report_uncalibrated:
            raw = consistent(level_probabilities(logits, self.vocab), self.vocab)
        return Scores(levels[0], levels, uncalibrated=raw)
