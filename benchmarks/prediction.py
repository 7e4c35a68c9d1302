"""Prediction with full-EC runs: speed against the class run, memory, and long proteins.

Uses the runs of the accuracy section's random split (``bench-output/accuracy/random``):
``small`` (seven classes) and ``small-ec`` (full EC numbers). Run that section first.

1. Speed: ``ecstream predict`` of the random split's test proteins (FASTA), the class run, the
   full-EC run and (on a CPU with bfloat16 units) the full-EC run with ``--precision bf16``
   taking turns, three times each;
   sequences/s as predict prints it (scoring time, start-up excluded); medians. What bf16
   changes in the test metrics (``ecstream evaluate --precision``), where it was measured.
   Then, in one process, the logits of the same proteins from the network's own forward and
   from :class:`ecstream.model.Scorer`, taking turns.
2. Memory: the full-EC run on 100,000 and 1,000,000 sequences (the shared data repeated), in
   both precisions (float32 only on a CPU that emulates bfloat16: there 1,000 proteins in each
   instead); peak anonymous memory (``RssAnon``) of the whole command.
3. Long proteins: the test proteins longer than the training length (660), scored whole, in
   overlapping windows and truncated, by the full-EC run; top accuracy at levels 1 and 4.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

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
REPEATS = 5
FASTA_SIZES = (100_000, 1_000_000)
MIN_SPEED, MAX_MEMORY_CHANGE = 1500, 0.10
PRECISIONS = ("32", "bf16")
_SPEED = re.compile(r"([\d,]+) sequences/s")


class Predicted(NamedTuple):
    """One ``ecstream predict``: sequences/s as it printed them, peak anonymous MB, wall s."""

    speed: float
    peak_mb: float
    wall_s: float


def _predict(
    run: Path, fasta: Path, out: Path, *flags: str, env: dict[str, str] | None = None
) -> Predicted:
    """Run one ``ecstream predict`` on both cores and measure it."""
    _, err, peak, _, wall = run_sampled(
        [*ECSTREAM, "predict", str(run), str(fasta), "--out", str(out), *flags],
        env={**TWO_CORES, **(env or {})},
    )
    speed = float(_SPEED.findall(err.replace("\n", " "))[-1].replace(",", ""))
    return Predicted(speed, peak / MB, wall)


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

    class Network:  # the network's own layers, in the two steps prediction calls
        features = staticmethod(torch.inference_mode()(model.model.features))
        classify = staticmethod(
            torch.inference_mode()(lambda f: model.model.head(model.model.norm(f)))
        )

    ways = {"forward": Network(), "scorer": model.scorer}
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
        f"table, the blocks' convolutions as matrix products of one flat sequence) "
        f"{med['scorer']:,.0f} ({med['scorer'] / med['forward']:.2f}×); largest "
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


def _bf16_cost() -> list[str]:
    """What bfloat16 scoring changes: ``ecstream evaluate`` of the random split's test proteins
    with the full-EC run in both precisions (no identity bands): top accuracy, micro-F1 at the
    run's thresholds and calibration error per level."""
    import json
    import shutil

    rows = []
    for precision in PRECISIONS:
        out = WORK / f"eval-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        run_sampled(
            [*ECSTREAM, "evaluate", str(RUNS / "small-ec"), str(RUNS / "store"), "--out",
             str(out), "--no-bands", "--precision", precision],
            env=TWO_CORES,
        )  # fmt: skip
        levels = json.loads((out / "metrics.json").read_text())["levels"]
        cells = [" · ".join(f"{lv[key]:.4f}" for lv in levels) for key in ("top_accuracy", "ece")]
        cells.insert(1, " · ".join(f"{lv['micro']['f1']:.4f}" for lv in levels))
        rows.append(f"| {precision} | {' | '.join(cells)} |")
    return [
        "What `--precision bf16` changes, on the same test proteins (`ecstream evaluate "
        "--precision …`; levels 1 · 2 · 3 · 4):",
        "",
        "| precision | top accuracy | micro-F1 at the run's thresholds | ECE |",
        "|---|---|---|---|",
        *rows,
    ]


def _precisions() -> tuple[str, ...]:
    """The precisions measured: bf16 only where this CPU has bfloat16 units (emulated, a run of
    1,000,000 proteins would take hours; :func:`_emulated_bf16` says how slow instead)."""
    import torch

    from ecstream.predictors.cnn import native_bf16

    return PRECISIONS if native_bf16(torch.device("cpu")) else ("32",)


def _emulated_bf16(fasta: Path, n: int = 1000) -> str:
    """One ``predict`` of the first ``n`` test proteins in each precision, on a CPU without
    bfloat16 units: what ``--precision bf16`` costs there."""
    lines = fasta.read_text().splitlines(keepends=True)[: 2 * n]
    few = WORK / f"test-{n}.fasta"
    few.write_text("".join(lines))
    got = {
        p: _predict(RUNS / "small-ec", few, WORK / "few.tsv", "--precision", p) for p in PRECISIONS
    }
    return (
        "`--precision bf16` was not measured at full size: this CPU has no bfloat16 units "
        "(no AVX512-BF16 or AMX; PyTorch emulates them, and `predict` warns). On the first "
        f"{n:,} test proteins, once each: float32 {got['32'].speed:,.0f} sequences/s, bf16 "
        f"{got['bf16'].speed:,.0f} ({got['bf16'].speed / got['32'].speed:.2f}×)."
    )


def _parts_at_once() -> int:
    """Parts ``CNNPredictor.parallel_parts`` scores at once with this benchmark's threads."""
    from ecstream.config import SCORING_WORKERS

    return min(int(TWO_CORES["OMP_NUM_THREADS"]), SCORING_WORKERS)


def run() -> str:
    from ecstream.config import SCORE_ROWS

    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    precisions = _precisions()
    bf16 = "bf16" in precisions
    fasta, n_test = _test_fasta()
    arms = ["small", "small-ec", *(["small-ec bf16"] if bf16 else [])]
    speeds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(REPEATS):
        for name in speeds:
            run, _, precision = name.partition(" ")
            flags = ("--precision", precision) if precision else ()
            speeds[name].append(_predict(RUNS / run, fasta, WORK / f"{run}.tsv", *flags).speed)
    med = {name: median(v) for name, v in speeds.items()}
    scorer = _scorer_against_forward(fasta)
    memory: dict[tuple[int, str], Predicted] = {}  # by (sequences, precision)
    for n in FASTA_SIZES:
        big = _fasta(OUTPUT / f"predict-{n}.fasta", n)
        for precision in precisions:
            out = WORK / f"ec-{n}.tsv"
            memory[n, precision] = _predict(RUNS / "small-ec", big, out, "--precision", precision)
            out.unlink(missing_ok=True)
    change = {
        p: memory[FASTA_SIZES[1], p].peak_mb / memory[FASTA_SIZES[0], p].peak_mb - 1
        for p in precisions
    }
    ok = {p: abs(c) <= MAX_MEMORY_CHANGE for p, c in change.items()}

    def met(value: bool) -> str:
        return "yes" if value else "**no**"

    def runs(name: str) -> str:
        return ", ".join(f"{v:,.0f}" for v in speeds[name])

    named = " / ".join(precisions)

    def memory_row(n: int) -> str:
        cells = " / ".join(f"{memory[n, p].peak_mb:.0f}" for p in precisions)
        target = "| | |"
        if n > FASTA_SIZES[0]:
            target = f"| flat (±10%) | {' / '.join(met(ok[p]) for p in precisions)} |"
        return f"| full EC: peak anonymous memory, {n:,} sequences ({named}) | {cells} MB {target}"

    big = FASTA_SIZES[1]
    m32 = memory[big, "32"]
    if bf16:
        b16 = memory[big, "bf16"]
        bf16_row = [
            f"| full EC, `--precision bf16`, taking turns with it "
            f"| {med['small-ec bf16']:,.0f} | ≥ {MIN_SPEED:,} "
            f"| {met(med['small-ec bf16'] >= MIN_SPEED)} |"
        ]
        bf16_runs = (
            f"full EC in bf16 {runs('small-ec bf16')}; classes {runs('small')}: bf16 is "
            f"{med['small-ec bf16'] / med['small-ec']:.2f}× of float32, and "
        )
        bf16_big = (
            f", {b16.wall_s:.0f} s in bf16 ({b16.speed:,.0f}/s); memory changed by "
            f"{100 * change['32']:+.1f}% (bf16: {100 * change['bf16']:+.1f}%)"
        )
        bf16_note = (
            "bf16: bfloat16 matrix products (PyTorch's autocast), which this CPU runs natively "
            "(AVX512-BF16 or AMX)."
        )
        bf16_tables = ["", *_bf16_cost()]
    else:
        bf16_row, bf16_tables = [], []
        bf16_runs = f"classes {runs('small')}: "
        bf16_big = f"; memory changed by {100 * change['32']:+.1f}%"
        bf16_note = _emulated_bf16(fasta)
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
        f"| {med['small-ec']:,.0f} | ≥ {MIN_SPEED:,} | {met(med['small-ec'] >= MIN_SPEED)} |",
        *bf16_row,
        f"| seven classes, same proteins, taking turns | {med['small']:,.0f} | | |",
        memory_row(FASTA_SIZES[0]),
        memory_row(big),
        "",
        f"All runs (sequences/s): full EC {runs('small-ec')}; {bf16_runs}full EC "
        f"{med['small-ec'] / med['small']:.2f}× of the classes. The {big:,} sequences took "
        f"{m32.wall_s:.0f} s with start-up ({m32.speed:,.0f} sequences/s scoring){bf16_big} "
        f"from {FASTA_SIZES[0]:,}. Scoring is whole proteins (no length cap), decoding at the "
        "run's thresholds, and the TSV writing, all included. Each chunk of 8,192 records is "
        f"scored in parts of {SCORE_ROWS:,}, {_parts_at_once()} at once, each in a thread of "
        "its own with a share of PyTorch's threads (`CNNPredictor.parallel_parts`), the C "
        f"heap's free pages returned after each part (`ecstream.allocator`). {bf16_note}",
        *bf16_tables,
        "",
        scorer,
        "",
        *_long_proteins(),
        "",
    ]
    return "\n".join(lines)
