"""oneDNN's primitive cache in prediction: ecstream's setting against oneDNN's default.

PyTorch's CPU convolutions are oneDNN primitives, cached per input shape; ``predict`` keeps
:data:`ecstream.config.SCORING_PRIMITIVE_CACHE` of them (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``)
where oneDNN keeps 1,024. The full-EC run of the accuracy section's random split predicts
100,000 sequences (the shared data) with each setting, taking turns, twice each; sequences/s as
predict prints it and the peak anonymous memory of the command. Run the accuracy section first.
Since 2026-11-29 13:00 the scorer's blocks are matrix products, which in float32 are no oneDNN
primitives, so this comparison now shows the cache's effect on the rest of ``predict`` only.
"""

from __future__ import annotations

from common import OUTPUT, machine_info, machine_markdown, median
from prediction import RUNS, WORK, _predict
from training import _fasta

SEQUENCES = 100_000
REPEATS = 2
ONEDNN_DEFAULT = 1024


def run() -> str:
    from ecstream.config import SCORING_PRIMITIVE_CACHE

    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    fasta = _fasta(OUTPUT / f"predict-{SEQUENCES}.fasta", SEQUENCES)
    settings = {SCORING_PRIMITIVE_CACHE: [], ONEDNN_DEFAULT: []}
    for _ in range(REPEATS):
        for size, runs in settings.items():
            env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(size)}
            speed, peak, _ = _predict(RUNS / "small-ec", fasta, WORK / "cache.tsv", env=env)
            runs.append((speed, peak))
    (WORK / "cache.tsv").unlink(missing_ok=True)
    fasta.unlink()
    rows = [
        f"| {size:,}{' (ecstream)' if size == SCORING_PRIMITIVE_CACHE else ' (oneDNN)'} "
        f"| {median([s for s, _ in runs]):,.0f} | {', '.join(f'{s:,.0f}' for s, _ in runs)} "
        f"| {median([p for _, p in runs]):.0f} MB | {', '.join(f'{p:.0f}' for _, p in runs)} |"
        for size, runs in settings.items()
    ]
    return "\n".join(
        [
            "## Prediction: oneDNN's primitive cache",
            "",
            "Command: `.venv/bin/python benchmarks/run.py prediction-cache` (after the accuracy "
            f"section). The full-EC run predicts {SEQUENCES:,} sequences with each cache size, "
            f"taking turns, {REPEATS} times each; both cores. Memory is the peak `RssAnon` of the "
            "command. Runs before 2026-11-29 13:00 scored the blocks with oneDNN convolutions; "
            "since then they are matrix products, in float32 not oneDNN's.",
            "",
            machine_markdown(info),
            "| primitives cached | sequences/s (median) | runs | peak memory (median) "
            "| runs (MB) |",
            "|---:|---:|---|---:|---|",
            *rows,
            "",
        ]
    )
