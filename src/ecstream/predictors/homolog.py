"""Homology predictors: the nearest homolog by MMseqs2 (kNN), and its hybrid with a CNN.

- ``knn``: a query takes the EC numbers of its best-scoring MMseqs2 hit (by bit score) in the
  training split, all of them, at every level; how probable each level is right comes from
  the hit's identity (a curve fitted on validation). A query without any hit gets nothing
  (``source`` = ``no_hit``).
- ``hybrid``: level by level, the homolog's number while the hit's identity is at or above
  that level's threshold (chosen on validation), and the CNN's below it (under the homolog's
  number where the homolog decided the level above). The CNN may predict the seven classes
  only; then deeper levels come from the homolog alone. Its confidences are its own, fitted
  on validation: a homolog's by identity *and* by whether the CNN's most probable class at
  that level is one of the homolog's (two independent kinds of evidence: where they agree the
  homolog is right far more often at the same identity; BENCHMARKS.md, accuracy section), and
  the CNN's by a confidence map fitted on the rows the CNN decides (proteins without a close
  homolog, where the CNN is right far less often than on validation as a whole).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..atomic import OutputBusyError, claim
from ..cache import scratch
from ..calibrate import identity_confidence
from ..hashing import hash64
from ..hierarchy import apply_map, consistent, split_levels
from ..labels import ECVocabulary, LabelPolicy
from ..mmseqs.search import (
    SEARCH_ROWS,
    SEARCH_SENSITIVITY,
    Hits,
    TargetDB,
    best_hits,
    with_profile_fallback,
)
from ..notices import notify
from ..runs import (
    TARGETS,
    RunError,
    read_calibration,
    read_config,
    sealed_digest,
    warn_if_unchecked,
)
from ..store import Store, StoreError
from .base import Predictor, Scores, entries_of
from .cnn import CNNPredictor

EXTRA_COLUMNS = ("source", "homolog", "identity")


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """Probability rows: 1 at the label, NaN everywhere for label -1 (no prediction)."""
    probs = np.zeros((len(labels), classes), dtype=np.float32)
    hit = labels >= 0
    probs[np.flatnonzero(hit), labels[hit]] = 1.0
    probs[~hit] = np.nan
    return probs


def _source(homolog: bool, profile: bool, otherwise: str) -> str:
    """What decided a prediction: ``homolog``, ``profile`` (a homolog found by the profile
    fallback), or ``otherwise`` (``cnn`` in a hybrid, ``no_hit`` in a kNN run)."""
    return ("profile" if profile else "homolog") if homolog else otherwise


def _columns(hits: Hits, source: list[str]) -> dict[str, list]:
    has = hits.has_hit
    return {
        "source": source,
        "homolog": hits.best_id.tolist(),
        "identity": [f"{x:.3f}" if h else "" for x, h in zip(hits.best_fident, has, strict=True)],
    }


class KNNPredictor(Predictor):
    """Nearest-homolog classifier: the class of the best MMseqs2 hit in the training split."""

    kind = "knn"
    extra_columns = EXTRA_COLUMNS
    max_length = None  # whole sequences are searched, never truncated
    search_rows = SEARCH_ROWS

    def __init__(self, run: str | os.PathLike, config: dict, threads: int | None = None):
        self.run, self.config = Path(run), config
        self.policy = LabelPolicy.from_dict(config["labels"])
        if "vocabulary" not in config:
            raise RunError(
                f"{run}: a kNN run made by ecstream 0.1.0 transfers classes only; make it again "
                "('ecstream train STORE --model knn') for full EC numbers"
            )
        self.vocab = ECVocabulary.from_dict(config["vocabulary"])
        self.target = TargetDB(self.run / TARGETS)
        self.threads = threads
        self.sensitivity = float(config.get("search", {}).get("sensitivity", SEARCH_SENSITIVITY))
        calibration = read_calibration(run) or {}
        self.curves = calibration.get("identity_curves")  # see homolog_confidence
        self.thresholds = calibration.get("thresholds")
        # kNN runs made before the profile fallback existed have none
        self.fallback = bool(config.get("search", {}).get("profile_fallback", False))
        self._ahead: tuple[np.ndarray, np.ndarray, Hits] | None = None  # see search_ahead

    def search_ahead(self, seqs: list[bytes]) -> None:
        """Search the records to be scored next in one go (:meth:`Predictor.search_ahead`); the
        group's hits are kept, by sequence, until the next group is announced."""
        self._ahead = None  # the previous group's hits go first
        if not seqs:
            return
        hits = self._search([str(i) for i in range(len(seqs))], seqs)
        hashes = hash64(seqs)
        order = np.argsort(hashes, kind="stable")
        self._ahead = (hashes[order], order, hits)

    def hits(self, ids: list[str], seqs: list[bytes]) -> Hits:
        """Best hits; queries without one are searched again by profile, if the run says so.
        Sequences of the group announced by :meth:`search_ahead` are not searched again."""
        ahead = self._ahead  # read once: another thread may announce the next group
        if ahead is not None and seqs:
            known, order, hits = ahead
            hashes = hash64(seqs)
            at = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
            if (known[at] == hashes).all():
                return hits.take(order[at], ids)
        return self._search(ids, seqs)

    def _search(self, ids: list[str], seqs: list[bytes]) -> Hits:
        with scratch("knn") as work:
            hits = best_hits(
                zip(ids, seqs, strict=True), self.target, Path(work) / "search", self.threads,
                sensitivity=self.sensitivity,
            )  # fmt: skip
            if self.fallback:
                hits = with_profile_fallback(hits, seqs, self.target, Path(work) / "profile",
                                             self.threads)  # fmt: skip
            return hits

    def model_files(self) -> list[Path]:
        meta = [self.run / TARGETS / n for n in (TargetDB.META, "labels.npy", "ids.arrow")]
        return [*meta, *super().model_files()]

    def homolog_classes(self, hits: Hits) -> list[np.ndarray]:
        """Per level, the best hit's classes (multi-hot ``bool [N, C_level]``)."""
        targets, _ = self.vocab.targets(self.target.ecs(hits.best_target).tolist())
        return [b.astype(bool) for b in split_levels(targets, self.vocab)]

    def homolog_levels(self, hits: Hits) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per level: the best hit's classes (multi-hot), and them weighted by the probability
        that the homolog is right at that level and identity (1 before calibration)."""
        multi_hot = self.homolog_classes(hits)
        return multi_hot, weighted(multi_hot, hits, self.curves)

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        hits = self.hits(ids, seqs)
        source = [
            _source(h, p, "no_hit") for h, p in zip(hits.has_hit, hits.by_profile, strict=True)
        ]
        probs = one_hot(hits.best_label, len(self.policy.classes))
        levels = consistent(self.homolog_levels(hits)[1], self.vocab)
        return Scores(
            probs, levels, _columns(hits, source), hits.max_fident, profile=hits.by_profile
        )


def weighted(
    multi_hot: list[np.ndarray],
    hits: Hits,
    curves: dict[str, list[list[float]]] | None,
    agrees: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per level, the homolog's classes weighted by the probability that they are right
    (:func:`homolog_confidence`; 1 for any hit without ``curves``)."""
    out = []
    for level, block in enumerate(multi_hot):
        if curves is None:
            conf = np.where(hits.has_hit, 1.0, 0.0)
        else:
            agree = None if agrees is None else agrees[level]
            conf = homolog_confidence(hits, curves, level, agree)
        out.append((block * conf[:, None]).astype(np.float32))
    return out


def homolog_confidence(
    hits: Hits, curves: dict[str, list[list[float]]], level: int, agrees: np.ndarray | None = None
) -> np.ndarray:
    """P(the homolog's class is right) at ``level``, by the hit's identity, from the curve of
    its kind of hit: ``search`` or ``profile`` (the profile fallback's), and, where a hybrid's
    CNN ``agrees`` (its most probable class is one of the homolog's), ``search+cnn`` or
    ``profile+cnn``; a kind without a curve of its own takes ``search``'s. No hit: 0."""
    profile = hits.by_profile
    conf = identity_confidence(hits.best_fident, curves["search"][level])
    groups = [("profile", profile)]
    if agrees is not None:
        groups += [("search+cnn", ~profile & agrees), ("profile+cnn", profile & agrees)]
    for kind, rows in groups:
        if kind in curves:
            conf = np.where(rows, identity_confidence(hits.best_fident, curves[kind][level]), conf)
    return conf


def cnn_agrees(cnn: list[np.ndarray], homolog: list[np.ndarray]) -> list[np.ndarray]:
    """Per level, whether the CNN's most probable class is one of the homolog's; below the
    levels the CNN scores (a seven-class CNN), whether it agreed at its deepest: a homolog
    whose class the CNN doubts is less often right deeper down as well, and its deeper levels
    are capped by its first (a level is never more probable than its parent)."""
    out = []
    for level, block in enumerate(homolog):
        if level < len(cnn):
            top = cnn[level].argmax(axis=1)
            out.append(block[np.arange(len(block)), top])
        else:
            out.append(out[len(cnn) - 1] & block.any(axis=1))
    return out


def rescaled(
    levels: list[np.ndarray], decided: np.ndarray, maps: list, vocab: ECVocabulary
) -> list[np.ndarray]:
    """The hybrid's consistent probabilities with each row the CNN decides at a level scaled
    so that its top class has the confidence ``maps`` give it (knots per level, fitted on the
    rows the CNN decides). Scaling the row, not mapping each class, keeps the shape of the
    CNN's distribution: a map fitted on top classes would lift a row's small probabilities."""
    out = []
    for level, p in enumerate(levels):
        top = p.max(axis=1, keepdims=True)
        scale = apply_map(top, *maps[level]) / np.maximum(top, np.float32(1e-12))
        out.append(np.where(decided[level][:, None], p, p * scale).astype(np.float32))
    return consistent(out, vocab)


def homolog_decides(
    hits: Hits, threshold: float, profile_threshold: float | None = None
) -> np.ndarray:
    """Where the hybrid takes the homolog's class: a hit with identity ≥ ``threshold``, or, for
    a hit of the profile fallback, ≥ ``profile_threshold`` (never, when it is ``None``)."""
    identity = np.nan_to_num(hits.best_fident, nan=-1.0)
    found = hits.has_hit & ~hits.by_profile & (identity >= threshold)
    if profile_threshold is not None:
        found |= hits.by_profile & (identity >= profile_threshold)
    return found


class HybridPredictor(Predictor):
    """Per level, the homolog's number at or above an identity threshold, the CNN's below."""

    kind = "hybrid"
    extra_columns = (*EXTRA_COLUMNS, "homolog_depth")  # levels taken from the homolog
    search_rows = SEARCH_ROWS

    def __init__(
        self, run: str | os.PathLike, config: dict, device: str | None = None, precision: str = "32"
    ):
        self.run, self.config = Path(run), config
        try:  # the two runs it was made of are read from where they were then
            cnn_run = config["cnn_run"]
            with entries_of(cnn_run):
                self.cnn = CNNPredictor(cnn_run, read_config(cnn_run), device, precision=precision)
            with entries_of(config["knn_run"]):
                self.knn = KNNPredictor(config["knn_run"], read_config(config["knn_run"]))
        except RunError as error:
            raise RunError(f"{run}: a hybrid of runs that cannot be read: {error}") from error
        # a part replaced, or trained on since, has valid checksums of its own: not the run
        # the hybrid's thresholds and confidences were fitted with
        parts = config.get("parts")  # None: a hybrid made before parts were recorded
        for role, part in (("cnn", cnn_run), ("knn", config["knn_run"])):
            # a part without checksums then (None) that has them now was trained on since
            if isinstance(parts, dict) and sealed_digest(part) != parts.get(role):
                raise RunError(
                    f"{run}: its {role.upper()} run {part} is not the one it was made with "
                    "(replaced, or trained on since); make the hybrid again"
                )
            warn_if_unchecked(Path(part))
        self.policy, self.max_length = self.cnn.policy, self.cnn.max_length
        self.vocab = self.knn.vocab
        # identity thresholds per level; a hybrid of ecstream 0.1.0 had one, for level 1
        self.identity = [float(t) for t in config.get("identity_thresholds", [config["threshold"]])]
        self.identity += [self.identity[-1]] * (self.vocab.depth - len(self.identity))
        self.profile_identity = config.get("profile_thresholds")
        calibration = read_calibration(run) or {}
        self.thresholds = calibration.get("thresholds")
        # hybrids made before they had confidences of their own take the kNN's
        self.curves = calibration.get("identity_curves")
        self.cnn_maps = calibration.get("cnn_maps")
        if not self.knn.policy.same_classes(self.policy):
            raise RunError(f"{run}: its CNN and kNN runs have different classes")
        if self.cnn.vocab.depth > 1 and self.cnn.vocab.classes != self.vocab.classes:
            raise RunError(f"{run}: its CNN and kNN runs know different EC numbers")

    def model_files(self) -> list[Path]:
        return [*super().model_files(), *self.cnn.model_files(), *self.knn.model_files()]

    def handled(self, length: int) -> str:
        return self.cnn.handled(length)  # the search takes whole sequences; the CNN says how

    def search_ahead(self, seqs: list[bytes]) -> None:
        self.knn.search_ahead(seqs)

    @property
    def precision(self) -> str:
        """Number format of the CNN's forward pass."""
        return self.cnn.precision

    @property
    def batch_size(self) -> int:
        """Sequences per forward pass of the CNN."""
        return self.cnn.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.cnn.batch_size = value

    def levels(self, cnn: list[np.ndarray], hits: Hits) -> tuple[list[np.ndarray], np.ndarray]:
        """The hybrid's consistent probabilities per level, and where the homolog decided."""
        return hybrid_levels(
            self.vocab, cnn, self.knn.homolog_classes(hits), hits, self.identity,
            self.profile_identity, self.curves or self.knn.curves, self.cnn_maps,
            agreeing=bool(self.curves),
        )  # fmt: skip

    def score(self, ids: list[str], seqs: list[bytes]) -> Scores:
        cnn = self.cnn.score(ids, seqs)
        hits = self.knn.hits(ids, seqs)
        levels, decided = self.levels(cnn.levels, hits)
        source = [_source(u, p, "cnn") for u, p in zip(decided[0], hits.by_profile, strict=True)]
        # the class view is the hybrid's own level 1, as ec_number and confidence are: not the
        # homolog's one-hot (1.0 at any identity) nor the CNN's probabilities before its maps
        scores = Scores(
            levels[0].astype(np.float32), levels, _columns(hits, source), hits.max_fident,
            profile=hits.by_profile,
        )  # fmt: skip
        scores.extra["homolog_depth"] = decided.sum(axis=0).tolist()
        return scores


def hybrid_levels(
    vocab: ECVocabulary,
    cnn: list[np.ndarray],
    multi_hot: list[np.ndarray],
    hits: Hits,
    identity: list[float],
    profile_identity: list[float | None] | None,
    curves: dict[str, list[list[float]]] | None,
    maps: list | None = None,
    agreeing: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`combine` with the homolog weighted by ``curves`` (by agreement with the CNN when
    ``agreeing``), then the rows the CNN decides :func:`rescaled` by ``maps`` if given."""
    agrees = cnn_agrees(cnn, multi_hot) if agreeing else None
    homolog = weighted(multi_hot, hits, curves, agrees)
    levels, decided = combine(vocab, cnn, multi_hot, homolog, hits, identity, profile_identity)
    if maps:
        levels = rescaled(levels, decided, maps, vocab)
    return levels, decided


def combine(
    vocab: ECVocabulary,
    cnn: list[np.ndarray],
    hit: list[np.ndarray],
    homolog: list[np.ndarray],
    hits: Hits,
    identity: list[float],
    profile_identity: list[float | None] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The hybrid's consistent probabilities per level, and where the homolog decided
    (``bool [levels, N]``): at level L while the hit's identity ≥ ``identity[L]`` (a profile
    hit's: ≥ ``profile_identity[L]``) and it decided the level above; below, the CNN's classes
    under the homolog's."""
    n = len(hits)
    profile_identity = profile_identity or [None] * vocab.depth
    decided = np.zeros((vocab.depth, n), dtype=bool)
    levels = []
    for level in range(vocab.depth):
        decided[level] = homolog_decides(hits, identity[level], profile_identity[level])
        decided[level] &= hit[level].any(axis=1)  # a partial number says nothing down here
        if level:
            decided[level] &= decided[level - 1]
        mine = cnn[level] if level < len(cnn) else np.zeros_like(homolog[level])
        if level:  # under a homolog's number, the CNN may only go deeper along it
            under = hit[level - 1][:, vocab.parents[level]]
            mine = np.where(decided[level - 1][:, None], mine * under, mine)
        levels.append(np.where(decided[level][:, None], homolog[level], mine))
    return consistent(levels, vocab), decided


def training_targets(run: str | os.PathLike) -> TargetDB:
    """The searchable training split of any run (kept in ``RUN/targets``, made on first use)."""
    path = Path(run) / TARGETS
    if (path / TargetDB.META).is_file():
        return TargetDB(path)
    config = read_config(run)
    if config.get("kind") == "hybrid":
        return training_targets(config["knn_run"])
    store_path = config["store"]["path"]
    try:
        store = Store(store_path)
    except (StoreError, OSError) as exc:
        raise RunError(f"{run}: its training store {store_path} is needed: {exc}") from exc
    if store.fingerprint("train") != config["store"]["fingerprints"]["train"]:
        raise RunError(f"{store_path}: its training split changed since {run} was trained")
    while True:
        try:
            return TargetDB.create(store, "train", path)
        except FileExistsError:  # made meanwhile by another command
            return TargetDB(path)
        except OutputBusyError as busy:  # another command (evaluate) is making it: wait
            message = f"another ecstream process (pid {busy.holder}) is making it: waiting for it"
            notify(path, message, WaitingWarning)
            while _busy(path):
                time.sleep(0.5)
            if (path / TargetDB.META).is_file():
                return TargetDB(path)  # else that command died: make it


class WaitingWarning(UserWarning):
    """A command waits for another that is writing what it needs."""


def _busy(path: Path) -> bool:
    """Whether another process holds the claim on writing ``path`` now."""
    try:
        with claim(path):
            return False
    except OutputBusyError:
        return True
