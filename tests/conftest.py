"""Shared fixtures: the real data (a small slice of it) and stores built from it.

The data lives beside the project at ``../shared/data``. In a user's clone without it the tests
that need it skip and say why; in CI (``CI=true``) its absence is an error, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bacteria-ec.tsv.gz"


@pytest.fixture(autouse=True, scope="session")
def _own_search_cache(tmp_path_factory):
    """MMseqs2 results are cached per user; tests use a cache of their own, empty at start."""
    os.environ["ECSTREAM_CACHE"] = str(tmp_path_factory.mktemp("ecstream-cache"))


def head_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` lines of a (gzip) text file."""
    import gzip
    import itertools

    with gzip.open(path, "rt") as fh:
        return list(itertools.islice(fh, n))


def require_data() -> Path:
    if DATA.is_file():
        return DATA
    message = f"the real data is missing: {DATA} (see the README, 'Data')"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_mmseqs() -> str:
    """The mmseqs binary; CI installs it (make test), so there its absence fails."""
    from ecstream.mmseqs.binary import MMseqsNotFound, find_mmseqs

    try:
        return find_mmseqs()
    except MMseqsNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def mmseqs() -> str:
    return require_mmseqs()


@pytest.fixture(scope="session")
def data_path() -> Path:
    """Path of the shared gzip TSV of 206k EC-labelled proteins."""
    return require_data()


@pytest.fixture(scope="session")
def small_store(data_path, tmp_path_factory):
    """A store of the first 3,000 rows of the real data (random split, seed 0)."""
    import ecstream

    out = tmp_path_factory.mktemp("stores") / "small"
    return ecstream.build_store(data_path, out, max_records=3000)


@pytest.fixture(scope="session")
def cnn_run(small_store, tmp_path_factory):
    """A small CNN trained briefly on ``small_store`` (a few hundred records, two epochs)."""
    from ecstream.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "cnn"
    config = TrainConfig(epochs=2, batch_size=32, limit_train_batches=10, progress=False)
    return train(small_store.path, out, config).run
