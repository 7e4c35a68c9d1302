"""Accuracy on the full data: random vs homology-aware splits; the CNN, the kNN and the hybrid.

For each split (random; whole MMseqs2 clusters at 0.5 and at 0.3 identity), with the CLI:

1. ``ecstream build`` of the full shared data (cluster splits add the leakage report; the random
   split gets it from ``ecstream leakage``);
2. ``ecstream train`` of the ``small`` CNN (early stopping on val_loss, patience 3);
3. ``ecstream train --model knn`` (nearest MMseqs2 homolog in the training split);
4. ``ecstream train --model hybrid`` (homolog above an identity threshold chosen on val, else CNN);
5. ``ecstream evaluate`` of each on the test split, with accuracy per identity band.

This takes hours on 2 cores. Every step writes under ``bench-output/accuracy/`` and records its
time in ``times.json`` when it succeeds; a step already recorded is skipped, so an interrupted
run continues where it stopped (an interrupted CNN resumes from its last checkpoint).
``ECSTREAM_ACCURACY_SPLITS`` (comma-separated, e.g. ``random,cluster 0.3``) runs and reports
only those splits; by default all three run.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import time
from pathlib import Path

from common import DATA, ECSTREAM, OUTPUT, TWO_CORES, machine_info, machine_markdown, run_sampled

WORK = OUTPUT / "accuracy"
TIMES = WORK / "times.json"
SPLITS = {
    "random": [],
    "cluster 0.3": ["--split", "cluster", "--identity", "0.3"],
    "cluster 0.5": ["--split", "cluster", "--identity", "0.5"],
}
MODELS = {"small": "CNN `small`", "knn": "kNN (MMseqs2)", "hybrid": "hybrid"}
# trained on a GPU machine, not here (``large`` on 2 cores would take days); evaluated here when
# its run is in place, see LARGE_NOTE
GPU_MODELS = {"large": "CNN `large` (trained on an H200)"}
LARGE_NOTE = (
    "`large` was trained on the lent H200 on a store rebuilt there from `python benchmarks/gpu.py "
    "export STORE c30.tsv.gz` (`ecstream build c30.tsv.gz --split column:split`: identical split "
    "fingerprints), with `ecstream train STORE --model large --batch-size 256 --num-workers 4 "
    "--precision bf16-mixed --max-time 00:00:04:30` (early stopping ended it first); its run was "
    "copied into `bench-output/accuracy/<split>/large/` and evaluated here on CPU. Its time "
    "column: GPU training + CPU evaluation."
)
MIN_RANDOM_VAL_ACC = 0.90
BANDS = (">=0.9", "0.5-0.9", "0.3-0.5", "<0.3", "no_hit")


def _splits() -> list[str]:
    """The splits to run and report: ``ECSTREAM_ACCURACY_SPLITS`` or all of them."""
    chosen = os.environ.get("ECSTREAM_ACCURACY_SPLITS")
    names = [s.strip() for s in chosen.split(",")] if chosen else list(SPLITS)
    if unknown := [s for s in names if s not in SPLITS]:
        raise SystemExit(
            f"ECSTREAM_ACCURACY_SPLITS: unknown split {unknown}; choose from {list(SPLITS)}"
        )
    return names


def _times() -> dict:
    return json.loads(TIMES.read_text()) if TIMES.exists() else {}


def step(key: str, *args: str) -> None:
    """Run ``ecstream ARGS`` once; its wall and CPU time are recorded under ``key``.

    A step already recorded is skipped. CPU time (of the command and everything it started,
    MMseqs2 included) is the fairer figure on a shared machine: other users' load stretches
    the wall time, not the CPU time.
    """
    times = _times()
    if key not in times:
        print(f"   {key}: ecstream {' '.join(args)}", flush=True)
        start, cpu = time.perf_counter(), _children_cpu()
        run_sampled([*ECSTREAM, *args], env=TWO_CORES)
        times = _times()
        times[key] = {"wall": time.perf_counter() - start, "cpu": _children_cpu() - cpu}
        TIMES.write_text(json.dumps(times, indent=1) + "\n")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dir(split: str) -> Path:
    return WORK / split.replace(" ", "-")


def run_split(split: str) -> None:
    d = _dir(split)
    store = str(d / "store")
    step(f"{split}/build", "build", str(DATA), "--out", store, "--force", *SPLITS[split])
    if split == "random":
        step(f"{split}/leakage", "leakage", store)
    cnn = d / "small"
    resume = ["--resume"] if (cnn / "checkpoints" / "last.ckpt").exists() else []
    step(f"{split}/train small", "train", store, "--out", str(cnn), "--quiet", *resume)
    step(f"{split}/train knn", "train", store, "--model", "knn", "--out", str(d / "knn"))
    step(
        f"{split}/train hybrid", "train", store, "--model", "hybrid", "--cnn", str(cnn),
        "--knn", str(d / "knn"), "--out", str(d / "hybrid"),
    )  # fmt: skip
    gpu_runs = [m for m in GPU_MODELS if (d / m / "model.pt").is_file()]
    for model in [*MODELS, *gpu_runs]:
        out = str(d / f"eval-{model}")
        step(f"{split}/evaluate {model}", "evaluate", str(d / model), store, "--out", out)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _best_val(run: Path) -> dict:
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return min(rows, key=lambda r: float(r["val_loss"])) | {"epochs": len(rows)}


def run() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    splits = _splits()
    for split in splits:
        print(f"== accuracy: {split}", flush=True)
        run_split(split)
    times = _times()
    lines = [
        "## Accuracy: random vs homology-aware splits",
        "",
        "Command: `.venv/bin/python benchmarks/run.py accuracy` (part of `make bench`; hours on "
        "2 cores; resumable). Full shared data, seed 0, val 0.1, test 0.1; both cores. Splits "
        f"in this report: {', '.join(splits)}"
        + (
            f" (not run: {', '.join(s for s in SPLITS if s not in splits)})"
            if len(splits) < len(SPLITS)
            else ""
        )
        + ". Steps already recorded in `bench-output/accuracy/times.json` are not run again, so "
        "one report can gather steps of several invocations (the date below is the last one's).",
        "",
        machine_markdown(info),
        *_random_cnn(times),
        *_comparison(times, splits),
        *_leakage(splits),
    ]
    return "\n".join(lines)


def _random_cnn(times: dict) -> list[str]:
    d = _dir("random")
    best = _best_val(d / "small")
    test = _json(d / "eval-small" / "metrics.json")
    val_acc = float(best["val_acc"])
    met = "yes" if val_acc >= MIN_RANDOM_VAL_ACC else "**NO**"
    lines = [
        "### The `small` CNN on the random split",
        "",
        f"Validation accuracy (best epoch by val_loss, epoch {int(best['epoch']) + 1} of "
        f"{best['epochs']}): **{val_acc:.4f}** (target ≥ {MIN_RANDOM_VAL_ACC:.2f}: {met}); "
        f"validation macro-F1 {float(best['val_macro_f1']):.4f}. Test accuracy "
        f"{test['accuracy']:.4f}, test macro-F1 {test['macro_f1']:.4f} on {test['n']:,} proteins. "
        f"Training took {_minutes(times['random/train small'])} "
        f"({float(best['samples_per_s']):.0f} training sequences/s).",
        "",
        "| class | name | test precision | test recall | test F1 | support |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {k} | {c['name']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} "
            f"| {c['support']:,} |"
            for k, c in test["per_class"].items()
        ),
        "",
    ]
    return lines


def _comparison(times: dict, splits: list[str]) -> list[str]:
    head = " | ".join(f"acc. {b} (n)" for b in BANDS)
    lines = [
        "### Test accuracy by split and model, and per band of identity to the training split",
        "",
        "Identity: MMseqs2 `fident` of each test protein's closest training protein (max over "
        "hits, `-s 5.7 --max-seqs 100`); *no_hit*: no hit at E ≤ 0.001. The kNN gives no class "
        "to a protein without hit (counted wrong). Time: training (CNN: all epochs; kNN: target "
        "database and validation search; hybrid: threshold choice on val) + evaluation on test, "
        "wall clock and CPU time. MMseqs2 searches are cached, so a step that reuses one (the "
        "hybrid; the evaluations after the first of a split) shows only its own work.",
        "",
        f"| split | model | val acc. | test acc. | macro-F1 | {head} | time |",
        "|---|---|---:|---:|---:|" + "---:|" * len(BANDS) + "---:|",
    ]
    gpu_rows = False
    for split in splits:
        d = _dir(split)
        for model, label in (MODELS | GPU_MODELS).items():
            if model in GPU_MODELS and f"{split}/evaluate {model}" not in times:
                continue
            m = _json(d / f"eval-{model}" / "metrics.json")
            bands = m.get("identity_bands", {})
            cells = " | ".join(
                f"{bands[b]['accuracy']:.3f} ({bands[b]['n']:,})"
                if bands.get(b, {}).get("accuracy") is not None
                else f"– ({bands.get(b, {}).get('n', 0):,})"
                for b in BANDS
            )
            if model in GPU_MODELS:
                gpu_rows = True
                with open(d / model / "metrics.csv") as fh:
                    trained = sum(float(r["seconds"]) for r in csv.DictReader(fh))
                spent = (
                    f"{trained / 60:.1f} min GPU + {_minutes(times[f'{split}/evaluate {model}'])}"
                )
            else:
                spent = _minutes(
                    _add(times[f"{split}/train {model}"], times[f"{split}/evaluate {model}"])
                )
            lines.append(
                f"| {split} | {label} | {_val_acc(d, model):.3f} | {m['accuracy']:.3f} "
                f"| {m['macro_f1']:.3f} | {cells} | {spent} |"
            )
    if gpu_rows:
        lines += ["", LARGE_NOTE]
    if "cluster 0.3" not in splits:
        return [*lines, ""]
    cluster = {
        m: _json(_dir("cluster 0.3") / f"eval-{m}" / "metrics.json")["accuracy"] for m in MODELS
    }
    beats = cluster["hybrid"] > max(cluster["small"], cluster["knn"])
    random_val = _val_acc(_dir("random"), "small")
    lines += [
        "",
        f"Target: on the cluster split at 0.3 identity the hybrid ({cluster['hybrid']:.3f}) beats "
        f"the kNN ({cluster['knn']:.3f}) and the CNN alone ({cluster['small']:.3f}): "
        f"{'yes' if beats else '**NO**'}. Beside it, the random-split validation accuracy of the "
        f"CNN: {random_val:.3f}.",
        "",
    ]
    large = _dir("cluster 0.3") / "eval-large" / "metrics.json"
    if large.is_file():
        acc = _json(large)["accuracy"]
        lines[-1:] = [
            f"The `large` CNN (GPU) on the same split: {acc:.3f}; the hybrid "
            f"{'beats it too' if cluster['hybrid'] > acc else 'does **not** beat it'} "
            "(the hybrid is built on `small`).",
            "",
        ]
    return lines


def _add(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def _minutes(t: dict) -> str:
    return f"{t['wall'] / 60:.0f} min ({t['cpu'] / 60:.0f} CPU-min)"


def _val_acc(d: Path, model: str) -> float:
    if model in ("small", "large"):
        return float(_best_val(d / model)["val_acc"])
    return float(_json(d / model / "config.json")["validation"]["val_acc"])


def _leakage(splits: list[str]) -> list[str]:
    lines = [
        "### Leakage: each val/test protein's highest identity to any training protein",
        "",
        "MMseqs2 `-s 5.7 --max-seqs 100`, E ≤ 0.001 (`ecstream leakage`, or at build time for "
        "cluster splits). Clustering asks for 80% coverage of both sequences, this search for "
        "none: a protein that shares only a domain with a training protein lies in another "
        "cluster, yet shows that domain's identity here. So a split at 0.3 identity still has "
        "close local relatives across it, and the bands, not the split's name, say how far test "
        "proteins are from training.",
        "",
        "| split | part | records | " + " | ".join(BANDS) + " |",
        "|---|---|---:|" + "---:|" * len(BANDS),
    ]
    for split in splits:
        report = _json(_dir(split) / "store" / "manifest.json").get("leakage")
        if not report:
            continue
        for part, info in report["splits"].items():
            n = max(info["records"], 1)
            cells = " | ".join(f"{100 * info['counts'][b] / n:.1f}%" for b in BANDS)
            lines.append(f"| {split} | {part} | {info['records']:,} | {cells} |")
    clusters = {
        s: c
        for s in splits
        if (c := _json(_dir(s) / "store" / "manifest.json")["split"].get("clusters"))
    }
    if clusters:
        lines += [
            "",
            "Clusters: "
            + ", ".join(f"{s} {c:,}" for s, c in clusters.items())
            + " (MMseqs2 easy-cluster, coverage 0.8 of both sequences).",
        ]
    return lines
