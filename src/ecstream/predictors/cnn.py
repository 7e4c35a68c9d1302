"""A trained CNN run, ready to score sequences on CPU or GPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import alphabet
from ..batches import padded_width
from ..config import (
    LONG_SEQUENCES,
    PREDICT_BATCH_SIZE,
    SCORE_ROWS,
    SCORING_WORKERS,
    UNCALIBRATED_THRESHOLD,
    scoring_precision,
)
from ..hierarchy import calibrated, consistent, level_probabilities
from ..labels import ECVocabulary, LabelPolicy
from ..model import ECClassifier, ModelConfig, Scorer
from ..notices import notify
from ..runs import CALIBRATION, RunError, read_calibration
from .base import Predictor, Scores


class EmulatedBF16Warning(UserWarning):
    """``precision="bf16"`` on a CPU without bfloat16 units: PyTorch emulates them, far slower."""


class CalibrationMissingWarning(UserWarning):
    """A full-EC run without its ``calibration.json``: scored uncalibrated, default thresholds."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: a CPU with AVX512-BF16
    or AMX (what oneDNN uses); a GPU is taken to (autocast's own choice there)."""
    if device.type != "cpu":
        return True
    # private in torch 2.13; a torch without them is taken to know best (no warning)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: True)() for name in checks)


def windows(length: int, width: int) -> list[tuple[int, int]]:
    """Overlapping windows ``[a, b)`` of ``width`` covering a sequence, half a width apart."""
    if length <= width:
        return [(0, length)]
    step = width // 2
    starts = [*range(0, length - width, step), length - width]
    return [(a, a + width) for a in starts]


def letters_matrix(seqs: list[bytes], width: int) -> np.ndarray:
    """Residue letters of sequences, post-padded with 0 and truncated to ``width``."""
    letters = np.zeros((len(seqs), width), dtype=np.uint8)
    for i, s in enumerate(seqs):
        row = np.frombuffer(s, dtype=np.uint8)[:width]
        letters[i, : len(row)] = row
    return letters


def read_weights(path: Path, heads: tuple[int, ...]) -> ECClassifier:
    """A run's ``model.pt`` as a network, checked against the run's classes per level
    (``heads``) and for weights that are not finite (a training that diverged). A file that is
    damaged, or another run's, is a :class:`RunError` naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config, state = ModelConfig.from_dict(payload["model"]), payload["state_dict"]
        model = ECClassifier(config)
        model.load_state_dict(state)  # every tensor present, of its shape
    except (OSError, MemoryError):  # the disk or the machine, not the file: said as such
        raise
    except Exception as error:  # torch's zip reader, unpickler and loader raise many kinds
        # not torch's own text: for a file that is not a plain state dict it suggests loading
        # it unsafely; --debug shows it
        raise RunError(
            f"{path}: damaged, or not an ecstream model ({type(error).__name__})"
        ) from error
    if tuple(config.heads) != heads:
        raise RunError(
            f"{path}: a model of {list(config.heads)} classes per level, but its run has "
            f"{list(heads)}: the file is another run's"
        )
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise RunError(
            f"{path}: weights that are not finite numbers (a training that diverged); "
            "train again with a lower --lr"
        )
    return model


class CNNPredictor(Predictor):
    """Scores sequences with a run's best weights (``RUN/model.pt``), calibrated on validation
    (``RUN/calibration.json``) unless ``calibrated=False``, in float32 or, with
    ``precision="bf16"``, with bfloat16 matrix products (``config.SCORING_PRECISIONS``)."""

    kind = "cnn"

    def __init__(
        self,
        run: str | os.PathLike,
        config: dict,
        device: str | None = None,
        calibrated: bool = True,
        precision: str = "32",
    ):
        self.run, self.config = Path(run), config
        self.precision = scoring_precision(precision)
        self.policy = LabelPolicy.from_dict(config["labels"])
        self.vocab = (
            ECVocabulary.from_dict(config["vocabulary"])
            if "vocabulary" in config
            else ECVocabulary.first_level()
        )
        self.max_length = int(config["train"]["max_length"])
        self.multi_class = config["train"].get("multi_class", "skip")
        self.score_rows = SCORE_ROWS
        weights = self.run / "model.pt"
        if not weights.is_file():
            raise RunError(f"{run}: no model.pt (training did not finish an epoch)")
        # a class run's head has its policy's classes; a full-EC run's, every level's
        heads = tuple(self.vocab.sizes) if "vocabulary" in config else (len(self.policy.classes),)
        self.model = read_weights(weights, heads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.precision == "bf16" and not native_bf16(self.device):
            message = (
                "--precision bf16 on a CPU without bfloat16 units (AVX512-BF16 or AMX): PyTorch "
                "emulates them, many times slower than float32; "
                "score in float32 (the default) instead"
            )
            notify(self.run, message, EmulatedBF16Warning)
        self.batch_size = PREDICT_BATCH_SIZE.get(self.device.type, PREDICT_BATCH_SIZE["cpu"])
        self.model.eval()
        self.scorer = Scorer(self.model).to(self.device).eval()
        calibration = read_calibration(run) if calibrated else None
        if calibrated and calibration is None and "vocabulary" in config:
            # every full-EC run is calibrated as it is made: the file was removed
            notify(
                self.run,
                f"no {CALIBRATION}: probabilities uncalibrated, and thresholds the default "
                f"{UNCALIBRATED_THRESHOLD} at every level unless --min-confidence sets one "
                "(train the run again to calibrate it)",
                CalibrationMissingWarning,
            )
        self.temperatures = calibration["temperatures"] if calibration else [1.0] * self.vocab.depth
        self.thresholds = calibration["thresholds"] if calibration else None
        # runs calibrated before confidence maps existed have temperatures only
        self.maps = calibration.get("confidence_maps") if calibration else None
        self.report_uncalibrated = False  # evaluate compares calibration with none
        self.long = LONG_SEQUENCES

    def model_files(self) -> list[Path]:
        return [self.run / "model.pt", *super().model_files()]

    @contextlib.contextmanager
    def parallel_parts(self) -> Iterator[int]:
        """On CPU, one part at once per PyTorch thread (at most :data:`SCORING_WORKERS`), the
        threads shared out among them (restored on exit): a part's softmax, decoding and rows
        run on one core, so with one part at a time the other cores waited for them
        (BENCHMARKS.md, prediction section). torch.set_num_threads is process-wide: other
        threads' PyTorch work meanwhile gets the same share. On a GPU, one part at a time."""
        threads = torch.get_num_threads()
        workers = min(threads, SCORING_WORKERS)
        if self.device.type != "cpu" or workers <= 1:
            yield 1
            return
        torch.set_num_threads(threads // workers)
        try:
            yield workers
        finally:
            torch.set_num_threads(threads)

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits for a uint8 token batch ``[B, L]``."""
        return self._classify(self._features(tokens))

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def _features(self, tokens: np.ndarray) -> torch.Tensor:
        with self._autocast():
            return self.scorer.features(torch.from_numpy(tokens).to(self.device)).float()

    def _classify(self, features: torch.Tensor) -> np.ndarray:
        with self._autocast():
            return self.scorer.classify(features).float().cpu().numpy()

    def handled(self, length: int) -> str:
        if length <= self.max_length or self.long == "whole":
            return "whole"
        if self.long == "windows":
            return f"{len(windows(length, self.max_length))} windows of {self.max_length}"
        return f"truncated to {self.max_length}"

    def all_logits(self, seqs: list[bytes]) -> np.ndarray:
        """Logits of sequences (upper-case letters) in input order, scored in length-sorted
        batches (little padding) of at most ``batch_size × max_length`` residues.

        A sequence longer than ``max_length`` is scored as :attr:`long` says: ``whole``, in
        overlapping ``windows`` whose logits are averaged, or ``truncated``.
        """
        if self.long == "windows":
            return self._windowed(seqs)
        return self._logits(seqs, whole=self.long == "whole")

    def _logits(self, seqs: list[bytes], whole: bool) -> np.ndarray:
        """:meth:`all_logits`, long sequences scored ``whole`` or else truncated (a mode passed,
        not set on the predictor: threads score parts at once)."""

        def width(longest: int) -> int:  # a multiple of 8, capped at max_length unless whole
            return -(-max(longest, 1) // 8) * 8 if whole else padded_width(longest, self.max_length)

        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(lengths, kind="stable")
        # the batches' pooled features, classified together (efficient matrix products)
        columns = 2 * self.model.config.channels
        features = torch.empty((len(seqs), columns), dtype=torch.float32, device=self.device)
        budget = self.batch_size * self.max_length  # residues per forward pass
        start = 0
        while start < len(seqs):
            # the batch's longest is its last (sorted); fewer sequences when they are long
            longest = int(lengths[order[min(start + self.batch_size, len(seqs)) - 1]])
            size = max(1, min(self.batch_size, budget // width(longest)))
            idx = order[start : start + size]
            tokens = alphabet.encode(
                letters_matrix([seqs[i] for i in idx], width(int(lengths[idx[-1]])))
            )
            features[torch.from_numpy(idx).to(self.device)] = self._features(tokens)
            start += len(idx)
        # SCORE_ROWS at a time: a whole validation split's logits never sit on a GPU at once
        out = np.empty((len(seqs), self.model.config.num_classes), dtype=np.float32)
        for a in range(0, len(seqs), SCORE_ROWS):
            out[a : a + SCORE_ROWS] = self._classify(features[a : a + SCORE_ROWS])
        return out

    def _windowed(self, seqs: list[bytes]) -> np.ndarray:
        pieces, owner = [], []
        for k, s in enumerate(seqs):
            for a, b in windows(len(s), self.max_length):
                pieces.append(s[a:b])
                owner.append(k)
        logits = self._logits(pieces, whole=False)  # every piece fits: score them as they are
        owner_ = np.asarray(owner, dtype=np.int64)
        sums = np.zeros((len(seqs), logits.shape[1]), dtype=np.float64)
        np.add.at(sums, owner_, logits)
        counts = np.bincount(owner_, minlength=len(seqs))[:, None]
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        logits = self.all_logits(seqs)
        probs = level_probabilities(logits, self.vocab, self.temperatures)
        levels = calibrated(probs, self.vocab, self.maps)
        raw = None
        if self.report_uncalibrated:
            raw = consistent(level_probabilities(logits, self.vocab), self.vocab)
        return Scores(levels[0], levels, uncalibrated=raw)
