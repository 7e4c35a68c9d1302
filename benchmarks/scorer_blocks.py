"""The prediction scorer's blocks: matrix products of one flat sequence against oneDNN.

Prediction scores whole proteins in length-sorted passes, so nearly every pass has a new
(batch, width) shape. The residual blocks of the accuracy section's full-EC run (random split,
``small``) are computed on the pass shapes of that split's test proteins (as
``CNNPredictor.all_logits`` forms them), in one process, taking turns, on both cores:

- flat products: :meth:`ecstream.model.Scorer._blocks`, as prediction computes them today;
- oneDNN conv1d: the blocks as the scorer computed them before 2026-11-29 (ReLU, ``Conv1d``
  on [B, C, L], added back, masked);
- oneDNN conv1d, one shape: the same on the pass shape of median size, as many times: the
  speed oneDNN reaches where it meets a shape again.

Inputs are random (speed does not depend on the weights' values). GFLOP/s counts the
convolutions' multiply-adds at the proteins' positions (not the gaps); each pass also copies
its input once, in every arm. Run the accuracy section first.
"""

from __future__ import annotations

import time

from common import machine_info, machine_markdown, median
from prediction import RUNS

ROUNDS = 5
THREADS = 2


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
        del predictor._features
    return shapes


def run() -> str:
    import torch

    import ecstream
    from ecstream.allocator import small_primitive_cache
    from ecstream.predictors import load_model

    small_primitive_cache()  # as predict does, before the first primitive is made
    torch.set_num_threads(THREADS)
    info = machine_info()
    predictor = load_model(RUNS / "small-ec", device="cpu")
    seqs = [s for chunk in ecstream.open_store(RUNS / "store").records("test") for s in chunk.seqs]
    shapes = _pass_shapes(predictor, seqs)
    scorer, c = predictor.scorer, predictor.model.config
    blocks, gap, C = predictor.model.blocks, scorer.gap, c.channels
    torch.manual_seed(0)
    pool_ = torch.rand(max(rows * (width + gap) for rows, width in shapes) * C)

    def flat(rows: int, width: int) -> None:
        n = rows * (width + gap)
        h = pool_[: n * C].view(n, C).clone()
        mask = torch.ones(rows, width + gap, 1)
        mask[:, width:] = 0
        scorer._blocks(h, mask.view(n, 1), torch.float32)

    def conv1d(rows: int, width: int) -> None:
        h = pool_[: rows * C * width].view(rows, C, width).clone()
        mask = torch.ones(rows, 1, width)
        for block in blocks:
            h.add_(block.conv(torch.relu(h))).mul_(mask)

    by_size = sorted(shapes, key=lambda s: s[0] * s[1])
    one = [by_size[len(by_size) // 2]] * len(shapes)
    arms = {
        "flat products (today)": (flat, shapes),
        "oneDNN conv1d, [B, C, L] (before)": (conv1d, shapes),
        "oneDNN conv1d, one shape repeated": (conv1d, one),
    }
    per_position = 2 * c.kernel * C * C * len(blocks)
    seconds = {name: [] for name in arms}
    with torch.inference_mode():
        for fn, passes in arms.values():  # warm-up: the first primitives, the allocator
            for shape in passes[:20]:
                fn(*shape)
        for _ in range(ROUNDS):
            for name, (fn, passes) in arms.items():
                start = time.perf_counter()
                for shape in passes:
                    fn(*shape)
                seconds[name].append(time.perf_counter() - start)
    rows = []
    for name, (_, passes) in arms.items():
        flops = per_position * sum(r * w for r, w in passes)
        rates = [flops / s / 1e9 for s in seconds[name]]
        rows.append(
            f"| {name} | {median(rates):.0f} | {min(rates):.0f}–{max(rates):.0f} "
            f"| {1e3 * median(seconds[name]) / len(passes):.2f} |"
        )
    distinct = len(set(shapes))
    return "\n".join(
        [
            "## Prediction: the scorer's blocks, matrix products against oneDNN convolutions",
            "",
            "Command: `.venv/bin/python benchmarks/run.py scorer-blocks` (after the accuracy "
            f"section). The {len(blocks)} residual blocks of the random split's full-EC `small` "
            f"run on the {len(shapes):,} pass shapes ({distinct} distinct) of its "
            f"{len(seqs):,} test proteins, {THREADS} threads, oneDNN's primitive cache at "
            "predict's setting; each arm once over all passes per round, taking turns, "
            f"{ROUNDS} rounds. Flat products: `Scorer._blocks` (today); oneDNN conv1d: the "
            "blocks on [B, C, L] with `Conv1d`, as the scorer computed them before 2026-11-29 "
            "13:00; one shape repeated: the same on the median pass's shape, as many passes. "
            "Random inputs; GFLOP/s of the convolutions at the proteins' positions.",
            "",
            machine_markdown(info),
            "| arm | GFLOP/s (median) | range | ms per pass (median) |",
            "|---|---:|---|---:|",
            *rows,
            "",
        ]
    )
