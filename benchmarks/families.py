"""Families behind the strict split's accuracies (``evaluate --families``).

The strict 0.3 split's val and test proteins have no training relative at 30% identity, and
they are few and clustered: a handful of families makes up much of each. This section measures
how much an accuracy there can be trusted. On the accuracy section's strict split (its store,
its ``small`` class CNN, kNN and hybrid: made here through that section's steps where missing,
so ``ECSTREAM_ACCURACY_MAX_TIME`` caps the CNN as there), each run is evaluated on test with
``--families`` (and the CNN on val, ``--allow-seen``, as it stopped early on it): proteins,
families, the largest family's share, the class accuracy with its 95% interval over resampled
families, and the same for always guessing the most common class; all proteins, and those
without a hit (issue 12's band). Then runs are compared in pairs on the same test proteins
(``ecstream compare``): the difference of their accuracies with its interval, the same family
draws for both; among them the hybrid with the kNN's profile fallback against the hybrid
without it (the accuracy section's ``hybrid-plain``, made here where missing): issue 12's
target of a gain of at least 0.03; and the contrast split's full-EC runs level by level, where
they are. Steps are recorded in the accuracy section's ``times.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

from accuracy import SPLITS, TIMES, best_val, read_json, recorded_times, split_dir, step, train_cnn
from common import DATA, machine_info, machine_markdown

from ecstream import open_store
from ecstream.compare import compare
from ecstream.evaluate import CLASS_ROWS
from ecstream.families import LEVEL, RESAMPLES
from ecstream.mmseqs.cluster import COVERAGE, FAMILY_IDENTITY, families_of
from ecstream.records import pairs

SPLIT = "strict 0.3"
#: The random split's CNN, for contrast: evaluated where the accuracy section made it.
CONTRAST = "random"
CNN = "CNN `small` (seven classes)"
#: (split, run, what it is, evaluated part): the evaluations of this section
EVALUATIONS = (
    (SPLIT, "small", CNN, "test"),
    (SPLIT, "small", CNN, "val"),
    (SPLIT, "knn", "kNN (MMseqs2, profile fallback)", "test"),
    (SPLIT, "hybrid", "hybrid (`small` + kNN)", "test"),
    (SPLIT, "hybrid-plain", "hybrid without the profile fallback", "test"),
    (CONTRAST, "small", CNN, "test"),
    (CONTRAST, "small-ec", "CNN `small`, full EC", "test"),
    (CONTRAST, "knn", "kNN (MMseqs2, profile fallback)", "test"),
    (CONTRAST, "hybrid-ec", "hybrid, full EC (`small-ec` + kNN)", "test"),
)
#: (A, B) compared on the strict split's test proteins, and what the difference says
PAIRS = (
    ("hybrid", "hybrid-plain", "the kNN's profile fallback, in the hybrid (issue 12: ≥ +0.03)"),
    ("hybrid", "small", "the hybrid against its CNN"),
    ("hybrid", "knn", "the hybrid against its kNN"),
    ("small", "knn", "the CNN against the kNN"),
)
#: (A, B) full-EC runs compared level by level on the contrast split's test proteins
LEVEL_PAIRS = (
    ("hybrid-ec", "knn", "the full-EC hybrid against its kNN (issue 10's comparison)"),
    ("hybrid-ec", "small-ec", "the full-EC hybrid against its CNN"),
)


def _name(model: str, part: str) -> str:
    return f"eval-families-{model}" + ("-val" if part == "val" else "")


def _made(split: str, model: str) -> bool:
    return split == SPLIT or (split_dir(split) / model / "config.json").is_file()


def _cell(info: dict) -> str:
    if info.get("accuracy") is None:
        return "–"
    if info.get("interval") is None:  # too few families to resample
        return f"{info['accuracy']:.3f} (–)"
    low, high = info["interval"]
    return f"{info['accuracy']:.3f} ({low:.3f}–{high:.3f})"


def _clustering_cost(split: str) -> str:
    """``families_of`` alone on a split's test proteins of one class (those a class run
    measures, stored first), with an empty cache: its wall and CPU time (MMseqs2 included)."""
    store = open_store(split_dir(split) / "store")
    rows = store.single_class_records("test")
    queries = list(itertools.islice(pairs(store.records("test")), rows))
    before, started = os.times(), time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as cache,
        tempfile.TemporaryDirectory() as work,
        mock.patch.dict(os.environ, {"ECSTREAM_CACHE": cache}),
    ):
        family = families_of(queries, Path(work))
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # this process and its finished children (MMseqs2)
    return (f"{split} test, {len(queries):,} proteins in {family.max() + 1:,} families: "
            f"{wall:.1f} s ({cpu:.0f} CPU-s)")  # fmt: skip


def _trained(run: Path) -> str:
    """Records a CNN saw in training, its epochs and the one whose weights it kept."""
    if not (run / "metrics.csv").is_file():
        return "–"
    best = best_val(run)
    seen = sum(int(float(r["samples"])) for r in best["rows"])
    return f"{seen:,} ({best['epochs']}; best {int(best['epoch']) + 1})"


def _keeps_classes(evaluation: Path) -> bool:
    """Whether an evaluation folder keeps its class rows as ``compare`` reads them (those made
    before 2026-11-30 did not)."""
    metrics = evaluation / "metrics.json"
    return (evaluation / CLASS_ROWS).is_file() and "class_rows" in read_json(metrics)


def _forget(key: str) -> None:
    """Drop a recorded step, so that it runs again."""
    times = recorded_times()
    if times.pop(key, None) is not None:
        TIMES.write_text(json.dumps(times, indent=1) + "\n")


def _difference(info: dict) -> str:
    if info.get("difference") is None:
        return "–"
    if info.get("interval") is None:
        return f"{info['difference']:+.3f} (–)"
    low, high = info["interval"]
    return f"{info['difference']:+.3f} ({low:+.3f} to {high:+.3f})"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _row(split: str, label: str, part: str, fam: dict, trained: str) -> str:
    cells = []
    no_hit = fam.get("bands", {}).get("no_hit", {"n": 0, "families": 0})
    for info in (fam["all"], no_hit):
        cells += [f"{info['n']:,}", f"{info['families']:,}", _share(info.get("largest_family")),
                  _cell(info), _share(info.get("family_mean"))]  # fmt: skip
    guess = no_hit.get("largest_class", {})
    return f"| {split} | {label} | {trained} | {part} | {' | '.join(cells)} | {_cell(guess)} |"


def run() -> str:
    info = machine_info()
    d = split_dir(SPLIT)
    store = str(d / "store")
    # the accuracy section's steps, under its keys: done once for both sections
    step(f"{SPLIT}/build", "build", str(DATA), "--out", store, "--force", *SPLITS[SPLIT])
    train_cnn(SPLIT, "small")
    step(f"{SPLIT}/train knn", "train", store, "--model", "knn", "--out", str(d / "knn"))
    step(f"{SPLIT}/train hybrid", "train", store, "--model", "hybrid", "--cnn", str(d / "small"),
         "--knn", str(d / "knn"), "--out", str(d / "hybrid"))  # fmt: skip
    step(f"{SPLIT}/train knn-plain", "train", store, "--model", "knn", "--no-profile-fallback",
         "--out", str(d / "knn-plain"))  # fmt: skip
    step(f"{SPLIT}/train hybrid-plain", "train", store, "--model", "hybrid",
         "--cnn", str(d / "small"), "--knn", str(d / "knn-plain"),
         "--out", str(d / "hybrid-plain"))  # fmt: skip
    done = [e for e in EVALUATIONS if _made(e[0], e[1])]
    for split, model, _, part in done:
        extra = ["--split", "val", "--allow-seen"] if part == "val" else []
        here = split_dir(split)
        key, out = f"{split}/evaluate-families {model} {part}", here / _name(model, part)
        if not _keeps_classes(out):
            _forget(key)
        step(key, "evaluate", str(here / model), str(here / "store"), *extra, "--families",
             "--out", str(out))  # fmt: skip
    lines = [
        "## Families behind the strict split's accuracies",
        "",
        "Command: `.venv/bin/python benchmarks/run.py families` (the CNN's training is the "
        "accuracy section's `small` of the strict 0.3 split, made here if missing). Each run "
        f"evaluated with `evaluate --families`: the evaluated proteins clustered by MMseqs2 "
        f"(`easy-cluster`, {FAMILY_IDENTITY:g} identity over {COVERAGE:g} of both "
        "sequences, the split's own threshold), and each class accuracy given with its "
        f"{LEVEL:.0%} interval over {RESAMPLES:,} resamples of whole families (seeded). "
        "*Largest family*: its share of the proteins. *Family mean*: each family's accuracy "
        "weighed once. *Largest class*: always guessing the no-hit proteins' most common "
        "class, with its interval (a model must beat it; it is known only from the labels). "
        "*Trained*: records a CNN saw in training (epochs; the epoch whose weights it kept, of "
        "the lowest val loss). Val was used by the CNN for early stopping (`--allow-seen`). "
        "Steps already recorded in the accuracy section's `times.json` are not run again. "
        "The random split's runs (whatever `bench-output/accuracy/random` holds, where it "
        "holds them) are there for contrast.",
        "",
        machine_markdown(info),
        "| split | run | trained | part | proteins | families | largest family "
        f"| accuracy ({LEVEL:.0%} interval) | family mean | no hit: proteins | families "
        f"| largest family | accuracy ({LEVEL:.0%} interval) | family mean "
        f"| no hit: largest class ({LEVEL:.0%} interval) |",
        "|---|---|---:|---|" + "---:|" * 11,
    ]
    for split, model, label, part in done:
        metrics = read_json(split_dir(split) / _name(model, part) / "metrics.json")
        trained = _trained(split_dir(split) / model)
        lines.append(_row(split, label, part, metrics["families"], trained))
    lines += [
        "",
        f"Pairs of runs on the {SPLIT} split's test proteins (`ecstream compare A B`): A's "
        f"class accuracy minus B's, with its {LEVEL:.0%} interval over the same resamples of "
        "whole families for both runs (what a family does to both cancels), on all proteins "
        "and on those without a hit.",
        "",
        "| A | B | what it measures | proteins | families | A | B | A − B "
        f"({LEVEL:.0%} interval) | no hit: A − B ({LEVEL:.0%} interval) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b, what in PAIRS:
        result = compare(d / _name(a, "test"), d / _name(b, "test"))
        every, no_hit = result["all"], result.get("bands", {}).get("no_hit")
        lines.append(
            f"| {a} | {b} | {what} | {every['n']:,} | {every['families']:,} | "
            f"{_share(every['accuracy_a'])} | {_share(every['accuracy_b'])} | "
            f"{_difference(every)} | {_difference(no_hit) if no_hit else '–'} |"
        )
    made = {(split, model) for split, model, _, part in done if part == "test"}
    level_pairs = [p for p in LEVEL_PAIRS if {(CONTRAST, p[0]), (CONTRAST, p[1])} <= made]
    if level_pairs:
        lines += [
            "",
            f"Full-EC runs of the {CONTRAST} split, level by level on its test proteins of one "
            "class (`ecstream compare`): the top prediction's accuracy at each EC level, on the "
            "proteins whose number states it, A's minus B's with its interval over the same "
            "resamples of whole families.",
            "",
            f"| A | B | what it measures | level | proteins | families | A | B "
            f"| A − B ({LEVEL:.0%} interval) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for a, b, what in level_pairs:
            here = split_dir(CONTRAST)
            result = compare(here / _name(a, "test"), here / _name(b, "test"))
            for k, info in enumerate(result.get("levels", []), 1):
                lines.append(
                    f"| {a} | {b} | {what} | {k} | {info['n']:,} | {info['families']:,} | "
                    f"{_share(info['accuracy_a'])} | {_share(info['accuracy_b'])} | "
                    f"{_difference(info)} |"
                )
    costs = [_clustering_cost(split) for split in dict.fromkeys(s for s, *_ in done)]
    lines += ["", "What the clustering costs, alone and with an empty cache (both cores): "
              + "; ".join(costs) + "."]  # fmt: skip
    return "\n".join([*lines, ""])
