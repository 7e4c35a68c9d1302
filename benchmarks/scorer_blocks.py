"""The prediction scorer's blocks: matrix products of one flat sequence against oneDNN.

Prediction scores whole proteins in length-sorted passes, so nearly every pass has a new
(batch, width) shape. The residual blocks of the `small` and `deep` presets (random weights:
speed does not depend on their values) are computed on the pass shapes of the random split's
test proteins (as ``CNNPredictor.all_logits`` forms them for the accuracy section's full-EC
run), in one process, taking turns, on both cores:

- flat products: :meth:`ecstream.model.Scorer._blocks`, as prediction computes them today
  (each protein followed by the gap its widest block reaches: 4 positions for `small`, 32 for
  `deep`);
- oneDNN conv1d: the blocks as the scorer computed them before 2026-11-29 (ReLU, ``Conv1d``
  on [B, C, L], added back, masked);
- oneDNN conv1d, one shape (`small`): the same on the pass shape of median size, as many
  times: the speed oneDNN reaches where it meets a shape again.

Measured in a child process with oneDNN's primitive cache at predict's setting (oneDNN reads it
once per process). GFLOP/s counts the convolutions' multiply-adds at the passes' positions
(padding included, gaps not); each pass also copies its input once, in every arm. Run the
accuracy section first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from common import machine_info, machine_markdown, median
from prediction import RUNS

ROUNDS = 5
THREADS = 2
PRESETS = ("small", "deep")


def _pass_shapes(predictor, seqs: list[bytes]) -> list[tuple[int, int]]:
    """The (sequences, pooled width) of every forward pass ``all_logits`` makes on ``seqs``."""
    import torch

    shapes, columns = [], 2 * predictor.model.config.channels
    pool = predictor.model.config.pool

    def record(tokens):
        shapes.append((tokens.shape[0], -(-tokens.shape[1] // pool)))
        return torch.zeros((tokens.shape[0], columns))

    predictor._features = record
    try:
        predictor.all_logits(seqs)
    finally:
        del predictor._features  # the class's method again
    return shapes


def _arms(name: str, shapes: list[tuple[int, int]]):
    """The arms of one preset: name → (function of a pass shape, the passes, FLOPs)."""
    import torch

    from ecstream.model import ECClassifier, Scorer, preset

    model = ECClassifier(preset(name, (7,))).eval()
    scorer, c = Scorer(model), model.config
    gap, channels = scorer.gap, c.channels
    source = torch.rand(max(rows * (width + gap) for rows, width in shapes) * channels)

    def flat(rows: int, width: int) -> None:
        n = rows * (width + gap)
        h = source[: n * channels].view(n, channels).clone()
        mask = torch.ones(rows, width + gap, 1)
        mask[:, width:] = 0
        scorer._blocks(h, mask.view(n, 1), torch.float32)

    def conv1d(rows: int, width: int) -> None:
        h = source[: rows * channels * width].view(rows, channels, width).clone()
        mask = torch.ones(rows, 1, width)
        for block in model.blocks:
            h.add_(block.conv(torch.relu(h))).mul_(mask)

    per_position = 2 * c.kernel * channels * channels * len(model.blocks)
    arms = {"flat products (today)": flat, "oneDNN conv1d, [B, C, L] (before)": conv1d}
    out = {f"{name}: {arm}": (fn, shapes) for arm, fn in arms.items()}
    if name == "small":
        by_size = sorted(shapes, key=lambda s: s[0] * s[1])
        one = [by_size[len(by_size) // 2]] * len(shapes)
        out["small: oneDNN conv1d, one shape repeated"] = (conv1d, one)
    return {k: (fn, passes, per_position * sum(r * w for r, w in passes)) for k, (fn, passes)
            in out.items()}  # fmt: skip


def _measure() -> str:
    import torch

    import ecstream
    from ecstream.predictors import load_model

    torch.set_num_threads(THREADS)
    info = machine_info()
    predictor = load_model(RUNS / "small-ec", device="cpu")
    seqs = [s for chunk in ecstream.open_store(RUNS / "store").records("test") for s in chunk.seqs]
    shapes = _pass_shapes(predictor, seqs)
    torch.manual_seed(0)
    arms = {k: v for name in PRESETS for k, v in _arms(name, shapes).items()}
    seconds = {name: [] for name in arms}
    with torch.inference_mode():
        for fn, passes, _ in arms.values():  # warm-up: the first primitives, the allocator
            for shape in passes[:20]:
                fn(*shape)
        for _ in range(ROUNDS):
            for name, (fn, passes, _) in arms.items():
                start = time.perf_counter()
                for shape in passes:
                    fn(*shape)
                seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, (_, passes, flops) in arms.items():
        rates = [flops / s / 1e9 for s in seconds[name]]
        per_round = "" if passes is not shapes else f"{median(seconds[name]):.2f}"
        rows.append(
            f"| {name} | {median(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} | {per_round} |"
        )
    return "\n".join(
        [
            "## Prediction: the scorer's blocks, matrix products against oneDNN convolutions",
            "",
            "Command: `.venv/bin/python benchmarks/run.py scorer-blocks` (after the accuracy "
            f"section). The residual blocks of the `small` and `deep` presets (random weights) "
            f"on the {len(shapes):,} pass shapes ({len(set(shapes))} distinct) of the random "
            f"split's {len(seqs):,} test proteins, {THREADS} threads, oneDNN's primitive cache "
            "at predict's setting; each arm once over all passes per round, taking turns, "
            f"{ROUNDS} rounds. Flat products: `Scorer._blocks` (today); oneDNN conv1d: the "
            "blocks on [B, C, L] with `Conv1d`, as the scorer computed them before 2026-11-29 "
            "13:00; one shape repeated: the same on the median pass's shape, as many passes "
            "(its seconds are not comparable). GFLOP/s of the convolutions at the passes' "
            "positions; the flat products also compute the gaps (4 positions a protein for "
            "`small`, 32 for `deep`), counted as lost time.",
            "",
            machine_markdown(info),
            "| arm | GFLOP/s (median) | range | seconds a round (median) |",
            "|---|---:|---|---:|",
            *rows,
            "",
        ]
    )


def run() -> str:
    from ecstream.config import SCORING_PRIMITIVE_CACHE

    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(SCORING_PRIMITIVE_CACHE)}
    # its errors reach the terminal; only the markdown is read back
    done = subprocess.run(
        [sys.executable, __file__], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    return done.stdout


if __name__ == "__main__":
    print(_measure())
