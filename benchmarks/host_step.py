"""Host time of a training step: Lightning's loop, logging and metrics around a tiny network.

``python benchmarks/host_step.py SRC [SRC ...]`` trains the `small` preset on batches of 8
sequences cut to 16 residues (one thread, 300 steps, 1 DataLoader worker) with ecstream imported
from each source tree in turn (e.g. ``src`` and a checkout of an older commit's ``src``),
:data:`ROUNDS` rounds, each run in a fresh process, and prints each run's median step time
(``on_train_batch_start`` to ``on_train_batch_end``) and median wait between steps. The
network's arithmetic is a small part of such a step, so what differs between trees is the host
work per step, which a GPU step waits for too.

``python benchmarks/host_step.py --loader SRC [SRC ...]`` times, the same way, ``next()`` on the
training loader alone (1 worker, batches of 256 sequences up to 660 residues), the main process
busy :data:`BUSY` seconds between batches as if training: the hand-over of a batch from a
worker (and, where CUDA is, its pinning). ``$ECSTREAM_BENCH_DATA`` names the shared data where
``../shared`` is not. A probe, not a section of BENCHMARKS.md.
"""

from __future__ import annotations

import gzip
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA

ROUNDS = 5
RECORDS = 40_000  # the first records of the shared data: a store built in seconds
BUSY = 0.013  # a step of `large` at batch 256, compiled, on an H200 (BENCHMARKS.md, GPU)


def measure(store: Path) -> None:
    """One run (in this process, ecstream already on the path): print its two medians."""
    import torch
    from gpu import StepTimer

    from ecstream.train import TrainConfig, train

    torch.set_num_threads(1)
    timer = StepTimer(warmup=20)
    config = TrainConfig(model="small", epochs=1, batch_size=8, max_length=16, num_workers=1,
                         limit_train_batches=300, progress=False, accelerator="cpu")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        train(store, Path(tmp) / "run", config, callbacks=[timer])
    step, gap = (1e3 * statistics.median(v) for v in (timer.times, timer.waits))
    print(f"step {step:.2f} ms, wait {gap:.2f} ms", flush=True)


def hand_over(store: Path) -> None:
    """One ``--loader`` run: print the median ``next()`` of the loader, busy between batches."""
    import time

    from ecstream import open_store
    from ecstream.adapters.torch import loader

    batches = open_store(store).batches("train", batch_size=256, max_length=660)
    stream, times = iter(loader(batches, num_workers=1, ids=False)), []  # pinned on a GPU
    for _ in range(len(batches)):
        started = time.perf_counter()
        next(stream)
        done = time.perf_counter()
        times.append(done - started)
        while time.perf_counter() < done + BUSY:  # busy, as a step keeps the main process
            pass
    print(f"next() {1e3 * statistics.median(times[10:]):.2f} ms", flush=True)


def main(trees: list[str], mode: str = "--run") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "head.tsv.gz"
        with gzip.open(DATA, "rt") as fh, gzip.open(data, "wt") as out:
            for i, line in enumerate(fh):
                if i > RECORDS:
                    break
                out.write(line)
        store = Path(tmp) / "store"
        for r in range(ROUNDS):
            for tree in trees:
                run = [sys.executable, __file__, mode, tree, str(data), str(store)]
                out = subprocess.run(run, capture_output=True, text=True)
                said = out.stdout.strip().splitlines()[-1:] or [out.stderr.strip()[-300:]]
                print(f"round {r + 1}, {tree}: {said[0]}", flush=True)


def prepare(data: str, store: str) -> None:
    """Build the store once (the first run), with the ecstream of that run."""
    from ecstream import build_store

    if not Path(store).exists():
        build_store([Path(data)], Path(store))


if __name__ == "__main__":
    if sys.argv[1:2] in (["--run"], ["--hand-over"]):  # one run, in its own process
        tree, data, store = sys.argv[2:5]
        sys.path.insert(0, str(Path(tree).resolve()))
        prepare(data, store)
        (measure if sys.argv[1] == "--run" else hand_over)(Path(store))
    elif sys.argv[1:2] == ["--loader"] and len(sys.argv) > 2:
        main(sys.argv[2:], "--hand-over")
    elif len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} [--loader] SRC [SRC ...]")
    else:
        main(sys.argv[1:])
