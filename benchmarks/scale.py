"""Scale: build and stream a store 100× the shared data (about 20 M records) on local disk.

The 10× and 100× inputs are the shared table repeated with point mutations
(``scaled_data.py``); each input is built by ``ecstream build`` in a fresh child process and
epochs of its training split streamed in others (``consumers.py``: three rounds of the default
order and the opt-in block orders of :data:`BLOCKS`, taking turns), each with its peak anonymous
memory sampled from outside, on one thread. The 100× input and store are written
under ``bench-output/`` and removed at the end; the run refuses to start with less free disk
than it needs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from common import (
    DATA,
    OUTPUT,
    ChildRun,
    fmt,
    machine_info,
    machine_markdown,
    median,
    run_child,
    spread,
    targets_table,
)
from scaled_data import write_scaled

BATCH, LENGTH = 64, 660
MUTATION_RATE, SEED = 0.015, 0
SCALES = (1, 10, 100)
NEEDED_GB = 40  # the 100× gzip input and store, with room to spare

MIN_SPEED = 1_000_000  # seq/s, one core, the 100× store
# the opt-in locality-aware order's blocks (records): a group of 16 blocks of 1,024 records
# (about 6.5 MB of residues) stays within the CPU's caches and TLB reach; a block as long as a
# shard is the setting for a remote store larger than its cache (README, "Large stores")
BLOCKS = (1 << 10, 1 << 20)
ORDERS = (0, *BLOCKS)  # 0: the default order, a shuffle of the whole split
ROUNDS = 3  # epochs of each order per scale, taking turns: the figures are medians
MAX_MEMORY_CHANGE = 0.10  # build and epoch anonymous memory, 100× against 1×
MAX_BUILD_PER_RECORD_CHANGE = 0.25  # build seconds per record, 100× against 10×


GPU_NOTE = (
    "GPU targets of issue 11 (data-wait share < 2% at batch 256 for `large`, MFU of `large` in "
    "bf16 ≥ 25%) are measured in the GPU section (`benchmarks/gpu.py`), not here: this section "
    "runs on the CPU."
)

STREAM_NOTE = (
    "The stream's own cost per batch: the records of 32 steps read in order are located in one "
    "call (`EpochPlan.rows_of_steps`, `SplitData.spans`, `Batches._lookup`), and the row loop "
    "takes each padding run by index. What is left is per byte: joining a batch's rows and "
    "their padding, and translating letters to tokens. In the default order the rows of a 9 GB "
    "store are cache and TLB misses; `--shuffle-block 1024` reads them in runs (the row above). "
    "`python benchmarks/stream_probe.py --store STORE --arms plain,block=1024` compares orders "
    "on one store, each epoch in a fresh process, taking turns."
)
BUILD_NOTE = (
    "Why the build's peak grew with the input (2026-11-29: 170 / 185 / 205 MB at 1× / 10× / 100× "
    "in the 04:46 run; 152 / 178 / 195 MB at 06:13, with a batch's fingerprint hashed 1,024 "
    "records at a time instead of as one joined block of several MB): anonymous memory rises and "
    "falls during a build as the six split writers (train, val, test, and their rows spanning "
    "several classes) each fill a record batch, as Python objects, and flush it; the peak is the "
    "moment several are full at once, likelier the longer the build. Record batches of 4,096 "
    "records instead of 16,384 (`shards.BATCH_ROWS`) keep those buffers small: the figures above."
    " `python benchmarks/build_probe.py` (2026-11-29 07:00) builds 1× and 10× in fresh processes:"
    " with 16,384-record batches 145 and 169 MB at the peak, the middle of the build swinging by "
    "38 and 46 MB; with 4,096, 106 and 114 MB, swinging by 15 and 20. pyarrow's allocator "
    "(mimalloc) keeping freed pages was then read as a fixed part of every build's peak, not what"
    " grew (the measurement below says otherwise): the system allocator "
    "(`ARROW_DEFAULT_MEMORY_POOL=system`) lowered the peak by 21–37 MB at both scales and both "
    "batch sizes (to 85 and 92 MB with 4,096). Since 2026-11-30 the six writers share one cap of "
    "8,192 buffered records (`shards.BUILD_BUFFER_ROWS`; the add that reaches it flushes the "
    "writer holding most): each capped at 4,096 on its own, they held at most 13,817 records "
    "together at 1× and 18,976 at 10×, now 8,192 at any scale (`python "
    'benchmarks/build_probe.py`, 2026-11-30 16:05, column "held"). That alone left the growth (a '
    "scale run with it: 106 / 112 / 118 MB, +11.3%). What grew was not live data (`python "
    "benchmarks/build_probe.py why`, 2026-11-30 15:58, today's batches and cap with pyarrow's "
    "default pool): under `tracemalloc` the peak of Python's and numpy's live memory was 46.1 MB "
    "at 1× and 48.3 MB at 10×, and `malloc_trim` after every flush changed nothing (101.8 and "
    "107.8 MB against 100.3 and 108.6 MB plain). It was pyarrow's pool: in the same probe's table"
    " the system allocator took 13–38 MB off every peak (today's arm: 88 and 86 MB against 101 "
    "and 107 MB). So a build's record batches now come from the system pool "
    "(`allocator.build_pool`) unless `ARROW_DEFAULT_MEMORY_POOL` names one."
)


def _input(scale: int) -> Path:
    if scale == 1:
        return DATA
    name = f"bacteria-ec-x{scale}-mut{MUTATION_RATE}-seed{SEED}.tsv.gz"
    return write_scaled(DATA, OUTPUT / name, scale, MUTATION_RATE, SEED)


def run() -> str:
    started = time.perf_counter()
    OUTPUT.mkdir(exist_ok=True)
    free = shutil.disk_usage(OUTPUT).free / 1e9
    if free < NEEDED_GB:
        raise SystemExit(f"scale: {free:.0f} GB free under {OUTPUT}, {NEEDED_GB} GB needed")
    builds: dict[int, ChildRun] = {}
    epochs: dict[tuple[int, int], list[ChildRun]] = {}  # (scale, order): its rounds
    sizes: dict[int, tuple[int, int]] = {}  # input bytes, store bytes
    try:
        for scale in SCALES:
            print(f"{scale}×: input", flush=True)
            data = _input(scale)
            store = OUTPUT / f"scale-store-x{scale}"
            print(f"{scale}×: build", flush=True)
            builds[scale] = run_child("ecstream_build", data=str(data), out=str(store))
            sizes[scale] = (
                data.stat().st_size,
                sum(p.stat().st_size for p in store.rglob("*") if p.is_file()),
            )
            print(f"{scale}×: epochs", flush=True)
            for _ in range(ROUNDS):
                for block in ORDERS:
                    epochs.setdefault((scale, block), []).append(run_child(
                        "ecstream_epoch", store=str(store), in_memory=False, bucket=False,
                        batch_size=BATCH, max_length=LENGTH, block=block,
                    ))  # fmt: skip
            if scale == max(SCALES):
                data.unlink()  # the large files go as soon as they are measured
            shutil.rmtree(store)
    finally:
        for scale in SCALES:
            shutil.rmtree(OUTPUT / f"scale-store-x{scale}", ignore_errors=True)
        (OUTPUT / f"bacteria-ec-x{max(SCALES)}-mut{MUTATION_RATE}-seed{SEED}.tsv.gz").unlink(
            missing_ok=True
        )
    return report(builds, epochs, sizes, time.perf_counter() - started)


def _records(run: ChildRun) -> int:
    return sum(run.result["records"].values())


def _speeds(runs: list[ChildRun], clock: str = "seconds") -> list[float]:
    return [run.result["samples"] / run.result[clock] for run in runs]


def report(builds, epochs, sizes, seconds: float) -> str:
    big, mid, one = max(SCALES), 10, 1
    per = {s: builds[s].wall_s / _records(builds[s]) * 1e6 for s in SCALES}
    runs = {k: _speeds(v) for k, v in epochs.items()}  # seq/s (wall) of each round
    speed = {k: median(v) for k, v in runs.items()}
    cpu_speed = {s: median(_speeds(epochs[s, 0], "cpu_seconds")) for s in SCALES}
    build_mb = {s: builds[s].peak_mb for s in SCALES}
    epoch_mb = {s: max(run.peak_mb for run in epochs[s, 0]) for s in SCALES}
    growth = per[big] / per[mid] - 1
    build_change = build_mb[big] / build_mb[one] - 1
    epoch_change = epoch_mb[big] / epoch_mb[one] - 1
    rows = [
        (f"Build seconds per million records, {big}× against {mid}×",
         f"{per[big]:.1f} vs {per[mid]:.1f} ({growth:+.0%})",
         f"within ±{MAX_BUILD_PER_RECORD_CHANGE:.0%} (linear)",
         abs(growth) <= MAX_BUILD_PER_RECORD_CHANGE),
        (f"Build peak anonymous memory, {big}× against 1×",
         f"{build_mb[big]:.0f} vs {build_mb[one]:.0f} MB ({build_change:+.1%})",
         f"within ±{MAX_MEMORY_CHANGE:.0%}", abs(build_change) <= MAX_MEMORY_CHANGE),
        (f"Epoch peak anonymous memory, {big}× against 1×",
         f"{epoch_mb[big]:.1f} vs {epoch_mb[one]:.1f} MB ({epoch_change:+.1%})",
         f"within ±{MAX_MEMORY_CHANGE:.0%}", abs(epoch_change) <= MAX_MEMORY_CHANGE),
        (f"Streamed epoch of the {big}× store, one core (seq/s, wall; median)",
         fmt(speed[big, 0]), f"≥ {MIN_SPEED:,}", speed[big, 0] >= MIN_SPEED),
        ("Same, per CPU-second of the process", fmt(cpu_speed[big]), f"≥ {MIN_SPEED:,}",
         cpu_speed[big] >= MIN_SPEED),
        *(
            (f"Same store, opt-in order `--shuffle-block {block:,}` (seq/s, wall; median)",
             fmt(speed[big, block]), f"≥ {MIN_SPEED:,}", speed[big, block] >= MIN_SPEED)
            for block in BLOCKS
        ),
    ]  # fmt: skip
    lines = [
        "## Scale: 100× the shared data on local disk",
        "",
        "Command: `.venv/bin/python benchmarks/run.py scale` "
        f"(this section took {seconds / 60:.1f} min).",
        "",
        machine_markdown(machine_info()),
        f"Inputs: `{DATA.name}` and its {mid}× and {big}× mutated copies (`scaled_data.py`: "
        f"every residue replaced with probability {MUTATION_RATE}, at least one per sequence, "
        f"ids suffixed `-k`, seed {SEED}), gzip TSV. Each built by `ecstream build` "
        "(`build_store(…, force=True)`) in a fresh child process; epochs of the training "
        f"split streamed in others (mmap, batches of {BATCH}, length {LENGTH}, shuffled, one "
        "thread), in the default order and in the opt-in locality-aware order (`train "
        "--shuffle-block RECORDS`: groups of 16 blocks of RECORDS stored records shuffled within "
        "themselves, one group after another; the default order stays a shuffle of the whole "
        f"split), {ROUNDS} rounds of the three orders taking turns, each epoch in a fresh child: "
        "medians, the runs' range in parentheses, the epoch's memory the highest of the default "
        f"order's rounds. The blocks: {BLOCKS[0]:,} records (a group's rows, about 6.5 MB, "
        f"stay within the CPU's caches and the reach of its TLB) and {BLOCKS[1]:,} (a shard's "
        "records, the setting for a remote store larger than its cache). Memory is "
        "anonymous memory (`RssAnon`, sampled every 2 ms from outside the "
        "child), never RSS. The 100× input and store were removed after the run.",
        "",
        "### Targets",
        "",
        *targets_table(rows),
        "",
        "### Figures",
        "",
        "| Scale | records | input (gz) | store | build wall | s per M records "
        "| build peak anon. | epoch seq/s (wall) | per CPU-s | epoch peak anon. "
        + "".join(f"| blocked {block:,} seq/s (wall) " for block in BLOCKS)
        + f"| blocked {BLOCKS[0]:,} / default |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(BLOCKS) + 1),
        *(
            f"| {s}× | {_records(builds[s]):,} | {sizes[s][0] / 1e9:.2f} GB "
            f"| {sizes[s][1] / 1e9:.2f} GB | {builds[s].wall_s:.0f} s | {per[s]:.1f} "
            f"| {build_mb[s]:.0f} MB | {fmt(speed[s, 0])} ({spread(runs[s, 0])}) "
            f"| {fmt(cpu_speed[s])} | {epoch_mb[s]:.1f} MB | "
            + "".join(f"{fmt(speed[s, b])} ({spread(runs[s, b])}) | " for b in BLOCKS)
            + f"{speed[s, BLOCKS[0]] / speed[s, 0]:.2f}× |"
            for s in SCALES
        ),
        "",
        "Why a larger store used to stream slower (10×: 0.88 M against 1.40 M seq/s, pipeline "
        "section of 2026-11-27): a profile of one pass (`cProfile`, 2,551 batches) showed the "
        "time going to `SplitData._groups`, which ran a round of numpy calls (`unique`, "
        "`flatnonzero`, `searchsorted`, the offset and label reads) for every shard a batch "
        "touched; a shuffled batch of 64 touches every shard, so the cost grew with the number "
        "of shards (1 at 1×, 2 at 10×, 16 at 100×). Now the shards of a split are mapped side "
        "by side into one reserved address range (`shards.Region`), so a gather is the same "
        "few numpy operations whatever the number of shards. What is left of the gap is memory "
        "latency: a shuffled record of a 6 GB split is a cache and TLB miss, of a 60 MB one "
        f"often not. The opt-in order with blocks of {BLOCKS[0]:,} records reads a stretch of "
        "the epoch from about 6.5 MB of rows, wherever they are in the store: in this run it "
        f"streamed the {big}× store {speed[big, BLOCKS[0]] / speed[big, 0]:.2f}× as fast as "
        f"the default order (medians), the 1× store {speed[one, BLOCKS[0]] / speed[one, 0]:.2f}×"
        " as fast.",
        "",
        STREAM_NOTE,
        "",
        BUILD_NOTE,
        "",
        GPU_NOTE,
    ]
    return "\n".join(lines)
