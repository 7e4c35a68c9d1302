"""How long a kNN evaluation of the random split's test takes when each chunk of records is
searched on its own (as before search groups) and when a group of chunks is searched at once.

Usage: .venv/bin/python benchmarks/search_groups_probe.py [ACCURACY_DIR]

Needs the random split's store and kNN run of the accuracy section (`benchmarks/run.py
accuracy`). Each mode runs with an empty search cache of its own; the figures are printed, for a
hand note in BENCHMARKS.md, and the two evaluations' `classes.npz` compared array by array.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT

from ecstream.evaluate import evaluate
from ecstream.predictors.homolog import KNNPredictor
from ecstream.store import open_store


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench-output" / "accuracy"
    store, run = base / "random" / "store", base / "random" / "knn"
    chunks = sum(1 for _ in open_store(store).records("test"))
    per_group = (KNNPredictor.search_rows, KNNPredictor.search_ahead)
    figures: dict[str, dict] = {}
    answers: dict[str, dict[str, np.ndarray]] = {}
    for mode in ("each chunk", "grouped"):
        if mode == "each chunk":  # what evaluate did before search_ahead
            KNNPredictor.search_rows, KNNPredictor.search_ahead = None, lambda self, seqs: None
        else:
            KNNPredictor.search_rows, KNNPredictor.search_ahead = per_group
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["ECSTREAM_CACHE"] = str(Path(tmp) / "cache")
            wall, cpu = time.perf_counter(), time.process_time() + children_cpu()
            result = evaluate(run, store, Path(tmp) / "eval", split="test", bands=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() + children_cpu() - cpu
            with np.load(Path(tmp) / "eval" / "classes.npz") as rows:
                answers[mode] = dict(rows)
        figures[mode] = {
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "accuracy": result["accuracy"],
            "n": result["n"], "profile_hits": result["levels"][0]["profile_hits"]["n"],
        }  # fmt: skip
        print(mode, json.dumps(figures[mode]), flush=True)
    a, b = answers["each chunk"], answers["grouped"]
    same = a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )
    print(f"classes.npz of the two the same, array by array: {same}")
    print(
        f"store chunks: {chunks}; ratio each chunk / grouped (wall): "
        f"{figures['each chunk']['wall_s'] / figures['grouped']['wall_s']:.2f}"
    )


if __name__ == "__main__":
    main()
