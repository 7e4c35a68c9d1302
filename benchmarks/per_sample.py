"""A plain per-sample ``torch.utils.data.Dataset``, batched by ``DataLoader``'s default collate.

Each ``__getitem__`` returns one record: its residues encoded with ecstream's lookup table,
truncated/padded to ``max_length`` as a uint8 tensor, and its label. The records are held in RAM
as Python lists (``bytes`` per sequence), read from the store's shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from common import split_table
from torch.utils.data import DataLoader, Dataset

import ecstream


class SequenceDataset(Dataset):
    """One record per item: ``(uint8 tokens [max_length], label)``."""

    def __init__(self, sequences: list[bytes], labels: list[int], max_length: int = 660):
        self.sequences, self.labels, self.max_length = sequences, labels, max_length

    @classmethod
    def from_store(cls, store_path: Path, split: str, max_length: int = 660) -> SequenceDataset:
        table = split_table(store_path, split, ["sequence", "label"])
        return cls(table["sequence"].to_pylist(), table["label"].to_pylist(), max_length)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sequence = self.sequences[i][: self.max_length]
        tokens = np.zeros(self.max_length, dtype=np.uint8)
        tokens[: len(sequence)] = ecstream.encode(sequence)
        return torch.from_numpy(tokens), self.labels[i]


def sequence_loader(dataset: SequenceDataset, batch_size: int = 64, seed: int = 0) -> DataLoader:
    """Shuffled, default collate, ``num_workers=0``: how a per-sample dataset is usually batched."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
