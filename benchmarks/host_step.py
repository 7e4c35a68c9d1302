"""Host time of a training step: Lightning's loop, logging and metrics around a tiny network.

``python benchmarks/host_step.py SRC [SRC ...]`` trains the `small` preset on batches of 8
sequences cut to 16 residues (one thread, 300 steps, 1 DataLoader worker) with ecstream imported
from each source tree in turn (e.g. ``src`` and a checkout of an older commit's ``src``),
:data:`ROUNDS` rounds, each run in a fresh process, and prints each run's median step time
(``on_train_batch_start`` to ``on_train_batch_end``) and median wait between steps. The
network's arithmetic is a small part of such a step, so what differs between trees is the host
work per step, which a GPU step waits for too. A probe, not a section of BENCHMARKS.md.
"""

from __future__ import annotations

import gzip
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA

ROUNDS = 5
RECORDS = 40_000  # the first records of the shared data: a store built in seconds


def measure(store: Path) -> None:
    """One run (in this process, ecstream already on the path): print its two medians."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from ecstream.train import TrainConfig, train

    class Steps(Callback):
        def __init__(self):
            self.steps, self.gaps, self.start, self.end = [], [], 0.0, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.start = time.perf_counter()
            if self.end is not None and batch_idx >= 20:
                self.gaps.append(self.start - self.end)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.end = time.perf_counter()
            if batch_idx >= 20:
                self.steps.append(self.end - self.start)

    torch.set_num_threads(1)
    timer = Steps()
    config = TrainConfig(model="small", epochs=1, batch_size=8, max_length=16, num_workers=1,
                         limit_train_batches=300, progress=False, accelerator="cpu")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        train(store, Path(tmp) / "run", config, callbacks=[timer])
    step, gap = (1e3 * statistics.median(v) for v in (timer.steps, timer.gaps))
    print(f"step {step:.2f} ms, wait {gap:.2f} ms", flush=True)


def main(trees: list[str]) -> None:
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
                run = [sys.executable, __file__, "--run", tree, str(data), str(store)]
                out = subprocess.run(run, capture_output=True, text=True)
                said = out.stdout.strip().splitlines()[-1:] or [out.stderr.strip()[-300:]]
                print(f"round {r + 1}, {tree}: {said[0]}", flush=True)


def prepare(data: str, store: str) -> None:
    """Build the store once (the first run), with the ecstream of that run."""
    from ecstream import build_store

    if not Path(store).exists():
        build_store([Path(data)], Path(store))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:  # one run, in a process of its own: TREE DATA STORE
        tree, data, store = sys.argv[2:5]
        sys.path.insert(0, str(Path(tree).resolve()))
        prepare(data, store)
        measure(Path(store))
    elif len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} SRC [SRC ...]")
    else:
        main(sys.argv[1:])
