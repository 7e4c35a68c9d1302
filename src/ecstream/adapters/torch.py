"""PyTorch adapter: a DataLoader that moves whole batches, in exactly the plain iteration order.

The dataset is map-style and its item is one whole batch step, so the DataLoader runs with
``batch_size=None`` and collates nothing. Its index is ``(epoch, start, step)``: with persistent
workers the dataset copy in a worker never sees attribute changes made in the main process, so
the epoch (and where a resumed epoch started) travels with every index instead. The sampler
lives in the main process, starts at the Batches' current ``step`` (a mid-epoch resume) and has
the ``set_epoch`` that Lightning calls every epoch. ``in_order=True``
makes any number of workers deliver the sampler's order.

    from ecstream.adapters.torch import loader
    for batch in loader(store.batches("train"), num_workers=2):
        batch.x, batch.y, batch.ids   # uint8 [B, L], int64 [B], list[str]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..batches import Batch, Batches


class TorchBatch(NamedTuple):
    """One batch as tensors (a NamedTuple survives Lightning's transfer). :class:`BatchDataset`'s
    items carry the same fields as numpy arrays, which :class:`BatchLoader` makes tensors."""

    x: torch.Tensor  # uint8 [B, L] tokens, 0 = padding
    y: torch.Tensor  # int64 [B] labels, or uint8 [B, C] multi-hot targets of a full-EC run
    ids: list[str] | None  # None when the loader was made with ids=False (training)
    known: torch.Tensor | None = None  # bool [B, levels]: levels the targets state (full EC)
    # with a global batch: this share's records × world size / the global batch's records, the
    # factor that makes the mean over ranks of per-rank mean losses the global batch's mean
    weight: float | None = None
    # with a global batch: (where this share begins in the global batch, the global batch's
    # records), so that dropout masks are drawn for the global batch (GlobalDropout)
    share: tuple[int, int] | None = None

    def tensors(self, pin: bool = False) -> TorchBatch:
        """This batch with its arrays made tensors (zero-copy), in pinned memory if ``pin``."""
        return self._replace(x=_tensor(self.x, pin), y=_tensor(self.y, pin),
                             known=_tensor(self.known, pin))  # fmt: skip

    def pin_memory(self) -> TorchBatch:
        """What the DataLoader's pinning thread calls: the batch as pinned tensors."""
        return self.tensors(pin=True)


def _tensor(array: np.ndarray | torch.Tensor | None, pin: bool) -> torch.Tensor | None:
    if array is None:
        return None
    tensor = torch.as_tensor(array)
    return tensor.pin_memory() if pin else tensor


#: Turns a batch into multi-hot targets and known levels (see ECVocabulary.targets).
Targets = Callable[[Batch], tuple[np.ndarray, np.ndarray]]


class BatchDataset(Dataset[TorchBatch]):
    """Map-style dataset whose item ``(epoch, start, step)`` is that whole batch, its fields
    numpy arrays (:class:`BatchLoader` makes them tensors in the main process).

    With ``targets``, ``y`` holds what it returns for the batch (computed in the worker)."""

    def __init__(self, batches: Batches, ids: bool = True, targets: Targets | None = None):
        # a copy of our own: switching epochs here never moves the caller's Batches
        self.batches = copy.copy(batches)
        self.ids = ids
        self.targets = targets

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: tuple[int, int, int]) -> TorchBatch:
        epoch, start, step = index
        if (epoch, start) != (self.batches.epoch, self.batches.start):
            self.batches.set_epoch(epoch, start)
        batch = self.batches[step]
        ids = batch.ids.tolist() if self.ids else None
        b = self.batches
        weight = share = None
        if b.settings.global_batch:
            share = b.share(step)
            weight = len(batch) * b.world_size / share[1]
        if self.targets is None:
            return TorchBatch(batch.x, batch.y, ids, weight=weight, share=share)
        y, known = self.targets(batch)
        return TorchBatch(batch.x, y, ids, known, weight, share)


class EpochSampler(Sampler[tuple[int, int, int]]):
    """Yields ``(epoch, start, step)`` from the Batches' current step to the end of its epoch.

    A completed pass rewinds the Batches to step 0, as plain iteration does, so the next pass
    is a whole epoch; ``set_epoch`` switches to another epoch's order. ``len()`` is the number
    of steps of the epoch, so after a mid-epoch resume the first pass yields fewer.
    """

    def __init__(self, batches: Batches):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        """Use this epoch's order; the same epoch again keeps a resumed mid-epoch step."""
        if epoch != self.batches.epoch:
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        # the whole epoch, also in a resumed one: Lightning counts the steps done before the
        # checkpoint and ends the epoch at len(), and it reads len() once per fit, so the
        # remaining count would cut every later epoch short
        return self.batches.epoch_steps

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        b = self.batches
        epoch, start, first = b.epoch, b.start, b.step
        for step in range(first, len(b)):
            yield epoch, start, step
        b.rewind()


def _whole(batch: TorchBatch) -> TorchBatch:
    """The collate function: items are whole batches already."""
    return batch


class BatchLoader(DataLoader):
    """A DataLoader of :class:`BatchDataset` that yields its batches' arrays as tensors.

    The workers send numpy arrays, and the tensors are made in the main process (zero-copy). A
    tensor would cross from a worker as shared memory whose file descriptor the main process
    fetches from the worker, a round trip per tensor that waits while the worker is busy; an
    array crosses pickled in the queue's pipe (BENCHMARKS.md, GPU). For a GPU (``pin``) with
    workers, the DataLoader's pinning thread receives each batch and makes it pinned tensors
    (:meth:`TorchBatch.pin_memory`), off the thread that runs the training loop: done in that
    thread, receiving and pinning left the GPU idle for a sixth of a step at batch 256. (With
    no workers the DataLoader pins in the loop's thread, where the batch is read anyway.)
    """

    def __init__(self, dataset: BatchDataset, *, pin: bool, **kwargs):
        super().__init__(dataset, pin_memory=pin, **kwargs)

    def __iter__(self) -> Iterator[TorchBatch]:
        for batch in super().__iter__():
            yield batch.tensors()  # pinned already: as they are (also where nothing pins)


def loader(
    batches: Batches,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    ids: bool = True,
    targets: Targets | None = None,
    **kwargs,
) -> DataLoader:
    """A DataLoader of :class:`TorchBatch` over ``batches``, in their plain iteration order.

    ``pin_memory`` defaults to whether CUDA is available and ``persistent_workers`` to whether
    there are workers; ``ids=False`` skips reading record ids (training does not need them);
    ``targets`` replaces the class labels by multi-hot targets (a full-EC run);
    other keyword arguments go to :class:`~torch.utils.data.DataLoader`.
    The loader draws its workers' base seed from a generator of its own, never from torch's
    global one, so starting an epoch does not shift the dropout masks of a training run.
    """
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return BatchLoader(
        BatchDataset(batches, ids, targets),
        batch_size=None,
        sampler=EpochSampler(batches),
        collate_fn=_whole,
        num_workers=num_workers,
        pin=pin_memory,
        persistent_workers=persistent_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        in_order=True,
        **kwargs,
    )
