"""Run directories: what a run records (its checksums too), and refusing runs this version cannot
use or whose files changed."""

from __future__ import annotations

import csv
import os
import platform
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np

from . import alphabet, hashing, integrity
from .atomic import OutputIsInputError, atomic_dir, atomic_open, enclosing, read_json, write_json
from .hashing import hash64
from .notices import notify
from .store import store_holding
from .version import __version__

RUN_FORMAT = "ecstream-run"
RUN_VERSION = 1
#: Hashes of the sequences a run learnt from (``train``) and was tuned on (``val``).
SEEN = "seen.npz"
#: Temperatures and thresholds fitted on validation (see ecstream.tuning).
CALIBRATION = "calibration.json"
#: Size and checksum of every file of a finished run, written last (:func:`seal`).
CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "ecstream-run-checksums"
#: Not sealed: the resume state, rewritten while a run trains (:func:`check_archive` checks it).
CHECKPOINTS = "checkpoints"
#: The searchable training split in a run: a kNN run's model, a CNN run's made on first use.
TARGETS = "targets"
RUN_REMEDY = "train the run again or restore the file"
#: Share of records from the run's training split above which evaluate refuses them, and
#: above which a run warns that its validation split is (ValidationInTrainWarning).
MAX_SEEN = 0.01


class RunError(Exception):
    """A run directory that cannot be used (missing, other version, other alphabet or store)."""


class UncheckedRunWarning(UserWarning):
    """A run without checksums: its files are used unchecked."""


class ValidationInTrainWarning(UserWarning):
    """A run whose validation sequences are largely training sequences: what it tunes on
    validation (early stopping, calibration, thresholds) is optimistic."""


def versions() -> dict:
    """Versions of the libraries a run was made with."""
    import lightning
    import numpy
    import pyarrow
    import torch
    import torchmetrics

    return {
        "ecstream": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


def base_config(kind: str, store, ec_fingerprint: str | None = None) -> dict:
    """What every run records: format, kind, alphabet, label policy, store identity, versions
    (``ec_fingerprint``: the train split's, when the caller has read it already)."""
    return {
        "format": RUN_FORMAT,
        "run_version": RUN_VERSION,
        "kind": kind,
        "alphabet": alphabet.spec(),
        "labels": store.policy.to_dict(),
        "store": {
            "path": str(store.path.resolve()),
            "fingerprints": {s: store.fingerprint(s) for s in store.splits},
            # the fingerprints cover ids, residues and classes; the EC numbers a full-EC run
            # learns are covered here
            "ec_fingerprint": ec_fingerprint or store.ec_fingerprint("train"),
            "split": store.manifest["split"],
        },
        "versions": versions(),
    }


@contextmanager
def new_run(out: str | os.PathLike) -> Iterator[Path]:
    """Make a run directory atomically: filled in a hidden sibling, renamed to ``out`` at the end.

    ``out`` must be absent or empty. A failure leaves nothing behind, so the same ``out`` can be
    used again.
    """
    out = Path(out)
    check_outside_runs_and_stores(out)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} already holds a run; choose another --out")
    with atomic_dir(out) as work:
        yield work


def run_holding(path: str | os.PathLike) -> Path | None:
    """The run whose folder holds ``path`` (its ``config.json`` says it is ecstream's), if any."""
    return enclosing(path, "config.json", RUN_FORMAT)


def check_outside_runs_and_stores(path: str | os.PathLike) -> None:
    """Refuse an output inside a run's or a store's folder: it could replace their files (a
    prediction written over ``model.pt``), and a run or a store holds only what made it."""
    for holder, what in ((run_holding(path), "run"), (store_holding(path), "store")):
        if holder is not None:
            raise OutputIsInputError(
                f"the output {path} lies inside the {what} {holder}; choose another output"
            )


def read_config(run: str | os.PathLike, *, training_ok: bool = False) -> dict:
    """A run's ``config.json``, refusing other formats, versions and alphabets, and a run whose
    training has not finished unless ``training_ok`` (``train`` calibrating its own run)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise RunError(
            f"{run}: not an ecstream run (no config.json); train one with 'ecstream train'"
        )
    config = read_json(path)
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not an ecstream run config")
    # before what the config says: a changed byte must be named as damage, not as a mismatch
    verify(Path(run), training_ok=training_ok)
    if config.get("run_version") != RUN_VERSION:
        raise RunError(
            f"{run}: a run of format {config.get('run_version')} (ecstream "
            f"{config.get('versions', {}).get('ecstream', '?')}); this ecstream {__version__} "
            f"reads format {RUN_VERSION}: retrain it, or use the ecstream version that made it"
        )
    for key in ("labels", "train", "store", "vocabulary"):  # read as objects by every kind
        if key in config and not isinstance(config[key], dict):
            raise RunError(f"{path}: its entry {key!r} is not an object (edited by hand?)")
    theirs = config.get("alphabet")
    if theirs != alphabet.spec():
        name = theirs.get("name") if isinstance(theirs, dict) else None
        if name == alphabet.NAME:  # the same name, other tokens: edited, or damaged unsealed
            raise RunError(f"{path}: its alphabet entry is not that of {name!r} (edited by hand?)")
        raise RunError(
            f"{run}: trained with alphabet {name!r}, this ecstream uses {alphabet.NAME!r}; "
            "retrain it"
        )
    return config


def seal(run: Path, leave_out: tuple[str, ...] = ()) -> None:
    """Record the size and XXH3-128 of each file of a finished run, written last: from then on
    every use of the run checks them first (:func:`verify`). Left out: its checkpoints, the
    entries ``leave_out`` names (what a later command may add, such as a CNN run's
    :data:`TARGETS`), and hidden names (the claims and temporaries of writers inside it,
    which the next writer removes)."""
    skipped = {CHECKPOINTS, CHECKSUMS, *leave_out}
    files = {}
    for path in sorted(run.rglob("*")):
        parts = path.relative_to(run).parts
        if parts[0] in skipped or any(p.startswith(".") for p in parts) or not path.is_file():
            continue
        files["/".join(parts)] = hashing.file_checksum(path)
    write_json(run / CHECKSUMS, {"format": CHECKSUMS_FORMAT, "files": files})


def sealed_digest(run: str | os.PathLike) -> str | None:
    """What names a finished run's exact files: the XXH3-128 of its :data:`CHECKSUMS` (``None``
    for a run without them). A hybrid records those of the runs it is made of."""
    path = Path(run) / CHECKSUMS
    return hashing.file_checksum(path)[hashing.CHECKSUM] if path.is_file() else None


def mark_training(run: Path) -> None:
    """Put a "training" mark where a run's checksums go, before its files change (a new run,
    or a finished one trained on): until :func:`seal` replaces it, every use of the run is
    refused, so a run killed between writing ``model.pt`` and calibrating it (its files
    written one after another) is never used half-made."""
    write_json(run / CHECKSUMS, {"format": CHECKSUMS_FORMAT, "training": True})


def verify(run: Path, *, training_ok: bool = False) -> bool:
    """Check every file a run's :data:`CHECKSUMS` lists, once per process tree
    (:func:`ecstream.integrity.check`); :class:`RunError` naming the first file that is missing
    or differs, or saying that the run's training has not finished (``training_ok``: a resume,
    which returns ``False`` then). ``False`` when the run has no checksums (made before they
    were recorded): nothing could be checked."""
    path = run / CHECKSUMS
    if not path.is_file():
        return False
    sealed = read_json(path)
    if not isinstance(sealed, dict) or sealed.get("format") != CHECKSUMS_FORMAT:
        raise RunError(f"{path}: not a run's checksums; {RUN_REMEDY}")
    if sealed.get("training") is True:
        if training_ok:
            return False
        raise RunError(
            f"{run}: its training has not finished (it is training now, or it was stopped "
            "before it finished); continue it with 'ecstream train STORE --out RUN --resume' "
            "and the options it was made with (its config.json), or wait for it"
        )
    files = sealed.get("files")
    if not isinstance(files, dict) or not files:
        raise RunError(f"{path}: damaged (no list of files); {RUN_REMEDY}")
    for name, expected in files.items():
        if not _well_formed(name, expected):
            raise RunError(f"{path}: damaged (its entry {name!r}); {RUN_REMEDY}")
        file = run / name  # a link is followed: a run's files may be links (DVC, git-annex)
        try:
            regular = stat.S_ISREG(file.stat().st_mode)  # before open: a pipe would block it
        except FileNotFoundError:
            regular = None
        if not regular:
            what = "missing" if regular is None else "not a file"
            raise RunError(f"{file}: {what}, though its run recorded it; {RUN_REMEDY}")
        try:
            with open(file, "rb") as fh:
                integrity.check(fh, file, expected, remedy=RUN_REMEDY)
        except integrity.IntegrityError as error:
            raise RunError(str(error)) from None
    return True


def _well_formed(name: object, expected: object) -> bool:
    """An entry :func:`seal` could have written: a relative path inside the run (no ``..``,
    which only damage could bring) and ``{"bytes": int, "xxh3_128": str}``."""
    if not isinstance(name, str) or not isinstance(expected, dict):
        return False
    parts = PurePosixPath(name).parts
    inside = bool(parts) and not name.startswith("/") and ".." not in parts
    size, checksum = expected.get("bytes"), expected.get(hashing.CHECKSUM)
    return inside and type(size) is int and size >= 0 and isinstance(checksum, str)


def warn_if_unchecked(run: Path) -> None:
    """Say once per process that a run without checksums is used unchecked."""
    if not (run / CHECKSUMS).is_file():
        message = (
            "no checksums (a run made before ecstream recorded them): its files are used unchecked"
        )
        notify(run / "config.json", message, UncheckedRunWarning, once=True)


def check_archive(path: Path) -> None:
    """Check a PyTorch file (a zip archive) against its own CRC-32s: ``torch.load`` does not,
    and reads a flipped bit in a weight as a different weight."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as error:  # any damage: BadZipFile, an "encrypted" flag, a bad method…
        raise RunError(f"{path}: not a readable PyTorch file ({error}); {RUN_REMEDY}") from None
    if bad is not None:
        raise RunError(f"{path}: damaged (the CRC-32 of its part {bad} differs); {RUN_REMEDY}")


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """Rows of ``RUN/metrics.csv`` (empty when the run has not finished an epoch)."""
    path = Path(run) / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def record_seen(
    run: Path,
    store,
    hashes: dict[str, np.ndarray] | None = None,
    parts: list[dict[str, np.ndarray]] | None = None,
) -> None:
    """Record which sequences the run learns from and is tuned on (sorted 64-bit hashes).

    About 8 bytes per training record; :func:`read_seen` gives them to ``evaluate``, which
    then knows how many evaluated records the run has seen. ``hashes``: those of the train and
    val splits (:func:`unique_hashes`) when the caller has read them already. ``parts``: the
    seen records of the runs this one is made of (a hybrid's, :func:`parts_seen`), which it
    has seen too (a part may have been tuned on another store's val split).
    """
    if hashes is None:
        hashes = {
            split: unique_hashes([hash64(chunk.seqs) for chunk in store.records(split)])
            for split in ("train", "val")
        }
    _warn_if_val_in_train(store, hashes)  # its own splits: a part's warned when it was made
    for theirs in parts or []:
        hashes = {split: np.union1d(hashes[split], theirs[split]) for split in hashes}
    with atomic_open(run / SEEN, "wb") as fh:
        np.savez(fh, **hashes)


def parts_seen(runs: tuple[str | os.PathLike, ...]) -> list[dict[str, np.ndarray]]:
    """The seen records of the runs a hybrid is made of (runs made before they were recorded
    have none), read before the hybrid's minutes of fitting: a damaged one stops it at once."""
    seen = []
    for run in runs:
        try:
            theirs = read_seen(run)
        except RunError:
            raise RunError(
                f"{Path(run) / SEEN}: damaged; it cannot say which records this run has seen, "
                f"so a hybrid of it could not either: {RUN_REMEDY}"
            ) from None
        if theirs is not None:
            seen.append(theirs)
    return seen


def _warn_if_val_in_train(store, hashes: dict[str, np.ndarray]) -> None:
    """Warn when over :data:`MAX_SEEN` of a store's distinct validation sequences are training
    sequences (a column split may put one sequence in both; random and cluster splits keep
    identical sequences together)."""
    shared = int(np.isin(hashes["val"], hashes["train"]).sum())
    if shared > MAX_SEEN * max(len(hashes["val"]), 1):
        # named by its store: a kNN or hybrid run is still a temporary folder here
        notify(
            store.path,
            f"{shared:,} of the {len(hashes['val']):,} distinct validation sequences of a run "
            "made on it are in its training split: the run's early stopping, calibration and "
            "thresholds are tuned on proteins it learns from, and are optimistic",
            ValidationInTrainWarning,
        )


def unique_hashes(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted distinct hashes of chunks' sequences (:func:`~ecstream.hashing.hash64`)."""
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def read_seen(run: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The hashes :func:`record_seen` wrote, or ``None`` for a run made before it existed."""
    path = Path(run) / SEEN
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            seen = {name: saved[name] for name in saved.files}
        if not {"train", "val"} <= set(seen):
            raise KeyError("train" if "train" not in seen else "val")
        return seen
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:  # cut, emptied
        raise RunError(
            f"{path}: damaged ({type(error).__name__}); it cannot say which "
            "records the run has seen (--allow-seen evaluates anyway)"
        ) from error


def read_calibration(run: str | os.PathLike) -> dict | None:
    """A run's calibration, or ``None`` for a run made before runs were calibrated."""
    path = Path(run) / CALIBRATION
    return read_json(path) if path.is_file() else None
