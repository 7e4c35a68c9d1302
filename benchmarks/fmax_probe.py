"""Where a hybrid's Fmax differs from its kNN's: F per threshold, by who decides each protein.

``python benchmarks/fmax_probe.py [SPLIT_DIR] [--split test]``: reads ``SPLIT_DIR/store`` and
the runs ``SPLIT_DIR/knn`` and ``SPLIT_DIR/hybrid-ec`` (default: the random split of the
accuracy section, ``bench-output/accuracy/random``). Prints per level:
- the Fmax and its threshold for both runs;
- the proteins in each group of the hybrid: the homolog decides and the CNN agrees or not,
  or the CNN decides, with or without a hit;
- each group's top accuracy, and how many of its proteins keep a prediction at the hybrid's
  Fmax threshold.

Fmax is ``ecstream.ecmetrics``'s (protein-centric, thresholds 0.01…1.00), computed here by
comparing each score with each threshold in the scores' dtype, as ecmetrics and a decoding
compare. A probe, not a section of
BENCHMARKS.md: the hand-written paragraph after the accuracy section quotes it. Its searches
are cached like every search.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import OUTPUT


def f_by_threshold(probs: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protein-centric F at each threshold of ``TAUS``, and how many proteins keep a prediction
    there (precision over those, recall over all)."""
    from ecstream.ecmetrics import TAUS

    n_pred = np.zeros((len(probs), len(TAUS)), dtype=np.int64)
    n_right = np.zeros_like(n_pred)
    for k, tau in enumerate(TAUS):  # a threshold at a time: [N, C, 100] would not fit level 4
        predicted = probs >= probs.dtype.type(tau)  # a float32 0.53 is stated at 0.53
        n_pred[:, k] = predicted.sum(axis=1)
        n_right[:, k] = (predicted & true).sum(axis=1)
    has = n_pred > 0
    precision = np.where(has, n_right / np.maximum(n_pred, 1), 0).sum(0) / np.maximum(has.sum(0), 1)
    recall = (n_right / np.maximum(true.sum(axis=1), 1)[:, None]).sum(axis=0) / len(probs)
    return 2 * precision * recall / np.maximum(precision + recall, 1e-12), has.sum(axis=0)


def main() -> None:
    import ecstream
    from ecstream.ecmetrics import TAUS
    from ecstream.predictors.homolog import cnn_agrees
    from ecstream.tuning import truth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split_dir", nargs="?", type=Path, default=OUTPUT / "accuracy" / "random")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    d = args.split_dir
    store = ecstream.open_store(d / "store")
    chunks = list(store.records(args.split))
    ids = [i for c in chunks for i in c.ids]
    seqs = [s for c in chunks for s in c.seqs]
    ecs = [e for c in chunks for e in c.ecs]
    knn, hybrid = ecstream.load_model(d / "knn"), ecstream.load_model(d / "hybrid-ec")
    knn_levels = knn.score(ids, seqs).levels
    hybrid_levels = hybrid.score(ids, seqs).levels
    hits = hybrid.knn.hits(ids, seqs)  # cached by the scoring above
    cnn = hybrid.cnn.score(ids, seqs).levels
    _, decided = hybrid.levels(cnn, hits)
    agrees = cnn_agrees(cnn, hybrid.knn.homolog_classes(hits))
    true, known = truth(hybrid.vocab, ecs)
    print(f"{d} ({args.split}): the hybrid's identity thresholds {hybrid.identity}")
    for level in range(hybrid.vocab.depth):
        rows = known[:, level]
        f_knn, _ = f_by_threshold(knn_levels[level][rows], true[level][rows])
        f_hyb, _ = f_by_threshold(hybrid_levels[level][rows], true[level][rows])
        best = int(f_hyb.argmax())
        print(
            f"level {level + 1}, {rows.sum():,} proteins: Fmax kNN {f_knn.max():.4f} "
            f"(at {TAUS[f_knn.argmax()]:.2f}), hybrid {f_hyb.max():.4f} (at {TAUS[best]:.2f})"
        )
        p = hybrid_levels[level][rows]
        # as ecmetrics counts it: a row of zeros is no prediction, not the first class
        right = true[level][rows][np.arange(len(p)), p.argmax(axis=1)] & (p.max(axis=1) > 0)
        kept = p.max(axis=1) >= TAUS[best]
        dec, hit, agree = decided[level][rows], hits.has_hit[rows], agrees[level][rows]
        groups = {
            "homolog decides, CNN agrees": dec & agree,
            "homolog decides, CNN disagrees": dec & ~agree,
            "CNN decides, a hit below the threshold": ~dec & hit,
            "CNN decides, no hit": ~dec & ~hit,
        }
        for name, group in groups.items():
            if group.any():
                print(
                    f"  {name}: {group.sum():,} proteins, top accuracy {right[group].mean():.3f}, "
                    f"{(group & kept).sum():,} keep a prediction at the Fmax threshold"
                )


if __name__ == "__main__":
    main()
