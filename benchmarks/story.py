"""The story's loader (DESIGN.md), with its bugs fixed but its style kept.

A pandas DataFrame of the whole table; per sample a ``df.iloc[i]`` row lookup, a Python loop that
encodes each residue through a dict, truncation/padding to 660, a one-hot float32 ``[660, 21]``;
``np.stack`` per batch. Fixed: it reads the split it is given (the store's training records),
encodes once, and keeps the last partial batch (``len`` is ``ceil(N / B)``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from common import split_table

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
CHAR_TO_INT = {c: i for i, c in enumerate(AMINO_ACIDS)}  # 0..19
OTHER = 20  # every other letter


def story_dataframe(tsv: Path, store_path: Path, split: str = "train") -> pd.DataFrame:
    """All of the table read by pandas, then the rows of one split of the store, with labels."""
    df = pd.read_csv(tsv, sep="\t")
    labels = split_table(store_path, split, ["id", "label"]).to_pandas()
    df = df.merge(labels, left_on="Entry", right_on="id", how="inner")
    return df[["Entry", "Sequence", "label"]]


class StoryGenerator:
    """A ``keras.utils.Sequence``-style generator: ``len()`` steps, ``gen[i]`` is batch ``i``."""

    def __init__(self, df: pd.DataFrame, batch_size: int = 64, max_length: int = 660, seed=0):
        self.df, self.batch_size, self.max_length = df, batch_size, max_length
        self.indices = np.random.default_rng(seed).permutation(len(df))  # shuffled epoch

    def __len__(self) -> int:
        return math.ceil(len(self.df) / self.batch_size)

    def encode(self, sequence: str) -> np.ndarray:
        encoded = []
        for residue in sequence:
            encoded.append(CHAR_TO_INT.get(residue, OTHER))
        encoded = encoded[: self.max_length]
        one_hot = np.zeros((self.max_length, 21), dtype=np.float32)  # padding rows stay zero
        one_hot[np.arange(len(encoded)), encoded] = 1.0
        return one_hot

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i in self.indices[idx * self.batch_size : (idx + 1) * self.batch_size]:
            row = self.df.iloc[i]
            xs.append(self.encode(row["Sequence"]))
            ys.append(row["label"])
        return np.stack(xs), np.array(ys, dtype=np.int64)
