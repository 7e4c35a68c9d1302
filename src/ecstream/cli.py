"""The ``ecstream`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console

console = Console(stderr=True)
out = Console()


def _progress(label: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A live 'N rows read' line on an interactive terminal; silent otherwise."""
    if not console.is_terminal:
        return (lambda _n: None), (lambda: None)
    status = console.status(f"{label}…")
    status.start()
    return (lambda n: status.update(f"{label}: {n:,} rows read")), status.stop


def cmd_build(args: argparse.Namespace) -> int:
    from .sources import Columns
    from .store import build_store

    columns = Columns(id=args.id_column, ec=args.ec_column, sequence=args.sequence_column)
    update, stop = _progress("building " + str(args.out))
    try:
        store = build_store(
            args.inputs,
            args.out,
            columns=columns,
            fmt=args.format,
            force=args.force,
            progress=update,
            threads=args.threads,
            val=args.val,
            test=args.test,
            seed=args.seed,
            split=args.split,
            level=args.level,
            multi=args.multi_class,
            max_records=args.max_records,
            sample=args.sample,
            identity=args.identity,
            coverage=args.coverage,
        )
    finally:
        stop()
    _print_store(store)
    return 0


def _print_store(store) -> None:
    from .report import print_all, store_tables

    print_all(out, store_tables(store))


def cmd_info(args: argparse.Namespace) -> int:
    from .store import open_store

    store = open_store(args.store)
    if args.json:
        out.print_json(json.dumps(store.manifest))
    else:
        _print_store(store)
    if args.verify:
        problems = store.verify()
        for p in problems:
            console.print(f"[red]verify:[/] {p}")
        if problems:
            return 1
        console.print("[green]verify: every split matches its fingerprint[/]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecstream",
        description="Train, evaluate and serve EC class classifiers on protein sequences.",
    )
    parser.add_argument("--version", action="version", version=f"ecstream {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "build",
        help="build a store from UniProt TSV/CSV/Parquet exports",
        description="Read labelled tables in chunks, validate, split and write an Arrow store.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TSV/CSV (.gz ok), Parquet file/dir")
    p.add_argument("--out", required=True, help="store directory to create")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--split",
        default="random",
        help="random (hash of the sequence), column:NAME (a column saying train/val/test), "
        "or cluster (whole MMseqs2 clusters)",
    )
    p.add_argument("--identity", type=float, default=0.5, help="cluster split: min identity")
    p.add_argument("--coverage", type=float, default=0.8, help="cluster split: min coverage")
    p.add_argument("--threads", type=int, default=None, help="MMseqs2 threads (default: all)")
    p.add_argument("--max-records", type=int, default=None, help="read only the first N rows")
    p.add_argument("--sample", type=float, default=None, help="keep a seeded fraction of rows")
    p.add_argument("--level", type=int, default=1, help="EC level of the classes (default 1)")
    p.add_argument(
        "--multi-class",
        choices=("skip", "first"),
        default="skip",
        help="rows whose EC numbers span several classes: set aside (default) or take the first",
    )
    p.add_argument("--id-column", default="Entry")
    p.add_argument("--ec-column", default="EC number")
    p.add_argument("--sequence-column", default="Sequence")
    p.add_argument("--format", choices=("tsv", "csv", "parquet"), default=None)
    p.add_argument("--force", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", help="print a store's summary", description="Summarise a store.")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--verify", action="store_true", help="recompute the split fingerprints")
    p.set_defaults(func=cmd_info)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    args = build_parser().parse_args(argv)
    from .sources import InputError
    from .store import StoreError

    try:
        return args.func(args)
    except (InputError, StoreError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[bold red]error:[/] {message}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
