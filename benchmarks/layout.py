"""The activations' layout: channels last ([B, L, C]) against channels first ([B, C, L]), on CPU.

``python benchmarks/run.py layout``: the `small` network's block convolution alone, and the
whole network's training step (forward, loss, backward) and inference forward, computed both
ways in this process on both cores, taking turns (:data:`ROUNDS` rounds, medians). Channels
first is the network as ecstream computed it before 2026-11-29 (PyTorch's ``Conv1d`` and
``max_pool1d`` on [B, C, L]); channels last is :mod:`ecstream.model` today (each ``Conv1d`` as
a 2-D convolution of a channels-last view). Same weights, same tokens; the largest difference of
a logit is reported with the speeds.
"""

from __future__ import annotations

import time

from common import machine_info, machine_markdown, median

ROUNDS = 9
SCORER_NOTE = (
    "The prediction scorer (`ecstream.model.Scorer`) did not take these convolutions. Channels "
    "last made it faster (an A/B of `ecstream predict` on 8,192 proteins, taking turns three "
    "times, a one-off script: float32 1,373 → 1,565 sequences/s, bf16 1,759 → 1,980), but its peak"
    " anonymous memory then grew with the number of proteins, in two runs of `benchmarks/run.py "
    "prediction` on 2026-11-29: 07:43 (commit 6d37d48), float32 1,610 sequences/s, bf16 2,065, "
    "peak 382 MB at 100,000 proteins against 452 MB at 1,000,000 (+18.4%; bf16 +25.3%); 08:44, "
    "large blocks mapped afresh (glibc's `M_MMAP_THRESHOLD` at 4 MiB), 1,496 and 1,764, 328 "
    "against 461 MB (+40.5%; bf16 +19.5%). Sampled every millisecond while scoring 60,000 proteins"
    " (a one-off script), its peak was 398 MB against 247 MB channels first, with the same memory "
    "after each part; oneDNN (`ONEDNN_VERBOSE=1`) ran its convolutions as `brg_conv_fwd` channels "
    "last and as `jit:avx512_core` with reorders channels first. Prediction meets a new batch "
    "shape with nearly every pass, training the same few again and again; the cause was not pinned"
    " down, and flat memory counts for more than speed. Since 2026-11-29 13:00 the scorer runs the"
    " blocks as matrix products of one flat sequence instead (the prediction section)."
)
BATCH, WIDTH, THREADS = 64, 660, 2


def channels_first_forward(model, tokens):
    """The network on [B, C, L] with PyTorch's 1-D layers (ecstream before 2026-11-29)."""
    import torch
    from torch.nn import functional as F

    from ecstream import alphabet

    mask = (tokens != alphabet.PAD).unsqueeze(1).to(model.head.weight.dtype)
    h = model.embed(tokens.long()).transpose(1, 2)
    h = F.relu(model.stem(h)) * mask
    if model.config.pool > 1:
        h = F.max_pool1d(h, model.config.pool, ceil_mode=True)
        mask = F.max_pool1d(mask, model.config.pool, ceil_mode=True)
    for block in model.blocks:
        z = block.norm(h.transpose(1, 2)).transpose(1, 2) if block.norm is not None else h
        h = (h + block.conv(F.relu(z) * mask)) * mask
    h = F.relu(h)
    mean = (h * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    top = h.masked_fill(mask == 0, torch.finfo(h.dtype).min).amax(-1)
    return model.head(model.dropout(model.norm(torch.cat([top, mean], dim=1))))


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def run() -> str:
    import torch
    from torch.nn import functional as F

    from ecstream.model import ECClassifier, conv_channels_last, preset

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = ECClassifier(preset("small", (7, 71, 239, 3260)))  # the full-EC head of the data
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(100, WIDTH + 1, (BATCH,), generator=g)
    tokens = torch.randint(1, 21, (BATCH, WIDTH), generator=g, dtype=torch.uint8)
    tokens[torch.arange(WIDTH) >= lengths[:, None]] = 0
    labels = torch.randint(0, 7, (BATCH,), generator=g)
    conv = model.blocks[1].conv  # dilation 2
    positions = -(-WIDTH // model.config.pool)
    first = torch.randn(BATCH, model.config.channels, positions)
    last = first.transpose(1, 2).contiguous()

    def step(forward):
        def go():
            model.zero_grad()
            F.cross_entropy(forward(tokens)[:, :7], labels).backward()

        return go

    def infer(forward):
        def go():
            with torch.inference_mode():
                forward(tokens)

        return go

    def conv_first():
        with torch.inference_mode():
            conv(first)

    def conv_last():
        with torch.inference_mode():
            conv_channels_last(last, conv)

    arms = {
        "block convolution, inference": (conv_first, conv_last, 20),
        "network, training step": (
            step(lambda t: channels_first_forward(model, t)), step(model), 3,
        ),
        "network, inference forward": (
            infer(lambda t: channels_first_forward(model, t)), infer(model), 5,
        ),
    }  # fmt: skip
    model.eval()
    with torch.inference_mode():
        diff = (model(tokens) - channels_first_forward(model, tokens)).abs().max().item()
    model.train()
    model.dropout.p = 0.0  # the same function both ways, dropout or not
    times = {name: ([], []) for name in arms}
    for _ in range(ROUNDS):
        for name, (old, new, repeats) in arms.items():
            times[name][0].append(_time(old, repeats))
            times[name][1].append(_time(new, repeats))
    lines = [
        "## Layout of the activations: channels last against channels first (CPU)",
        "",
        "Command: `.venv/bin/python benchmarks/run.py layout`. The `small` network (full-EC head, "
        f"{model.config.num_classes:,} outputs), a batch of {BATCH} random sequences of 100–{WIDTH}"
        f" residues padded to {WIDTH}, {THREADS} threads; each arm computed both ways in one "
        f"process, taking turns, {ROUNDS} rounds (milliseconds per call: medians, with the range). "
        "Channels first: PyTorch's `Conv1d` and `max_pool1d` on [B, C, L], as ecstream computed "
        "the network before 2026-11-29; channels last: [B, L, C], each `Conv1d` run as a 2-D "
        "convolution of a channels-last view (`ecstream.model.conv_channels_last`), as today. "
        "Not measured on a GPU.",
        "",
        SCORER_NOTE,
        "",
        machine_markdown(machine_info()),
        "| arm | channels first (ms) | channels last (ms) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, (old, new) in times.items():
        lines.append(
            f"| {name} | {median(old):.1f} ({min(old):.1f}–{max(old):.1f}) | {median(new):.1f} "
            f"({min(new):.1f}–{max(new):.1f}) | {median(old) / median(new):.2f}× |"
        )
    lines += ["", f"Largest difference of a logit between the two ways (float32): {diff:.1e}.", ""]
    return "\n".join(lines)
