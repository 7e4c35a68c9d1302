"""Records in chunks: the one shape in which (id, sequence, label, EC text) travel.

A store split, a validated input table and a labelled file for evaluation are all read as
iterators of :class:`Records` chunks of bounded size, so memory never holds a whole split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np


@dataclass
class Records:
    """A chunk of aligned records: ids, residue letters (upper-case bytes), labels and EC text.

    ``split_values`` holds the split column's value per record when a build reads one.
    """

    ids: list[str] = field(default_factory=list)
    seqs: list[bytes] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ecs: list[str] = field(default_factory=list)
    split_values: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask: np.ndarray) -> Records:
        """The records where ``mask`` is true, in order."""
        idx = np.flatnonzero(mask)
        pick = idx.tolist()
        return Records(
            ids=[self.ids[i] for i in pick],
            seqs=[self.seqs[i] for i in pick],
            labels=self.labels[idx],
            ecs=[self.ecs[i] for i in pick] if self.ecs else [],
            split_values=[self.split_values[i] for i in pick] if self.split_values else [],
        )

    def pairs(self) -> Iterator[tuple[str, bytes]]:
        """``(id, sequence)`` of each record (what a homology search takes)."""
        return zip(self.ids, self.seqs, strict=True)


def concat(chunks: Iterable[Records]) -> Records:
    """All chunks as one (for the small splits that are scored whole, e.g. validation)."""
    parts = list(chunks)
    return Records(
        ids=[i for p in parts for i in p.ids],
        seqs=[s for p in parts for s in p.seqs],
        labels=(
            np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        ),
        ecs=[e for p in parts for e in p.ecs],
        split_values=[v for p in parts for v in p.split_values],
    )


Chunk = TypeVar("Chunk", bound=Sized)


def groups(chunks: Iterable[Chunk], rows: int | None) -> Iterator[list[Chunk]]:
    """Consecutive chunks gathered until they hold at least ``rows`` records together (the
    last group may hold fewer); each chunk alone when ``rows`` is ``None``."""
    group: list[Chunk] = []
    size = 0
    for chunk in chunks:
        group.append(chunk)
        size += len(chunk)
        if rows is None or size >= rows:
            yield group
            group, size = [], 0
    if group:
        yield group


def pairs(chunks: Iterable[Records]) -> Iterator[tuple[str, bytes]]:
    """``(id, sequence)`` of every record of every chunk, in order."""
    for chunk in chunks:
        yield from chunk.pairs()
