"""Which records are used and where they go: validation of rows, the split method, split choice.

Records are assigned to splits from a hash of their sequence (or of their cluster
representative), never from their position, so identical sequences share a split and adding data
never moves an old record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import alphabet
from .hashing import unit_interval
from .labels import LabelPolicy
from .records import Records
from .skips import Skips
from .sources import Row

MISSING_ID = "missing_id"
UNKNOWN_SPLIT = "unknown_split_value"
SPLIT_NAMES = {
    "train": 0,
    "training": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "dev": 1,
    "test": 2,
}
SPLIT_SALT = 0x5EED5EED
SAMPLE_SALT = 0x5A3B1E


class SplitMethodError(ValueError):
    """A split method that is not ``random``, ``cluster`` or ``column:NAME``."""


@dataclass(frozen=True)
class SplitMethod:
    """How records are assigned to splits: the small language of ``--split``, parsed once.

    ``random`` (a hash of the sequence), ``cluster`` (whole MMseqs2 clusters) or ``column:NAME``
    (a column of the input names each row's split).
    """

    kind: str
    column: str | None = None

    @classmethod
    def parse(cls, text: str) -> SplitMethod:
        if text in ("random", "cluster"):
            return cls(text)
        if text.startswith("column:") and text.split(":", 1)[1].strip():
            return cls("column", text.split(":", 1)[1].strip())
        raise SplitMethodError(f"--split must be random, cluster or column:NAME, got {text!r}")

    def __str__(self) -> str:
        return f"column:{self.column}" if self.kind == "column" else self.kind


def assign_splits(hashes: np.ndarray, seed: int, val: float, test: float) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) from sequence (or cluster) hashes."""
    u = unit_interval(hashes, SPLIT_SALT, seed)
    return np.where(u < test, 2, np.where(u < test + val, 1, 0)).astype(np.uint8)


def sample_mask(hashes: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Which records a seeded sample of ``fraction`` keeps (by sequence hash)."""
    return unit_interval(hashes, SAMPLE_SALT, seed) < fraction


def validate(
    name: str, rows: list[Row], policy: LabelPolicy, skips: Skips, split_column: bool = False
) -> Records:
    """Rows that can be used, cleaned and labelled; every other row counted with its reason."""
    ids: list[str] = []
    seqs: list[bytes] = []
    labels: list[int] = []
    ecs: list[str] = []
    split_values: list[str] = []
    for line, rid, ec, seq, split_value in rows:
        rid, where = rid.strip(), f"{name}:{line}"
        if not rid:
            skips.add(MISSING_ID, where)
            continue
        try:
            clean = alphabet.clean_sequence(seq)
        except alphabet.SequenceError as error:
            skips.add(error.reason, where, f"{rid}: {error}")
            continue
        label, reason = policy.assign(ec)
        if reason is not None:
            skips.add(reason, where, f"{rid}: {ec!r}")
            continue
        if split_column:
            value = (split_value or "").strip().lower()
            if value not in SPLIT_NAMES:
                skips.add(UNKNOWN_SPLIT, where, f"{rid}: {split_value!r}")
                continue
            split_values.append(value)
        ids.append(rid)
        seqs.append(clean.encode())
        labels.append(label)
        ecs.append(ec.strip())
    return Records(ids, seqs, np.asarray(labels, dtype=np.int64), ecs, split_values)
