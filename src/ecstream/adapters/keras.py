"""Keras 3 adapter: a ``keras.utils.PyDataset`` over the batches of one split.

``len()`` is the number of steps (the last partial batch included unless ``drop_last``),
``ds[i]`` is ``(x, y)``: uint8 tokens ``[B, L]`` and int64 labels ``[B]``, embedded or one-hot
inside the model. The dataset is bound to one split (``ds.split``) and has no other data path.

    from ecstream.adapters.keras import KerasBatches
    train = KerasBatches(store.batches("train"), workers=2, use_multiprocessing=True)
    val = KerasBatches(store.batches("val", shuffle=False))
    model.fit(train, validation_data=val, epochs=10, shuffle=False)

Pass ``shuffle=False`` to ``fit``: the batches are already in ecstream's shuffled order, and
Keras' own ``shuffle=True`` (its default) would re-order the batches with Python's global RNG.
Keras calls ``on_epoch_end`` once while ``fit`` sets up and once after every epoch, so each
``fit`` epoch runs the stream's next epoch order (a pure function of the call count: one
``fit(epochs=3)`` runs stream epochs 1–3, three ``fit(epochs=1)`` on one dataset 1, 3 and 5).
A dataset starts at an epoch's first batch: batches past it (restored to a mid-epoch state, or
already read) are refused.
With ``workers > 1`` Keras' enqueuer would serve batches left over from a stopped run; importing
this module stops that for these datasets (see :func:`_fix_stale_batches`).
"""

from __future__ import annotations

import functools
import os
import queue

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from ..batches import Batches


class KerasBatches(keras.utils.PyDataset):
    """The batches of one split as a Keras PyDataset; ``workers`` etc. are Keras' own."""

    def __init__(
        self,
        batches: Batches,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        if batches.consumed:  # fit serves every epoch from index 0: the rest would be skipped
            raise ValueError(
                f"these batches stand {batches.consumed:,} records into epoch {batches.epoch} (a "
                "restored mid-epoch state, or batches already read): Keras' fit starts each "
                "epoch at its first batch, so give KerasBatches batches at an epoch's start (a "
                "mid-epoch state resumes with the torch adapter)"
            )
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        self.batches = batches

    @property
    def split(self) -> str:
        """The split this dataset is bound to."""
        return self.batches.split

    @property
    def epoch(self) -> int:
        """The stream epoch whose order ``ds[i]`` serves now."""
        return self.batches.epoch

    @property
    def num_samples(self) -> int:
        """Records per epoch (``len()`` counts steps)."""
        return self.batches.num_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch = self.batches[index]
        return batch.x, batch.y

    def on_epoch_end(self) -> None:
        """Move to the next epoch's order (nothing changes without shuffling)."""
        if self.batches.settings.shuffle:
            self.batches.set_epoch(self.batches.epoch + 1)

    def __repr__(self) -> str:
        return f"KerasBatches({self.batches!r})"


def _fix_stale_batches() -> None:
    """Keep Keras' enqueuer from serving batches left over from a stopped run.

    With ``workers > 1`` (threads or processes) Keras' ``OrderedEnqueuer.stop()`` moves the
    batches already fetched into ``ready_queue`` "for the next run" and ``get()`` serves them
    first, although a finite dataset's next run restarts at index 0 (seen in Keras 3.15.1; the
    carry-over came with keras-team/keras#20123). ``fit()`` stops a run after the one batch it
    peeks at to build the model, so every epoch would repeat some batches and skip as many.
    For our datasets a new run starts with empty queues; other datasets are left alone.
    """
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import OrderedEnqueuer
    except ImportError:  # a Keras with another layout: nothing to fix here
        return
    start = OrderedEnqueuer.start
    if getattr(start, "_ecstream", False):
        return

    @functools.wraps(start)
    def fresh_start(self, *args, **kwargs):
        if isinstance(self.py_dataset, KerasBatches) and not getattr(self, "running", True):
            for name in ("ready_queue", "future_queue"):
                stale = getattr(self, name, None)
                while stale is not None and not stale.empty():
                    try:
                        stale.get_nowait()
                    except queue.Empty:
                        break
        return start(self, *args, **kwargs)

    fresh_start._ecstream = True
    OrderedEnqueuer.start = fresh_start


_fix_stale_batches()
