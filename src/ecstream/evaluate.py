"""Evaluation: honest metrics (torchmetrics), a confusion matrix and learning curves (matplotlib).

``evaluate(run, source, out)`` scores a store split or a labelled file with any run (CNN, kNN or
hybrid) and writes ``metrics.json``, ``confusion.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from . import plots
from .atomic import (
    TEMP_MARK,
    OutputIsInputError,
    OutputRefusedError,
    claim,
    claimed_dir,
    write_json,
)
from .cache import scratch
from .ecmetrics import LevelScores
from .errors import describe as describe_error
from .families import LEVEL, RESAMPLES, family_accuracy, family_report
from .hashing import file_sha256, hash64
from .identity import band_accuracy, identity_bands
from .labels import MULTIPLE_CLASSES, LabelPolicy, level_keys
from .mmseqs.binary import MMseqsError
from .mmseqs.binary import available as mmseqs_available
from .mmseqs.cluster import COVERAGE, FAMILY_IDENTITY, families_of, workflow
from .mmseqs.search import hits_in_groups
from .predictors import CNNPredictor, Predictor, load_model
from .predictors.homolog import training_targets
from .records import Records, groups, pairs
from .runs import (
    MAX_SEEN,
    SEEN,
    RunError,
    check_outside_runs_and_stores,
    read_metrics,
    read_seen,
)
from .skips import Skips
from .sources import Columns, SourceInfo, describe, is_stream, read_rows
from .splits import validate
from .store import is_store, open_store

DEFAULT_COLUMNS = Columns()
#: The class of every record in one class, in order (numpy arrays: ``hash``, the sequence's
#: 64-bit hash; ``true``; ``predicted``, -1 for none; ``identity`` and ``family`` when the
#: evaluation has them; for a full-EC run ``level_top``, :meth:`Tally.level_tops`): what
#: :mod:`ecstream.compare` pairs two evaluations by.
CLASS_ROWS = "classes.npz"


def labelled_records(
    source: Any,
    policy: LabelPolicy,
    skips: Skips,
    columns: Columns = DEFAULT_COLUMNS,
    fmt: str | None = None,
    *,
    allow_partial: bool = False,
    info: SourceInfo | None = None,
) -> Iterator[Records]:
    """Records of a labelled file, labelled by the run's policy; the rest counted in ``skips``.

    A file that ends early or cannot be decoded is refused unless ``allow_partial``.
    """
    name = describe(source)
    for rows in read_rows(source, columns, skips, fmt, allow_partial=allow_partial, info=info):
        kept = validate(name, rows, policy, skips)
        if len(kept):
            yield kept


def metrics(y_true: np.ndarray, y_pred: np.ndarray, policy: LabelPolicy) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``y_pred`` = -1 means no prediction (a kNN query without a hit): counted as wrong, and as
    its own last column of the confusion matrix.
    """
    c = len(policy.classes)
    none = int((y_pred < 0).sum())
    k = c + 1 if none else c
    t = torch.from_numpy(y_true)
    p = torch.from_numpy(np.where(y_pred < 0, c, y_pred))
    kinds = (("precision", multiclass_precision), ("recall", multiclass_recall),
             ("f1", multiclass_f1_score))  # fmt: skip
    if len(y_true):
        per = {name: fn(p, t, num_classes=k, average="none")[:c].tolist() for name, fn in kinds}
        matrix = multiclass_confusion_matrix(p, t, num_classes=k)
    else:  # e.g. a full-EC run on a file whose every record spans several classes
        per = {name: [0.0] * c for name, _ in kinds}
        matrix = torch.zeros((k, k), dtype=torch.long)
    confusion = matrix[:c].tolist()
    # macro-F1 as torchmetrics' "macro" (and training's val_macro_f1): over the classes that
    # occur as truth or as prediction; a class absent from both has no F1 to average
    present = (matrix[:c].sum(1) + matrix[:, :c].sum(0)).numpy() > 0
    macro_f1 = float(np.mean(np.asarray(per["f1"])[present])) if present.any() else float("nan")
    return {
        "n": len(y_true),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_f1": macro_f1,
        "no_prediction": none,
        "per_class": {
            key: {
                "name": name,
                "precision": per["precision"][i],
                "recall": per["recall"][i],
                "f1": per["f1"][i],
                "support": int(sum(confusion[i])),
            }
            for i, (key, name) in enumerate(zip(policy.classes, policy.names, strict=True))
        },
        "confusion": {
            "classes": list(policy.classes) + (["none"] if none else []),
            "rows_true_columns_predicted": confusion,
        },
    }


def in_one_class(ecs: list[str]) -> np.ndarray:
    """Which records are in one class: those the class metrics measure."""
    return np.array([len(level_keys(e, 1)) == 1 for e in ecs], dtype=bool)


def _class_pairs(chunks: Iterator[Records]) -> Iterator[tuple[str, bytes]]:
    """(id, sequence) of the records in one class, in order."""
    for chunk in chunks:
        for keep, pair in zip(in_one_class(chunk.ecs), pairs([chunk]), strict=True):
            if keep:
                yield pair


class Tally:
    """Everything an evaluation accumulates, chunk by chunk: class labels (for the level-1
    metrics of records in one class), and per EC level the set metrics (:mod:`ecmetrics`)."""

    def __init__(self, model: Predictor):
        self.model = model
        self.truth: list[np.ndarray] = []
        self.predicted: list[np.ndarray] = []
        self.identity: list[np.ndarray] = []
        self.hashes: list[np.ndarray] = []
        self.class_hashes: list[np.ndarray] = []  # of the records in one class
        vocab = model.vocab
        self.tops: list[list[np.ndarray]] = [[] for _ in range(vocab.depth)]  # class rows
        self.levels = [LevelScores(k + 1, vocab) for k in range(vocab.depth)]
        self.before = [LevelScores(k + 1, vocab) for k in range(vocab.depth)]
        self.searched = False
        self.several = 0  # records in several classes: in the levels' metrics, not the class's

    def add(self, chunk: Records, identity: np.ndarray | None) -> None:
        hashes = hash64(chunk.seqs)
        self.hashes.append(hashes)
        scores = self.model.score(chunk.ids, chunk.seqs)
        if scores.identity is not None:
            identity, self.searched = scores.identity, True
        single = in_one_class(chunk.ecs)
        self.class_hashes.append(hashes[single])
        self.several += int((~single).sum())
        self.truth.append(chunk.labels[single])
        no_class = np.isnan(scores.probs).all(axis=1)
        best = np.where(no_class, -1, np.nan_to_num(scores.probs, nan=-1).argmax(1))
        self.predicted.append(best[single])
        if identity is not None:
            self.identity.append(np.asarray(identity)[single])
        calls = self.model.decode(scores)
        for k, level in enumerate(self.levels):
            top = level.update(chunk.ecs, scores.levels[k], calls, identity, scores.profile)
            self.tops[k].append(top[single])
        if scores.uncalibrated is not None:
            for k, level in enumerate(self.before):
                level.update(chunk.ecs, scores.uncalibrated[k], [[] for _ in chunk.ids])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Class truth and prediction, their identities (when known) and all hashes."""
        identity = _cat(self.identity, np.float64) if self.identity else None
        return (
            _cat(self.truth, np.int64),
            _cat(self.predicted, np.int64),
            identity,
            _cat(self.hashes, np.uint64),
        )

    def class_rows(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        identity: np.ndarray | None,
        family: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """The arrays of :data:`CLASS_ROWS`: the hashes of the records in one class, their
        truth and prediction (:meth:`arrays`), identities and families where known, and a
        full-EC run's ``level_top``."""
        rows = {"hash": _cat(self.class_hashes, np.uint64), "true": y_true, "predicted": y_pred}
        if len(self.tops) > 1:
            rows["level_top"] = self.level_tops()
        if identity is not None:
            rows["identity"] = identity
        if family is not None:
            rows["family"] = family
        return rows

    def level_tops(self) -> np.ndarray:
        """Per level, each record in one class's top prediction there: ``int8 [levels, n]``,
        1 right, 0 wrong, -1 not measured (its number stops above the level)."""
        return np.stack([_cat(parts, np.int8) for parts in self.tops])

    def level_results(self) -> list[dict]:
        out = []
        for level, before in zip(self.levels, self.before, strict=True):
            info = level.result()
            if before.records and "ece" in (raw := before.result()):
                info["ece_uncalibrated"] = raw["ece"]
            out.append(info)
        return out


def evaluate(
    run: str | os.PathLike,
    source: Any,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    fmt: str | None = None,
    bands: bool | None = None,
    allow_seen: bool = False,
    progress: Callable[[str], None] | None = None,
    allow_partial: bool = False,
    precision: str = "32",
    families: bool = False,
) -> dict:
    """Score a store split (``split``, by default ``test``) or a labelled file with a run; write
    metrics.json, the plots and each protein's class (:data:`CLASS_ROWS`) as the folder ``out``,
    whole (an earlier evaluation there is replaced; a folder holding other files is refused). A
    file has no splits: ``split`` with a file is refused rather than ignored.

    ``bands`` adds accuracy per band of identity to the run's training split (MMseqs2); by
    default it is on when MMseqs2 is installed. Records the run was trained on are counted
    first: above :data:`MAX_SEEN` of them the evaluation is refused unless ``allow_seen``.
    ``out`` may be neither the run nor the store, nor inside them; once the run is loaded, it is
    claimed for the whole evaluation, so a second evaluation into it fails before scoring. A
    file that ends early or cannot be decoded is refused unless ``allow_partial``; then the
    records before the break are evaluated and the result's ``partial`` says where it stopped.
    ``precision`` is that of a CNN's forward pass (``32`` or ``bf16``), to measure what
    bfloat16 scoring costs. ``families`` clusters the evaluated proteins into families
    (MMseqs2, :func:`~ecstream.mmseqs.cluster.families_of`) and adds, for the class accuracy
    overall and per band (and a full-EC run's top prediction at each level, on the same
    proteins), how many families it rests on and an interval that resamples them
    (:mod:`ecstream.families`).
    """
    if Path(out).is_symlink():  # the folder it leads to is the evaluation's; the link stays
        out = os.path.realpath(out)
    _check_out(out, run, source)
    if split is not None and not is_store(source):
        raise ValueError(
            f"--split {split}: {describe(source)} is a file, not a store; a file is evaluated "
            "whole (leave --split out, or give the store)"
        )
    if columns != DEFAULT_COLUMNS and is_store(source):
        raise ValueError(
            f"--id-column, --ec-column and --sequence-column name a file's columns; "
            f"{describe(source)} is a store, whose columns are its own"
        )
    model = load_model(run, precision=precision)
    with claim(out):
        return _evaluate(
            model, source, Path(out), "test" if split is None else split, columns, fmt, bands,
            allow_seen, allow_partial, progress, families,
        )  # fmt: skip


def _evaluate(
    model: Predictor,
    source: Any,
    out: Path,
    split: str,
    columns: Columns,
    fmt: str | None,
    bands: bool | None,
    allow_seen: bool,
    allow_partial: bool,
    progress: Callable[[str], None] | None,
    families: bool,
) -> dict:
    run = model.run
    full_ec = model.vocab.depth > 1  # a class run is measured on single-class records only
    skips, info = Skips(), SourceInfo()
    if is_store(source):
        store = open_store(source)
        if not store.policy.same_classes(model.policy):
            raise RunError(f"{source}: its classes differ from those the run was trained on")
        every_row = full_ec or model.multi_class == "first"
        limit = store.num_records(split) if every_row else store.single_class_records(split)
        if left := store.num_records(split) - limit:  # stored after the others: counted here
            skips.add(
                MULTIPLE_CLASSES, f"{store.path} split {split}",
                f"{left:,} rows spanning several classes, which a class run leaves out", n=left,
            )  # fmt: skip

        def records(_: Skips | None = None) -> Iterator[Records]:
            return _first(store.records(split), limit)

        def searched(_: Skips | None = None) -> Iterator[Records]:
            """Every row, those a class run leaves out too (stored last): what a search of the
            split covers for any run, so that one cached search serves them all."""
            return store.records(split)

        scored: int | None = limit  # the first rows of those searched
        where = {"store": str(Path(source).resolve()), "split": split}
    else:
        # a full-EC run is measured on every row; a class run as it trained (rows spanning
        # several classes left out, unless it took their first class)
        multi = "first" if full_ec else model.multi_class
        policy = replace(model.policy, multi=multi)

        def records(counted: Skips | None = None) -> Iterator[Records]:
            """Another pass over the file; only the scoring pass counts what it sets aside."""
            sink, seen = (skips, info) if counted is not None else (Skips(), SourceInfo())
            return labelled_records(
                source, policy, sink, columns, fmt, allow_partial=allow_partial, info=seen
            )

        searched, scored = records, None
        where = {"file": describe(source)}
    stream = is_stream(source)
    if not stream:  # a quick pass first, so that no time is spent on data the run has seen
        hashes = [hash64(chunk.seqs) for chunk in records()]
        seen = seen_by_run(run, np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
        _guard(run, seen, allow_seen)
    asked = bands
    bands = mmseqs_available() if bands is None else bands
    skipped = None
    identity = None
    if bands and model.kind == "cnn":  # the homolog runs search anyway, while scoring
        try:
            if stream:
                raise RunError(f"{describe(source)} is a pipe, which cannot be read a second time")
            if progress:
                progress("identity to the training split (MMseqs2)")
            identity = _identity_to_train(run, searched)[:scored]
        except (RunError, OSError, MMseqsError) as error:  # e.g. the training store moved, a
            if asked:  # read-only run: the metrics still count, only the bands are missing
                raise
            skipped = describe_error(error)
    family = None
    if families:
        if stream:
            raise RunError(
                f"{describe(source)} is a pipe, which cannot be read a second time to find "
                "its families: give a file, or leave --families out"
            )
        if progress:
            progress("families of the evaluated proteins (MMseqs2)")
        with scratch("families") as work:  # of the proteins the class accuracy measures
            family = families_of(_class_pairs(records()), work)
    tally = Tally(model)
    if isinstance(model, CNNPredictor):
        model.report_uncalibrated = True
    done = 0
    for group in groups(searched(skips), model.search_rows):
        if model.search_rows:  # a homology predictor: one search for the group, not per chunk
            if progress:
                progress(f"homology search of {sum(map(len, group)):,} records (MMseqs2)")
            model.search_ahead([seq for chunk in group for seq in chunk.seqs])
        for chunk in group if scored is None else _first(iter(group), scored - done):
            part = None if identity is None else identity[done : done + len(chunk)]
            tally.add(chunk, part)
            done += len(chunk)
            if progress:
                progress(f"{done:,} records scored")
        group.clear()  # before the next group is read: one group's records held at a time
    y_true, y_pred, identities, hashes = tally.arrays()
    if stream:  # a pipe is read once: the check comes after scoring
        seen = seen_by_run(run, hashes)
        _guard(run, seen, allow_seen)
    if done == 0:
        why = "; ".join(skips.lines())
        raise RunError(
            f"{describe(source)}: no labelled record to evaluate" + (f" ({why})" if why else "")
        )
    result = {
        "run": str(Path(run).resolve()),
        "kind": model.kind,
        "scoring_precision": model.precision,
        "source": where,
        **metrics(y_true, y_pred, model.policy),
        "seen": seen,
        "set_aside": skips.to_dict(),
        "several_classes": tally.several,
        "levels": tally.level_results(),
    }
    if info.stopped is not None:
        result["partial"] = info.partial()
    if bands and identities is not None:
        result["identity_bands"] = band_accuracy(y_true, y_pred, identities)
    elif bands:
        result["identity_bands_skipped"] = skipped or "no identities"
    rows = tally.class_rows(y_true, y_pred, identities, family)
    if family is not None:
        if len(family) != len(y_true):  # the second pass read other records than the first
            raise RunError(f"{describe(source)} changed while it was evaluated; evaluate again")
        named = identity_bands(identities) if bands and identities is not None else None
        result["families"] = {
            "identity": FAMILY_IDENTITY, "coverage": COVERAGE,
            "tool": f"mmseqs {workflow(len(family))}", "resamples": RESAMPLES, "level": LEVEL,
            **family_report(y_true, y_pred, family, named),
        }  # fmt: skip
        if "level_top" in rows:  # each level's top prediction, on the same proteins and families
            result["families"]["levels"] = [
                family_accuracy(top[top >= 0] == 1, family[top >= 0]) for top in rows["level_top"]
            ]
    _check_replaceable(out)  # again: scoring took a while, and the folder is not locked
    with claimed_dir(out, replace=True) as folder:  # whole, or the earlier one stays
        plots.confusion(result, folder / "confusion.png")
        plots.precision_coverage(result["levels"], folder / "precision_coverage.png")
        history = read_metrics(run)
        if history:
            plots.learning_curves(history, folder / "learning_curves.png")
        np.savez(folder / CLASS_ROWS, **rows)
        # what compare checks the file against before it uses it
        result["class_rows"] = {"file": CLASS_ROWS, "sha256": file_sha256(folder / CLASS_ROWS)}
        write_json(folder / "metrics.json", result)
    return result


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _first(chunks: Iterator[Records], limit: int) -> Iterator[Records]:
    """The first ``limit`` records of a stream of chunks."""
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        yield chunk if len(chunk) <= left else chunk.take(np.arange(len(chunk)) < left)
        left -= len(chunk)


#: What an evaluation's folder holds; an earlier evaluation's folder is replaced whole.
EVALUATION_FILES = (
    "metrics.json",
    CLASS_ROWS,
    "confusion.png",
    "precision_coverage.png",
    "learning_curves.png",
)


def _check_out(out: str | os.PathLike, run: str | os.PathLike, source: Any) -> None:
    """Refuse an output directory that is the run or the store, or lies inside one of them, and
    one that is not an earlier evaluation's folder (it is replaced whole: nothing else may be
    lost with it)."""
    given = Path(out)
    target = given.resolve()
    for source_path in (run, source):
        if not isinstance(source_path, str | os.PathLike) or str(source_path) == "-":
            continue
        place = Path(source_path).resolve()
        if target == place or (place.is_dir() and place in target.parents):
            raise OutputIsInputError(
                f"the output {target} would write into the input {source_path}; "
                "choose another --out"
            )
    check_outside_runs_and_stores(target)
    if given.exists() and not given.is_dir():
        raise OutputRefusedError(f"{out} is a file; --out is the folder of an evaluation")
    _check_replaceable(given)


def _check_replaceable(out: Path) -> None:
    """Refuse a folder to replace that holds more than an evaluation: anything but its files
    and the hidden locks and temporaries of earlier ecstream writers."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        ours = p.name in EVALUATION_FILES or (
            p.name.startswith(".") and (p.name.endswith(".lock") or TEMP_MARK in p.name)
        )
        if not ours:
            raise OutputRefusedError(
                f"{out} holds {p.name!r}, which is not an evaluation's; choose another --out "
                "(an earlier evaluation there would be replaced whole)"
            )


class SeenRecordsError(RunError):
    """Evaluation data the run was trained on."""


def seen_by_run(run: str | os.PathLike, hashes: np.ndarray) -> dict:
    """How many records (by 64-bit sequence hash) the run learnt from (training split) or was
    tuned on (validation). A run made before runs recorded their sequences cannot be checked:
    ``checked`` is then false, with the reason; so it is for a damaged record (``damaged``)."""
    try:
        known = read_seen(run)
    except RunError as error:  # refused by _guard unless the user allows seen records
        return {"checked": False, "damaged": True, "why": str(error)}
    if known is None:
        return {
            "checked": False,
            "why": f"{run} has no {SEEN} (runs made before 2026-11-28 did not record their "
            "training sequences, or the file was removed): whether it has seen these records "
            "cannot be checked (retrain it to check)",
        }
    n = len(hashes)
    in_train = int(np.isin(hashes, known["train"]).sum())
    in_val = int(np.isin(hashes, known["val"]).sum())
    return {
        "checked": True,
        "records": n,
        "in_train": in_train,
        "share_in_train": in_train / n if n else 0.0,
        "in_val": in_val,
        "share_in_val": in_val / n if n else 0.0,
    }


def seen_line(seen: dict) -> str | None:
    """What the run had seen of the evaluated records (:func:`seen_by_run`), in a line; None
    when nothing, or when that could not be checked (``seen["why"]`` then says why)."""
    if not seen.get("checked") or not (seen["in_train"] or seen["in_val"]):
        return None
    return (
        f"{seen['in_train']:,} of the {seen['records']:,} records evaluated are in its "
        f"training split and {seen['in_val']:,} in its validation split: its accuracy is "
        "optimistic on them"
    )


def _guard(run: str | os.PathLike, seen: dict, allow_seen: bool) -> None:
    if seen.get("damaged") and not allow_seen:
        raise SeenRecordsError(seen["why"])
    if seen["checked"] and seen["share_in_train"] > MAX_SEEN and not allow_seen:
        raise SeenRecordsError(
            f"{seen['in_train']:,} of {seen['records']:,} records to evaluate "
            f"({seen['share_in_train']:.1%}) are in the training split of {run}: the metrics "
            "would overstate accuracy on new proteins; evaluate other data, or pass "
            "--allow-seen (allow_seen=True) to measure it anyway"
        )


def _identity_to_train(run, records: Callable[[], Iterator[Records]]) -> np.ndarray:
    """Each record's highest identity to the run's training split (NaN: no hit), searched in
    the groups a homology run searches, so that the two share the cached searches."""
    target = training_targets(run)
    with scratch("bands") as work:
        found = [hits.max_fident for hits in hits_in_groups(records(), target, work)]
    return np.concatenate([np.empty(0), *found])
