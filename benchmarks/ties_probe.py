"""How often a full-EC run's top prediction at a level is a tie made by the hierarchy's cap.

``python benchmarks/ties_probe.py STORE RUN [--splits val,test]``: scores each split with the
run (``RUN`` a ``--target ec`` CNN run) and prints per level below the first:
- how many proteins' most probable class ties with another (a child above its parent is capped
  at the parent's probability, ``hierarchy.consistent``, so siblings above it tie, and
  ``argmax`` takes the first column);
- how many would pick another class if ties went to the model's own ranking (its probabilities
  before the cap), and the top accuracy both ways, on the proteins whose number states the
  level.

A probe, not a section of BENCHMARKS.md: the hand-written paragraph in the full-EC part of the
accuracy section quotes it.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("run")
    parser.add_argument("--splits", default="val,test")
    args = parser.parse_args()

    import ecstream
    from ecstream.hierarchy import calibrated, level_probabilities
    from ecstream.predictors import load_model

    model = load_model(args.run)
    if model.vocab is None:
        parser.error(f"{args.run} is not a --target ec run")
    store = ecstream.open_store(args.store)
    o = model.vocab.offsets
    for split in args.splits.split(","):
        seqs, texts = [], []
        for chunk in store.records(split):
            seqs += list(chunk.seqs)
            texts += list(chunk.ecs)
        probs = level_probabilities(model.all_logits(seqs), model.vocab, model.temperatures)
        levels = calibrated(probs, model.vocab, model.maps)
        truth, known = model.vocab.targets(texts)
        print(f"{split}: {len(seqs):,} proteins")
        for level in range(1, model.vocab.depth):
            p, raw = levels[level], probs[level]
            true = truth[:, o[level] : o[level + 1]].astype(bool)
            best = p.max(axis=1, keepdims=True)
            tied = (p == best) & (best > 0)
            first = p.argmax(axis=1)
            ranked = np.where(tied, raw, -1.0).argmax(axis=1)
            rows, stated, ties = np.arange(len(p)), known[:, level], tied.sum(axis=1) > 1
            as_now = true[rows, first][stated].mean()
            by_rank = true[rows, ranked][stated].mean()
            print(
                f"  level {level + 1}: a tie at the top {ties.mean():.2%} ({int(ties.sum()):,}); "
                f"the model's ranking picks another {(first != ranked).mean():.2%}; top "
                f"accuracy {as_now:.4f} (first column) vs {by_rank:.4f} (model's ranking)"
            )


if __name__ == "__main__":
    main()
