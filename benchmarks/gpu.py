"""GPU training: sequences/s with bf16 and the DataLoader, and the share of step time spent waiting.

Needs a CUDA GPU. ``.venv/bin/python benchmarks/run.py gpu`` builds a store of the full shared
data in a temporary directory, then trains each configuration in :data:`CONFIGS` for one epoch
of :data:`STEPS` training batches (plus the whole validation split) with ``ecstream.train``.

:class:`StepTimer` measures, for every training step after the first :data:`WARMUP`:

- *wait*: from the end of the previous step to the start of this one — the DataLoader's
  ``next()`` plus the host-to-device copy, all that the step waits for its data;
- *step*: from the start of the step to its end, with ``torch.cuda.synchronize()`` at the end so
  the GPU's work is counted in the step that queued it, not in the next wait.

The data-wait share is ``wait / (wait + step)``; sequences/s is the sequences of those steps over
the same time. Synchronising every step costs a little speed, so these figures are conservative.
Rows marked *GPU clock* use :class:`EventTimer` instead: CUDA events, no synchronisation in the
loop, the wait being the time the GPU sat idle between steps.

Rows marked *compiled* train with ``train --compile``; :func:`ceiling` times the network's step
alone (no data, no Lightning) plain and compiled, which says how much of a step the loop and
the data take.

The device run can also be split from the report (the GPU machine of a session may not be the
one that writes BENCHMARKS.md): ``python benchmarks/gpu.py measure DATA OUT.json [NAME ...]`` on
the GPU (every configuration, or those named, then without the ceilings), then
``python benchmarks/gpu.py render OUT.json`` writes the section. On a machine with its own
python3 and torch, ecstream need not be installed: ``PYTHONPATH=$PWD/src:$PWD/benchmarks python3
benchmarks/gpu.py measure DATA OUT.json``.

``python benchmarks/gpu.py export STORE OUT.tsv.gz`` writes a store's records with a ``split``
column: a GPU machine without MMseqs2 rebuilds the same splits from it (``ecstream build OUT.tsv.gz
--split column:split``, same fingerprints), e.g. to train ``large`` on a cluster split.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, machine_info, write_section
from lightning.pytorch.callbacks import Callback

STEPS = 1000
WARMUP = 50
# name → TrainConfig fields; every run: max_length 660, bucketed, seed 0, batch 64 unless said
CONFIGS = {
    "large, bf16, 4 workers, batch 256": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 4,
        "batch_size": 256,
    },
    "large, bf16, 4 workers, batch 256, compiled": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 4,
        "batch_size": 256,
        "compile": True,
    },
    "large, bf16, 4 workers, batch 256, compiled, GPU clock": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 4,
        "batch_size": 256,
        "compile": True,
        "timer": "events",
    },
    "large, bf16, 8 workers, batch 1024, compiled": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 8,
        "batch_size": 1024,
        "compile": True,
    },
    "large, bf16, 8 workers, batch 1024, compiled, GPU clock": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 8,
        "batch_size": 1024,
        "compile": True,
        "timer": "events",
    },
    "large, bf16, 4 workers": {"model": "large", "precision": "bf16-mixed", "num_workers": 4},
    "large, bf16, 4 workers, GPU clock": {
        "model": "large",
        "precision": "bf16-mixed",
        "num_workers": 4,
        "timer": "events",
    },
    "large, fp32, 4 workers": {"model": "large", "precision": "32-true", "num_workers": 4},
}
#: the network's step alone (no data, no Lightning): (batch, width, compiled)
CEILING = [(256, 352, False), (256, 352, True), (1024, 352, True)]
MAIN = "large, bf16, 4 workers"
MAIN_CLOCK = "large, bf16, 4 workers, GPU clock"
MAX_WAIT_SHARE = 0.05
BIG = "large, bf16, 4 workers, batch 256, compiled"
BIG_CLOCK = "large, bf16, 4 workers, batch 256, compiled, GPU clock"  # the same, no step sync
PLAIN_BIG = "large, bf16, 4 workers, batch 256"  # the same, not compiled
MAX_WAIT_SHARE_BIG = 0.02  # issue 11: at batch 256
MIN_MFU = 0.25  # issue 11: `large` in bf16
#: dense bf16 peak FLOP/s by card name (datasheets); $ECSTREAM_PEAK_FLOPS for others
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


class StepTimer(Callback):
    """Data wait and step time of each training step after ``warmup`` (see module doc), in
    seconds: their sums, and each step's in ``waits`` and ``times`` (for medians). Without
    CUDA (a CPU run) there is nothing to synchronise."""

    def __init__(self, warmup: int = WARMUP):
        self.warmup = warmup
        self.waits: list[float] = []
        self.times: list[float] = []
        self.samples = self.cells = 0
        self.last_end: float | None = None
        self.start = 0.0
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    @property
    def wait(self) -> float:
        return sum(self.waits)

    @property
    def step(self) -> float:
        return sum(self.times)

    @property
    def steps(self) -> int:
        return len(self.times)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.last_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.start = time.perf_counter()
        if self.last_end is not None and batch_idx >= self.warmup:
            self.waits.append(self.start - self.last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.sync()
        self.last_end = time.perf_counter()
        if batch_idx >= self.warmup:
            self.times.append(self.last_end - self.start)
            self.samples += len(batch.y)
            self.cells += batch.x.numel()  # residue positions the network computes, padding too

    def figures(self, model: str, peak: float | None) -> dict:
        """Sequences/s, data-wait share, ms per step and model FLOP/s (MFU, given the card's
        ``peak``) of the measured steps of a ``model`` preset."""
        from ecstream.model import flops_per_residue, preset

        total = self.wait + self.step
        # a training step costs about three forward passes (backward: two)
        flops = 3 * flops_per_residue(preset(model, (7,))) * self.cells / total
        return {
            "model_flops_per_s": flops,
            "mfu": flops / peak if peak else None,
            "seq_per_s": self.samples / total,
            "wait_share": self.wait / total,
            "ms_per_step": 1000 * total / self.steps,
            "measured_steps": self.steps,
        }


class EventTimer(StepTimer):
    """:class:`StepTimer`'s figures read from the GPU's own clock, with no synchronisation in the
    loop: a CUDA event is queued at each step's start and end, and read after the epoch. *wait*
    is then the time the GPU sat idle between two steps (the host, loading data or running the
    loop, had not queued the next step's work in time; the batch's copy to the GPU is in it too),
    *step* the GPU's time from a step's start to its end. A host that runs ahead of the GPU, as
    in a real run, hides its own work; :class:`StepTimer` counts all of it. ``event`` makes the
    events (a stand-in on CPU, to check the bookkeeping)."""

    def __init__(self, warmup: int = WARMUP, event=None):
        super().__init__(max(warmup, 1))  # the first measured wait needs the step before it
        self.event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self.marks: list[list] = []  # [start, end] events of each step from warmup - 1

    def _mark(self):
        event = self.event()
        event.record()
        return event

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # the step before the first measured one opens the first measured wait
        if batch_idx >= self.warmup - 1:
            self.marks.append([self._mark(), None])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx >= self.warmup - 1:
            self.marks[-1][1] = self._mark()
        if batch_idx >= self.warmup:
            self.samples += len(batch.y)
            self.cells += batch.x.numel()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sync()  # every event has happened; elapsed_time is in ms
        for (_, end), (start, next_end) in zip(self.marks, self.marks[1:], strict=False):
            self.waits.append(end.elapsed_time(start) / 1000)
            self.times.append(start.elapsed_time(next_end) / 1000)
        self.marks = []


def _peak(card: str) -> float | None:
    """The card's dense bf16 peak FLOP/s, from $ECSTREAM_PEAK_FLOPS or the table."""
    if value := os.environ.get("ECSTREAM_PEAK_FLOPS"):
        return float(value)
    return next((v for k, v in PEAK_BF16.items() if k in card), None)


def ceiling(batch: int, width: int, compiled: bool, steps: int = 20, device: str = "cuda") -> dict:
    """A training step of ``large`` (bf16 autocast, AdamW) on random tokens of one width, with
    no data loading and no Lightning: what the network alone reaches on this card."""
    from torch.nn import functional as F

    from ecstream.model import ECClassifier, compile_network, flops_per_residue, preset

    torch.manual_seed(0)
    config = preset("large", (7,))
    model = ECClassifier(config).to(device)
    if compiled:
        compile_network(model)  # as `train --compile` does
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(1, 21, (batch, width), dtype=torch.uint8, device=device)
    y = torch.randint(0, 7, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        with torch.autocast(device, torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(3):  # compiles here
        step()
    sync()
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - started) / steps
    flops = 3 * flops_per_residue(config) * batch * width / seconds
    return {"batch": batch, "width": width, "compiled": compiled, "ms_per_step": 1000 * seconds,
            "model_flops_per_s": flops, "warm_s": warm_s}  # fmt: skip


def measure(data: Path, out: Path, steps: int = STEPS, names: list[str] | None = None) -> dict:
    """Train every configuration (or those ``names``; then no ceilings) on a fresh store of
    ``data``; write and return the figures."""
    from ecstream import build_store
    from ecstream.train import TrainConfig, train

    if unknown := set(names or ()) - set(CONFIGS):
        raise SystemExit(f"no such configuration: {', '.join(sorted(unknown))}")
    if not torch.cuda.is_available():
        raise SystemExit("the gpu benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")
    results: dict = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "machine": machine_info(),
        "steps": steps,
        "warmup": WARMUP,
        "runs": {},
    }
    peak = _peak(results["card"])
    results["peak_bf16_flops"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = build_store([data], Path(tmp) / "store")
        results["build_s"] = time.perf_counter() - started
        results["train_records"] = store.num_records("train")
        results["pinned"] = _pinned(store)
        for name, fields in CONFIGS.items():
            if names and name not in names:
                continue
            if name == "large, bf16, 4 workers" and not names:  # the network alone, first
                _ceilings(results, out)
            print(f"== {name}", flush=True)
            fields = dict(fields)
            timer = EventTimer() if fields.pop("timer", None) == "events" else StepTimer()
            config = TrainConfig(
                epochs=1, limit_train_batches=steps, progress=False, accelerator="gpu",
                **fields,
            )  # fmt: skip
            torch.cuda.reset_peak_memory_stats()
            _reset()  # each compiled run compiles its own graphs, counted below
            started = time.perf_counter()
            try:
                history = train(store.path, Path(tmp) / name.replace(" ", ""), config,
                                callbacks=[timer]).history  # fmt: skip
                if timer.steps == 0:
                    raise ValueError(f"{steps} steps leave none to measure after {WARMUP}")
                figures = timer.figures(fields["model"], peak)
            except Exception as error:  # one failing configuration must not lose the others
                results["runs"][name] = {"error": f"{type(error).__name__}: {error}"}
                print(f"   failed: {error!r}", flush=True)
                out.write_text(json.dumps(results, indent=1) + "\n")
                continue
            results["runs"][name] = {
                **CONFIGS[name],
                **figures,
                "val_acc": float(history[-1]["val_acc"]),
                "wall_s": time.perf_counter() - started,
                "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
                "graphs": _graphs(),
            }
            print(f"   {json.dumps(results['runs'][name])}", flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")  # each run's figures kept
    return results


def _pinned(store) -> bool:
    """Whether the training loader hands over pinned batches, as its workers' batches pass
    through the DataLoader's pinning thread (a torch whose pinning did not call
    ``TorchBatch.pin_memory`` would hand over pageable ones, copied to the GPU synchronously)."""
    from ecstream.adapters.torch import loader

    batches = loader(store.batches("train", batch_size=64), num_workers=1, ids=False)
    return bool(next(iter(batches)).x.is_pinned())


def _reset() -> None:
    """Forget compiled graphs and their count (``reset`` alone keeps the count)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def _graphs() -> int:
    """Graphs torch.compile made since :func:`_reset` (a recompile per batch width shows)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _mfu(row: dict) -> str:
    """A row's MFU as a table cell ("–" where the card's peak is not known)."""
    return f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "–"


def _wait_shares(runs: dict, names: tuple, limit: float, most: int | None = None) -> str:
    """ "row: share (met)" for the first ``most`` of ``names`` that ran, against ``limit``."""
    ran = [n for n in names if "wait_share" in runs.get(n, {})][:most]
    return "; ".join(
        f"{n}: {100 * runs[n]['wait_share']:.2f}% "
        f"({'met' if runs[n]['wait_share'] < limit else '**NOT met**'})"
        for n in ran
    )


def _cell(error: str) -> str:
    """An error's first line, short, as a Markdown table cell."""
    first = (error.strip().splitlines() or ["failed"])[0]
    return first[:120].replace("|", "\\|")


def ceiling_row(batch: int, width: int, compiled: bool, peak: float | None, **kwargs) -> dict:
    """:func:`ceiling` on fresh graphs, with its MFU and graph count, or its failure (a failing
    shape must not lose the others' figures); ``kwargs`` go to :func:`ceiling`."""
    _reset()
    try:
        row = ceiling(batch, width, compiled, **kwargs)
        row["mfu"] = row["model_flops_per_s"] / peak if peak else None
        row["graphs"] = _graphs()
    except Exception as error:
        row = {"batch": batch, "width": width, "compiled": compiled,
               "error": f"{type(error).__name__}: {error}"}  # fmt: skip
    print(f"   ceiling {json.dumps(row)}", flush=True)
    return row


def _ceilings(results: dict, out: Path) -> None:
    """Each of :data:`CEILING`, written as it comes."""
    results["ceiling"] = []
    for batch, width, compiled in CEILING:
        results["ceiling"].append(ceiling_row(batch, width, compiled, results["peak_bf16_flops"]))
        out.write_text(json.dumps(results, indent=1) + "\n")


def render(results: dict) -> str:
    """The BENCHMARKS.md section for the figures of :func:`measure`."""
    m = results["machine"]
    lines = [
        "## GPU training",
        "",
        f"Command: `.venv/bin/python benchmarks/run.py gpu` (here run as `python benchmarks/gpu.py "
        "measure` on the lent GPU machine, then `render` of its JSON, kept in "
        f"`benchmarks/results/`). Card: **{results['card']}**; "
        f"{m['cpu']}, {m['cores']} cores; Python {results['python']}, torch {results['torch']} "
        f"(CUDA {results['cuda']}); {m['date']}.",
        "",
        f"Store of the full shared data ({results['train_records']:,} training records, built in "
        f"{results['build_s']:.1f} s). Each row: one epoch cut at {results['steps']} training "
        f"batches (B=64 unless said, bucketed, max_length 660) plus the whole validation split; "
        f"the first {results['warmup']} steps are warm-up and not measured. *Data wait*: the "
        "share of step time spent in the DataLoader's `next()` and the host-to-device copy, with "
        "a CUDA synchronisation at the end of every step (so conservative). Rows marked *GPU "
        "clock* synchronise nothing in the loop: CUDA events at each step's start and end, read "
        "after the epoch, give the time the GPU sat idle between steps (their *data wait*: "
        "the host had not queued the next step in time) and the sequences/s of a real run."
        + (
            f" Batches reached the training loop in pinned memory: "
            f"{'yes' if results['pinned'] else '**no**'}."
            if "pinned" in results
            else ""
        ),
        "",
        "| configuration | sequences/s | ms/step | data wait | MFU | val acc. after the epoch | "
        "peak GPU memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {_cell(r['error'])} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['seq_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
            f"{100 * r['wait_share']:.2f}% | {_mfu(r)} | {r['val_acc']:.3f} | "
            f"{r['peak_gpu_gb']:.2f} GB |"
        )
    runs = results["runs"]
    lines += [
        "",
        "MFU: model FLOPs per second (three times the forward FLOPs per residue of the preset, "
        "over every residue position computed, padding included) over the card's dense bf16 "
        + (
            f"peak ({results['peak_bf16_flops'] / 1e12:.0f} TFLOP/s; "
            if results.get("peak_bf16_flops")
            else "peak (not recorded by this run; "
        )
        + "`$ECSTREAM_PEAK_FLOPS` sets it for other cards).",
    ]
    if ceilings := results.get("ceiling"):
        lines += [
            "",
            "The network alone (`ceiling`: a training step of `large`, bf16 autocast and AdamW, "
            "on random tokens of one width, no data loading, no Lightning; 20 timed steps after 3 "
            "that compile):",
            "",
            "| batch × width | compiled | ms/step | MFU | first 3 steps (s) |",
            "|---|---|---:|---:|---:|",
        ]
        for c in ceilings:
            shape = f"{c['batch']} × {c['width']}"
            compiled = "yes" if c["compiled"] else "no"
            if "error" in c:
                lines.append(f"| {shape} | {compiled} | failed: {_cell(c['error'])} | | |")
                continue
            lines.append(
                f"| {shape} | {compiled} | {c['ms_per_step']:.1f} | {_mfu(c)} | {c['warm_s']:.0f} |"
            )
    plain = runs.get(PLAIN_BIG, {})
    big = runs.get(BIG, {})
    # the first two of these rows that did not fail
    if shares := _wait_shares(runs, (BIG, BIG_CLOCK, PLAIN_BIG), MAX_WAIT_SHARE_BIG, most=2):
        large = {n: r for n, r in runs.items() if n.startswith("large, bf16") and r.get("mfu")}
        best = max(large, key=lambda n: large[n]["mfu"]) if large else None
        lines.append("")
        lines.append(
            f"Targets of issue 11: data wait < {100 * MAX_WAIT_SHARE_BIG:.0f}% at batch 256: "
            f"{shares}. "
            + (
                f"MFU of `large` in bf16 ≥ {100 * MIN_MFU:.0f}% (best row: {best}): "
                f"{100 * large[best]['mfu']:.1f}% "
                f"({'met' if large[best]['mfu'] >= MIN_MFU else '**NOT met**'})."
                if best
                else "MFU: no peak known for this card."
            )
        )
    if "seq_per_s" in plain and "seq_per_s" in big:
        lines += [
            "",
            "Sequences/s at batch 256, compiled vs plain: "
            f"{big['seq_per_s'] / plain['seq_per_s']:.2f}× (graphs compiled: "
            f"{big.get('graphs', '–')}; one run each).",
        ]
    main = runs.get(MAIN, {})
    if shares := _wait_shares(runs, (MAIN, MAIN_CLOCK), MAX_WAIT_SHARE):
        lines += [
            "",
            f"Target: data wait < {100 * MAX_WAIT_SHARE:.0f}% of step time with bf16 and the "
            f"DataLoader at B=64: {shares}.",
        ]
    if "seq_per_s" in main:
        fp32 = runs.get("large, fp32, 4 workers", {})
        if "seq_per_s" in fp32:
            lines += [
                "",
                f"Sequences/s, bf16 vs fp32 (large, 4 workers, B=64): "
                f"{main['seq_per_s'] / fp32['seq_per_s']:.2f}×. One run each.",
            ]
    return "\n".join(lines)


def run() -> str:
    """Measure on this machine's GPU (see the module doc) and return the section."""
    out = Path(tempfile.gettempdir()) / "ecstream-gpu.json"
    return render(measure(DATA, out))


def export(store_path: Path, out: Path) -> int:
    """Write a store's records (stored order, split by split) as a gz TSV with a split column."""
    import gzip

    from ecstream import open_store

    store, n = open_store(store_path), 0
    with gzip.open(out, "wt", compresslevel=6) as fh:
        fh.write("Entry\tEC number\tSequence\tsplit\n")
        for split in store.splits:
            for batch in store.record_batches(split):
                columns = (batch.column(c).to_pylist() for c in ("id", "ec", "sequence"))
                for rid, ec, seq in zip(*columns, strict=True):
                    fh.write(f"{rid}\t{ec}\t{seq.decode()}\t{split}\n")
                    n += 1
    return n


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "export":
        print(f"{export(Path(argv[1]), Path(argv[2])):,} records written to {argv[2]}")
    elif len(argv) >= 3 and argv[0] == "measure":
        measure(Path(argv[1]), Path(argv[2]), names=argv[3:])
    elif len(argv) == 2 and argv[0] == "render":
        results = json.loads(Path(argv[1]).read_text())
        if "ceiling" not in results:  # a run of named configurations: not the whole section
            raise SystemExit(f"{argv[1]} is a run of some configurations only; render a full run")
        write_section("gpu", render(results))
    else:
        raise SystemExit(
            f"usage: {sys.argv[0]} measure DATA OUT.json [CONFIGURATION ...] | render OUT.json | "
            "export STORE OUT.tsv.gz"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
