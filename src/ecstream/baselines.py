"""Making the homology runs: a kNN run (a searchable training split) and a hybrid run.

Both are run directories like a CNN run (``RUN/config.json`` with ``kind``), so ``evaluate``
and ``predict`` treat all three alike and their outputs compare row by row. Nothing is trained:
a kNN run is the training split made searchable, with, per level, how often its homolog is
right at each identity (on validation); a hybrid run is, per level, the identity at which the
homolog's number replaces the CNN's, chosen on validation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import write_json
from .calibrate import top_prediction
from .labels import level_keys
from .mmseqs.binary import MMseqs
from .mmseqs.search import (
    MAX_SEQS,
    PROFILE_ITERATIONS,
    PROFILE_SENSITIVITY,
    SEARCH_SENSITIVITY,
    Hits,
    TargetDB,
)
from .predictors.cnn import CNNPredictor
from .predictors.homolog import (
    HybridPredictor,
    KNNPredictor,
    cnn_agrees,
    combine,
    homolog_decides,
    hybrid_levels,
)
from .records import Records
from .runs import (
    CALIBRATION,
    TARGETS,
    RunError,
    base_config,
    new_run,
    parts_seen,
    read_config,
    record_seen,
    seal,
    sealed_digest,
)
from .store import Store, open_store
from .tuning import (
    calibrate_homolog,
    cnn_maps,
    homolog_curves,
    truth,
    validation_sample,
)

#: Identity thresholds the hybrid tries on validation.
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def make_knn_run(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    threads: int | None = None,
    sensitivity: float = SEARCH_SENSITIVITY,
    profile_fallback: bool = True,
    index: bool = False,
) -> dict:
    """Make a kNN run: a searchable database of the training split, scored on validation.

    With ``profile_fallback`` (the default) a query without a hit is searched again by an
    iterative profile search (:func:`~ecstream.mmseqs.search.with_profile_fallback`). With
    ``index`` the run keeps MMseqs2's k-mer index of the training split (:meth:`TargetDB.create`):
    a much larger run whose searches skip most of their fixed cost."""
    if index and sensitivity > PROFILE_SENSITIVITY:  # what createindex is made for
        raise ValueError(f"a kept index serves searches up to -s {PROFILE_SENSITIVITY}")
    store = open_store(store_path)
    with new_run(out) as work:
        return _fill_knn(store, work, threads, sensitivity, profile_fallback, index)


def _fill_knn(
    store: Store,
    out: Path,
    threads: int | None,
    sensitivity: float,
    profile_fallback: bool,
    index: bool,
) -> dict:
    mm = MMseqs.find(threads)
    TargetDB.create(store, "train", out / TARGETS, mm.threads, index=index)
    vocab = store.vocabulary()
    config = {
        **base_config("knn", store),
        "search": {
            "tool": "mmseqs easy-search",
            "sensitivity": sensitivity,
            "max_seqs": MAX_SEQS,
            "version": mm.version,
            "profile_fallback": profile_fallback,
            "index": index,
            **(
                {"profile": {"iterations": PROFILE_ITERATIONS, "sensitivity": PROFILE_SENSITIVITY}}
                if profile_fallback
                else {}
            ),
        },
        "vocabulary": vocab.to_dict(),
    }
    write_json(out / "config.json", config)
    record_seen(out, store)
    val = validation_sample(store, every_row=True)
    knn = KNNPredictor(out, config, threads)
    hits = knn.hits(val.ids, val.seqs)
    ecs = knn.target.ecs(hits.best_target)
    curves = homolog_curves(vocab, ecs, hits.best_fident, val.ecs, hits.by_profile)
    write_json(out / CALIBRATION, {"identity_curves": curves})
    calibrate_homolog(out, KNNPredictor(out, config, threads), val, {"identity_curves": curves})
    single = single_class(val)
    result = {
        "val_acc": float((hits.best_label == val.labels)[single].mean()) if single.any() else 0.0,
        "val_no_hit": int((~hits.has_hit).sum()),
        "val_profile_hits": int(hits.by_profile.sum()),
        "val_records": len(val),
    }
    write_json(out / "config.json", {**config, "validation": result})
    seal(out)
    return result


def single_class(records: Records) -> np.ndarray:
    """Which records have all their numbers in one class (what class accuracy is measured on)."""
    return np.array([len(level_keys(e, 1)) == 1 for e in records.ecs], dtype=bool)


def class_accuracy(
    labels: np.ndarray,
    cnn: np.ndarray,
    hits: Hits,
    rows: np.ndarray | None,
    threshold: float,
    profile_threshold: float | None,
) -> float:
    """Class accuracy (over ``rows``) of the hybrid: the homolog's class where it decides,
    else the CNN's predicted label ``cnn``."""
    rows = np.ones(len(labels), dtype=bool) if rows is None else rows
    pred = np.where(homolog_decides(hits, threshold, profile_threshold), hits.best_label, cnn)
    return float((pred == labels)[rows].mean()) if rows.any() else 0.0


def lowest_best(curve: dict[str, float]) -> float:
    """The lowest threshold with the best accuracy: the homolog decides wherever it does no
    worse."""
    return float(max(curve, key=lambda t: (curve[t], -float(t))))


def choose(accuracy) -> tuple[float, float | None, dict, dict]:
    """A level's identity threshold for hits of the search, then, given it, for hits of the
    profile fallback (``None``: never take them, if that is as good)."""
    curve = {f"{t:.2f}": accuracy(float(t), None) for t in THRESHOLDS}
    best = lowest_best(curve)
    profile = {"never": curve[f"{best:.2f}"]}
    profile |= {f"{t:.2f}": accuracy(best, float(t)) for t in THRESHOLDS}
    top = max(profile.values())
    chosen = next(k for k, v in profile.items() if v == top)  # "never" first, then the lowest
    return best, None if chosen == "never" else float(chosen), curve, profile


def make_hybrid_run(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    cnn_run: str | os.PathLike,
    knn_run: str | os.PathLike,
) -> dict:
    """Make a hybrid run: per level, the identity threshold that maximises validation accuracy
    (level 1: class accuracy as a class run measures it; deeper: the top prediction's); then,
    at those thresholds, its own confidences (:class:`HybridPredictor`) and their thresholds."""
    store = open_store(store_path)
    cnn_config, knn_config = read_config(cnn_run), read_config(knn_run)
    # the runs as they are now, before minutes of fitting: a part changed meanwhile is refused
    parts = {"cnn": sealed_digest(cnn_run), "knn": sealed_digest(knn_run)}
    seen_by_parts = parts_seen((cnn_run, knn_run))
    ec = store.ec_fingerprint("train")
    for run, config in ((cnn_run, cnn_config), (knn_run, knn_config)):
        made = config["store"]
        if (
            made["fingerprints"]["train"] != store.fingerprint("train")
            or made.get("ec_fingerprint", ec) != ec
        ):
            raise RunError(f"{run} was not trained on {store.path}'s training split")
    if cnn_config["kind"] != "cnn" or knn_config["kind"] != "knn":
        raise RunError("a hybrid needs a CNN run (--cnn) and a kNN run (--knn)")
    with new_run(out) as work:  # refuses a used --out before the searches, not after
        val = validation_sample(store, every_row=True)
        cnn = CNNPredictor(cnn_run, cnn_config).score(val.ids, val.seqs)
        knn = KNNPredictor(knn_run, knn_config)
        hits = knn.hits(val.ids, val.seqs)
        multi_hot, weighted = knn.homolog_levels(hits)
        single = single_class(val)
        cnn_class = cnn.probs.argmax(1)
        true, known = truth(knn.vocab, val.ecs)
        depth = knn.vocab.depth
        identity: list[float] = []
        profile: list[float | None] = []
        curves, profile_curves = {}, {}
        for level in range(depth):

            def accuracy(t: float, tp: float | None, level: int = level) -> float:
                if level == 0:  # class accuracy, as a class run measures it
                    return class_accuracy(val.labels, cnn_class, hits, single, t, tp)
                rows = known[:, level]
                ids = [*identity, *[t] * (depth - level)]
                tps = [*profile, *[tp] * (depth - level)]
                levels, _ = combine(knn.vocab, cnn.levels, multi_hot, weighted, hits, ids, tps)
                _, right = top_prediction(levels[level][rows], true[level][rows])
                return float(right.mean()) if rows.any() else 0.0

            t, tp, curve, profile_curve = choose(accuracy)
            identity.append(t)
            profile.append(tp)
            curves[str(level + 1)], profile_curves[str(level + 1)] = curve, profile_curve
        # the hybrid's own confidences, on the rows each source decides at the chosen
        # thresholds: the homolog's by identity and agreement, then the CNN's
        _, decided = combine(knn.vocab, cnn.levels, multi_hot, weighted, hits, identity, profile)
        by_identity = homolog_curves(
            knn.vocab, knn.target.ecs(hits.best_target), hits.best_fident, val.ecs,
            hits.by_profile, cnn_agrees(cnn.levels, multi_hot), decided,
        )  # fmt: skip
        levels, decided = hybrid_levels(
            knn.vocab, cnn.levels, multi_hot, hits, identity, profile, by_identity
        )
        own = {
            "identity_curves": by_identity,
            "cnn_maps": cnn_maps(knn.vocab, levels, decided, val.ecs),
        }
        first = profile_curves["1"]
        result = {
            "val_acc": first["never" if profile[0] is None else f"{profile[0]:.2f}"],
            "val_acc_cnn": float((cnn_class == val.labels)[single].mean()) if single.any() else 0.0,
            "val_acc_knn": (
                float((hits.best_label == val.labels)[single].mean()) if single.any() else 0.0
            ),
            "val_records": int(single.sum()),
            "accuracy_by_threshold": curves["1"],
        }
        config = {
            **base_config("hybrid", store),
            "cnn_run": str(Path(cnn_run).resolve()),
            "knn_run": str(Path(knn_run).resolve()),
            "parts": parts,
            "threshold": identity[0],
            "identity_thresholds": identity,
            "profile_thresholds": profile,
            "validation": result,
        }
        write_json(work / "config.json", config)
        write_json(work / CALIBRATION, own)  # what the predictor reads to score validation
        record_seen(work, store, parts=seen_by_parts)
        extra = {
            **own,
            "identity_thresholds": identity,
            "profile_thresholds": profile,
            "accuracy_by_threshold": curves,
            "accuracy_by_profile_threshold": profile_curves,
        }
        calibrate_homolog(work, HybridPredictor(work, config), val, extra)
        seal(work)
    return {
        "threshold": identity[0], "identity_thresholds": identity, "profile_thresholds": profile,
        **result,
    }  # fmt: skip
