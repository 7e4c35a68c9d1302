"""Would the kNN's profile fallback gain from a looser E-value? Hits and their accuracy by band.

``python benchmarks/fallback_probe.py``: after the accuracy section (it reads the strict 0.3
split's store and its kNN run's training database under ``bench-output/accuracy``), takes the
val and test proteins without a hit in the default search (``-s 5.7``, E ≤ 0.001) and searches
them again as the fallback does (``--num-iterations 3 -s 7.5``) but keeping hits up to E ≤ 10
(``-e`` of every iteration, so the profiles take in weaker hits too). Prints, per E-value band
of the best hit, how many proteins it covers, how often the hit's class is one of the
protein's, and how often the class `small` CNN's (the split's ``small`` run) is, on the same
proteins: what the hybrid would trade. A probe, not a section of BENCHMARKS.md (a hand-written
paragraph after its accuracy section quotes it); its searches are cached like every search.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from common import OUTPUT

BANDS = [(0.0, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0), (1.0, 10.0)]
LOOSE_EVALUE = 10.0


def _classes(ec: str) -> set[str]:
    return {number.split(".")[0] for number in ec.split(";") if number}


def main() -> None:
    from ecstream import load_model
    from ecstream.mmseqs.search import (
        PROFILE_ITERATIONS,
        PROFILE_SENSITIVITY,
        TargetDB,
        best_hits,
    )
    from ecstream.store import Store

    split_dir = OUTPUT / "accuracy" / "strict-0.3"
    store, target = Store(split_dir / "store"), TargetDB(split_dir / "knn" / "targets")
    cnn = load_model(split_dir / "small")
    bands = " | ".join(f"E {a:g}–{b:g}" for a, b in BANDS)
    print("Per band: the hit's class right / the CNN's right (proteins)\n")
    print(f"| split | no hit | found at E ≤ 10 | {bands} |")
    print("|---|---:|---:|" + "---:|" * len(BANDS))
    for split in ("val", "test"):
        ids, seqs, ecs = [], [], []
        for records in store.records(split):
            ids += records.ids
            seqs += records.seqs
            ecs += records.ecs
        with tempfile.TemporaryDirectory() as work:
            first = best_hits(zip(ids, seqs, strict=True), target, f"{work}/search")
            missing = np.flatnonzero(~first.has_hit)
            started = time.perf_counter()
            again = best_hits(
                ((ids[i], seqs[i]) for i in missing), target, f"{work}/profile",
                sensitivity=PROFILE_SENSITIVITY, iterations=PROFILE_ITERATIONS,
                evalue=LOOSE_EVALUE,
            )  # fmt: skip
            seconds = time.perf_counter() - started
        found = again.has_hit
        hit_ecs = target.ecs(again.best_target[found]).tolist()
        truth = [ecs[i] for i in missing[found]]
        right = np.array(
            [bool(_classes(a) & _classes(b)) for a, b in zip(hit_ecs, truth, strict=True)]
        )
        classes = np.array(cnn.policy.classes)
        guess = classes[cnn.predict([seqs[i] for i in missing[found]]).argmax(axis=1)]
        cnn_right = np.array([g in _classes(t) for g, t in zip(guess, truth, strict=True)])
        evalue = again.best_evalue[found]
        cells = []
        for low, high in BANDS:
            band = (evalue >= low) & (evalue < high if high < LOOSE_EVALUE else evalue <= high)
            shares = (
                f"{right[band].mean():.3f} / {cnn_right[band].mean():.3f}" if band.any() else "–"
            )
            cells.append(f"{shares} ({int(band.sum()):,})")
        print(f"| {split} | {len(missing):,} | {int(found.sum()):,} ({seconds:.0f} s) | "
              + " | ".join(cells) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
