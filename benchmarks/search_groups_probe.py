"""What an MMseqs2 search costs, and what searching in groups saves (hand note "Searching in
groups" in BENCHMARKS.md; the figures are printed).

Usage:
  .venv/bin/python benchmarks/search_groups_probe.py fixed [--index]
  .venv/bin/python benchmarks/search_groups_probe.py groups [ACCURACY_DIR]

``fixed``: the random split's first 256, 1,024 and 4,096 test proteins searched against its
training split (the kNN's plain search), and the profile fallback of those of the 4,096 without
a hit, each with an empty search cache. Builds what it needs in ``bench-output/search-groups``
(the store and the training split's target database, a few minutes) and removes it afterwards.
With ``--index`` every search runs twice, against the database as it is and against a second
one made with MMseqs2's k-mer index (``train --model knn --index``); the two databases' sizes
are printed and the two searches' hits compared array by array.

``groups``: the random split's kNN run evaluated on its test split, once searching each chunk
of records on its own (as before search groups) and once a group of chunks at once, each with an
empty search cache of its own; the two evaluations' ``classes.npz`` compared array by array.
Needs the random split's store and kNN run of the accuracy section (``benchmarks/run.py
accuracy``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from common import DATA, OUTPUT, machine_info

from ecstream.build import build_store
from ecstream.evaluate import evaluate
from ecstream.mmseqs.search import TargetDB, best_hits, with_profile_fallback
from ecstream.predictors.homolog import KNNPredictor
from ecstream.store import open_store


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(call, *args):
    """``call(*args)``'s result, wall seconds and CPU seconds (this process and its children)."""
    wall, cpu = time.perf_counter(), time.process_time() + children_cpu()
    result = call(*args)
    return result, time.perf_counter() - wall, time.process_time() + children_cpu() - cpu


def fixed() -> None:
    """Plain searches of 256, 1,024 and 4,096 queries, and the profile fallback of the last's
    queries without a hit: the fixed cost is the intercept of the plain searches' times."""
    base = OUTPUT / "search-groups"
    print(json.dumps(machine_info()), flush=True)
    try:
        store = build_store(DATA, base / "store", force=True, leakage=False)
        targets = {"no index": TargetDB.create(store, "train", base / "target", force=True)}
        if "--index" in sys.argv[2:]:
            made = time.perf_counter()
            target = TargetDB.create(store, "train", base / "indexed", force=True, index=True)
            made = time.perf_counter() - made
            index, whole = megabytes(target.directory, "db.idx*"), megabytes(target.directory)
            print(
                f"createdb and createindex: {made:.1f} s; the database with its index "
                f"{whole:,.0f} MB, the index {index:,.0f} MB; without it "
                f"{megabytes(targets['no index'].directory):,.0f} MB",
                flush=True,
            )
            targets["index"] = target
        chunks = store.records("test")
        records = [r for chunk in chunks for r in zip(chunk.ids, chunk.seqs, strict=True)]
        for n in (256, 1024, 4096):
            queries, seqs = records[:n], [s for _, s in records[:n]]
            plain, profile = {}, {}
            for name, target in targets.items():
                with tempfile.TemporaryDirectory() as tmp:
                    os.environ["ECSTREAM_CACHE"] = str(Path(tmp) / "cache")
                    hits, wall, cpu = timed(best_hits, queries, target, Path(tmp) / "plain")
                    plain[name] = hits
                    found = int(hits.has_hit.sum())
                    print(f"{name}, plain, {n:,} queries: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                          f"{found:,} hits", flush=True)  # fmt: skip
                    if n < 4096:
                        continue
                    work = Path(tmp) / "profile"
                    again, wall, cpu = timed(with_profile_fallback, hits, seqs, target, work)
                    profile[name] = again
                    print(
                        f"{name}, profile fallback, {n - found:,} queries: {wall:.1f} s wall, "
                        f"{cpu:.1f} s CPU, {int(again.by_profile.sum()):,} hits",
                        flush=True,
                    )
            for kind, hits in (("plain", plain), ("profile", profile)):
                if len(hits) == 2:
                    print(f"{kind}, {n:,} queries: the same hits with and without the index: "
                          f"{same_hits(*hits.values())}")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


def megabytes(directory: Path, pattern: str = "*") -> float:
    return sum(f.stat().st_size for f in directory.glob(pattern) if f.is_file()) / 1e6


def same_hits(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True)
        for name in ("best_target", "best_fident", "best_bits", "best_evalue", "max_fident",
                     "max_target", "profile")
        if getattr(a, name) is not None or getattr(b, name) is not None
    )  # fmt: skip


def groups() -> None:
    base = Path(sys.argv[2]) if len(sys.argv) > 2 else OUTPUT / "accuracy"
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
            out = Path(tmp) / "eval"
            result, wall, cpu = timed(partial(evaluate, split="test", bands=False), run, store, out)
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
    modes = {"fixed": fixed, "groups": groups}
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        sys.exit(__doc__)
    modes[sys.argv[1]]()
