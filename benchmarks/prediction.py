"""Prediction with full-EC runs: speed against the class run, memory, and long proteins.

Uses the runs of the accuracy section's random split (``bench-output/accuracy/random``):
``small`` (seven classes) and ``small-ec`` (full EC numbers). Run that section first.

1. Speed: ``ecstream predict`` of the random split's test proteins (FASTA), the class run, the
   full-EC run and the full-EC run at 256 sequences a pass (the former default) taking turns,
   three times each; sequences/s as predict prints it (scoring time, start-up excluded);
   medians. Then, in one process, the logits of the same proteins from the network's own
   forward and from :class:`ecstream.model.Scorer`, taking turns.
2. Memory: the full-EC run on 100,000 and 1,000,000 sequences (the shared data repeated); peak
   anonymous memory (``RssAnon``) of the whole command.
3. Long proteins: the test proteins longer than the training length (660), scored whole, in
   overlapping windows and truncated, by the full-EC run; top accuracy at levels 1 and 4.
"""

from __future__ import annotations

import re
from pathlib import Path

from common import (
    ECSTREAM,
    MB,
    OUTPUT,
    TWO_CORES,
    machine_info,
    machine_markdown,
    median,
    run_sampled,
)
from training import _fasta

WORK = OUTPUT / "prediction"
RUNS = OUTPUT / "accuracy" / "random"
REPEATS = 3
FASTA_SIZES = (100_000, 1_000_000)
MIN_SPEED, MAX_MEMORY_CHANGE = 1500, 0.10
_SPEED = re.compile(r"([\d,]+) sequences/s")


def _predict(
    run: Path, fasta: Path, out: Path, *flags: str, env: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """(sequences/s as printed, peak anonymous MB, wall seconds) of one ``ecstream predict``."""
    _, err, peak, _, wall = run_sampled(
        [*ECSTREAM, "predict", str(run), str(fasta), "--out", str(out), *flags],
        env={**TWO_CORES, **(env or {})},
    )
    speed = float(_SPEED.findall(err.replace("\n", " "))[-1].replace(",", ""))
    return speed, peak / MB, wall


def _test_fasta() -> tuple[Path, int]:
    import ecstream

    path = WORK / "test.fasta"
    n = 0
    with open(path, "w") as fh:
        for chunk in ecstream.open_store(RUNS / "store").records("test"):
            fh.writelines(f">{i}\n{s.decode()}\n" for i, s in chunk.pairs())
            n += len(chunk)
    return path, n


def _scorer_against_forward(fasta: Path) -> str:
    """The test proteins' logits from the network's own forward and from the Scorer (what
    predict uses), in this process on both cores, taking turns: speed and largest difference."""
    import time

    import numpy as np
    import torch

    import ecstream

    torch.set_num_threads(2)
    model = ecstream.load_model(RUNS / "small-ec")
    with fasta.open() as fh:
        seqs = [line.strip().encode() for line in fh if not line.startswith(">")]
    ways = {"forward": torch.inference_mode()(model.model), "scorer": model.scorer}
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    logits = {}
    for _ in range(REPEATS):
        for name, net in ways.items():
            model.scorer = net
            start = time.perf_counter()
            logits[name] = model.all_logits(seqs)
            speeds[name].append(len(seqs) / (time.perf_counter() - start))
    med = {name: median(v) for name, v in speeds.items()}
    gap = float(np.abs(logits["scorer"] - logits["forward"]).max())
    return (
        f"Logits alone, in one process, {model.batch_size} a pass: the network's own forward "
        f"{med['forward']:,.0f} sequences/s, the `Scorer` (embedding folded into the stem's "
        f"table) {med['scorer']:,.0f} ({med['scorer'] / med['forward']:.2f}×); largest "
        f"difference of a logit {gap:.1e} (float rounding)."
    )


def _long_proteins() -> list[str]:
    """Top accuracy at levels 1 and 4 of the test proteins over 660 residues, three ways."""
    import numpy as np

    import ecstream
    from ecstream.labels import level_keys

    model = ecstream.load_model(RUNS / "small-ec")
    seqs, ecs = [], []
    for chunk in ecstream.open_store(RUNS / "store").records("test"):
        for s, e in zip(chunk.seqs, chunk.ecs, strict=True):
            if len(s) > model.max_length:
                seqs.append(s)
                ecs.append(e)
    rows = [f"| {mode} |" for mode in ("whole", "windows", "truncated")]
    for k, mode in enumerate(("whole", "windows", "truncated")):
        model.long = mode
        levels = model.score([""] * len(seqs), seqs).levels
        for level in (1, 4):
            top = levels[level - 1].argmax(axis=1)
            keys = model.vocab.classes[level - 1]
            right = np.mean(
                [keys[t] in level_keys(e, level) for t, e in zip(top, ecs, strict=True)]
            )
            rows[k] += f" {right:.3f} |"
    return [
        f"Test proteins longer than {model.max_length} residues: {len(seqs):,}. Top accuracy of "
        "the full-EC run:",
        "",
        "| scored | level 1 | level 4 |",
        "|---|---:|---:|",
        *rows,
    ]


def run() -> str:
    from ecstream.config import SCORE_ROWS

    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    fasta, n_test = _test_fasta()
    # the full-EC run also at the former 256 sequences per forward pass
    speeds: dict[str, list[float]] = {"small": [], "small-ec": [], "small-ec B=256": []}
    for _ in range(REPEATS):
        for name in speeds:
            run, _, size = name.partition(" B=")
            flags = ("--batch-size", size) if size else ()
            speeds[name].append(_predict(RUNS / run, fasta, WORK / f"{run}.tsv", *flags)[0])
    med = {name: median(v) for name, v in speeds.items()}
    scorer = _scorer_against_forward(fasta)
    memory = {}
    for n in FASTA_SIZES:
        big = _fasta(OUTPUT / f"predict-{n}.fasta", n)
        speed, peak, wall = _predict(RUNS / "small-ec", big, WORK / f"ec-{n}.tsv")
        memory[n] = (peak, wall, speed)
        (WORK / f"ec-{n}.tsv").unlink(missing_ok=True)
    small, large = (memory[n][0] for n in FASTA_SIZES)
    change = large / small - 1
    ok_speed, ok_memory = med["small-ec"] >= MIN_SPEED, abs(change) <= MAX_MEMORY_CHANGE
    lines = [
        "## Prediction with full EC numbers",
        "",
        "Command: `.venv/bin/python benchmarks/run.py prediction` (after the accuracy section, "
        "whose random-split runs it uses). Both cores (`OMP_NUM_THREADS=2`).",
        "",
        machine_markdown(info),
        "| Measurement | Figure | Target | Met |",
        "|---|---:|---:|:---:|",
        f"| full EC: sequences/s on {n_test:,} test proteins (median of {REPEATS}) "
        f"| {med['small-ec']:,.0f} | ≥ {MIN_SPEED:,} | {'yes' if ok_speed else '**no**'} |",
        f"| seven classes, same proteins, taking turns | {med['small']:,.0f} | | |",
        f"| full EC, 256 sequences per forward pass (was the default) "
        f"| {med['small-ec B=256']:,.0f} | | |",
        f"| full EC: peak anonymous memory, {FASTA_SIZES[0]:,} sequences | {small:.0f} MB | | |",
        f"| full EC: peak anonymous memory, {FASTA_SIZES[1]:,} sequences | {large:.0f} MB "
        f"| flat (±10%) | {'yes' if ok_memory else '**no**'} |",
        "",
        f"All runs (sequences/s): full EC {', '.join(f'{v:,.0f}' for v in speeds['small-ec'])}; "
        f"classes {', '.join(f'{v:,.0f}' for v in speeds['small'])}; full EC at 256 a pass "
        f"{', '.join(f'{v:,.0f}' for v in speeds['small-ec B=256'])}: the default (32 a pass "
        f"on CPU) is {med['small-ec'] / med['small-ec B=256']:.2f}× of 256, and full EC "
        f"{med['small-ec'] / med['small']:.2f}× of the classes. The {FASTA_SIZES[1]:,} "
        f"sequences took {memory[FASTA_SIZES[1]][1]:.0f} s with start-up "
        f"({memory[FASTA_SIZES[1]][2]:,.0f} sequences/s scoring); memory changed by "
        f"{100 * change:+.1f}% from {FASTA_SIZES[0]:,}. Scoring is whole proteins (no length "
        "cap), decoding at the run's thresholds, and the TSV writing, all included. Each chunk "
        f"of 8,192 records is scored in parts of {SCORE_ROWS:,}, the C heap's free pages returned "
        "after each part (`ecstream.allocator`).",
        "",
        scorer,
        "",
        *_long_proteins(),
        "",
    ]
    return "\n".join(lines)
