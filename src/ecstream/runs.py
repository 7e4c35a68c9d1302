"""Run directories: what a run records, and refusing runs this version cannot use."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import alphabet
from .atomic import atomic_dir
from .version import __version__

RUN_FORMAT = "ecstream-run"
RUN_VERSION = 1


class RunError(Exception):
    """A run directory that cannot be used (missing, other version, other alphabet or store)."""


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


def base_config(kind: str, store) -> dict:
    """What every run records: format, kind, alphabet, label policy, store identity, versions."""
    return {
        "format": RUN_FORMAT,
        "run_version": RUN_VERSION,
        "kind": kind,
        "alphabet": alphabet.spec(),
        "labels": store.policy.to_dict(),
        "store": {
            "path": str(store.path.resolve()),
            "fingerprints": {s: store.fingerprint(s) for s in store.splits},
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
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} already holds a run; choose another --out")
    with atomic_dir(out) as work:
        yield work


def read_config(run: str | os.PathLike) -> dict:
    """A run's ``config.json``, refusing other formats, versions and alphabets."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise RunError(
            f"{run}: not an ecstream run (no config.json); train one with 'ecstream train'"
        )
    config = json.loads(path.read_text())
    if config.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: not an ecstream run config")
    if config.get("run_version") != RUN_VERSION:
        raise RunError(
            f"{run}: a run of format {config.get('run_version')} (ecstream "
            f"{config.get('versions', {}).get('ecstream', '?')}); this ecstream {__version__} "
            f"reads format {RUN_VERSION}: retrain it, or use the ecstream version that made it"
        )
    if config.get("alphabet") != alphabet.spec():
        raise RunError(
            f"{run}: trained with alphabet {config.get('alphabet', {}).get('name')!r}, "
            f"this ecstream uses {alphabet.NAME!r}; retrain it"
        )
    return config


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """Rows of ``RUN/metrics.csv`` (empty when the run has not finished an epoch)."""
    path = Path(run) / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))
