"""``train --compile`` on CPU: a training step of the network, plain against compiled.

``python benchmarks/run.py compiled``: for each preset, two copies of the network with the same
weights, one compiled as ``train --compile`` compiles it (``torch.compile``, dynamic shapes,
the convolutions left to PyTorch), each trained with AdamW on the same batches of random
sequences of several widths (bucketed batches differ in width), taking turns, :data:`ROUNDS`
rounds; milliseconds per step, medians. The compiled network's first steps, which compile it,
are not timed: they cover every width and one wider each, so both remainders of `small`'s pool,
which its graphs tell apart, are compiled before the timing starts.
The GPU figures of the same option are the GPU section's.
"""

from __future__ import annotations

import time

from common import machine_info, machine_markdown, median

ROUNDS = 5
THREADS = 2
WIDTHS = (200, 264, 330, 420, 511)
#: preset → batch size (large is a GPU network: a smaller batch keeps a step near a second)
PRESETS = {"small": 64, "large": 8}


def _arms(name: str, batch: int) -> tuple[dict, float]:
    """Milliseconds per step of each arm, and the seconds compiling took."""
    import torch
    from torch.nn import functional as F

    from ecstream.model import ECClassifier, compile_network, preset

    def network(compiled: bool):
        torch.manual_seed(0)
        model = ECClassifier(preset(name, (7,)))
        if compiled:
            compile_network(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    g = torch.Generator().manual_seed(0)

    def tokens(width: int):
        x = torch.randint(1, 21, (batch, width), generator=g, dtype=torch.uint8)
        lengths = torch.randint(width // 2, width + 1, (batch,), generator=g)
        x[torch.arange(width) >= lengths[:, None]] = 0
        return x, torch.randint(0, 7, (batch,), generator=g)

    batches = [tokens(w) for w in WIDTHS]
    arms = {"plain": network(False), "compiled": network(True)}

    def step(model, opt, x, y) -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for x, y in [*batches, *(tokens(w + 1) for w in WIDTHS)]:
        step(*arms["compiled"], x, y)
    compiling = time.perf_counter() - started
    for x, y in batches:
        step(*arms["plain"], x, y)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(ROUNDS):
        for arm, (model, opt) in arms.items():
            started = time.perf_counter()
            for x, y in batches:
                step(model, opt, x, y)
            times[arm].append((time.perf_counter() - started) / len(batches) * 1e3)
    torch._dynamo.reset()
    return times, compiling


def run() -> str:
    import os
    import tempfile

    name, before = "TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="ecstream-inductor-") as cache:
        # a cold start, as a user's first run: not the graphs of an earlier run, cached on disk
        os.environ[name] = cache
        try:
            return _report()
        finally:  # the sections run after this one compile where they would have
            if before is None:
                del os.environ[name]
            else:
                os.environ[name] = before


def _report() -> str:
    import torch

    torch.set_num_threads(THREADS)
    lines = [
        "## `train --compile` on CPU",
        "",
        "Command: `.venv/bin/python benchmarks/run.py compiled`. A training step (forward, "
        "cross-entropy, backward, AdamW) of each preset, plain and compiled as `train --compile` "
        "compiles it, on the same batches of random sequences padded to widths "
        f"{', '.join(map(str, WIDTHS))}, {THREADS} threads, taking turns, {ROUNDS} rounds "
        "(milliseconds per step: medians, with the range). The compiled network's first ten "
        "steps (the five widths and each one wider), which compile it, are not timed; their "
        "seconds are in the last column, from an empty compile cache.",
        "",
        machine_markdown(machine_info()),
        "| preset, batch | plain (ms) | compiled (ms) | plain ÷ compiled | compiling (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    gains = []
    for name, batch in PRESETS.items():
        times, compiling = _arms(name, batch)
        plain, compiled = times["plain"], times["compiled"]
        gains.append(median(plain) / median(compiled))
        lines.append(
            f"| {name}, {batch} | {median(plain):.0f} ({min(plain):.0f}–{max(plain):.0f}) | "
            f"{median(compiled):.0f} ({min(compiled):.0f}–{max(compiled):.0f}) | "
            f"{gains[-1]:.2f}× | {compiling:.0f} |"
        )
    verdict = (
        "compiling did not make a step faster by 5% or more for any preset here, so `--compile` "
        "stays off by default on CPU"
        if max(gains) < 1.05
        else "compiling made a step faster here; see the table before turning it on"
    )
    lines += [
        "",
        f"On this CPU {verdict}. The option is meant for GPUs, where it computes the "
        "convolutions as matrix products inside its graphs (on an H200, 1.69× the sequences/s "
        "of `large` compiled as before at batch 256, 1.87× of it plain: the GPU section).",
        "",
    ]
    return "\n".join(lines)
