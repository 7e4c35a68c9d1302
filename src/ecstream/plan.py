"""The order of an epoch: a pure function of (split fingerprint, seed, epoch, batch settings).

Nothing here holds a per-record array for the whole split. The shuffle is a keyed pseudo-random
permutation of ``[0, n)`` (a Feistel network with cycle walking, as in Google Grain's index
shuffle), evaluated only for the positions a batch needs; so memory does not grow with the split
and a mid-epoch resume needs nothing but the step number.

Batches of one epoch, before ranks:

- ``bucket=False``: batch ``g`` holds shuffled positions ``[g·B, (g+1)·B)``.
- ``bucket=True``: the shuffled order is cut into windows of ``window`` batches; inside a window
  records are sorted by (capped) length and cut into batches, and the full batches are put in a
  shuffled order again. Only the very last batch of the epoch can be partial; it stays last.

Ranks: global batch ``g`` goes to rank ``g mod world_size`` at step ``g div world_size``. When the
number of batches does not divide evenly, the last batches are re-cut into smaller ones so that
every rank has the same number of steps and every record still appears exactly once. With
``drop_last=True`` only full batches are used, as many as divide evenly among the ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from .hashing import GOLDEN, MIX1, MIX2, derive_key, mix64


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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 batch, got {self.window}")
        for name in ("padding", "truncating"):
            if getattr(self, name) not in ("post", "pre"):
                raise ValueError(f"{name} must be 'post' or 'pre', got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class EpochPlan:
    """Which records each step of one rank holds, for one epoch.

    ``lengths`` maps record indices to the lengths used for bucketing (already capped at
    ``max_length``); it is only called when ``settings.bucket`` is true.
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
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, {world_size=}")
        if settings.bucket and lengths is None:
            raise ValueError("bucketing needs the record lengths")
        self.n, self.settings = n, settings
        self.rank, self.world_size = rank, world_size
        self.lengths = lengths
        self.seed_key = derive_key("ecstream-order/v1", key, seed, epoch)
        self.permutation = Permutation(n, self.seed_key) if settings.shuffle and n else None
        self._window: tuple[int, np.ndarray, np.ndarray] | None = None  # (index, rows, order)
        self._layout()

    # --- the batch layout, arithmetic only -------------------------------------------------
    def _layout(self) -> None:
        b, r, n = self.settings.batch_size, self.world_size, self.n
        if self.settings.drop_last:
            self.base = n // b  # full batches only
            self.steps = self.base // r
            self.tail_from, self.tail_sizes = self.steps * r, np.zeros(0, dtype=np.int64)
            return
        self.base = -(-n // b)
        self.steps = -(-self.base // r)
        extra = self.steps * r - self.base
        if extra == 0:
            self.tail_from, self.tail_sizes = self.base, np.zeros(0, dtype=np.int64)
            return
        k = min(self.base, r)  # re-cut the last k batches into k + extra smaller ones
        count = n - (self.base - k) * b
        if count < k + extra:
            raise ValueError(
                f"cannot give {r} ranks the same number of non-empty batches from {n} records "
                f"with batch_size={b}; use drop_last=True, a larger split or fewer ranks"
            )
        parts = k + extra
        sizes = np.full(parts, count // parts, dtype=np.int64)
        sizes[: count % parts] += 1
        self.tail_from, self.tail_sizes = self.base - k, sizes

    def _global(self, step: int) -> int:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} out of range for an epoch of {self.steps} steps")
        return step * self.world_size + self.rank

    def batch_size_of(self, g: int) -> int:
        """Number of records in global batch ``g``."""
        if g >= self.tail_from:
            return int(self.tail_sizes[g - self.tail_from])
        b = self.settings.batch_size
        return min(b, self.n - g * b)

    @cached_property
    def num_samples(self) -> int:
        """Records this rank sees in one epoch."""
        b, r = self.settings.batch_size, self.world_size
        regular = range(self.rank, min(self.tail_from, self.steps * r), r)
        total = len(regular) * b
        if regular and not self.settings.drop_last and regular[-1] == self.base - 1:
            total -= b - self.batch_size_of(self.base - 1)  # the partial last batch
        tail = range(self.tail_from, self.tail_from + len(self.tail_sizes))
        return total + sum(
            int(self.tail_sizes[g - self.tail_from]) for g in tail if g % r == self.rank
        )

    @property
    def total_samples(self) -> int:
        """Records seen by all ranks together in one epoch."""
        if self.settings.drop_last:
            return self.steps * self.world_size * self.settings.batch_size
        return self.n

    # --- records of a step ---------------------------------------------------------------
    def rows(self, step: int) -> np.ndarray:
        """Record indices (int64) of this rank's batch at ``step``."""
        g = self._global(step)
        if g < self.tail_from:
            return self._base_rows(g)
        first = self.tail_from
        pooled = np.concatenate([self._base_rows(i) for i in range(first, self.base)])
        start = int(self.tail_sizes[: g - first].sum())
        return pooled[start : start + int(self.tail_sizes[g - first])]

    def _order(self, positions: np.ndarray) -> np.ndarray:
        return self.permutation(positions) if self.permutation is not None else positions

    def _base_rows(self, g: int) -> np.ndarray:
        b, per = self.settings.batch_size, self.settings.window
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
            b, per = self.settings.batch_size, self.settings.window
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
        return self._window[1], self._window[2]
