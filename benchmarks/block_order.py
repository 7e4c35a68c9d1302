"""Does the opt-in locality-aware order (``train --shuffle-block``) cost accuracy?

``python benchmarks/block_order.py``: on the shared data's random split (the full store, built
under ``bench-output/block-order/``), trains ``small`` for one epoch in the default order (a
shuffle of the whole split) and with ``--shuffle-block 1024`` (groups of 16 blocks of 1,024
stored records, the block the scale section measures for local stores), seeds 0 and 1, on both
cores, and prints each run's validation accuracy and loss and its training sequences/s.
Beside them, how far a batch's mix of classes strays from the split's, in each order (total
variation distance, 0: the same mix; mean over the epoch's full training batches, bucketed as
training streams them).
A probe, not a section of BENCHMARKS.md (the scale section quotes it); runs already made are
read, not made again.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
from common import DATA, ECSTREAM, OUTPUT, TWO_CORES, run_sampled

BLOCKS = (0, 1024)  # 0: the default order
SEEDS = (0, 1)
WORK = OUTPUT / "block-order"


def _cli(*args: str) -> None:
    run_sampled([*ECSTREAM, *args], env=TWO_CORES)


def _mix(store, block: int) -> float:
    """Mean total variation distance between a training batch's classes and the split's."""
    import ecstream

    batches = ecstream.open_store(store).batches(
        "train", shuffle=True, seed=0, bucket=True, block=block
    )  # as ``train`` streams them by default
    counts = [
        np.bincount(b.y, minlength=7) for b in batches if len(b) == batches.settings.batch_size
    ]
    whole = np.sum(counts, axis=0) / np.sum(counts)
    return float(np.mean([0.5 * np.abs(c / c.sum() - whole).sum() for c in counts]))


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    store = WORK / "store"
    if not (store / "manifest.json").exists():
        _cli("build", str(DATA), "--out", str(store), "--force")
    print("| order | seed | val acc. | val loss | training seq/s | batch mix (TV) |")
    print("|---|---:|---:|---:|---:|---:|")
    for block in BLOCKS:
        mix = _mix(store, block)
        for seed in SEEDS:
            run = WORK / f"block{block}-seed{seed}"
            if not (run / "model.pt").exists():
                shutil.rmtree(run, ignore_errors=True)  # a run cut short is made again
                _cli(
                    "train", str(store), "--out", str(run), "--epochs", "1", "--seed", str(seed),
                    "--shuffle-block", str(block), "--quiet",
                )  # fmt: skip
            with open(run / "metrics.csv") as fh:
                last = list(csv.DictReader(fh))[-1]
            order = f"`--shuffle-block {block:,}`" if block else "default"
            print(
                f"| {order} | {seed} | {float(last['val_acc']):.4f} "
                f"| {float(last['val_loss']):.4f} | {float(last['samples_per_s']):,.0f} "
                f"| {mix:.4f} |",
                flush=True,
            )
    print(json.dumps({"store": str(store)}))


if __name__ == "__main__":
    main()
