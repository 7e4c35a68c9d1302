"""Data pipeline benchmark: speed and memory of ecstream batches, the build, and scaling.

What :func:`run` measures, in this order:

1. **Build**: ``ecstream build`` of the full shared gzip TSV, three times, each in a fresh child
   process: wall time of the process and its peak anonymous memory.
2. **10× input**: the table repeated 10 times with point mutations (``scaled_data.py``), built
   the same way.
3. **Speed** (this process, one thread, warm page cache): sequences per second of one pass of
   each loader over the training split: ecstream mmap/RAM × fixed/bucketed, ecstream on the 10×
   store, a per-sample torch ``Dataset`` + ``DataLoader``, and the story's generator (on its first
   ``STORY_SAMPLES`` records only: it is slow). Loaders take turns, round after round, so that
   noise from other users of the machine falls on all of them alike; figures are medians.
4. **Padding**: padded cells / all cells of one epoch's batches, fixed vs bucketed.
5. **Memory**: each loader again, alone in a fresh child process: peak anonymous memory;
   for ecstream mmap fixed also on the 10× store, to show that memory does not grow with data.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from common import (
    DATA,
    MB,
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
from per_sample import SequenceDataset, sequence_loader
from scaled_data import write_scaled
from story import StoryGenerator, story_dataframe

import ecstream

BATCH, LENGTH = 64, 660
ROUNDS = 7  # timed passes per loader, after one warm-up pass
BUILDS = 3
STORY_SAMPLES = 4096
SCALE, MUTATION_RATE, SEED = 10, 0.015, 0

# targets
MIN_SPEED = 400_000  # seq/s, ecstream mmap fixed
MIN_RATIO = 50  # ecstream mmap fixed / story generator
MAX_BUILD_S, MAX_BUILD_MB = 60, 500
MAX_EPOCH_MB, MAX_SCALING_CHANGE = 300, 0.10

ECSTREAM_MODES = {  # loader name: (in_memory, bucket)
    "ecstream mmap, fixed": (False, False),
    "ecstream mmap, bucketed": (False, True),
    "ecstream RAM, fixed": (True, False),
    "ecstream RAM, bucketed": (True, True),
}
MMAP_FIXED = "ecstream mmap, fixed"
SCALED = f"ecstream mmap, fixed, {SCALE}× store"
DATASET = "torch per-sample Dataset + DataLoader"
STORY = "story generator (pandas, one-hot)"


@dataclass
class Speed:
    """Sequences per second of each timed pass of one loader, by wall clock and by CPU time."""

    rates: list[float]  # records / wall seconds
    cpu_rates: list[float]  # records / CPU seconds of this process: less hit by other users
    samples: int  # records per pass

    @property
    def median(self) -> float:
        return median(self.rates)


@dataclass
class Results:
    """Everything :func:`run` measured; :func:`report` turns it into markdown."""

    info: dict[str, str]
    records: dict[str, int]  # per split, 1× store
    scaled_records: dict[str, int]
    builds: list[ChildRun]
    scaled_build: ChildRun
    speeds: dict[str, Speed]
    load: tuple[float, float]  # 1-minute load average before and after the speed runs
    padding: dict[bool, tuple[float, float]]  # bucket → (padded fraction, mean width)
    memory: dict[str, ChildRun]
    seconds: float = 0.0


# --- speed ---------------------------------------------------------------------------------
def loaders(store: ecstream.Store, scaled: ecstream.Store) -> dict[str, Callable[[int], int]]:
    """One pass of each loader (``pass_number`` → records seen), all over training records."""
    steps = len(store.batches("train", BATCH, LENGTH))

    def ecstream_pass(in_memory: bool, bucket: bool, source=store) -> Callable[[int], int]:
        def one_pass(pass_number: int) -> int:
            batches = source.batches(
                "train", BATCH, LENGTH, epoch=pass_number, in_memory=in_memory, bucket=bucket
            )
            # on the 10× store: its first `steps` batches, as many records as a 1× epoch
            return sum(len(batch) for batch in itertools.islice(batches, steps))

        return one_pass

    dataset = SequenceDataset.from_store(store.path, "train", LENGTH)
    story = StoryGenerator(story_dataframe(DATA, store.path), BATCH, LENGTH)
    train = store.num_records("train")
    if len(dataset) != train or len(story.df) != train:
        raise RuntimeError(f"baselines hold {len(dataset)} / {len(story.df)} records, not {train}")

    def dataset_pass(pass_number: int) -> int:
        return sum(len(y) for _, y in sequence_loader(dataset, BATCH, seed=pass_number))

    def story_pass(pass_number: int) -> int:
        return sum(len(story[step][1]) for step in range(STORY_SAMPLES // BATCH))

    passes = {name: ecstream_pass(*mode) for name, mode in ECSTREAM_MODES.items()}
    passes[SCALED] = ecstream_pass(False, False, scaled)
    return {**passes, DATASET: dataset_pass, STORY: story_pass}


def measure_speed(store: ecstream.Store, scaled: ecstream.Store) -> dict[str, Speed]:
    """Warm every loader up once, then time ``ROUNDS`` passes of each, taking turns."""
    passes = loaders(store, scaled)
    samples = {name: one_pass(0) for name, one_pass in passes.items()}  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in passes}
    cpu: dict[str, list[float]] = {name: [] for name in passes}
    for r in range(1, ROUNDS + 1):
        for name, one_pass in passes.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            seen = one_pass(r)
            wall[name].append(seen / (time.perf_counter() - wall_start))
            cpu[name].append(seen / (time.process_time() - cpu_start))
    return {name: Speed(wall[name], cpu[name], samples[name]) for name in passes}


def padding_fraction(store: ecstream.Store, bucket: bool) -> tuple[float, float]:
    """Padded cells / all cells of one epoch's batches, and the mean batch width."""
    padded = cells = widths = steps = 0
    for batch in store.batches("train", BATCH, LENGTH, bucket=bucket):
        padded += int(np.count_nonzero(batch.x == 0))  # token 0 is padding, never a residue
        cells += batch.x.size
        widths += batch.x.shape[1]
        steps += 1
    return padded / cells, widths / steps


# --- memory (each in a fresh child process; see common.run_child) --------------------------
def epoch_in_child(store: Path, in_memory: bool = False, bucket: bool = False) -> ChildRun:
    return run_child(
        "ecstream_epoch",
        store=str(store),
        in_memory=in_memory,
        bucket=bucket,
        batch_size=BATCH,
        max_length=LENGTH,
    )


def build_in_child(data: Path, out: Path) -> ChildRun:
    return run_child("ecstream_build", data=str(data), out=str(out))


def consumer_memory(store: Path, scaled: Path) -> dict[str, ChildRun]:
    """Peak anonymous memory of each loader over one epoch (the story: its first batches)."""
    runs = {name: epoch_in_child(store, *mode) for name, mode in ECSTREAM_MODES.items()}
    runs[SCALED] = epoch_in_child(scaled)
    runs[DATASET] = run_child(
        "dataset_epoch", store=str(store), batch_size=BATCH, max_length=LENGTH
    )
    runs[STORY] = run_child(
        "story_batches",
        data=str(DATA),
        store=str(store),
        samples=STORY_SAMPLES,
        batch_size=BATCH,
        max_length=LENGTH,
    )
    return runs


# --- the section ---------------------------------------------------------------------------
def run() -> str:
    """Run every measurement and return the markdown of the ``pipeline`` section."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    OUTPUT.mkdir(exist_ok=True)
    store_dir, scaled_dir = OUTPUT / "store", OUTPUT / f"store-x{SCALE}"

    print(f"build ×{BUILDS}", flush=True)
    builds = [build_in_child(DATA, store_dir) for _ in range(BUILDS)]
    print(f"{SCALE}× input: write (once), build", flush=True)
    name = f"bacteria-ec-x{SCALE}-mut{MUTATION_RATE}-seed{SEED}.tsv.gz"
    scaled_tsv = write_scaled(DATA, OUTPUT / name, SCALE, MUTATION_RATE, SEED)
    scaled_build = build_in_child(scaled_tsv, scaled_dir)
    store, scaled = ecstream.open_store(store_dir), ecstream.open_store(scaled_dir)

    print("speed", flush=True)
    load_before = os.getloadavg()[0]
    speeds = measure_speed(store, scaled)
    load = (load_before, os.getloadavg()[0])
    print("padding", flush=True)
    padding = {bucket: padding_fraction(store, bucket) for bucket in (False, True)}
    print("memory", flush=True)
    memory = consumer_memory(store_dir, scaled_dir)

    results = Results(
        info=machine_info(),
        records=builds[-1].result["records"],
        scaled_records=scaled_build.result["records"],
        builds=builds,
        scaled_build=scaled_build,
        speeds=speeds,
        load=load,
        padding=padding,
        memory=memory,
    )
    results.seconds = time.perf_counter() - started
    return report(results)


# --- the markdown --------------------------------------------------------------------------
def targets(r: Results) -> list[tuple[str, str, str, bool]]:
    """(measurement, figure, target, met) for each target."""
    speed, story = r.speeds[MMAP_FIXED].median, r.speeds[STORY].median
    build_s = median([b.wall_s for b in r.builds])
    build_mb = max(b.peak_mb for b in r.builds)
    epoch_mb, scaled_mb = r.memory[MMAP_FIXED].peak_mb, r.memory[SCALED].peak_mb
    change = scaled_mb / epoch_mb - 1
    return [
        ("Speed, ecstream mmap fixed (seq/s, median)", fmt(speed), f"≥ {MIN_SPEED:,}",
         speed >= MIN_SPEED),
        ("Speed ratio, ecstream mmap fixed / story generator", f"{speed / story:.1f}×",
         f"≥ {MIN_RATIO}×", speed / story >= MIN_RATIO),
        ("`ecstream build` of the full gz TSV: wall time (median of 3)", f"{build_s:.1f} s",
         f"< {MAX_BUILD_S} s", build_s < MAX_BUILD_S),
        ("`ecstream build`: peak anonymous memory (max of 3)", f"{build_mb:.0f} MB",
         f"< {MAX_BUILD_MB} MB", build_mb < MAX_BUILD_MB),
        ("One streamed epoch (mmap, fixed): peak anonymous memory", f"{epoch_mb:.1f} MB",
         f"< {MAX_EPOCH_MB} MB", epoch_mb < MAX_EPOCH_MB),
        (f"Same on the {SCALE}× store", f"{scaled_mb:.1f} MB", f"< {MAX_EPOCH_MB} MB",
         scaled_mb < MAX_EPOCH_MB),
        (f"Epoch memory ratio, {SCALE}× / 1× store", f"{scaled_mb / epoch_mb:.3f} ({change:+.1%})",
         f"within ±{MAX_SCALING_CHANGE:.0%}", abs(change) <= MAX_SCALING_CHANGE),
    ]  # fmt: skip


def report(r: Results) -> str:
    """The section: targets first, then every figure behind them, then how they were measured."""
    story = r.speeds[STORY].median
    (fixed_pad, fixed_width), (bucket_pad, bucket_width) = r.padding[False], r.padding[True]
    ecstream_child = r.memory[MMAP_FIXED].result
    lines = [
        "## Data pipeline",
        "",
        "Command: `make bench` or `.venv/bin/python benchmarks/run.py pipeline` "
        f"(this section took {r.seconds / 60:.1f} min).",
        "",
        machine_markdown(r.info),
        f"Data: `{DATA.name}`, {sum(r.records.values()):,} records kept "
        f"({', '.join(f'{k} {v:,}' for k, v in r.records.items())}). Batches of {BATCH}, "
        f"length {LENGTH}, shuffled; one thread (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`, "
        "pyarrow CPU pool 1).",
        "",
        "### Targets",
        "",
        *targets_table(targets(r)),
        "",
        load_note(r),
        "",
        f"### Loaders side by side ({ROUNDS} timed passes each, taking turns)",
        "",
        "seq/s by wall clock is the figure; seq/s per CPU-second of this process is beside it.",
        "",
        "| Loader | seq/s, median | min–max | seq/s per CPU-s, median | × story "
        "| records per pass | peak anon. memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {fmt(s.median)} | {spread(s.rates)} | {fmt(median(s.cpu_rates))} "
            f"| {s.median / story:.1f}× | {s.samples:,} | {r.memory[name].peak_mb:.0f} MB |"
            for name, s in r.speeds.items()
        ),
        "",
        "Every loader reads the training split's records. ecstream yields numpy `uint8 [64, L]` "
        "tokens with labels (ids are read only when asked for); the torch Dataset "
        "`uint8 [64, 660]` tensors with labels; the "
        f"story generator `float32 [64, 660, 21]` one-hot. The story generator is timed on the "
        f"first {STORY_SAMPLES:,} records of its shuffled epoch, and its memory figure is for "
        f"reading the table with pandas and making those batches. On the {SCALE}× store, a pass is "
        "its epoch's first batches, as many records as a 1× epoch; its memory is for a whole "
        f"epoch ({r.memory[SCALED].result['samples']:,} records).",
        "",
        "### Padding over one epoch (training split)",
        "",
        "| Batches | padded cells / all cells | mean batch width |",
        "|---|---:|---:|",
        f"| fixed (`bucket=False`) | {fixed_pad:.1%} | {fixed_width:.0f} |",
        f"| bucketed (`bucket=True`) | {bucket_pad:.1%} | {bucket_width:.0f} |",
        "",
        "### Build and scaling",
        "",
        "| Input | records kept | shards (train) | build wall | build peak anon. "
        "| epoch peak anon. |",
        "|---|---:|---:|---:|---:|---:|",
        build_row(
            f"`{DATA.name}` (1×)",
            r.records,
            OUTPUT / "store",
            median([b.wall_s for b in r.builds]),
            max(b.peak_mb for b in r.builds),
            r.memory[MMAP_FIXED],
        ),
        build_row(
            f"{SCALE} mutated copies ({SCALE}×)",
            r.scaled_records,
            OUTPUT / f"store-x{SCALE}",
            r.scaled_build.wall_s,
            r.scaled_build.peak_mb,
            r.memory[SCALED],
        ),
        "",
        f"The {SCALE}× input repeats every row {SCALE} times with point mutations (each residue "
        f"replaced with probability {MUTATION_RATE}, and at least one per sequence; seed {SEED}) "
        "and ids suffixed `-k`, written to `bench-output/` as gzip TSV and built like the "
        "original.",
        "",
        "### Method",
        "",
        "- Speed: one pass = one epoch of the training split, after one untimed pass per loader "
        "that also warms the page cache; seq/s = records / seconds of the pass; medians over "
        "the passes.",
        "- Memory: anonymous memory only (`RssAnon` in `/proc/<pid>/status`), never RSS, which "
        "counts the page cache of the memory-mapped shards. Each workload runs alone in a fresh "
        "child process (`benchmarks/consumers.py`) importing only what that consumer needs "
        f"(ecstream epochs: {', '.join(ecstream_child['modules'])}; no torch, no pandas). A thread "
        "in the parent reads the child's `RssAnon` every 2 ms and keeps the largest value over "
        "the child's whole life, imports and setup included. Python with ecstream imported "
        f"holds {ecstream_child['anon_after_import'] / MB:.1f} MB of it.",
        "- Build wall time: the whole child process, interpreter start to exit, running "
        "`ecstream.build_store(data, out, force=True)`, the call `ecstream build` makes; the call "
        f"alone took {median([b.result['seconds'] for b in r.builds]):.1f} s (median).",
    ]
    return "\n".join(lines)


def load_note(r: Results) -> str:
    """Say how loaded the machine was, and what the speed target reads by CPU time."""
    cpu = median(r.speeds[MMAP_FIXED].cpu_rates)
    ratio = cpu / median(r.speeds[STORY].cpu_rates)
    return (
        f"Machine load during the speed runs: {r.load[0]:.1f} → {r.load[1]:.1f} (1-minute load "
        f"average, {os.cpu_count()} cores). By CPU time of this process, which other users' load "
        f"disturbs less, ecstream mmap fixed made {fmt(cpu)} seq/s "
        f"({'meets' if cpu >= MIN_SPEED else 'misses'} the {MIN_SPEED:,} target) and "
        f"{ratio:.1f}× the story generator."
    )


def build_row(
    label: str, records: dict, store: Path, wall: float, build_mb: float, epoch: ChildRun
) -> str:
    shards = len(ecstream.open_store(store).manifest["splits"]["train"]["shards"])
    return (
        f"| {label} | {sum(records.values()):,} | {shards} | {wall:.1f} s | {build_mb:.0f} MB "
        f"| {epoch.peak_mb:.1f} MB |"
    )
