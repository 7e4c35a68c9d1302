"""The predictor interface: what every run kind (CNN, kNN, hybrid) offers for inference.

A predictor turns sequences (upper-case letters) into class probabilities. It states its
``kind``, its label ``policy``, how long a sequence it scores whole (``max_length``, ``None``
for no limit), its forward-pass ``batch_size`` (``None`` when it has none), and the extra
output columns it reports. Drivers (:mod:`ecstream.predict`, :mod:`ecstream.evaluate`) use
nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..alphabet import SequenceError, clean_sequence
from ..config import UNCALIBRATED_THRESHOLD
from ..hashing import file_sha256
from ..hierarchy import Call, decode
from ..kinds import is_real
from ..labels import ECVocabulary, LabelPolicy
from ..runs import CALIBRATION, RunError


@dataclass
class Scores:
    """What a predictor says of N sequences.

    ``probs``: probabilities ``[N, 7]`` of the seven classes (a row of NaN: no prediction, e.g.
    a kNN query without a hit). ``levels``: the consistent, calibrated probabilities of every
    class of each level of the predictor's vocabulary (``[N, C_level]`` per level).
    ``extra``: the predictor's extra output columns. ``identity``: each sequence's highest
    identity to the training split when the predictor searched it (NaN: no hit), else ``None``.
    """

    probs: np.ndarray
    levels: list[np.ndarray] = field(default_factory=list)
    extra: dict[str, list] = field(default_factory=dict)
    identity: np.ndarray | None = None
    uncalibrated: list[np.ndarray] | None = None  # ``levels`` before calibration, when asked
    profile: np.ndarray | None = None  # bool: the homolog came from the profile fallback


@contextlib.contextmanager
def entries_of(run: str | os.PathLike) -> Iterator[None]:
    """Read ``run``'s config and calibration in the block: an entry missing (a file damaged or
    edited by hand) is a :class:`RunError` naming the run, not a bare ``KeyError``."""
    try:
        yield
    except KeyError as error:
        key = error.args[0] if error.args else "?"
        raise RunError(
            f"{run}: its config.json or calibration.json lacks the entry {key!r}"
        ) from error


class Predictor:
    """Base class of every run kind's predictor; subclasses implement :meth:`score`."""

    kind: str
    run: Path
    policy: LabelPolicy
    vocab: ECVocabulary  # the classes of each level it scores (1 level, or 4 for full EC)
    thresholds: list[float | None] | None = None  # per level, from validation; None: none yet
    multi_class: str = "skip"  # a class run's rows spanning several classes: skip | first
    max_length: int | None = None  # sequences longer than this are truncated; None: never
    batch_size: int | None = None  # sequences per forward pass; None: the predictor has none
    score_rows: int | None = None  # predict scores a chunk in parts of this many; None: whole
    search_rows: int | None = None  # records to announce at once (search_ahead); None: no need
    precision: str | None = None  # number format of the forward pass; None: the predictor has none
    extra_columns: tuple[str, ...] = ()

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        """Probabilities for sequences (upper-case letters), with any extra output columns."""
        raise NotImplementedError

    def search_ahead(self, seqs: list[bytes]) -> None:
        """Told the cleaned sequences of the next ``search_rows`` or so records, before they
        are scored in smaller parts: a homology predictor searches them in one go, since a
        search pays a fixed cost whatever its size. Scoring records it was not told of still
        works (they are searched then). Other predictors ignore it."""

    def parallel_parts(self) -> contextlib.AbstractContextManager[int]:
        """While entered: how many parts of an input :func:`~ecstream.predict.predict_file` may
        score at once, in threads (1: one after the other)."""
        return contextlib.nullcontext(1)

    def handled(self, length: int) -> str:
        """How a sequence of ``length`` residues is scored: ``whole`` or ``truncated to N``."""
        if self.max_length is None or length <= self.max_length:
            return "whole"
        return f"truncated to {self.max_length}"

    def model_files(self) -> list[Path]:
        """The files that decide this predictor's answers (hashed into a prediction's sidecar)."""
        return [p for p in (self.run / "config.json", self.run / CALIBRATION) if p.is_file()]

    def model_hash(self) -> str:
        return file_sha256(*self.model_files())

    def level_thresholds(self, min_confidence: float | None = None) -> list[float | None]:
        """The thresholds a decoding uses: one for all levels if given, else the run's own
        (runs made before calibration existed use :data:`UNCALIBRATED_THRESHOLD`)."""
        if min_confidence is not None:
            if not (is_real(min_confidence) and 0 <= min_confidence <= 1):
                # NaN would clear none (0 states every level: the CLI refuses it, the API not)
                raise ValueError(f"--min-confidence must be in [0, 1], got {min_confidence!r}")
            return [float(min_confidence)] * self.vocab.depth
        if self.thresholds is None:
            return [UNCALIBRATED_THRESHOLD] * self.vocab.depth
        return list(self.thresholds)

    def decode(self, scores: Scores, min_confidence: float | None = None) -> list[list[Call]]:
        """The EC numbers of each sequence, as deep as their confidence reaches the thresholds."""
        return decode(scores.levels, self.vocab, self.level_thresholds(min_confidence))

    def predict_ec(
        self, sequences: Iterable[str], min_confidence: float | None = None
    ) -> list[list[Call]]:
        """EC numbers for sequences as text: per sequence a list of :class:`Call` (number,
        depth, confidence), most confident first; empty when no level clears its threshold."""
        seqs = self._clean(sequences)
        return self.decode(self.score([str(i) for i in range(len(seqs))], seqs), min_confidence)

    def _clean(self, sequences: Iterable[str]) -> list[bytes]:
        if isinstance(sequences, str | bytes):
            raise TypeError("give a list of sequences; for one sequence write predict([seq])")
        seqs = []
        for i, text in enumerate(sequences):
            if isinstance(text, bytes | bytearray):  # as a store's records give them
                text = text.decode("ascii", "replace")
            if not isinstance(text, str):
                raise TypeError(
                    f"sequence {i}: a sequence is text (str or bytes), got {type(text).__name__}"
                )
            try:
                seqs.append(clean_sequence(text).encode())
            except SequenceError as error:
                raise ValueError(f"sequence {i}: {error}") from None
        return seqs

    def predict(self, sequences: Iterable[str]) -> np.ndarray:
        """Class probabilities ``[N, C]`` for sequences as text (columns: ``policy.classes``).

        A kNN run gives its homolog's class probability 1, and a row of NaN to a sequence
        without any hit; :meth:`score` also returns which homolog decided.
        """
        seqs = self._clean(sequences)
        return self.score([str(i) for i in range(len(seqs))], seqs).probs
