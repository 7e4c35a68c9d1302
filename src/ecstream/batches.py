"""Exact batches: plan → gather → pad/truncate → encode, the same from RAM or from mmap.

:class:`Batches` is what ``store.batches(...)`` returns: ``len()`` is the number of steps,
``num_samples`` the number of records, iteration yields :class:`Batch` objects, random access
``batches[step]`` serves the loader adapters, and ``state_dict()`` resumes mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from . import alphabet
from .plan import BatchSettings, EpochPlan
from .shards import SplitData

STATE_FORMAT = "ecstream-batches/v1"


class Batch:
    """One batch: tokens ``x`` (uint8 [B, L], 0 = padding), 0-based labels ``y``, record ``ids``.

    ``lengths`` are the full sequence lengths, before truncation. The ids are read from the
    store only when asked for (training never needs them).
    """

    __slots__ = ("_ecs", "_ids", "_rows", "_source", "lengths", "x", "y")

    def __init__(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray, rows, source):
        self.x, self.y, self.lengths = x, y, lengths
        self._rows, self._source, self._ids, self._ecs = rows, source, None, None

    @property
    def ids(self) -> np.ndarray:
        """Record ids (numpy str array)."""
        if self._ids is None:
            self._ids = self._source.strings(self._rows, "id")
        return self._ids

    @property
    def ecs(self) -> np.ndarray:
        """The EC fields of the records as read (numpy str array): all their EC numbers."""
        if self._ecs is None:
            self._ecs = self._source.strings(self._rows, "ec")
        return self._ecs

    def __reduce__(self):  # pickled (sent to another process) with its ids, not its store
        return _batch, (self.x, self.y, self.lengths, self.ids)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Batch(x={self.x.shape} {self.x.dtype}, y={self.y.shape})"


def _batch(x, y, lengths, ids) -> Batch:
    batch = Batch(x, y, lengths, None, None)
    batch._ids = ids
    return batch


def padded_width(longest: int, max_length: int) -> int:
    """Width for a batch whose longest sequence has ``longest`` residues: capped at
    ``max_length``, rounded up to a multiple of 8, never above ``max_length``."""
    return min(max_length, -(-min(max(longest, 1), max_length) // 8) * 8)


def batch_width(lengths: np.ndarray, settings: BatchSettings) -> int:
    """Batch width: ``max_length``, or with bucketing :func:`padded_width` of the longest."""
    if not settings.bucket:
        return settings.max_length
    return padded_width(int(lengths.max(initial=1)), settings.max_length)


class Batches:
    """The batches of one split for one epoch and one rank; see :meth:`Store.batches`.

    ``records`` limits the stream to the split's first records (the single-class rows that a
    store keeps before those spanning several classes); by default it holds all of them.
    """

    def __init__(
        self,
        data: SplitData,
        settings: BatchSettings,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        records: int | None = None,
    ):
        self.data, self.settings = data, settings
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if records is not None and not 0 <= records <= data.n:
            raise ValueError(f"records must be in [0, {data.n}], got {records}")
        self.records = data.n if records is None else records
        self.step = 0
        self.set_epoch(epoch)

    @property
    def split(self) -> str:
        return self.data.name

    def set_epoch(self, epoch: int) -> None:
        """Switch to another epoch (a different order when shuffling) and rewind to its start."""
        self.epoch, self.step = epoch, 0
        self.plan = EpochPlan(
            self.records,
            self.settings,
            key=self.data.fingerprint,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            lengths=self._capped_lengths,
        )

    def _capped_lengths(self, rows: np.ndarray) -> np.ndarray:
        return np.minimum(self.data.lengths(rows), self.settings.max_length)

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def num_samples(self) -> int:
        """Records this rank sees per epoch (all of the split unless drop_last or ranks)."""
        return self.plan.num_samples

    def __getitem__(self, step: int) -> Batch:
        if step < 0:
            step += len(self)
        rows = self.plan.rows(step)
        s = self.settings
        width = partial(batch_width, settings=s) if s.bucket else s.max_length
        letters, width, labels, lengths = self.data.gather(rows, width, s.padding, s.truncating)
        x = alphabet.encode(letters).reshape(len(rows), width)
        return Batch(x, labels, lengths, rows, self.data)

    def __iter__(self) -> Iterator[Batch]:
        """Yield the batches from ``step`` on; a completed epoch rewinds ``step`` to 0."""
        while self.step < len(self):
            batch = self[self.step]
            self.step += 1
            yield batch
        self.step = 0

    def state_dict(self) -> dict:
        """Where this stream stands (under 1 KB): load it into an equal Batches to resume."""
        return {
            "format": STATE_FORMAT,
            "split": self.split,
            "fingerprint": self.data.fingerprint,
            "seed": self.seed,
            "epoch": self.epoch,
            "step": self.step,
            "rank": self.rank,
            "world_size": self.world_size,
            "records": self.records,
            "settings": self.settings.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; refuses a state of another split or other settings."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a batch stream state: {state.get('format')!r}")
        mine = self.state_dict()
        state = {"records": self.data.n, **state}  # states saved before records were limited
        for key in ("split", "fingerprint", "seed", "rank", "world_size", "records", "settings"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"this state belongs to another stream ({key}: {state[key]!r} here "
                    f"{mine[key]!r}); open the batches with the same arguments to resume"
                )
        self.set_epoch(int(state["epoch"]))
        if not 0 <= state["step"] <= len(self):
            raise ValueError(f"step {state['step']} is outside this epoch of {len(self)} steps")
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return (
            f"Batches(split={self.split!r}, steps={len(self)}, samples={self.num_samples}, "
            f"epoch={self.epoch}, step={self.step}, {self.settings})"
        )
