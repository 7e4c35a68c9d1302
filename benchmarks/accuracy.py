"""Accuracy on the full data: random, homology-aware and strict splits; class and full EC.

For each split (random; whole MMseqs2 clusters at 0.3 identity; the same made strict), with
the CLI:

1. ``ecstream build`` of the full shared data (cluster splits add the leakage report; the random
   split gets it from ``ecstream leakage``);
2. ``ecstream train`` of the ``small`` CNN for the seven classes (``small``) and for full EC
   numbers (``small-ec``, ``--target ec``), early stopping on val_loss (patience 3);
3. ``ecstream train --model knn`` (nearest MMseqs2 homolog, with the profile fallback);
4. ``ecstream train --model hybrid`` of the kNN with each CNN (``hybrid``, ``hybrid-ec``);
5. ``ecstream evaluate`` of each on the test split (class metrics, per-level metrics, identity
   bands, calibration);
6. on the 0.3 splits, the class hybrid again with a kNN run made without the profile fallback
   (``knn-plain``, ``hybrid-plain``), to measure what the fallback adds; on the strict split,
   both CNNs evaluated on val as well (level 1 without a homolog, issue 12);
7. on the strict split, issue 12's ablation (``ABLATION``): CNN arms with and without the
   training regularisers, trained two at a time on one thread each, each pair with a plain
   arm of its own, evaluated on test and val; then ensembles of them (``ENSEMBLES``), scored
   in this process.

This takes hours on 2 cores. Every step writes under ``bench-output/accuracy/`` and records its
time in ``times.json`` when it succeeds; a step already recorded is skipped, so an interrupted
run continues where it stopped (an interrupted CNN resumes from its last checkpoint).
``ECSTREAM_ACCURACY_SPLITS`` (comma-separated, e.g. ``random,strict 0.3``) runs and reports
only those splits; by default all run.
``ECSTREAM_ACCURACY_MAX_TIME`` (DD:HH:MM:SS) caps each CNN's training (``train --max-time``), for
a session with less time than early stopping needs; the report then says so.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    DATA,
    ECSTREAM,
    OUTPUT,
    THREAD_VARIABLES,
    TWO_CORES,
    machine_info,
    machine_markdown,
    run_sampled,
)

from ecstream.calibrate import IDENTITY_EDGES

WORK = OUTPUT / "accuracy"
TIMES = WORK / "times.json"
SPLITS = {
    "random": [],
    "cluster 0.3": ["--split", "cluster", "--identity", "0.3"],
    # strict leaves few val/test proteins: larger fractions make the measurement less noisy
    "strict 0.3": [
        "--split",
        "cluster",
        "--identity",
        "0.3",
        "--strict",
        "--val",
        "0.15",
        "--test",
        "0.15",
    ],
}
CLASS_MODELS = {"small": "CNN `small`", "knn": "kNN (MMseqs2)", "hybrid": "hybrid"}
EC_MODELS = {"small-ec": "CNN `small`, full EC", "knn": "kNN (MMseqs2)",
             "hybrid-ec": "hybrid, full EC"}  # fmt: skip
#: Splits on which the hybrid is also made without the kNN's profile fallback (issue 12).
FALLBACK_SPLITS = ("cluster 0.3", "strict 0.3")
MIN_FALLBACK_GAIN = 0.03  # on the strict split's whole test set, level 1
MIN_REMOTE_NO_HIT = 0.50  # the chosen CNN, level 1, strict test proteins without a hit
#: Issue 12's ablation on the strict split: CNN arms trained two at a time, one thread each,
#: under the same cap, each pair with a plain arm of its own (a baseline in the same run), but
#: the last, which has the three plain seeds before it.
ABLATION = (
    {
        "arm-plain": ("`small` as it is (seven classes)", ()),
        "arm-reg": ("+ residue substitution 0.05 + label smoothing 0.1",
                    ("--substitution", "0.05", "--label-smoothing", "0.1")),
    },
    {
        "arm-plain-seed1": ("`small` as it is, seed 1 (the seed's noise)", ("--seed", "1")),
        "arm-drop": ("+ dropout 0.5 (instead of 0.2)", ("--dropout", "0.5")),
    },
    {
        "arm-ec-plain": ("`small`, all four levels (`--target ec`)", ("--target", "ec")),
        "arm-ec-reg": ("`--target ec` + substitution 0.05 + label smoothing 0.1",
                       ("--target", "ec", "--substitution", "0.05", "--label-smoothing", "0.1")),
    },
    {
        "arm-plain-seed2": ("`small` as it is, seed 2", ("--seed", "2")),
        # the loss's counterpart of class-balanced sampling, which the exact order plan lacks
        "arm-cw": ("+ class weights (1/frequency)", ("--class-weights",)),
    },
    {
        # long proteins are the ones a family can be told apart by: a window hides most of it
        "arm-crop": ("+ random crop to 256 residues", ("--crop", "256")),
        "arm-deep": ("`deep`: five dilated blocks, a receptive field of ~380 residues",
                     ("--model", "deep")),
    },
)  # fmt: skip
#: Ensembles of the ablation's class arms (of seeds; of all arms): the mean of their
#: calibrated probabilities.
ENSEMBLES = {
    "ens-seeds": ("mean of the three plain seeds",
                  ("arm-plain", "arm-plain-seed1", "arm-plain-seed2")),
    "ens-arms": ("mean of the six class arms",
                 ("arm-plain", "arm-plain-seed1", "arm-plain-seed2", "arm-reg", "arm-drop",
                  "arm-cw")),
}  # fmt: skip
ONE_CORE = {name: "1" for name in THREAD_VARIABLES}
MIN_RANDOM_VAL_ACC = 0.90
MIN_HYBRID_C30 = 0.885
MAX_ECE = 0.03
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


def recorded_times() -> dict:
    return json.loads(TIMES.read_text()) if TIMES.exists() else {}


def step(key: str, *args: str, note: dict | None = None) -> None:
    """Run ``ecstream ARGS`` once; its wall and CPU time (and ``note``) are recorded under ``key``.

    A step already recorded is skipped. CPU time (of the command and everything it started,
    MMseqs2 included) is the fairer figure on a shared machine: other users' load stretches
    the wall time, not the CPU time.
    """
    if key not in recorded_times():
        print(f"   {key}: ecstream {' '.join(args)}", flush=True)
        start, cpu = time.perf_counter(), _children_cpu()
        run_sampled([*ECSTREAM, *args], env=TWO_CORES)
        _record(key, time.perf_counter() - start, _children_cpu() - cpu, note or {})


def _record(key: str, wall: float, cpu: float, note: dict) -> None:
    """A finished step's times (and note) into ``times.json``."""
    times = recorded_times()
    times[key] = {"wall": wall, "cpu": cpu, **note}
    TIMES.write_text(json.dumps(times, indent=1) + "\n")


def steps_together(jobs: dict[str, tuple[list[str], dict]]) -> None:
    """Run ``ecstream ARGS`` of each job at once, one thread each; each job's own wall and CPU
    time (its process and everything it started, from ``os.wait4``) recorded as by ``step``."""
    done = recorded_times()
    todo = {key: job for key, job in jobs.items() if key not in done}
    running = {}
    with contextlib.ExitStack() as stack:
        for key, (args, note) in todo.items():
            print(f"   {key} (together): ecstream {' '.join(args)}", flush=True)
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen([*ECSTREAM, *args], stdout=log, stderr=log,
                                    env={**os.environ, **ONE_CORE})  # fmt: skip
            running[proc.pid] = (key, proc, log, {**note, "together": len(todo)})
            stack.callback(_stop, proc)  # a failure of one stops the others
        started = time.perf_counter()
        while running:  # each as it ends, so that its wall time is its own
            pid, status, usage = os.wait4(-1, 0)
            if pid not in running:  # not one of these jobs
                continue
            key, proc, log, note = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
            if proc.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"{key} failed (exit {proc.returncode}):\n{log.read()[-4000:]}")
            cpu = usage.ru_utime + usage.ru_stime
            _record(key, time.perf_counter() - started, cpu, note)


def _stop(proc: subprocess.Popen) -> None:
    if proc.returncode is None:
        proc.kill()
        proc.wait()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def split_dir(split: str) -> Path:
    return WORK / split.replace(" ", "-")


def _max_time() -> list[str]:
    cap = os.environ.get("ECSTREAM_ACCURACY_MAX_TIME")
    return ["--max-time", cap] if cap else []


def _train_args(split: str, name: str, *flags: str) -> tuple[list[str], dict]:
    """The ``train`` command of a CNN (resuming an interrupted one) and its note."""
    d = split_dir(split)
    run = d / name
    resume = ["--resume"] if (run / "checkpoints" / "last.ckpt").exists() else []
    note = {"max_time": cap} if (cap := os.environ.get("ECSTREAM_ACCURACY_MAX_TIME")) else {}
    if resume:
        note["resumed"] = True  # its time counts only the invocation that finished it
    args = ["train", str(d / "store"), "--out", str(run), "--quiet", *flags, *_max_time()]
    return [*args, *resume], note


def train_cnn(split: str, name: str, *flags: str) -> None:
    args, note = _train_args(split, name, *flags)
    step(f"{split}/train {name}", *args, note=note)


def run_ablation(split: str) -> None:
    """Issue 12's arms, two at a time, each evaluated on test and on val (level 1, no hit)."""
    d = split_dir(split)
    for pair in ABLATION:
        jobs = {}
        for name, (_, flags) in pair.items():
            args, note = _train_args(split, name, *flags)
            jobs[f"{split}/train {name}"] = (args, {**note, "threads": 1})
        steps_together(jobs)
        for name in pair:
            store = str(d / "store")
            step(f"{split}/evaluate {name}", "evaluate", str(d / name), store,
                 "--out", str(d / f"eval-{name}"))  # fmt: skip
            step(f"{split}/evaluate-val {name}", "evaluate", str(d / name), store, "--split",
                 "val", "--allow-seen", "--out", str(d / f"eval-val-{name}"))  # fmt: skip


def run_ensembles(split: str) -> None:
    """Each ensemble of :data:`ENSEMBLES` scored on val and test, in this process; written as
    the level-1 part of an evaluation (``eval-[val-]NAME/metrics.json``)."""
    d = split_dir(split)
    for name, (_, members) in ENSEMBLES.items():
        key = f"{split}/ensemble {name}"
        if key in recorded_times():
            continue
        print(f"   {key}: {' + '.join(members)}", flush=True)
        start, cpu = time.perf_counter(), time.process_time() + _children_cpu()
        for which, out in (("val", f"eval-val-{name}"), ("test", f"eval-{name}")):
            (d / out).mkdir(exist_ok=True)
            metrics = _ensemble_metrics(d, members, which)
            (d / out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        spent = time.process_time() + _children_cpu() - cpu
        _record(key, time.perf_counter() - start, spent, {})


def _ensemble_metrics(d: Path, members: tuple[str, ...], split: str) -> dict:
    """Level-1 accuracy of the mean of ``members``' probabilities on a split's single-class
    records, overall and per identity band (the search and bands ``evaluate`` uses)."""
    import numpy as np

    import ecstream
    from ecstream.evaluate import _first, _identity_to_train
    from ecstream.identity import band_accuracy

    store = ecstream.open_store(d / "store")
    # the single-class records come first, as a class run's evaluation reads them
    chunks = list(_first(store.records(split), store.single_class_records(split)))
    ids = [i for chunk in chunks for i in chunk.ids]
    seqs = [s for chunk in chunks for s in chunk.seqs]
    y_true = np.concatenate([chunk.labels for chunk in chunks])
    probs = [ecstream.load_model(d / m).score(ids, seqs).probs for m in members]
    y_pred = np.mean(probs, axis=0).argmax(axis=1)
    identity = _identity_to_train(d / members[0], lambda: iter(chunks))
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "members": list(members),
        "identity_bands": band_accuracy(y_true, y_pred, identity),
    }


def run_split(split: str) -> None:
    d = split_dir(split)
    store = str(d / "store")
    step(f"{split}/build", "build", str(DATA), "--out", store, "--force", *SPLITS[split])
    if split == "random":
        step(f"{split}/leakage", "leakage", store)
    train_cnn(split, "small")
    train_cnn(split, "small-ec", "--target", "ec")
    step(f"{split}/train knn", "train", store, "--model", "knn", "--out", str(d / "knn"))
    for hybrid, cnn in (("hybrid", "small"), ("hybrid-ec", "small-ec")):
        step(
            f"{split}/train {hybrid}", "train", store, "--model", "hybrid", "--cnn", str(d / cnn),
            "--knn", str(d / "knn"), "--out", str(d / hybrid),
        )  # fmt: skip
    for model in ("small", "small-ec", "knn", "hybrid", "hybrid-ec"):
        out = str(d / f"eval-{model}")
        step(f"{split}/evaluate {model}", "evaluate", str(d / model), store, "--out", out)
    if split == "strict 0.3":  # level 1 on val by band too, for the remote-protein table
        for model in ("small", "small-ec"):
            step(f"{split}/evaluate-val {model}", "evaluate", str(d / model), store, "--split",
                 "val", "--allow-seen", "--out", str(d / f"eval-val-{model}"))  # fmt: skip
    if split in FALLBACK_SPLITS:  # the hybrid as it was before the profile fallback
        step(f"{split}/train knn-plain", "train", store, "--model", "knn",
             "--no-profile-fallback", "--out", str(d / "knn-plain"))  # fmt: skip
        step(
            f"{split}/train hybrid-plain", "train", store, "--model", "hybrid", "--cnn",
            str(d / "small"), "--knn", str(d / "knn-plain"), "--out", str(d / "hybrid-plain"),
        )  # fmt: skip
        step(f"{split}/evaluate hybrid-plain", "evaluate", str(d / "hybrid-plain"), store,
             "--out", str(d / "eval-hybrid-plain"))  # fmt: skip
    if split == "strict 0.3":
        run_ablation(split)
        run_ensembles(split)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _metrics(split: str, model: str) -> dict:
    return read_json(split_dir(split) / f"eval-{model}" / "metrics.json")


def best_val(run: Path) -> dict:
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return min(rows, key=lambda r: float(r["val_loss"])) | {"epochs": len(rows), "rows": rows}


def run() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    splits = _splits()
    for split in splits:
        print(f"== accuracy: {split}", flush=True)
        run_split(split)
    times = recorded_times()
    lines = [
        "## Accuracy: class and full EC numbers on random, homology-aware and strict splits",
        "",
        "Command: `.venv/bin/python benchmarks/run.py accuracy` (part of `make bench`; hours on "
        "2 cores; resumable). Full shared data, seed 0; val 0.1 and test 0.1 (the strict split: "
        "0.15 and 0.15, as it moves many val/test proteins to train); both cores. Splits in this "
        f"report: {', '.join(splits)}. Steps already recorded in "
        "`bench-output/accuracy/times.json` are not run again, so one report can gather steps of "
        "several invocations (the date below is the last one's)." + _caps(times, splits),
        "",
        machine_markdown(info),
        *_targets(splits),
        *_class_table(times, splits),
        *_level_table(splits),
        *_calibration(splits),
        *_agreement(splits),
        *_fallback(splits, times),
        *_remote_proteins(splits, times),
        *_throughput(splits),
        *_leakage(splits),
    ]
    return "\n".join(lines)


def _caps(times: dict, splits: list[str]) -> str:
    """A sentence on CNN trainings capped by ``ECSTREAM_ACCURACY_MAX_TIME`` or resumed."""
    capped = [f"{key} at {t['max_time']}" for key, t in times.items()
              if "max_time" in t and key.split("/")[0] in splits]  # fmt: skip
    resumed = [key for key, t in times.items() if t.get("resumed") and key.split("/")[0] in splits]
    text = ""
    if capped:
        text += (
            f" Training time capped (`ECSTREAM_ACCURACY_MAX_TIME`, DD:HH:MM:SS): "
            f"{'; '.join(capped)}; where early stopping did not end a run first, its CNN "
            "figures are a floor."
        )
    if resumed:
        text += (
            f" Resumed after an interruption (the time shown counts only the last part): "
            f"{', '.join(resumed)}."
        )
    return text


def _targets(splits: list[str]) -> list[str]:
    rows = []
    if "random" in splits:
        val = float(best_val(split_dir("random") / "small")["val_acc"])
        rows.append(("`small`, `--target class`: random-split val accuracy", f"{val:.3f}",
                     f"≥ {MIN_RANDOM_VAL_ACC:.2f}", val >= MIN_RANDOM_VAL_ACC))  # fmt: skip
    if "cluster 0.3" in splits:
        acc = _metrics("cluster 0.3", "hybrid")["accuracy"]
        rows.append(("hybrid (`small` class + kNN): level-1 test accuracy, cluster 0.3",
                     f"{acc:.3f}", f"≥ {MIN_HYBRID_C30}", acc >= MIN_HYBRID_C30))  # fmt: skip
        for key, name in (("micro", "micro-F1"), ("fmax", "Fmax")):
            hyb = [_level(lv, key) for lv in _metrics("cluster 0.3", "hybrid-ec")["levels"]]
            knn = [_level(lv, key) for lv in _metrics("cluster 0.3", "knn")["levels"]]
            pairs = list(zip(hyb, knn, strict=True))
            rows.append((f"cluster 0.3: hybrid beats the kNN in {name} at every level",
                         " · ".join(f"{h:.3f} vs {k:.3f}" for h, k in pairs),
                         "every level",
                         all(round(h, 3) > round(k, 3) for h, k in pairs)))  # fmt: skip
    if "strict 0.3" in splits:
        report = read_json(split_dir("strict 0.3") / "store" / "manifest.json")["leakage"]
        high = sum(info["counts"][b] for info in report["splits"].values() for b in BANDS[:3])
        rows.append(("strict 0.3: val/test proteins with a training hit ≥ 0.3", f"{high}", "0",
                     high == 0))  # fmt: skip
        if (split_dir("strict 0.3") / "eval-hybrid-plain" / "metrics.json").is_file():
            gain = (_metrics("strict 0.3", "hybrid")["accuracy"]
                    - _metrics("strict 0.3", "hybrid-plain")["accuracy"])  # fmt: skip
            rows.append(("strict 0.3: the hybrid's level-1 test accuracy, gain of the kNN's "
                         "profile fallback", f"{gain:+.3f}", f"≥ +{MIN_FALLBACK_GAIN}",
                         gain >= MIN_FALLBACK_GAIN))  # fmt: skip
    if "random" in splits:
        levels = _metrics("random", "small-ec")["levels"]
        ece = [lv["ece"] for lv in levels]
        rows.append(("random test, `small` full EC: ECE per level after calibration",
                     " · ".join(f"{e:.3f}" for e in ece), f"≤ {MAX_ECE} each",
                     all(e <= MAX_ECE for e in ece)))  # fmt: skip
        precision = [lv["micro"]["precision"] for lv in levels]
        rows.append(("random test: precision of the decoded `ec_number` at each stated level",
                     " · ".join(f"{p:.3f}" for p in precision), "≥ 0.88 each",
                     all(p >= 0.88 for p in precision)))  # fmt: skip
    if "strict 0.3" in splits and (arms := _arms(d := split_dir("strict 0.3"))):
        # the arm is chosen on val, where choosing on test would flatter it
        chosen = max(arms, key=lambda a: _level1(d, a[0], f"eval-val-{a[0]}")[1]["accuracy"] or 0)
        test = _level1(d, chosen[0], f"eval-{chosen[0]}")[1]["accuracy"] or 0
        rows.append((f"strict 0.3: level-1 test accuracy on proteins without a hit, of the CNN "
                     f"best on val's (`{chosen[0]}`)", f"{test:.3f}",
                     f"≥ {MIN_REMOTE_NO_HIT:.2f}", test >= MIN_REMOTE_NO_HIT))  # fmt: skip
    lines = ["### Targets", "", "| Measurement | Figure | Target | Met |", "|---|---:|---:|:---:|"]
    lines += [f"| {m} | {f} | {t} | {'yes' if ok else '**no**'} |" for m, f, t, ok in rows]
    return [*lines, ""]


def _level(info: dict, key: str) -> float:
    return info["micro"]["f1"] if key == "micro" else info.get("fmax", 0.0)


def _class_table(times: dict, splits: list[str]) -> list[str]:
    head = " | ".join(f"acc. {b} (n)" for b in BANDS)
    lines = [
        "### Seven classes: test accuracy by split and model, and per band of identity",
        "",
        "`--target class` runs (rows spanning several classes left out, as ecstream 0.1.0 did, "
        "so these compare with its figures). Identity: MMseqs2 `fident` of each test protein's "
        "closest training protein (max over hits, `-s 5.7 --max-seqs 100`); *no_hit*: no hit "
        "at E ≤ 0.001 in that search (the kNN's profile fallback may still find one). Time: "
        "training + evaluation on test, wall clock and CPU; MMseqs2 searches are cached, so a "
        "step that reuses one shows only its own work.",
        "",
        f"| split | model | val acc. | test acc. | macro-F1 | {head} | time |",
        "|---|---|---:|---:|---:|" + "---:|" * len(BANDS) + "---:|",
    ]
    for split in splits:
        d = split_dir(split)
        for model, label in CLASS_MODELS.items():
            m = _metrics(split, model)
            bands = m.get("identity_bands", {})
            cells = " | ".join(
                f"{bands[b]['accuracy']:.3f} ({bands[b]['n']:,})"
                if bands.get(b, {}).get("accuracy") is not None
                else f"– ({bands.get(b, {}).get('n', 0):,})"
                for b in BANDS
            )
            spent = _minutes(
                _add(times[f"{split}/train {model}"], times[f"{split}/evaluate {model}"])
            )
            lines.append(
                f"| {split} | {label} | {_val_acc(d, model):.3f} | {m['accuracy']:.3f} "
                f"| {m['macro_f1']:.3f} | {cells} | {spent} |"
            )
    return [*lines, ""]


def _level_table(splits: list[str]) -> list[str]:
    lines = [
        "### Full EC numbers: per-level metrics on test",
        "",
        "Sets of EC numbers per level, as CLEAN reports NEW-392 and Price-149 (micro precision, "
        "recall and F1 of the numbers decoded at the run's thresholds; a partial prediction "
        "counts only at the levels it states) and Fmax as ProteInfer reports it (protein-centric, "
        "best over thresholds on the consistent probabilities); top: accuracy of the most "
        "probable class of the level. All test proteins, rows with several numbers included.",
        "",
        "| split | model | level | proteins | micro P | micro R | micro F1 | weighted F1 | Fmax "
        "| top acc. | coverage |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split in splits:
        for model, label in EC_MODELS.items():
            for lv in _metrics(split, model)["levels"]:
                lines.append(
                    f"| {split} | {label} | {lv['level']} | {lv['records']:,} "
                    f"| {lv['micro']['precision']:.3f} | {lv['micro']['recall']:.3f} "
                    f"| {lv['micro']['f1']:.3f} | {lv['weighted']['f1']:.3f} "
                    f"| {lv.get('fmax', 0):.3f} | {lv.get('top_accuracy', 0):.3f} "
                    f"| {lv['coverage']:.3f} |"
                )
    bands = [
        "",
        "Top accuracy per level and band of identity (full-EC runs):",
        "",
        "| split | model | level | " + " | ".join(BANDS) + " | profile hits |",
        "|---|---|---:|" + "---:|" * (len(BANDS) + 1),
    ]
    for split in splits:
        for model, label in EC_MODELS.items():
            for lv in _metrics(split, model)["levels"]:
                cells = [_acc(lv["identity_bands"][b]) for b in BANDS]
                cells.append(_acc(lv.get("profile_hits", {"n": 0, "accuracy": None})))
                bands.append(f"| {split} | {label} | {lv['level']} | " + " | ".join(cells) + " |")
    return [*lines, *bands, ""]


def _acc(info: dict) -> str:
    return "–" if info.get("accuracy") is None else f"{info['accuracy']:.3f} ({info['n']:,})"


def _calibration(splits: list[str]) -> list[str]:
    if "random" not in splits:
        return []
    d = split_dir("random")
    cal = read_json(d / "small-ec" / "calibration.json")
    levels = _metrics("random", "small-ec")["levels"]
    lines = [
        "### Calibration (random split, `small` full EC)",
        "",
        "Fitted on validation, per level: a temperature, then a confidence map (isotonic "
        "regression of the top prediction's correctness on its confidence), then every parent "
        "lifted to its most probable child. ECE: 15 equal-width bins of the confidence of the "
        "top prediction of each level, on test, before calibration and after; the column "
        "'temperature only' is the ECE of the temperatures alone, on validation (what the "
        "maps improve on). Thresholds: per level, of those at which the decoded numbers reach "
        "0.90 precision on validation, the one with the best F1; precision and coverage on "
        "test at those thresholds. "
        "Reliability diagram: `bench-output/accuracy/random/small-ec/reliability.png` "
        "(validation).",
        "",
        "| level | temperature | ECE before | temperature only (val.) | ECE after | threshold | "
        "test precision | test coverage |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    temperature_only = cal.get("ece_temperature_only", [float("nan")] * len(levels))
    for k, lv in enumerate(levels):
        t = cal["thresholds"][k]
        lines.append(
            f"| {lv['level']} | {cal['temperatures'][k]:.3f} | {lv['ece_uncalibrated']:.3f} "
            f"| {temperature_only[k]:.3f} | {lv['ece']:.3f} "
            f"| {'none' if t is None else f'{t:.3f}'} "
            f"| {lv['micro']['precision']:.3f} | {lv['coverage']:.3f} |"
        )
    return [*lines, ""]


def _fallback(splits: list[str], times: dict) -> list[str]:
    lines = [
        "### The kNN's profile fallback",
        "",
        "Test proteins without a hit in the default search (`-s 5.7`, E ≤ 0.001) searched again "
        "by iterative profile (`--num-iterations 3 -s 7.5`); accuracy of the class of the hit "
        "found so (level 1) and of the full number (level 4).",
        "",
        "| split | no hit in the search | found by profile | level-1 acc. | level-4 acc. |",
        "|---|---:|---:|---:|---:|",
    ]
    for split in splits:
        levels = _metrics(split, "knn")["levels"]
        no_hit = levels[0]["identity_bands"]["no_hit"]["n"]
        found = levels[0]["profile_hits"]
        lines.append(
            f"| {split} | {no_hit:,} | {found['n']:,} | {_share(found['accuracy'])} "
            f"| {_share(levels[-1]['profile_hits']['accuracy'])} |"
        )
    measured = [s for s in splits
                if s in FALLBACK_SPLITS and f"{s}/evaluate hybrid-plain" in times]  # fmt: skip
    if not measured:
        return [*lines, ""]
    lines += [
        "",
        "The class hybrid (`small` + kNN) on the whole test split, with the fallback and without "
        "it (a kNN run made with `--no-profile-fallback`, and its hybrid); time: the kNN and "
        "hybrid runs and the evaluation without the fallback, wall clock and CPU (its searches "
        f"are cached). Target on the strict split: a gain of ≥ {MIN_FALLBACK_GAIN}.",
        "",
        "| split | hybrid without the fallback | with it | gain | time without |",
        "|---|---:|---:|---:|---:|",
    ]
    for split in measured:
        plain = _metrics(split, "hybrid-plain")["accuracy"]
        full = _metrics(split, "hybrid")["accuracy"]
        spent = _minutes(_add(*(times[f"{split}/{k}"] for k in (
            "train knn-plain", "train hybrid-plain", "evaluate hybrid-plain"))))  # fmt: skip
        lines.append(f"| {split} | {plain:.3f} | {full:.3f} | {full - plain:+.3f} | {spent} |")
    return [*lines, ""]


def _agreement(splits: list[str]) -> list[str]:
    """The full-EC hybrid's own confidence of its homolog: by identity, CNN agreeing or not."""
    split = "cluster 0.3"
    path = split_dir(split) / "hybrid-ec" / "calibration.json"
    if split not in splits or not path.is_file():
        return []
    curves = read_json(path).get("identity_curves", {})
    if "search+cnn" not in curves:
        return []
    # the first bin holds every hit below the second edge
    edges = [f"< {IDENTITY_EDGES[1]:.2f}", *(f"≥ {e:.2f}" for e in IDENTITY_EDGES[1:])]
    lines = [
        "### The hybrid's confidence in a homolog: identity, and whether its CNN agrees",
        "",
        f"The full-EC hybrid on the {split} split, fitted on validation (the rows where the "
        "homolog decided, hits of the default search): how often the homolog's number is right "
        "at each level and identity, where the CNN's most probable class at that level is one "
        "of the homolog's (agrees) and where it is not. The hybrid uses these as its "
        "confidences (and a map of its own for the rows its CNN decides), so its thresholds "
        "for 90% precision state more numbers than the kNN's, which knows identity alone.",
        "",
        "| level | CNN | " + " | ".join(edges) + " |",
        "|---:|---|" + "---:|" * len(edges),
    ]
    for level in range(len(curves["search"])):
        for key, label in (("search+cnn", "agrees"), ("search", "does not")):
            cells = " | ".join(f"{v:.3f}" for v in curves[key][level])
            lines.append(f"| {level + 1} | {label} | {cells} |")
    return [*lines, ""]


def _level1(d: Path, model: str, name: str) -> tuple[float, dict]:
    """Level-1 accuracy of a CNN run's evaluation and its no-hit band (class or full EC)."""
    m = read_json(d / name / "metrics.json")
    if read_json(d / model / "config.json")["train"]["target"] == "class":
        return m["accuracy"], m["identity_bands"]["no_hit"]
    first = m["levels"][0]
    return first["top_accuracy"], first["identity_bands"]["no_hit"]


def _arms(d: Path) -> list[tuple[str, str]]:
    """(run, label) of every CNN measured on the strict split's val and test."""
    arms = [("small", "`small`, seven classes (`--target class`)"),
            ("small-ec", "`small`, all four levels (`--target ec`), its level 1")]  # fmt: skip
    arms += [(name, label) for pair in ABLATION for name, (label, _) in pair.items()]
    return [(m, label) for m, label in arms if (d / f"eval-val-{m}" / "metrics.json").is_file()]


def _remote_proteins(splits: list[str], times: dict) -> list[str]:
    """Level 1 on the strict split, all proteins and those without a hit: the arms measured."""
    split = "strict 0.3"
    d = split_dir(split)
    if split not in splits or not _arms(d):
        return []
    lines = [
        "### Remote proteins: level 1 on the strict split, with and without a homolog",
        "",
        "Level-1 accuracy (the seven classes) on val and test of the strict 0.3 split, on all "
        "proteins and on those without a hit in the default search (`-s 5.7`, E ≤ 0.001). A "
        "class run is measured on the rows with one class, a full-EC run (its level 1) on all; "
        "val was used for early stopping and calibration (`evaluate --allow-seen`). Every CNN "
        "had the same cap of training time (first paragraph); the first two trained alone on "
        "both cores, the arms (`arm-…`, issue 12's ablation, `benchmarks/accuracy.py` "
        "`ABLATION`) two at a time on one thread each, each pair with a plain arm of its own "
        "(`arm-ec-plain` for the `--target ec` pair) but the last (`arm-crop`, `arm-deep`), "
        "whose baseline is the three plain seeds before it. "
        "*Trained*: records seen in training (epochs, the cap may cut the last; the epoch of "
        "the lowest val loss, whose weights were kept). Time: training, wall clock and CPU. "
        "*Balanced*: the mean of each class's recall on the test proteins without a hit (of the "
        "rows with one class), at most 1/(classes) for any constant guess.",
        "",
        "| run | arm | val | val, no hit (n) | test | test, no hit (n) | balanced | trained "
        "| training time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, label in _arms(d):
        cells = []
        for name in (f"eval-val-{model}", f"eval-{model}"):
            acc, no_hit = _level1(d, model, name)
            cells += [f"{acc:.3f}", f"{_share(no_hit['accuracy'])} ({no_hit['n']:,})"]
        cells.append(_balanced(d / f"eval-{model}"))
        best = best_val(d / model)
        seen = sum(int(float(r["samples"])) for r in best["rows"])
        spent = _minutes(times[f"{split}/train {model}"])
        lines.append(f"| `{model}` | {label} | {' | '.join(cells)} | {seen:,} ({best['epochs']}; "
                     f"best {int(best['epoch']) + 1}) | {spent} |")  # fmt: skip
    return [*lines, "", *_ensembles(d, times, split), *_remote_levels(d)]


def _balanced(evaluation: Path) -> str:
    """Balanced level-1 accuracy of an evaluation's test proteins without a hit."""
    no_hit = read_json(evaluation / "metrics.json")["identity_bands"]["no_hit"]
    return _share(no_hit.get("balanced_accuracy"))  # absent from evaluations before it


def _ensembles(d: Path, times: dict, split: str) -> list[str]:
    """The seed ensembles' rows, and what always guessing a band's largest class scores."""
    made = [n for n in ENSEMBLES if (d / f"eval-{n}" / "metrics.json").is_file()]
    if not made:
        return []
    lines = [
        "Ensembles (`ENSEMBLES`): the mean of the members' calibrated level-1 probabilities, "
        "scored on the rows with one class; time: scoring val and test and the search for "
        "the bands (the members' training is in the table above). The last row is no model: "
        "it always guesses the no-hit band's own most common class, which it could only know "
        "from the labels.",
        "",
        "| ensemble | members | val | val, no hit | test | test, no hit | balanced | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in made:
        label, members = ENSEMBLES[name]
        cells = []
        for evaluation in (f"eval-val-{name}", f"eval-{name}"):
            m = read_json(d / evaluation / "metrics.json")
            cells += [f"{m['accuracy']:.3f}", _share(m["identity_bands"]["no_hit"]["accuracy"])]
        lines.append(
            f"| `{name}` | {label} ({', '.join(f'`{m}`' for m in members)}) | "
            f"{' | '.join(cells)} | {_balanced(d / f'eval-{name}')} | "
            f"{_seconds(times.get(f'{split}/ensemble {name}'))} |"
        )
    largest = [
        read_json(d / f"eval{which}-{made[0]}" / "metrics.json")["identity_bands"]["no_hit"]
        for which in ("-val", "")
    ]
    lines.append(
        f"| largest class | the band's most common class, always | | "
        f"{_share(largest[0]['majority'])} | | {_share(largest[1]['majority'])} | "
        f"{_share(1 / c if (c := largest[1]['classes']) else None)} | |"
    )
    return [*lines, ""]


def _remote_levels(d: Path) -> list[str]:
    """The full-EC arms at every level: top accuracy on val and test, all and without a hit."""
    arms = [(m, label) for m, label in _arms(d)
            if read_json(d / m / "config.json")["train"]["target"] == "ec"]  # fmt: skip
    if not arms:
        return []
    lines = [
        "The full-EC runs at every level (top accuracy: the level's most probable class; "
        "levels 1–4 separated by ·):",
        "",
        "| run | val | val, no hit | test | test, no hit |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, _ in arms:
        cells = []
        for name in (f"eval-val-{model}", f"eval-{model}"):
            levels = read_json(d / name / "metrics.json")["levels"]
            cells.append(" · ".join(f"{lv['top_accuracy']:.3f}" for lv in levels))
            no_hit = [lv["identity_bands"]["no_hit"]["accuracy"] for lv in levels]
            cells.append(" · ".join(_share(a) for a in no_hit))
        lines.append(f"| `{model}` | {' | '.join(cells)} |")
    return [*lines, ""]


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _throughput(splits: list[str]) -> list[str]:
    if "random" not in splits:
        return []
    d = split_dir("random")
    speeds = {}
    for model in ("small", "small-ec"):
        rows = best_val(d / model)["rows"]
        speeds[model] = sorted(float(r["samples_per_s"]) for r in rows)[len(rows) // 2]
    ratio = speeds["small-ec"] / speeds["small"]
    return [
        "### Training throughput, class vs full EC",
        "",
        f"Median training sequences/s over the epochs of the random split: `small` "
        f"{speeds['small']:,.0f}, `small` full EC {speeds['small-ec']:,.0f} ({ratio:.2f}×; "
        f"target: within 25%, {'met' if ratio >= 0.75 else '**not met**'}). Both runs shared the "
        "machine with other work, so compare this ratio, not the absolute figures.",
        "",
    ]


def _add(*steps: dict) -> dict:
    return {k: sum(t[k] for t in steps) for k in ("wall", "cpu")}


def _seconds(t: dict | None) -> str:
    return "–" if t is None else f"{t['wall']:.0f} s ({t['cpu']:.0f} CPU-s)"


def _minutes(t: dict) -> str:
    return f"{t['wall'] / 60:.0f} min ({t['cpu'] / 60:.0f} CPU-min)"


def _val_acc(d: Path, model: str) -> float:
    if model.startswith("small"):
        return float(best_val(d / model)["val_acc"])
    return float(read_json(d / model / "config.json")["validation"]["val_acc"])


def _leakage(splits: list[str]) -> list[str]:
    lines = [
        "### Leakage: each val/test protein's highest identity to any training protein",
        "",
        "MMseqs2 `-s 5.7 --max-seqs 100`, E ≤ 0.001 (`ecstream leakage`, or at build time for "
        "cluster splits). Clustering asks for 80% coverage of both sequences, this search for "
        "none: a protein that shares only a domain with a training protein lies in another "
        "cluster, yet shows that domain's identity here. `--strict` moves such proteins to "
        "train until none is left at or above the threshold.",
        "",
        "| split | part | records | " + " | ".join(BANDS) + " |",
        "|---|---|---:|" + "---:|" * len(BANDS),
    ]
    for split in splits:
        report = read_json(split_dir(split) / "store" / "manifest.json").get("leakage")
        if not report:
            continue
        for part, info in report["splits"].items():
            n = max(info["records"], 1)
            cells = " | ".join(f"{100 * info['counts'][b] / n:.1f}%" for b in BANDS)
            lines.append(f"| {split} | {part} | {info['records']:,} | {cells} |")
    if "strict 0.3" in splits:
        strict = read_json(split_dir("strict 0.3") / "store" / "manifest.json")["split"]["strict"]
        lines += [
            "",
            f"The strict split moved {strict['moved_to_train']:,} val/test proteins to train, "
            f"per round: {', '.join(f'{n:,}' for n in strict['moved_per_round'])} (the last "
            "round searched all of train and moved none).",
        ]
    return [*lines, ""]
