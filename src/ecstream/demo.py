"""``ecstream demo``: build → train → evaluate → predict on the default data in ~10 minutes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .atomic import atomic_open

DATA_NAME = "bacteria-ec.tsv.gz"
SAMPLE = 0.15  # ~30k of the 206k shared records
UNIPROT_QUERY = (
    "https://rest.uniprot.org/uniprotkb/stream?compressed=true&format=tsv"
    "&fields=accession%2Cec%2Csequence&query=%28ec%3A*%29+AND+%28taxonomy_id%3A2%29"
)


class DemoDataMissing(FileNotFoundError):
    """No default data: says what the demo needs and how to get it."""


def find_data(explicit: str | None = None) -> Path:
    """The demo's input: ``--data``, else ../shared/data beside the project, else $ECSTREAM_DATA."""
    if explicit:
        if not Path(explicit).is_file():
            raise DemoDataMissing(f"{explicit}: no such file")
        return Path(explicit)
    project = Path(__file__).resolve().parents[2]
    for candidate in (project.parent / "shared" / "data" / DATA_NAME,
                      Path.cwd().parent / "shared" / "data" / DATA_NAME):  # fmt: skip
        if candidate.is_file():
            return candidate
    env = os.environ.get("ECSTREAM_DATA")
    if env and Path(env).is_file():
        return Path(env)
    raise DemoDataMissing(
        "the demo needs EC-labelled proteins: a UniProt TSV export with the columns Entry, "
        f"EC number and Sequence (gzip is fine). Put it at ../shared/data/{DATA_NAME} or set "
        "ECSTREAM_DATA=/path/to/export.tsv.gz"
        + (f" (ECSTREAM_DATA={env} does not exist)" if env else "")
        + ". To download bacterial enzymes from UniProt: "
        + f"curl -o uniprot-ec.tsv.gz '{UNIPROT_QUERY}'"
    )


def _fresh(path: Path, marker: str) -> None:
    """Remove a previous demo product (only if it is one: it holds ``marker``)."""
    if path.exists():
        if not (path / marker).exists():
            raise FileExistsError(f"{path} exists and is not from a previous demo; choose --out")
        shutil.rmtree(path)


def run_demo(data: str | None, out: str | os.PathLike, minutes: float = 6.0) -> int:
    from .build import build_store
    from .config import TrainConfig
    from .evaluate import evaluate
    from .predict import predict_file
    from .predictors import load_model
    from .report import bands_table, metrics_table, print_all, store_tables
    from .train import train

    console = Console()
    source = find_data(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _fresh(out / "run", "config.json")  # before the build: a run not the demo's stops it at once
    started = time.perf_counter()

    console.rule(f"1/4 build: a seeded {SAMPLE:.0%} sample of {escape(source.name)}")
    store = build_store(source, out / "store", sample=SAMPLE, seed=0, force=True)
    print_all(console, store_tables(store)[:2])

    console.rule(f"2/4 train: model 'small', bucketed batches, at most {minutes:g} minutes")
    seconds = int(minutes * 60)
    config = TrainConfig(model="small", max_time=f"00:00:{seconds // 60:02d}:{seconds % 60:02d}")
    result = train(store.path, out / "run", config)
    console.print(f"{result.epochs} epochs, best val_loss {result.best_val_loss:.4f}")

    console.rule("3/4 evaluate: the held-out test split")
    metrics = evaluate(out / "run", store.path, out / "evaluation", split="test")
    console.print(metrics_table(metrics))
    if bands := bands_table(metrics):
        console.print(bands)

    console.rule("4/4 predict: a FASTA of the test proteins")
    fasta = out / "test-proteins.fasta"
    with atomic_open(fasta, "w") as fh:
        for chunk in store.records("test"):
            fh.writelines(f">{i}\n{s.decode()}\n" for i, s in chunk.pairs())
    summary = predict_file(load_model(out / "run"), fasta, out / "predictions.tsv")

    console.rule("summary")
    console.print(
        f"test accuracy [bold]{metrics['accuracy']:.1%}[/], macro-F1 {metrics['macro_f1']:.3f} "
        f"on {metrics['n']:,} proteins never seen in training"
    )
    paths = Text(  # user paths are text, never markup
        f"predictions: {out / 'predictions.tsv'} ({summary['records']:,} proteins, "
        f"{summary['per_second']:,.0f} sequences/s)\n"
        f"plots: {out / 'evaluation' / 'confusion.png'}, "
        f"{out / 'evaluation' / 'learning_curves.png'}\n"
        f"run: {out / 'run'} · store: {store.path} · total {time.perf_counter() - started:.0f} s"
    )
    console.print(paths)
    return 0
