"""Exact batches: plan → gather → pad/truncate → encode, the same from RAM or from mmap.

:class:`Batches` is what ``store.batches(...)`` returns: ``len()`` is the number of steps,
``num_samples`` the number of records, iteration yields :class:`Batch` objects, random access
``batches[step]`` serves the loader adapters, and ``state_dict()`` resumes mid-epoch, also with
another number of ranks (see :mod:`ecstream.plan`, "Resume").
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from . import alphabet
from .kinds import is_whole
from .plan import BatchSettings, EpochPlan
from .shards import SplitData

STATE_FORMAT = "ecstream-batches/v2"
#: Steps whose shards a remote split fetches ahead of the one being read.
LOOKAHEAD = 64
#: Steps whose records a local stream read in order looks up together (numpy's cost is per
#: call), and at most how many records they may hold (their Python lists cost ~100 bytes each).
SPAN_STEPS = 32
SPAN_ROWS = 8192
#: States of ecstream before elastic resume: a rank's step, valid for its own world size only.
STATE_FORMAT_V1 = "ecstream-batches/v1"


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


def padded_width(longest, max_length: int):
    """Width for a batch whose longest sequence has ``longest`` residues (an int, or an array of
    them for several batches): capped at ``max_length``, rounded up to a multiple of 8, never
    above ``max_length``; an int for an int."""
    width = np.minimum(max_length, -(-np.minimum(np.maximum(longest, 1), max_length) // 8) * 8)
    return int(width) if np.ndim(width) == 0 else width


class _Steps(NamedTuple):
    """Steps looked up together (:meth:`Batches._lookup`): the first, where each step's records
    begin among them (and the last's end), their rows, full lengths and labels, and what
    :meth:`SplitData.assemble` joins: each row's kept residues ``[begin, end)`` in the region
    and its padding ``gap``, as lists (a list slice is cheaper per step than numpy's calls);
    and each step's width."""

    first: int
    bounds: list[int]
    rows: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    begin: list[int]
    end: list[int]
    gap: list[int]
    widths: list[int]


_NO_INTS = np.zeros(0, dtype=np.int64)
_NOTHING_LOOKED_UP = _Steps(0, [0], _NO_INTS, _NO_INTS, _NO_INTS, [], [], [], [])


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
        for name, value in (("seed", seed), ("epoch", epoch), ("rank", rank),
                            ("world_size", world_size)):  # fmt: skip
            if not is_whole(value):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        epoch = int(epoch)
        if records is not None and not 0 <= records <= data.n:
            raise ValueError(f"records must be in [0, {data.n}], got {records}")
        self.records = data.n if records is None else records
        self.step = 0
        self.set_epoch(epoch)

    @property
    def split(self) -> str:
        return self.data.name

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Switch to another epoch (a different order when shuffling) and rewind to its start,
        or to ``start``: records of that epoch all ranks consumed already."""
        plan = self._plan(epoch, start, self.world_size, self.rank)  # may refuse ``start``
        self.epoch, self.step, self._ahead, self.plan = epoch, 0, 0, plan
        self._looked_up = _NOTHING_LOOKED_UP  # reset with the plan that made it

    def _prefetch(self, step: int) -> None:
        """Have a remote split fetch the shards of the next steps, in the order they are needed
        (a plan of its own, so that the window this one holds is not recomputed)."""
        ahead = copy.copy(self.plan)
        end = min(step + LOOKAHEAD, len(self))
        self.data.prefetch(np.concatenate([ahead.rows(s) for s in range(step, end)]))
        self._ahead = step + LOOKAHEAD // 2

    def _plan(self, epoch: int, start: int, world_size: int, rank: int) -> EpochPlan:
        return EpochPlan(
            self.records,
            self.settings,
            key=self.data.fingerprint,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            lengths=self._capped_lengths,
            start=start,
        )

    @property
    def epoch_steps(self) -> int:
        """Steps of the whole epoch on this world size (``len()`` counts those from ``start``)."""
        if not self.start:
            return len(self)
        return self._plan(self.epoch, 0, self.world_size, self.rank).steps

    @property
    def start(self) -> int:
        """Records of this epoch consumed by all ranks before this plan began (a resume)."""
        return self.plan.start

    @property
    def consumed(self) -> int:
        """Records of this epoch consumed by all ranks together, all being at ``step``."""
        return self.plan.consumed(self.step)

    def _capped_lengths(self, rows: np.ndarray) -> np.ndarray:
        return np.minimum(self.data.lengths(rows), self.settings.max_length)

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def num_samples(self) -> int:
        """Records this rank sees per epoch (all of the split unless drop_last or ranks)."""
        return self.plan.num_samples

    def __getitem__(self, step: int) -> Batch:
        given = step
        if step < 0:
            step += len(self)
        if not 0 <= step < len(self):
            raise IndexError(f"step {given} out of range for an epoch of {len(self)} steps")
        if self.data.source is not None and step >= self._ahead and not self.data.complete:
            self._prefetch(step)
        got, k = self._lookup(step)
        a, b = got.bounds[k], got.bounds[k + 1]
        padding = self.settings.padding
        letters = self.data.assemble(got.begin[a:b], got.end[a:b], got.gap[a:b], padding)
        x = alphabet.encode(letters).reshape(b - a, got.widths[k])
        # the arrays are the batch's own: changing them changes no later read
        lengths, labels = got.lengths[a:b].copy(), got.labels[a:b].copy()
        return Batch(x, labels, lengths, got.rows[a:b].copy(), self.data)

    def _lookup(self, step: int) -> tuple[_Steps, int]:
        """The looked-up steps that hold ``step``, and its index among them. Read in order from
        a local store, the next :data:`SPAN_STEPS` steps are looked up in one call and kept;
        random access (loader workers) looks up one step, and a remote split (whose shards come
        and go) keeps nothing."""
        got = self._looked_up
        k = step - got.first
        if 0 <= k < len(got.bounds) - 1:
            return got, k
        ahead = self.data.source is None and len(got.bounds) > 1 and k == len(got.bounds) - 1
        steps = max(1, min(SPAN_STEPS, SPAN_ROWS // self.settings.batch_size)) if ahead else 1
        got = self._steps(step, min(step + steps, len(self)))
        if self.data.source is None:
            self._looked_up = got
        return got, 0

    def _steps(self, step: int, end: int) -> _Steps:
        """Steps ``[step, end)``: their rows, where those are (:meth:`SplitData.spans`), and
        how each is cut to its batch's width (``truncating``) and padded."""
        s = self.settings
        rows, bounds = self.plan.rows_of_steps(step, end)
        starts, lengths, labels = self.data.spans(rows)
        if s.bucket:  # the plan makes no empty step, which reduceat would get wrong
            widths = padded_width(np.maximum.reduceat(lengths, bounds[:-1]), s.max_length)
            width = np.repeat(widths, np.diff(bounds))
        else:
            widths, width = np.full(end - step, s.max_length), s.max_length
        keep = np.minimum(lengths, width)
        if s.truncating == "pre":
            starts = starts + lengths - keep
        return _Steps(
            step, bounds, rows, lengths, labels,
            starts.tolist(), (starts + keep).tolist(), (width - keep).tolist(), widths.tolist(),
        )  # fmt: skip

    def __getstate__(self) -> dict:
        # a copy or another process starts without the looked-up steps: the spans point into
        # this process's mapping of the split, which the other maps (or fetches) anew
        return {**self.__dict__, "_looked_up": _NOTHING_LOOKED_UP}

    def __iter__(self) -> Iterator[Batch]:
        """Yield the batches from ``step`` on; a completed epoch rewinds to its beginning."""
        while self.step < len(self):
            batch = self[self.step]
            self.step += 1
            yield batch
        self.rewind()

    def rewind(self) -> None:
        """Back to the beginning of the epoch (the whole of it, after a resume)."""
        if self.start:
            self.set_epoch(self.epoch)
        self.step = 0

    def state_dict(self, step: int | None = None) -> dict:
        """Where the stream stands (under 1 KB), the same on every rank: load it into Batches
        opened with the same arguments (any rank, any world size) to resume.

        ``consumed`` (records of the epoch's stream that all ranks have seen) is what an
        elastic resume needs; ``start``, ``step`` and ``world_size`` let a resume on the same
        number of ranks continue the identical batches, the last re-cut ones included.

        ``step``: the state after that many steps of this epoch (counted from its start, as
        ``self.step`` is) rather than where this object stands. A loop through a DataLoader
        needs it: the loader's workers iterate copies of this object, which stays where it was
        when the loader was made; that ``step`` plus the batches the loop took is the step.
        """
        if step is None:
            step = self.step
        elif not is_whole(step):
            raise TypeError(f"step must be a whole number, got {step!r}")
        elif not 0 <= step <= len(self):
            raise ValueError(f"step {step} is outside this epoch's {len(self)} steps")
        return {
            "format": STATE_FORMAT,
            "split": self.split,
            "fingerprint": self.data.fingerprint,
            "seed": self.seed,
            "epoch": self.epoch,
            "records": self.records,
            "settings": self.settings.to_dict(),
            "consumed": self.consumed_at(step),
            "start": self.start,
            "step": int(step),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (or a state of an ecstream before elastic resume);
        refuses a state of another split or other settings.

        With the world size of the state, the stream continues at its step; with another one,
        at the records consumed: this rank's share of exactly the records not yet seen. A state
        refused leaves the stream where it was.
        """
        before = (self.epoch, self.step, self._ahead, self.plan, self._looked_up)
        try:
            self._load_state(state)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            self.epoch, self.step, self._ahead, self.plan, self._looked_up = before
            if isinstance(error, ValueError):
                raise
            raise ValueError(f"not a batch stream state, or a damaged one ({error!r})") from None

    def _load_state(self, state: dict) -> None:
        if state.get("format") not in (STATE_FORMAT, STATE_FORMAT_V1):
            raise ValueError(f"not a batch stream state: {state.get('format')!r}")
        mine = self.state_dict()
        state = {"records": self.data.n, **state}  # states saved before records were limited
        try:
            settings = BatchSettings.from_dict(state["settings"])
        except TypeError:
            settings = None
        theirs = {**state, "settings": settings}
        for key in ("split", "fingerprint", "seed", "records", "settings"):
            ours = self.settings if key == "settings" else mine[key]
            if theirs[key] != ours:
                raise ValueError(
                    f"this state belongs to another stream ({key}: the state's {state[key]!r}, "
                    f"these batches' {mine[key]!r}); open the batches with the same arguments "
                    "to resume"
                )
        epoch, world = int(state["epoch"]), int(state["world_size"])
        if state["format"] == STATE_FORMAT_V1:  # one rank's step in a plan from the start
            if not 0 <= state.get("rank", 0) < world:
                raise ValueError(f"rank {state.get('rank')} is outside world size {world}")
            old = self._plan(epoch, 0, world, state.get("rank", 0))
            if not 0 <= state["step"] <= old.steps:
                raise ValueError(f"step {state['step']} is outside its epoch of {old.steps} steps")
            state = {**state, "start": 0, "consumed": old.consumed(int(state["step"]))}
        start, consumed = int(state["start"]), int(state["consumed"])
        if not 0 <= start <= consumed <= self.records:
            raise ValueError(f"consumed {consumed} is outside this epoch of {self.records} records")
        if world == self.world_size:
            self.set_epoch(epoch, start)
            if not 0 <= state["step"] <= len(self) or self.consumed_at(state["step"]) != consumed:
                raise ValueError(f"step {state['step']} does not fit this epoch's plan")
            self.step = int(state["step"])
        else:
            self.set_epoch(epoch, consumed)

    def share(self, step: int) -> tuple[int, int]:
        """This rank's offset within the global batch of ``step``, and that batch's records."""
        return self.plan.share(step)

    def consumed_at(self, step: int) -> int:
        """Records all ranks have consumed when each has done ``step`` steps of this plan."""
        return self.plan.consumed(step)

    def __repr__(self) -> str:
        return (
            f"Batches(split={self.split!r}, steps={len(self)}, samples={self.num_samples}, "
            f"epoch={self.epoch}, start={self.start}, step={self.step}, {self.settings})"
        )
