"""Workloads whose memory is measured, each run alone in a fresh process by ``common.run_child``.

Usage: ``python benchmarks/consumers.py WORKLOAD '{"arg": value, ...}'``; the last line printed
is a JSON object of results. Each workload imports only what its kind of consumer needs (a
streaming ecstream consumer: ecstream, hence numpy and pyarrow; no torch, no pandas), and reports
which of the heavy modules ended up loaded, so the reader can check.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import limit_threads, rss_anon_bytes

HEAVY_MODULES = ("numpy", "pyarrow", "pandas", "torch", "keras", "lightning")


def _report(**figures: object) -> None:
    loaded = [m for m in HEAVY_MODULES if m in sys.modules]
    print(json.dumps({**figures, "modules": loaded, "anon_at_exit": rss_anon_bytes()}))


def ecstream_epoch(
    store: str, in_memory: bool, bucket: bool, batch_size: int, max_length: int, block: int = 0
) -> None:
    """One epoch of the training split, as a training loop would stream it (``block``: the
    opt-in locality-aware shuffle, ``train --shuffle-block``)."""
    import ecstream

    after_import = rss_anon_bytes()
    batches = ecstream.open_store(store).batches(
        "train",
        batch_size=batch_size,
        max_length=max_length,
        shuffle=True,
        seed=0,
        epoch=0,
        in_memory=in_memory,
        bucket=bucket,
        block=block,
    )
    start, cpu = time.perf_counter(), time.process_time()
    samples = 0
    for batch in batches:
        samples += len(batch)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    _report(
        samples=samples, steps=len(batches), seconds=seconds, cpu_seconds=cpu_seconds,
        anon_after_import=after_import,
    )  # fmt: skip


def ecstream_build(data: str, out: str) -> None:
    """``ecstream build DATA OUT --force``, through the library call the command wraps."""
    import ecstream

    start = time.perf_counter()
    store = ecstream.build_store(data, out, force=True)
    seconds = time.perf_counter() - start
    records = {split: store.num_records(split) for split in store.splits}
    _report(seconds=seconds, records=records)


def story_batches(data: str, store: str, samples: int, batch_size: int, max_length: int) -> None:
    """The story's generator: load the table with pandas, then the first ``samples`` records."""
    from story import StoryGenerator, story_dataframe

    gen = StoryGenerator(story_dataframe(Path(data), Path(store)), batch_size, max_length)
    done = 0
    for step in range(-(-samples // batch_size)):
        done += len(gen[step][1])
    _report(samples=done, steps=len(gen))


def dataset_epoch(store: str, batch_size: int, max_length: int) -> None:
    """A per-sample torch Dataset + DataLoader over one epoch of the training split."""
    import torch
    from per_sample import SequenceDataset, sequence_loader

    torch.set_num_threads(1)
    loader = sequence_loader(
        SequenceDataset.from_store(Path(store), "train", max_length), batch_size
    )
    samples = sum(len(y) for _, y in loader)
    _report(samples=samples, steps=len(loader))


WORKLOADS = {f.__name__: f for f in (ecstream_epoch, ecstream_build, story_batches, dataset_epoch)}

if __name__ == "__main__":
    limit_threads()
    WORKLOADS[sys.argv[1]](**json.loads(sys.argv[2]))
