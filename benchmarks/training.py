"""Training and prediction on CPU: fixed vs bucketed batches, prediction speed and memory.

What :func:`run` measures (both cores, as a user on this machine would run it):

1. **Fixed vs bucketed**: ``ecstream train`` of the ``small`` model on a seeded ~30k sample of
   the shared data (the demo's store), one after the other in the same run, each trained as a
   user would (early stopping on val_loss, patience 3): training sequences/s (median over
   epochs, from ``metrics.csv``) and the validation accuracy of the best epoch. Compared at the
   same epoch instead, bucketed training trails by a few points in the first epochs (its
   batches hold proteins of similar length, so a step's gradient is less typical); that gap is
   gone once both have converged, which is what this measures.
2. **Prediction speed**: ``ecstream predict`` with the bucketed run on a FASTA of the sample's
   test proteins (sequences/s as printed, and wall time of the whole command).
3. **Prediction memory**: ``ecstream predict`` on FASTA files of 100k and 1M sequences (the
   shared sequences repeated, ids made unique): peak anonymous memory of each, and their ratio.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import re
from pathlib import Path

from common import (
    DATA,
    ECSTREAM,
    MB,
    OUTPUT,
    TWO_CORES,
    fmt,
    machine_info,
    machine_markdown,
    median,
    run_sampled,
    targets_table,
)

SAMPLE, MAX_EPOCHS = 0.15, 30
FASTA_SIZES = (100_000, 1_000_000)
MIN_BUCKET_SPEEDUP, MAX_ACC_GAP = 1.5, 0.01
MIN_PREDICT_SPEED, MAX_MEMORY_CHANGE = 500, 0.10

WORK = OUTPUT / "training"


def _cli(*args: str) -> tuple[str, int, float]:
    """Run ``ecstream ARGS`` on both cores: (stderr, peak anonymous bytes, wall seconds)."""
    _, err, peak, _, wall = run_sampled([*ECSTREAM, *args], env=TWO_CORES)
    return err, peak, wall


def _speed(stderr: str) -> float:
    """The sequences/s that ``ecstream predict`` prints (scoring time, start-up excluded)."""
    return float(_SPEED.findall(stderr.replace("\n", " "))[-1].replace(",", ""))


def _history(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _train(store: Path, name: str, *flags: str) -> dict:
    run = WORK / name
    if not (run / "model.pt").exists():
        _cli("train", str(store), "--out", str(run), "--epochs", str(MAX_EPOCHS), "--quiet", *flags)
    history = _history(run)
    best = min(history, key=lambda r: float(r["val_loss"]))
    return {
        "run": run,
        "speed": median([float(r["samples_per_s"]) for r in history]),
        "val_acc": float(best["val_acc"]),
        "best_epoch": int(best["epoch"]) + 1,
        "epochs": len(history),
    }


def _fasta(path: Path, n: int) -> Path:
    """The shared sequences, repeated until there are ``n`` of them (ids made unique)."""
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    with gzip.open(DATA, "rt") as src, open(tmp, "w") as out:
        next(src)
        rows = [line.rstrip("\n").split("\t") for line in src]
        for i, (rid, _, seq) in enumerate(itertools.islice(itertools.cycle(rows), n)):
            out.write(f">{rid}_{i}\n{seq}\n")
    tmp.rename(path)
    return path


def run() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    store = WORK / "store"
    if not (store / "manifest.json").exists():
        _cli("build", str(DATA), "--out", str(store), "--sample", str(SAMPLE), "--force")
    manifest = json.loads((store / "manifest.json").read_text())
    train_n = manifest["splits"]["train"]["records"]

    fixed = _train(store, "fixed", "--no-bucket")
    bucketed = _train(store, "bucketed", "--bucket")
    speedup = bucketed["speed"] / fixed["speed"]
    gap = abs(bucketed["val_acc"] - fixed["val_acc"])

    test_fasta = WORK / "test.fasta"
    if not test_fasta.exists():
        import ecstream

        with open(test_fasta, "w") as fh:
            for chunk in ecstream.open_store(store).records("test"):
                fh.writelines(f">{i}\n{s.decode()}\n" for i, s in chunk.pairs())
    run_dir = bucketed["run"]
    err, _, predict_wall = _cli(
        "predict", str(run_dir), str(test_fasta), "--out", str(WORK / "p.tsv")
    )
    predict_speed = _speed(err)

    memory = {}
    for n in FASTA_SIZES:
        fasta = _fasta(OUTPUT / f"predict-{n}.fasta", n)
        _, peak, wall = _cli("predict", str(run_dir), str(fasta), "--out", str(WORK / f"p{n}.tsv"))
        memory[n] = {"peak_mb": peak / MB, "seconds": wall, "per_s": n / wall}
    small, large = (memory[n]["peak_mb"] for n in FASTA_SIZES)
    change = large / small - 1

    test_n = manifest["splits"]["test"]["records"]
    n_small, n_large = FASTA_SIZES
    rows = [
        ("training seq/s, fixed padding to 660 (median of epochs)", fmt(fixed["speed"]), "",
         None),
        ("training seq/s, bucketed", fmt(bucketed["speed"]), "", None),
        ("bucketed / fixed", f"{speedup:.2f}×", f"≥ {MIN_BUCKET_SPEEDUP}×",
         speedup >= MIN_BUCKET_SPEEDUP),
        (f"validation accuracy, fixed (best of {fixed['epochs']} epochs: epoch "
         f"{fixed['best_epoch']})", f"{fixed['val_acc']:.4f}", "", None),
        (f"validation accuracy, bucketed (best of {bucketed['epochs']} epochs: epoch "
         f"{bucketed['best_epoch']})", f"{bucketed['val_acc']:.4f}", "equal ±1 point",
         gap <= MAX_ACC_GAP),
        (f"prediction seq/s, {test_n:,} test proteins (FASTA)", fmt(predict_speed),
         f"≥ {MIN_PREDICT_SPEED}", predict_speed >= MIN_PREDICT_SPEED),
        (f"prediction of {n_small:,} sequences: peak anonymous memory", f"{small:.0f} MB", "",
         None),
        (f"prediction of {n_large:,} sequences: peak anonymous memory", f"{large:.0f} MB",
         "flat (±10%)", abs(change) <= MAX_MEMORY_CHANGE),
    ]  # fmt: skip
    lines = [
        "## Training and prediction on CPU",
        "",
        "Command: `.venv/bin/python benchmarks/run.py training` (part of `make bench`). Both "
        "cores are used (`OMP_NUM_THREADS=2`), as a user of this machine would run it.",
        "",
        machine_markdown(info),
        f"Store: a seeded {SAMPLE:.0%} sample of the shared data ({train_n:,} training records); "
        "model `small`, batch 64, max length 660, early stopping on val_loss (patience 3), the "
        "fixed run first, then the bucketed one (windows of 32 batches). Best epoch: lowest "
        "val_loss.",
        "",
        *targets_table(rows),
        "",
        f"The whole `ecstream predict` command on the test proteins took {predict_wall:.1f} s "
        f"(start-up included). Prediction of {n_large:,} sequences took "
        f"{memory[n_large]['seconds']:.0f} s ({fmt(memory[n_large]['per_s'])} seq/s with "
        f"start-up); its peak anonymous memory changed by {100 * change:+.1f}% from {n_small:,} "
        "sequences. Memory is `RssAnon` sampled from the parent every 2 ms; it is PyTorch "
        "(about 140 MB imported) and the activations of one 64-sequence batch, not the data.",
    ]
    return "\n".join(lines)


_SPEED = re.compile(r"([\d,]+) sequences/s")
