"""What a larger store's stream pays for, and what hides it: a probe of one core's epoch.

``python benchmarks/stream_probe.py``: builds the 10× mutated copy of the shared data
(``scaled_data.py``, as the scale section) into ``bench-output/stream-probe/`` (removed after),
then streams its training split (mmap, batches of 64, length 660, shuffled, unbucketed, one
thread) in each arm of :data:`ARMS`, every arm in a fresh process, :data:`ROUNDS` rounds taking
turns, :data:`EPOCHS` epochs per process. Prints, per arm, the median and range of sequences per
CPU-second over all its epochs, and the minor page faults and system seconds of a process's
first epoch (later ones find the pages mapped):

- ``plain``: the stream as it is;
- ``touch-first`` / ``touch-ends``: the next step's rows touched one step ahead (a numpy gather
  of their first bytes, or of their first and last), so that their cache misses overlap;
- ``touch-window``: the rows of the next 32 steps touched (first bytes) when they are looked up;
- ``gather``: each window of 32 steps' rows taken in one numpy call from a strided view, the
  padding masked and the letters translated once (a bound on that approach: not batches the
  stream yields);
- ``block=N``: the opt-in order ``train --shuffle-block N`` (groups of 16 blocks of N records);
- ``bucket`` / ``bucket+block=N``: the same orders bucketed by length, as ``train`` streams by
  default (windows of 32 batches, each batch as wide as its longest record).

``python benchmarks/stream_probe.py --store PATH --arms plain,bucket --epochs 2`` streams an
existing store instead (kept afterwards), in the arms named.

A probe, not a section of BENCHMARKS.md (the scale section quotes it).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, OUTPUT
from scaled_data import write_scaled

ARMS = (
    "plain", "touch-first", "touch-ends", "touch-window", "gather",
    "block=1024", "block=4096", "block=65536", "block=1048576",
)  # fmt: skip
ROUNDS, EPOCHS = 3, 3
BATCH, LENGTH = 64, 660


def _touching(arm: str) -> None:
    """Patch the stream so that it touches rows ahead (``touch-*`` arms)."""
    import numpy as np

    from ecstream.batches import Batches

    steps, getitem = Batches._steps, Batches.__getitem__

    def looked_up(self, step, end):
        got = steps(self, step, end)
        begin = np.asarray(got.begin, dtype=np.int64)
        if arm == "touch-window":
            self.data.region.u8[begin]
        last = np.maximum(begin, np.asarray(got.end, dtype=np.int64) - 1)
        self.probe_ahead = np.stack([begin, last], axis=1) if arm == "touch-ends" else begin
        return got

    def item(self, step):
        got, k = self._lookup(step)
        if k + 2 < len(got.bounds):  # the next step's rows, if looked up already
            self.data.region.u8[self.probe_ahead[got.bounds[k + 1] : got.bounds[k + 2]]]
        return getitem(self, step)

    Batches._steps = looked_up
    if arm != "touch-window":
        Batches.__getitem__ = item


def _gathered(batches) -> int:
    """The ``gather`` arm's epoch: records taken."""
    import numpy as np
    from numpy.lib.stride_tricks import as_strided

    from ecstream import alphabet

    u8 = batches.data.region.u8
    rows = as_strided(u8, shape=(u8.size - LENGTH, LENGTH), strides=(1, 1), writeable=False)
    column = np.arange(LENGTH)
    table = bytes(alphabet._TABLE_BYTES)
    n = 0
    for first in range(0, len(batches), 32):
        got = batches._steps(first, min(first + 32, len(batches)))
        begin = np.minimum(np.asarray(got.begin), rows.shape[0] - 1)
        window = rows[begin]
        window[column >= (np.asarray(got.end) - begin)[:, None]] = 0
        tokens = np.frombuffer(window.tobytes().translate(table), dtype=np.uint8)
        n += len(tokens) // LENGTH
    return n


def child(arm: str, store: str, epochs: int) -> None:
    """Stream ``epochs`` epochs in ``arm``; print their rates and costs as one JSON line."""
    import ecstream

    if arm.startswith("touch"):
        _touching(arm)
    bucket = arm.startswith("bucket")
    order = arm.removeprefix("bucket").removeprefix("+")
    block = int(order.split("=")[1]) if order.startswith("block=") else 0
    batches = ecstream.open_store(store).batches(
        "train", batch_size=BATCH, max_length=LENGTH, shuffle=True, seed=0, bucket=bucket,
        block=block,
    )  # fmt: skip
    rates, faults, system = [], [], []
    for _ in range(epochs):
        before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        n = _gathered(batches) if arm == "gather" else sum(len(b) for b in batches)
        after = resource.getrusage(resource.RUSAGE_SELF)
        rates.append(n / (time.process_time() - cpu))
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(after.ru_stime - before.ru_stime)
    print(json.dumps({"rates": rates, "faults": faults, "system": system}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="stream this store (kept) instead of building the 10×")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per process")
    args = parser.parse_args()
    arms = args.arms.split(",")
    work = OUTPUT / "stream-probe"
    store = Path(args.store) if args.store else work / "x10"
    try:
        import ecstream

        if not args.store:
            work.mkdir(parents=True, exist_ok=True)
            data = write_scaled(DATA, OUTPUT / "bacteria-ec-x10-mut0.015-seed0.tsv.gz")
            ecstream.build_store(data, store, force=True)
        got: dict[str, list[dict]] = {arm: [] for arm in arms}
        for _ in range(ROUNDS):
            for arm in arms:
                command = [sys.executable, __file__, "child", arm, str(store), str(args.epochs)]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
                got[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("| arm | seq/s per CPU-s, median (range) | minor faults | system s |")
        print("|---|---:|---:|---:|")
        for arm, runs in got.items():
            rates = [r for run in runs for r in run["rates"]]
            faults = statistics.median(run["faults"][0] for run in runs)  # first epochs
            system = statistics.median(run["system"][0] for run in runs)
            print(
                f"| {arm} | {statistics.median(rates) / 1e6:.2f} M ({min(rates) / 1e6:.2f}–"
                f"{max(rates) / 1e6:.2f}) | {faults:,.0f} | {system:.2f} |"
            )
    finally:
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
