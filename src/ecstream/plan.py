"""The order of an epoch: a pure function of (split fingerprint, seed, epoch, batch settings).

Nothing here holds a per-record array for the whole split. The shuffle is a keyed pseudo-random
permutation of ``[0, n)`` (a Feistel network with cycle walking, as in Google Grain's index
shuffle), evaluated only for the positions a batch needs; so memory does not grow with the split
and a mid-epoch resume needs nothing but a position.

**The stream.** An epoch is first one sequence of records, the same for any number of ranks:
the concatenation of its *base batches* of ``batch_size`` records.

- ``bucket=False``: base batch ``g`` holds shuffled positions ``[g·B, (g+1)·B)``.
- ``bucket=True``: the shuffled order is cut into windows of ``window`` batches; inside a window
  records are sorted by (capped) length and cut into batches, and the full batches are put in a
  shuffled order again. Only the very last batch of the epoch can be partial; it stays last.
- ``block > 0`` (opt-in) replaces the shuffle of the whole split by a locality-aware one
  (:class:`BlockShuffle`): groups of ``blocks`` stored blocks, each shuffled within itself.

**Ranks** take consecutive pieces of the stream, step after step: step ``s`` of rank ``r`` is
piece ``s·W + r``. Two ways to cut pieces:

- per rank (default): a piece is a base batch, so ``batch_size`` is each rank's batch and rank
  ``r`` gets base batch ``g`` when ``g mod W = r``. When the number of batches does not divide
  evenly, the last batches are re-cut into smaller ones so that every rank has the same number
  of steps and every record still appears exactly once.
- ``global_batch=True``: ``batch_size`` is the batch of all ranks together; each base batch is
  cut into ``W`` equal pieces, so 1 process with 64 and 2 with 32 each step through the same
  global batches. The last one is cut as evenly as it goes (pooled with the one before if it
  holds fewer records than there are ranks).

With ``drop_last=True`` only full pieces are used, as many as fill whole steps.

**Resume.** Because every step of every rank is a stretch of one stream, "where an epoch stands"
is one number, the records all ranks have consumed: a plan can *start* there, with any number of
ranks, and give exactly the records not yet seen, each once (:meth:`EpochPlan.consumed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from .hashing import GOLDEN, MIX1, MIX2, derive_key, mix64
from .kinds import is_whole


class Permutation:
    """A keyed bijection of ``[0, n)`` computed on demand (Feistel network + cycle walking)."""

    ROUNDS = (
        4  # Luby-Rackoff: four rounds of a good round function give a pseudo-random permutation
    )

    def __init__(self, n: int, key: int):
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        self.half = np.uint64((bits + 1) // 2)
        self.shift = np.uint64(64) - self.half
        self.mask = np.uint64((1 << int(self.half)) - 1)
        steps = np.arange(1, self.ROUNDS + 1, dtype=np.uint64)
        self.round_keys = [np.uint64(k) for k in mix64(np.uint64(key) + GOLDEN * steps)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.round_keys:
            # round function: the high bits of a keyed multiply-xorshift of the right half
            f = ((right ^ k) * MIX1 ^ (right * MIX2)) >> self.shift
            left, right = right, left ^ f
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        x = self._encrypt(np.asarray(positions, dtype=np.uint64))
        n = np.uint64(self.n)
        outside = np.flatnonzero(x >= n)
        while outside.size:  # cycle walking: the domain is < 4n, so this ends fast
            x[outside] = self._encrypt(x[outside])
            outside = outside[x[outside] >= n]
        return x.astype(np.int64)


class BlockShuffle:
    """A locality-aware bijection of ``[0, n)`` (``block > 0``, opt-in): stored records are cut
    into blocks of ``block`` records, the full blocks are put in a keyed order (a partial last
    block stays last), and each run of ``blocks`` blocks in that order is shuffled as one group.
    A stretch of the epoch then reads ``blocks`` blocks at a time, so a reader whose shards do
    not all fit (a bounded cache of a remote store) holds only those of the current group, and
    with small blocks a group's rows stay within the CPU's caches, which a store many times
    larger than them streams faster from (BENCHMARKS.md, scale section)."""

    def __init__(self, n: int, block: int, blocks: int, key: int):
        self.n, self.block, self.group = n, block, block * blocks
        self.blocks, self.key = blocks, key
        self.full = n // block
        # evaluated for the blocks a batch needs, not held as an array: one entry per block
        # would grow with the split (and be one per record with blocks of one record)
        self._order = Permutation(self.full, _subkey(key, 0)) if self.full else None
        self._last: tuple[int, Permutation, np.ndarray] | None = None

    def _group(self, g: int) -> tuple[Permutation, np.ndarray]:
        """Group ``g``'s shuffle within itself and its blocks in order, kept for the next call:
        consecutive steps read the same group (a group of 16,384 records is 256 steps of 64)."""
        last = self._last  # read once: loader threads may share this plan
        if last is None or last[0] != g:
            size = min(self.group, self.n - g * self.group)
            inner = Permutation(size, _subkey(self.key, g + 1))
            # at most ``blocks`` evaluations of the block order for all the group's records
            ordered = self._block_at(g * self.blocks + np.arange(-(-size // self.block)))
            last = self._last = (g, inner, ordered)
        return last[1], last[2]

    def _block_at(self, slots: np.ndarray) -> np.ndarray:
        """The stored block at each slot of the block order (the partial block, if any, last)."""
        out = slots.copy()
        inside = slots < self.full
        if inside.any():
            out[inside] = self._order(slots[inside])
        return out

    def _within(self, g: int, positions: np.ndarray) -> np.ndarray:
        shuffle, ordered = self._group(g)
        inner = shuffle(positions - g * self.group)
        return ordered[inner // self.block] * self.block + inner % self.block

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return positions.copy()
        groups = positions // self.group
        first, last = int(groups.min()), int(groups.max())
        if first == last:  # the usual call: a stretch of steps within one group
            return self._within(first, positions)
        out = np.empty_like(positions)
        for g in np.unique(groups).tolist():
            sel = groups == g
            out[sel] = self._within(g, positions[sel])
        return out


def _subkey(key: int, salt: int) -> int:
    """A key derived from ``key`` for the ``salt``-th use (block order, each group)."""
    return derive_key("ecstream-blocks/v1", key, salt)


@dataclass(frozen=True)
class BatchSettings:
    """Everything besides (split, seed, epoch) that decides the batches of an epoch."""

    batch_size: int = 64
    max_length: int = 660
    shuffle: bool = True
    bucket: bool = False
    window: int = 32  # batches per length-sorted window when bucketing
    drop_last: bool = False
    padding: str = "post"
    truncating: str = "post"
    global_batch: bool = False  # batch_size is the batch of all ranks together
    # opt-in locality-aware shuffle: records per block (0: shuffle the whole split) …
    block: int = 0
    blocks: int = 16  # … and how many blocks are shuffled together

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "window", "block", "blocks"):
            value = getattr(self, name)
            if not is_whole(value):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy's too: states are JSON
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 batch, got {self.window}")
        if self.block < 0 or self.blocks < 1:
            raise ValueError(f"block must be ≥ 0 and blocks ≥ 1, got {self.block}, {self.blocks}")
        for name in ("padding", "truncating"):
            if getattr(self, name) not in ("post", "pre"):
                raise ValueError(f"{name} must be 'post' or 'pre', got {getattr(self, name)!r}")

    @property
    def window_batches(self) -> int:
        """Batches per bucketing window. With a block shuffle, no more than a group of blocks
        holds: a wider window would sort several groups together, and a reader would need the
        shards of all of them at once (the locality the block shuffle is for)."""
        if self.block:
            return max(1, min(self.window, self.block * self.blocks // self.batch_size))
        return self.window

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BatchSettings:
        """Settings as :meth:`to_dict` wrote them, also by an ecstream without the later
        fields (they take their defaults, which kept the earlier behaviour)."""
        return cls(**values)


class EpochPlan:
    """Which records each step of one rank holds, for one epoch (or its rest, from ``start``).

    ``lengths`` maps record indices to the lengths used for bucketing (already capped at
    ``max_length``); it is only called when ``settings.bucket`` is true. ``start`` is the number
    of records of the epoch's stream that all ranks together consumed already (see the module
    doc): the plan then lays out only the rest.
    """

    def __init__(
        self,
        n: int,
        settings: BatchSettings,
        *,
        key: str,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: Callable[[np.ndarray], np.ndarray] | None = None,
        start: int = 0,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, {world_size=}")
        if settings.bucket and lengths is None:
            raise ValueError("bucketing needs the record lengths")
        if not 0 <= start <= n:
            raise ValueError(f"start must be in [0, {n}], got {start}")
        if settings.global_batch and settings.batch_size % world_size:
            raise ValueError(
                f"a global batch of {settings.batch_size} cannot be shared equally by "
                f"{world_size} ranks; choose a batch size divisible by the number of processes"
            )
        self.n, self.settings, self.start = n, settings, start
        self.rank, self.world_size = rank, world_size
        self.lengths = lengths
        self.seed_key = derive_key("ecstream-order/v1", key, seed, epoch)
        self.permutation: Permutation | BlockShuffle | None = None
        if settings.shuffle and n:
            self.permutation = (
                BlockShuffle(n, settings.block, settings.blocks, self.seed_key)
                if settings.block
                else Permutation(n, self.seed_key)
            )
        self._window: tuple[int, np.ndarray, np.ndarray] | None = None  # (index, rows, order)
        self._layout()

    # --- the layout of the pieces, arithmetic only -------------------------------------------
    def _layout(self) -> None:
        """``piece``: records of a regular piece; ``regular``: how many pieces are regular;
        ``tail``: sizes of the re-cut pieces after them; ``steps``: steps of every rank."""
        s, w = self.settings, self.world_size
        left = self.n - self.start
        piece = s.batch_size // w if s.global_batch else s.batch_size
        self.piece, self.remaining = piece, left
        tail = np.zeros(0, dtype=np.int64)
        if s.drop_last:
            self.steps = left // (piece * w)
            regular = self.steps * w
        elif s.global_batch:
            self.steps = -(-left // s.batch_size)
            last = left - (self.steps - 1) * s.batch_size  # records in the last global batch
            if self.steps == 0 or last == s.batch_size:
                regular = self.steps * w
            elif last >= w or self.steps == 1:
                regular, tail = (self.steps - 1) * w, _even(last, w)
            else:  # fewer records than ranks: share them out with the batch before
                pooled = s.batch_size + last
                if pooled < 2 * w:  # too few for two steps (one record per rank): one
                    self.steps -= 1
                regular = (self.steps - 2) * w if pooled >= 2 * w else (self.steps - 1) * w
                tail = _even(pooled, self.steps * w - regular)
        else:
            batches = -(-left // piece)
            self.steps = -(-batches // w)
            extra = self.steps * w - batches
            regular = batches
            if extra:
                k = min(batches, w)  # re-cut the last k batches into k + extra smaller ones
                regular = batches - k
                tail = _even(left - regular * piece, k + extra)
        if len(tail) and tail.min() == 0:
            raise ValueError(
                f"cannot give {w} ranks the same number of non-empty batches from "
                f"{left} records with batch_size={s.batch_size}; use drop_last=True, a larger "
                "split or fewer ranks"
            )
        self.regular, self.tail = regular, tail
        self._tail_ends = np.concatenate([[0], np.cumsum(tail)]).astype(np.int64)

    def _offset(self, j: int) -> int:
        """Where piece ``j`` (over all ranks) begins, in records after ``start``."""
        if j <= self.regular:
            return min(j * self.piece, self.remaining)
        return self.regular * self.piece + int(self._tail_ends[j - self.regular])

    def consumed(self, step: int) -> int:
        """Records of the epoch's stream that all ranks together have consumed once each has
        done ``step`` steps (from the epoch's very beginning, not from ``start``)."""
        if not 0 <= step <= self.steps:
            raise IndexError(f"step {step} out of range for an epoch of {self.steps} steps")
        return self.start + self._offset(step * self.world_size)

    def share(self, step: int) -> tuple[int, int]:
        """Where this rank's batch at ``step`` begins within the step's global batch, and how
        many records that global batch holds (over all ranks)."""
        first = self._offset(step * self.world_size)
        own = self._offset(step * self.world_size + self.rank)
        return own - first, self._offset((step + 1) * self.world_size) - first

    def batch_size_of(self, j: int) -> int:
        """Number of records in piece ``j`` (over all ranks; step ``j // W`` of rank ``j % W``)."""
        return self._offset(j + 1) - self._offset(j)

    @cached_property
    def num_samples(self) -> int:
        """Records this rank sees from ``start`` to the end of the epoch."""
        w, r = self.world_size, self.rank
        ours = range(r, self.regular, w)
        total = len(ours) * self.piece
        if ours:  # the last regular piece may be the partial last batch of the epoch
            total -= self.piece - self.batch_size_of(ours[-1])
        return total + int(self.tail[(r - self.regular) % w :: w].sum())

    @property
    def total_samples(self) -> int:
        """Records seen by all ranks together from ``start`` to the end of the epoch."""
        return self._offset(self.steps * self.world_size)

    # --- records of a step ---------------------------------------------------------------
    def rows(self, step: int) -> np.ndarray:
        """Record indices (int64) of this rank's batch at ``step``."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} out of range for an epoch of {self.steps} steps")
        j = step * self.world_size + self.rank
        return self._stream(self.start + self._offset(j), self.start + self._offset(j + 1))

    def rows_of_steps(self, step: int, end: int) -> tuple[np.ndarray, list[int]]:
        """The records of this rank's steps ``[step, end)`` joined, and where each step's
        begin and end among them (``end - step + 1`` bounds): what :meth:`rows` gives step by
        step, in one call where the steps are one stretch of the stream (a single rank)."""
        if not 0 <= step < end <= self.steps:
            raise IndexError(f"steps [{step}, {end}) out of range for an epoch of {self.steps}")
        if self.world_size > 1:  # a rank's steps are pieces of the stream far apart
            parts = [self.rows(k) for k in range(step, end)]
            bounds = np.cumsum([0, *map(len, parts)]).tolist()
            return np.concatenate(parts), bounds
        offsets = [self._offset(k) for k in range(step, end + 1)]
        rows = self._stream(self.start + offsets[0], self.start + offsets[-1])
        return rows, [o - offsets[0] for o in offsets]

    def _stream(self, first: int, end: int) -> np.ndarray:
        """Records at positions ``[first, end)`` of the epoch's stream (its base batches),
        taken a window at a time where the window's batches keep their order."""
        b, per = self.settings.batch_size, self.settings.window_batches
        reordered = self.settings.bucket and self.settings.shuffle  # see _window_rows
        parts = []
        at = first
        while at < end:
            g = at // b
            if reordered:
                rows, lo = self._base_rows(g), g * b
            else:
                w = g // per
                rows, lo = self._window_rows(w)[0], w * per * b
            parts.append(rows[at - lo : end - lo])
            at = lo + len(rows)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _order(self, positions: np.ndarray) -> np.ndarray:
        return self.permutation(positions) if self.permutation is not None else positions

    def _base_rows(self, g: int) -> np.ndarray:
        b, per = self.settings.batch_size, self.settings.window_batches
        w = g // per
        rows, order = self._window_rows(w)
        local = int(order[g - w * per])
        return rows[local * b : (local + 1) * b]

    def _window_rows(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Records of window ``w`` (``window`` batches) in batch order, and the batch order.

        Without bucketing the window is just the shuffled order (computed a window at a time to
        save work); with bucketing it is sorted by length and its full batches are shuffled.
        """
        if self._window is None or self._window[0] != w:
            b, per = self.settings.batch_size, self.settings.window_batches
            positions = np.arange(w * per * b, min(self.n, (w + 1) * per * b), dtype=np.int64)
            rows = self._order(positions)
            batches = -(-len(rows) // b)
            order = np.arange(batches)
            if self.settings.bucket:
                rows = rows[np.argsort(self.lengths(rows), kind="stable")]
                full = len(rows) // b
                if self.settings.shuffle:
                    order[:full] = np.random.default_rng([self.seed_key, w]).permutation(full)
            self._window = (w, rows, order)
            return rows, order
        _, rows, order = self._window  # read once: another thread may replace it meanwhile
        return rows, order


def _even(count: int, parts: int) -> np.ndarray:
    """``count`` records cut into ``parts`` sizes that differ by at most one, larger first."""
    sizes = np.full(parts, count // parts, dtype=np.int64)
    sizes[: count % parts] += 1
    return sizes
