"""Which lever lifts `large`'s bf16 step on a GPU: cuDNN's autotuning, or its convolutions as
one matrix product of shifted copies? A probe, not a section of BENCHMARKS.md.

``python benchmarks/gpu_conv_probe.py DATA OUT.json`` on a CUDA machine (the GPU section's first
run found the network's own step compiled at 21% of an H200's bf16 peak at batch 1024, under
the 25% of issue 11). Times :func:`gpu.ceiling` and a short training run (:func:`gpu.measure`'s
timer) for each of

- *cudnn*: the convolutions as ``--compile`` computed them then (cuDNN behind a graph break,
  ``torch.backends.cudnn.benchmark`` off);
- *tuned*: the same with ``cudnn.benchmark`` on (cuDNN times its algorithms for each shape);
- *gemm*: :func:`ecstream.model.conv_as_gemm`, ``K`` shifted copies of the input side by side
  and one matrix product, which ``torch.compile`` takes into its graphs (no graph break).

``--smoke`` runs every variant tiny on CPU, to check the script before a GPU is spent on it.
``--cpu`` times instead, on this machine's CPU (2 threads), an eager training step of `small`,
`deep` and `large` with oneDNN's convolution and with the matrix product, taking turns, 5
rounds (medians): why ``--compile`` keeps the convolution on CPU.
Run once, on 2026-11-30 (``benchmarks/results/gpu-conv-probe-h200.json``); since then
``train --compile`` computes *gemm* on a GPU (the GPU section of BENCHMARKS.md).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu import StepTimer, _graphs, _peak, _reset, ceiling_row


def _variant(name: str) -> None:
    """Put ``name``'s convolution and cuDNN setting in place: the layers call ``model._conv``,
    and :func:`~ecstream.model.compile_network` keeps one it did not set itself."""
    from ecstream import model

    torch.backends.cudnn.benchmark = name == "tuned"
    if name == "gemm":
        model._conv = model.conv_as_gemm
    else:  # as `train --compile` computed it before the probe: cuDNN behind a graph break
        model._conv = torch.compiler.disable(model.conv_channels_last)


def _check(device: str) -> float:
    """Largest difference of the matrix product from the model's convolution, float64."""
    from ecstream.model import conv_as_gemm, conv_channels_last

    worst = 0.0
    for taps, step in [(3, 1), (3, 16), (9, 1), (5, 2)]:
        conv = torch.nn.Conv1d(8, 6, taps, dilation=step, padding="same").double().to(device)
        h = torch.randn(3, 37, 8, dtype=torch.float64, device=device)
        worst = max(worst, (conv_as_gemm(h, conv) - conv_channels_last(h, conv)).abs().max().item())
    return worst


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    data, out = (Path(a) for a in argv if a != "--smoke")
    from ecstream import build_store
    from ecstream.train import TrainConfig, train

    device = "cpu" if smoke else "cuda"
    results: dict = {"card": "cpu" if smoke else torch.cuda.get_device_name(),
                     "torch": torch.__version__, "max_diff": _check(device),
                     "ceiling": [], "runs": {}}  # fmt: skip
    peak = _peak(results["card"]) or 1.0
    print(f"gemm vs conv, float64: max |diff| {results['max_diff']:.2e}", flush=True)
    shapes = [(8, 40)] if smoke else [(256, 352), (1024, 352)]
    for variant in ["cudnn", "tuned", "gemm"]:
        for batch, width in shapes:
            _variant(variant)
            row = ceiling_row(batch, width, True, peak, steps=2 if smoke else 20, device=device)
            results["ceiling"].append({"variant": variant, **row})
            out.write_text(json.dumps(results, indent=1) + "\n")
    # the likeliest first: a run cut short by the device's time limit loses the last ones
    runs = [("gemm", 256, 8), ("gemm", 1024, 8), ("tuned", 256, 4), ("gemm", 512, 8),
            ("tuned", 1024, 8), ("gemm", 256, 4)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store([data], Path(tmp) / "store")
        for variant, batch, workers in runs:
            name = f"{variant}, batch {batch}, {workers} workers, compiled"
            print(f"== {name}", flush=True)
            _variant(variant)
            _reset()
            timer = StepTimer(warmup=2 if smoke else 50)
            config = TrainConfig(
                model="large", epochs=1, batch_size=8 if smoke else batch,
                limit_train_batches=5 if smoke else 1000,
                progress=False, accelerator="cpu" if smoke else "gpu", compile=True,
                precision="32-true" if smoke else "bf16-mixed", num_workers=workers,
            )  # fmt: skip
            if not smoke:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                history = train(store.path, Path(tmp) / f"run{len(results['runs'])}", config,
                                callbacks=[timer]).history  # fmt: skip
            except Exception as error:
                results["runs"][name] = {"error": f"{error!r}"[:300]}
                print(f"   failed: {error!r}"[:400], flush=True)
                continue
            results["runs"][name] = {
                **timer.figures("large", peak),
                "val_acc": float(history[-1]["val_acc"]), "graphs": _graphs(),
                "wall_s": time.perf_counter() - started,
                "peak_gpu_gb": 0 if smoke else torch.cuda.max_memory_allocated() / 1e9,
            }  # fmt: skip
            print(f"   {json.dumps(results['runs'][name])}", flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")


def cpu() -> None:
    """Eager training steps on CPU, the convolution against the matrix product (module doc)."""
    from ecstream import model as m

    torch.set_num_threads(2)
    for name, rows, width, repeats in [("small", 64, 660, 3), ("deep", 64, 660, 2),
                                       ("large", 16, 400, 1)]:  # fmt: skip
        torch.manual_seed(0)
        net = m.ECClassifier(m.preset(name, (7,)))
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(1, 21, (rows, width), generator=g, dtype=torch.uint8)
        lengths = torch.randint(100, width + 1, (rows,), generator=g)
        tokens[torch.arange(width) >= lengths[:, None]] = 0
        labels = torch.randint(0, 7, (rows,), generator=g)
        times: dict[str, list[float]] = {"convolution": [], "matrix product": []}
        for _ in range(5):
            for arm, conv in [("convolution", m.conv_channels_last), ("matrix product",
                                                                     m.conv_as_gemm)]:  # fmt: skip
                m._conv = conv
                started = time.perf_counter()
                for _ in range(repeats):
                    net.zero_grad()
                    torch.nn.functional.cross_entropy(net(tokens), labels).backward()
                times[arm].append((time.perf_counter() - started) / repeats * 1e3)
        a, b = (sorted(v)[2] for v in times.values())
        print(f"{name}, {rows} × {width}: convolution {a:.0f} ms, matrix product {b:.0f} ms "
              f"(speed-up {a / b:.2f}×)", flush=True)  # fmt: skip
    m._conv = m.conv_channels_last


if __name__ == "__main__":
    if sys.argv[1:] == ["--cpu"]:
        cpu()
    else:
        main(sys.argv[1:])
