"""The predictor interface: what every run kind (CNN, kNN, hybrid) offers for inference.

A predictor turns sequences (upper-case letters) into class probabilities. It states its
``kind``, its label ``policy``, how long a sequence it scores whole (``max_length``, ``None``
for no limit), its forward-pass ``batch_size`` (``None`` when it has none), and the extra
output columns it reports. Drivers (:mod:`ecstream.predict`, :mod:`ecstream.evaluate`) use
nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..alphabet import SequenceError, clean_sequence
from ..labels import LabelPolicy


@dataclass
class Scores:
    """Class probabilities ``[N, C]`` for N sequences and the predictor's extra columns.

    A row of NaN means no prediction (a kNN query without a hit). ``identity`` is each
    sequence's highest identity to the training split when the predictor searched it (NaN: no
    hit), else ``None``.
    """

    probs: np.ndarray
    extra: dict[str, list] = field(default_factory=dict)
    identity: np.ndarray | None = None


class Predictor:
    """Base class of every run kind's predictor; subclasses implement :meth:`score`."""

    kind: str
    run: Path
    policy: LabelPolicy
    max_length: int | None = None  # sequences longer than this are truncated; None: never
    batch_size: int | None = None  # sequences per forward pass; None: the predictor has none
    extra_columns: tuple[str, ...] = ()

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        """Probabilities for sequences (upper-case letters), with any extra output columns."""
        raise NotImplementedError

    def handled(self, length: int) -> str:
        """How a sequence of ``length`` residues is scored: ``whole`` or ``truncated to N``."""
        if self.max_length is None or length <= self.max_length:
            return "whole"
        return f"truncated to {self.max_length}"

    def predict(self, sequences: Iterable[str]) -> np.ndarray:
        """Class probabilities ``[N, C]`` for sequences as text (columns: ``policy.classes``).

        A kNN run gives its homolog's class probability 1, and a row of NaN to a sequence
        without any hit; :meth:`score` also returns which homolog decided.
        """
        if isinstance(sequences, str | bytes):
            raise TypeError(
                "predict() takes a list of sequences; for one sequence write predict([seq])"
            )
        seqs = []
        for i, text in enumerate(sequences):
            try:
                seqs.append(clean_sequence(text).encode())
            except SequenceError as error:
                raise ValueError(f"sequence {i}: {error}") from None
        return self.score([str(i) for i in range(len(seqs))], seqs).probs
