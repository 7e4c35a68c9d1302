"""Prediction: a trained run loaded for inference, and files of any size scored in a stream.

Sequences longer than the run's ``max_length`` are **truncated** to their first ``max_length``
residues, exactly as in training; the output says so in its ``handled`` column.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import alphabet
from .batches import padded_width
from .labels import LabelPolicy
from .model import ECClassifier, ModelConfig
from .runs import RunError, read_config
from .skips import Skips
from .sources import Columns, read_rows

PREDICT_COLUMNS = Columns(id="Entry", ec=None, sequence="Sequence")


@dataclass
class Scores:
    """Class probabilities ``[N, C]`` for N sequences, and any extra output columns."""

    probs: np.ndarray
    extra: dict[str, list] = field(default_factory=dict)


class Scorer:
    """What turns sequences into class probabilities: a CNN, a homolog search, or both.

    Subclasses set ``policy`` and ``max_length`` and implement :meth:`score`; :meth:`predict`,
    the Python API's one call, is the same for all.
    """

    policy: LabelPolicy
    max_length: int
    extra_columns: tuple[str, ...] = ()

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        """Probabilities for sequences (upper-case letters), with any extra output columns."""
        raise NotImplementedError

    def predict(self, sequences: Iterable[str]) -> np.ndarray:
        """Class probabilities ``[N, C]`` for sequences as text (columns: ``policy.classes``).

        A kNN run gives its homolog's class probability 1, and a row of NaN to a sequence
        without any hit; ``score`` also returns which homolog decided.
        """
        seqs = []
        for i, text in enumerate(sequences):
            clean = alphabet.clean(text.strip())
            if clean is None:
                raise ValueError(f"sequence {i} is empty or holds characters that are not letters")
            seqs.append(clean.encode())
        return self.score([str(i) for i in range(len(seqs))], seqs).probs


def letters_matrix(seqs: list[bytes], width: int) -> np.ndarray:
    """Residue letters of sequences, post-padded with 0 and truncated to ``width``."""
    letters = np.zeros((len(seqs), width), dtype=np.uint8)
    for i, s in enumerate(seqs):
        row = np.frombuffer(s, dtype=np.uint8)[:width]
        letters[i, : len(row)] = row
    return letters


class CNNPredictor(Scorer):
    """A trained CNN run, ready to score sequences (CPU or GPU)."""

    def __init__(self, run: str | os.PathLike, config: dict, device: str | None = None):
        self.run, self.config = Path(run), config
        self.policy = LabelPolicy.from_dict(config["labels"])
        self.max_length = int(config["train"]["max_length"])
        weights = self.run / "model.pt"
        if not weights.is_file():
            raise RunError(f"{run}: no model.pt (training did not finish an epoch)")
        payload = torch.load(weights, map_location="cpu", weights_only=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = ECClassifier(ModelConfig.from_dict(payload["model"]))
        self.model.load_state_dict(payload["state_dict"])
        self.model.to(self.device).eval()
        self.batch_size = 64

    @torch.inference_mode()
    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Logits for a uint8 token batch ``[B, L]``."""
        x = torch.from_numpy(tokens).to(self.device)
        return self.model(x).float().cpu().numpy()

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        """Probabilities for sequences (upper-case letters), in length-sorted batches.

        ``batch_size`` sequences per forward pass: on 2 CPU cores 64 beat 256 (2,144 vs 1,832
        seq/s, medians of 3 runs of ``ecstream predict`` on the demo's 3,154 test proteins).
        """
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(lengths, kind="stable")
        probs = np.empty((len(seqs), len(self.policy.classes)), dtype=np.float32)
        for start in range(0, len(seqs), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = padded_width(int(lengths[idx[-1]]), self.max_length)
            tokens = alphabet.encode(letters_matrix([seqs[i] for i in idx], width))
            logits = torch.from_numpy(self.logits(tokens))
            probs[idx] = torch.softmax(logits, dim=1).numpy()
        return Scores(probs)


def load_model(run: str | os.PathLike, device: str | None = None) -> Scorer:
    """Load a run for prediction: a CNN, a homology (kNN) or a hybrid run."""
    config = read_config(run)
    kind = config.get("kind", "cnn")
    if kind == "cnn":
        return CNNPredictor(run, config, device)
    from . import knn

    return knn.load(run, config, device)


def handled(length: int, max_length: int) -> str:
    return "whole" if length <= max_length else f"truncated to {max_length}"


def predict_file(
    model: Scorer,
    source: Any,
    out: str | os.PathLike,
    *,
    top_k: int = 3,
    columns: Columns = PREDICT_COLUMNS,
    fmt: str | None = None,
    chunk_rows: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score every record of ``source`` into a TSV at ``out`` (written atomically), input order.

    A record that cannot be scored (no sequence, characters that are not letters) keeps its row,
    with the ``error`` column saying why. A line that cannot be read as a record at all (wrong
    column count, a truncated gzip) has no id to give a row: it is counted under ``unreadable``
    with its file and line. Returns counts and the speed.
    """
    out = Path(out)
    classes, names = model.policy.classes, model.policy.names
    header = [
        "id", "ec_class", "class_name", "probability", *(f"p_{k}" for k in classes),
        "top_k", "length", "handled", *model.extra_columns, "error",
    ]  # fmt: skip
    extra_blank = [""] * len(model.extra_columns)
    tmp = out.with_name(f".{out.name}.tmp")
    skips = Skips()
    counts = {"records": 0, "scored": 0, "errors": 0}
    start = time.perf_counter()
    try:
        with open(tmp, "w") as fh:
            fh.write("\t".join(header) + "\n")
            for rows in read_rows(source, columns, skips, fmt, chunk_rows):
                ids, seqs, keep, errors = [], [], [], {}
                for k, (_, rid, _, seq, _) in enumerate(rows):
                    seq = seq.strip()
                    clean = alphabet.clean(seq)
                    if clean is None:
                        errors[k] = (
                            "empty sequence" if not seq else "characters that are not letters"
                        )
                        continue
                    keep.append(k)
                    ids.append(rid)
                    seqs.append(clean.encode())
                scores = model.score(ids, seqs) if seqs else Scores(np.zeros((0, len(classes))))
                at = {k: j for j, k in enumerate(keep)}
                for k, (_, rid, _, seq, _) in enumerate(rows):
                    if k in errors:
                        empty = [""] * (len(classes) + 4)  # class, name, probability, p_*, top_k
                        fields = [rid, *empty, str(len(seq.strip())), "", *extra_blank, errors[k]]
                        fh.write("\t".join(fields) + "\n")
                        continue
                    j = at[k]
                    p = scores.probs[j]
                    extras = [str(scores.extra[c][j]) for c in model.extra_columns]
                    length = len(seqs[j])
                    if np.isnan(p).all():  # e.g. no homolog found: no class, not an error
                        empty = [""] * (len(classes) + 4)
                        fields = [rid, *empty, str(length), handled(length, model.max_length)]
                        fh.write("\t".join([*fields, *extras, ""]) + "\n")
                        continue
                    best = int(np.argmax(p))
                    ranked = np.argsort(-p, kind="stable")[:top_k]
                    fields = [
                        rid, classes[best], names[best], f"{p[best]:.4f}", *(f"{v:.4f}" for v in p),
                        "; ".join(f"{classes[r]} ({p[r]:.3f})" for r in ranked),
                        str(length), handled(length, model.max_length), *extras, "",
                    ]  # fmt: skip
                    fh.write("\t".join(fields) + "\n")
                counts["records"] += len(rows)
                counts["scored"] += len(keep)
                counts["errors"] += len(errors)
                if progress:
                    progress(counts["records"])
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    return {
        **counts,
        "unreadable": skips.to_dict(),
        "unreadable_lines": skips.lines(),
        "seconds": seconds,
        "per_second": counts["records"] / max(seconds, 1e-9),
    }
