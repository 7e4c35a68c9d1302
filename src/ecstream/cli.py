"""The ``ecstream`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape

from .build import BuildConfig
from .config import (
    PREDICT_BATCH_SIZE,
    SCORING_PRECISIONS,
    TARGETS,
    TOP_K,
    TrainConfig,
    check_duration,
)
from .sources import TEXT_FORMATS, Columns
from .version import __version__

console = Console(stderr=True, soft_wrap=True)  # messages stay one line in logs
out = Console()


def _progress(label: str) -> tuple[Callable[[int | str], None], Callable[[], None]]:
    """A live status line ('N rows read', or a message) on a terminal; silent otherwise."""
    if not console.is_terminal:
        return (lambda _n: None), (lambda: None)
    label = escape(label)  # paths are user text, not markup
    status = console.status(f"{label}…")
    status.start()

    def update(n: int | str) -> None:
        status.update(f"{label}: {n:,} rows read" if isinstance(n, int) else f"{label}: {n}")

    return update, status.stop


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    """``int(text)`` or ``float(text)``, failing as argparse shows a wrong value."""
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (a learning rate)."""
    value = _number(text, float)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _not_negative_number(text: str) -> float:
    """An argparse type: a finite number of at least 0 (a weight decay)."""
    value = _number(text, float)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def _duration(text: str) -> str:
    """An argparse type: ``DD:HH:MM:SS`` (Lightning's ``max_time``), longer than zero."""
    try:
        return check_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--max-time ")) from None


def _minutes(text: str) -> float:
    """An argparse type: the demo's training budget, at least one minute (an epoch's start)."""
    value = _number(text, float)
    if not 1 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be at least 1 minute, got {text}")
    return value


def _confidence(text: str) -> float:
    """An argparse type: a threshold in (0, 1] (at 0 every EC number of the run clears it)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def _part(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N``, part I (from 0) of N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N, such as 0/4, got {text}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"I must be in 0 … N-1, got {text}")
    return i, n


def _batch_limit(text: str) -> int | float:
    """Lightning's ``limit_train_batches``: a count (``10``) or a fraction (``0.25``, ``1.0``)."""
    if text.strip().lstrip("+-").isdigit():
        return _positive(text)
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"a fraction must be in (0, 1], got {text}; a count has no decimal point"
        )
    return value


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_store

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
            **{k: v for k, v in (("level", args.level), ("multi", args.multi_class)) if v},
            max_records=args.max_records,
            sample=args.sample,
            identity=args.identity,
            coverage=args.coverage,
            strict=args.strict,
            leakage=args.leakage,
            allow_partial=args.allow_partial,
        )
    finally:
        stop()
    _print_store(store)
    for source in store.manifest["sources"]:
        if partial := source.get("partial"):
            _warn_partial(partial, "rows")
    return 0


def _warn_partial(partial: dict, what: str) -> None:
    """Say loudly that an input broke off and how much of it was used (--allow-partial)."""
    console.print(
        f"[yellow]input cut short or damaged:[/] {escape(partial['stopped_at'])}; "
        f"the {partial['rows_kept']:,} {what} before it were used (--allow-partial)"
    )


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
            console.print(f"[red]verify:[/] {escape(str(p))}")
        if problems:
            return 1
        console.print("[green]verify: every split matches its fingerprint[/]")
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The CNN settings of a ``train`` command line."""
    return TrainConfig(
        model=args.model,
        target=args.target,
        multi_class=args.multi_class,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        weight_decay=args.weight_decay,
        bucket=args.bucket,
        in_memory=args.in_memory,
        seed=args.seed,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        global_batch=args.global_batch,
        drop_last=args.drop_last,
        checkpoint_every=args.checkpoint_every,
        shuffle_block=args.shuffle_block,
        precision=args.precision,
        num_workers=args.num_workers,
        compile=args.compile,
        limit_train_batches=args.limit_train_batches,
        class_weights=args.class_weights,
        dropout=args.dropout,
        label_smoothing=args.label_smoothing,
        substitution=args.substitution,
        crop=args.crop,
        max_time=args.max_time,
        progress=not args.quiet,
    )


def _refuse_unused_flags(args: argparse.Namespace) -> None:
    """A flag the chosen ``--model`` does not use is refused, not ignored: the user believes
    it took effect."""
    if args.model in ("knn", "hybrid"):  # read from args: TrainConfig would check them first
        defaults = asdict(TrainConfig())
        unused = [k for k in defaults if k not in ("model", "progress")
                  and getattr(args, k) != defaults[k]]  # fmt: skip
        unused = ["--" + k.replace("_", "-") for k in unused] + ["--resume"] * args.resume
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: CNN training options; a {args.model} run does not train "
                "(it searches its store's training split)"
            )
    if args.model != "knn":
        knn_only = (("--threads", args.threads is not None),
                    ("--no-profile-fallback", not args.profile_fallback))  # fmt: skip
        unused = [flag for flag, given in knn_only if given]
        if args.model == "hybrid" and unused:
            raise ValueError(
                f"{', '.join(unused)}: options of the kNN run; a hybrid uses its --knn run's"
            )
        if unused:
            raise ValueError(f"{', '.join(unused)}: options of --model knn")


def cmd_train(args: argparse.Namespace) -> int:
    if (args.cnn or args.knn) and args.model != "hybrid":
        raise ValueError("--cnn and --knn name a hybrid's runs: they need --model hybrid")
    if args.index and args.model != "knn":
        raise ValueError(
            "--index keeps a kNN run's search index: it needs --model knn (a hybrid uses its "
            "kNN run's, so make that run with --index)"
        )
    _refuse_unused_flags(args)
    if args.model == "knn":
        from .baselines import make_knn_run

        val = make_knn_run(
            args.store, args.out, threads=args.threads, profile_fallback=args.profile_fallback,
            index=args.index,
        )  # fmt: skip
        console.print(
            f"kNN run written to [bold]{escape(args.out)}[/]: validation accuracy "
            f"{val['val_acc']:.4f} ({val['val_profile_hits']:,} homologs found by the profile "
            f"fallback; {val['val_no_hit']:,} of {val['val_records']:,} without any)"
        )
        return 0
    if args.model == "hybrid":
        from .baselines import make_hybrid_run

        if not (args.cnn and args.knn):
            raise ValueError("--model hybrid needs --cnn RUN and --knn RUN")
        val = make_hybrid_run(args.store, args.out, args.cnn, args.knn)
        levels = " · ".join(f"{t:.2f}" for t in val["identity_thresholds"])
        console.print(
            f"hybrid run written to [bold]{escape(args.out)}[/]: the homolog's number at "
            f"identity ≥ {levels} (levels 1–{len(val['identity_thresholds'])}); class accuracy "
            f"on validation {val['val_acc']:.4f} (CNN {val['val_acc_cnn']:.4f}, kNN "
            f"{val['val_acc_knn']:.4f})"
        )
        return 0
    from .train import train

    config = _train_config(args)
    result = train(args.store, args.out, config, resume=args.resume)
    if result.rank != 0:
        return 0
    _print_history(result.history)
    console.print(
        f"run written to [bold]{escape(str(result.run))}[/] "
        f"(best val_loss {result.best_val_loss:.4f})"
    )
    _print_labels(result.run)
    return 0


def _print_labels(run) -> None:
    """What the run can say: labels per level, rare ones, and its thresholds."""
    from .predictors import load_model

    model = load_model(run)
    vocab, thresholds = model.vocab, model.level_thresholds()
    sizes = " · ".join(f"{n:,}" for n in vocab.sizes)
    stated = " · ".join("not predicted" if t is None else f"{t:.3f}" for t in thresholds)
    console.print(f"labels per level: {sizes}; thresholds for 90% precision on val: {stated}")
    if vocab.depth > 1:
        rare = vocab.rare()
        console.print(
            f"{rare[-1]:,} of the {vocab.sizes[-1]:,} full EC numbers have fewer than 5 training "
            "proteins: none is merged or dropped, but the CNN rarely predicts them; a kNN or "
            "hybrid run (--model knn / hybrid) transfers them from homologs"
        )


def _print_history(history: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="Epochs", title_justify="left")
    for col in ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "samples/s"):
        table.add_column(col, justify="right")

    def rounded(value: str) -> str:  # as the best val_loss below is shown
        return f"{float(value):.4f}" if value else ""

    for r in history:
        table.add_row(
            r["epoch"], *(rounded(r[k]) for k in ("train_loss", "val_loss", "val_acc")),
            rounded(r["val_macro_f1"]), r["lr"], r["samples_per_s"],
        )  # fmt: skip
    out.print(table)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .allocator import small_primitive_cache

    small_primitive_cache()  # before torch makes its first primitive
    from .evaluate import evaluate, seen_line
    from .report import bands_table, families_table, levels_table, metrics_table

    columns = Columns(id=args.id_column, ec=args.ec_column, sequence=args.sequence_column)
    update, stop = _progress(f"evaluating {args.run}")
    try:
        result = evaluate(
            args.run, args.source, args.out, split=args.split, columns=columns,
            bands=args.bands, allow_seen=args.allow_seen, allow_partial=args.allow_partial,
            progress=update, precision=args.precision, families=args.families,
        )  # fmt: skip
    finally:
        stop()
    out.print(metrics_table(result))
    if levels := levels_table(result):
        out.print(levels)
    if bands := bands_table(result):
        out.print(bands)
    if families := families_table(result):
        out.print(families)
    seen = result["seen"]
    if not seen["checked"]:
        console.print(f"[yellow]warning:[/] {escape(seen['why'])}")
    elif line := seen_line(seen):
        console.print(f"[yellow]seen by the run:[/] {escape(line)}")
    if skipped := result.get("identity_bands_skipped"):
        console.print(f"[yellow]no identity bands:[/] {escape(skipped)}")
    if partial := result.get("partial"):
        _warn_partial(partial, "rows")
    console.print(f"metrics and plots written to [bold]{escape(args.out)}[/]")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .compare import compare, seen_warnings
    from .report import compare_table

    result = compare(args.a, args.b, args.out)
    out.print(compare_table(result))
    for line in seen_warnings(result):
        console.print(f"[yellow]seen by the run:[/] {escape(line)}")
    if skipped := result.get("bands_skipped"):
        console.print(f"[yellow]no identity bands:[/] {escape(skipped)}")
    if skipped := result.get("levels_skipped"):
        console.print(f"[yellow]no EC levels:[/] {escape(skipped)}")
    if args.out:
        console.print(f"comparison written to [bold]{escape(args.out)}[/]")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .allocator import small_primitive_cache

    small_primitive_cache()  # before torch makes its first primitive
    from .predict import predict_file
    from .predictors import load_model

    model = load_model(args.run, precision=args.precision)
    if args.batch_size:
        if model.batch_size is None:
            raise ValueError(f"--batch-size: a {model.kind} run has no forward pass to batch")
        model.batch_size = args.batch_size
    columns = Columns(id=args.id_column, ec=None, sequence=args.sequence_column)
    update, stop = _progress(f"predicting {args.input}")
    try:
        summary = predict_file(
            model, args.input, args.out, top_k=args.top_k, columns=columns, fmt=args.format,
            progress=update, allow_partial=args.allow_partial,
            min_confidence=args.min_confidence, shard=args.shard,
        )  # fmt: skip
    except BrokenPipeError:  # the reader of --out - stopped early (e.g. head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # as a Unix tool killed by SIGPIPE
    finally:
        stop()
    where = "stdout" if args.out == "-" else escape(args.out)
    console.print(
        f"{summary['records']:,} records → [bold]{where}[/] ({summary['scored']:,} scored, "
        f"{summary['errors']:,} with an error) in {summary['seconds']:.1f} s: "
        f"[bold]{_rate(summary['per_second'])} sequences/s[/]"
    )
    given = [
        f"--{flag}" for flag, value, default in (
            ("id-column", args.id_column, Columns.id),
            ("sequence-column", args.sequence_column, Columns.sequence),
        ) if value != default
    ]  # fmt: skip
    if summary["format"] == "fasta" and given:
        console.print(
            f"[yellow]warning: a FASTA has no columns, so {' and '.join(given)} went unused (a "
            "record's id is the first word of its header)[/]"
        )
    # e.g. --sequence-column of another field: the rows are written (their error column says
    # why), but a pipeline must not take an output without one prediction for a success
    failed = bool(summary["records"] and not summary["scored"])
    if failed:
        hint = (
            ""
            if summary["format"] == "fasta"
            else f" (is --sequence-column {escape(args.sequence_column)!r} the sequences?)"
        )
        console.print(f"[red]error: no record could be scored; see the error column{hint}[/]")
    if summary["unreadable_lines"]:
        console.print(
            "[yellow]lines that could not be read as records (no row in the output):[/]\n"
            + escape("\n".join(summary["unreadable_lines"]))
        )
    if partial := summary["partial"]:
        _warn_partial(partial, "records")
    return 1 if failed else 0


def _rate(per_second: float) -> str:
    """A speed to read: whole numbers with separators, two digits below 10 (a slow search)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def cmd_leakage(args: argparse.Namespace) -> int:
    from .mmseqs.leakage import leakage_report
    from .report import format_leakage
    from .store import open_store

    store = open_store(args.store)
    report = leakage_report(store, threads=args.threads)
    out.print(format_leakage(report), markup=False)  # ids are text, not markup
    if not args.no_record:
        store.record("leakage", report)
        console.print(f"recorded in {escape(str(store.path / 'manifest.json'))}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.data, args.out, minutes=args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecstream",
        description="Train, evaluate and serve EC class classifiers on protein sequences.",
    )
    parser.add_argument("--version", action="version", version=f"ecstream {__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help="show the traceback of a failure (anywhere on the line; or ECSTREAM_DEBUG=1)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "build",
        help="build a store from UniProt TSV/CSV/Parquet exports",
        description="Read labelled tables in chunks, validate, split and write an Arrow store.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TSV/CSV (.gz ok), Parquet file/dir")
    p.add_argument("--out", required=True, help="store directory to create")
    b = BuildConfig
    p.add_argument("--val", type=float, default=b.val, help="validation fraction (%(default)s)")
    p.add_argument("--test", type=float, default=b.test, help="test fraction (%(default)s)")
    p.add_argument("--seed", type=int, default=b.seed, help="seed of the split (%(default)s)")
    p.add_argument(
        "--split",
        default=b.split,
        help="random (hash of the sequence), column:NAME (a column saying train/val/test), "
        "or cluster (whole MMseqs2 clusters)",
    )
    p.add_argument(
        "--identity", type=float, default=b.identity,
        help="cluster split: min identity (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--coverage", type=float, default=b.coverage,
        help="cluster split: min coverage of both sequences (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--strict", action="store_true",
        help="cluster split: then move every val/test protein with a training hit at or above "
        "--identity (any coverage) to train, until none is left (val/test get smaller)",
    )  # fmt: skip
    p.add_argument("--threads", type=_positive, default=None, help="MMseqs2 threads (default: all)")
    p.add_argument(
        "--leakage", action=argparse.BooleanOptionalAction, default=None,
        help="MMseqs2 report of val/test identity to train (default: with --split cluster)",
    )  # fmt: skip
    p.add_argument(
        "--max-records", type=_positive, default=b.max_records, help="read the first N rows"
    )
    p.add_argument("--sample", type=float, default=b.sample, help="keep a seeded fraction of rows")
    # options of ecstream 0.1.0 that went: given, they say what replaces them
    p.add_argument("--level", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--multi-class", default=None, help=argparse.SUPPRESS)
    _column_flags(p, ec=True)
    p.add_argument("--format", choices=("tsv", "csv", "parquet"), default=None)
    _allow_partial_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", help="print a store's summary", description="Summarise a store.")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--verify", action="store_true", help="recompute the split fingerprints")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train",
        help="train a classifier on a store",
        description="Train a CNN (Lightning) on the train split, early-stopping on val_loss.",
    )
    p.add_argument("store")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument(
        "--model", default="small", choices=("small", "deep", "large", "knn", "hybrid"),
        help="small (CNN for CPUs), deep (small with five dilated blocks: a receptive field of "
        "most of a protein, about twice small's work per residue), large (CNN for GPUs), knn "
        "(nearest MMseqs2 homolog) or "
        "hybrid (homolog above an identity threshold, else CNN; needs --cnn and --knn)",
    )  # fmt: skip
    p.add_argument("--cnn", default=None, help="hybrid: the CNN run")
    p.add_argument("--knn", default=None, help="hybrid: the kNN run")
    p.add_argument("--threads", type=_positive, default=None, help="knn: MMseqs2 threads")
    p.add_argument(
        "--profile-fallback", action=argparse.BooleanOptionalAction, default=True,
        help="knn: search proteins without a hit again by iterative profile (default on)",
    )  # fmt: skip
    p.add_argument(
        "--index", action="store_true",
        help="knn: keep MMseqs2's k-mer index of the training split in the run, so that a search "
        "does not build it anew: seconds instead of tens of seconds for a small input, the "
        "profile fallback most of all, in a run many times larger (BENCHMARKS.md)",
    )  # fmt: skip
    t = TrainConfig
    p.add_argument(
        "--target", choices=TARGETS, default=t.target,
        help="CNN: class (the seven EC classes, default) or ec (all four levels, multi-label)",
    )  # fmt: skip
    p.add_argument(
        "--multi-class", choices=("skip", "first"), default=t.multi_class,
        help="--target class: rows whose numbers span several classes are left out (skip, "
        "default) or take their first number's class",
    )  # fmt: skip
    p.add_argument("--epochs", type=_positive, default=t.epochs)
    p.add_argument(
        "--patience", type=_not_negative, default=t.patience,
        help="early stopping patience in epochs (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=_positive, default=t.batch_size)
    p.add_argument(
        "--max-length", type=_positive, default=t.max_length,
        help="truncate longer sequences (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--lr", type=_positive_number, default=t.lr, help="AdamW learning rate")
    p.add_argument(
        "--weight-decay", type=_not_negative_number, default=t.weight_decay, metavar="W",
        help="AdamW's decoupled weight decay (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--bucket", action=argparse.BooleanOptionalAction, default=t.bucket,
        help="length-bucketed batches (default) or fixed padding to --max-length",
    )  # fmt: skip
    p.add_argument("--in-memory", action="store_true", help="load the splits into RAM")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--accelerator", default=t.accelerator, help="auto, cpu, gpu, …")
    p.add_argument("--devices", default=t.devices, help="auto, 1, 4, … (per machine)")
    p.add_argument(
        "--num-nodes", type=_positive, default=t.num_nodes,
        help="machines, each running --devices processes, started by torchrun or SLURM "
        "(README, 'Scaling out')",
    )  # fmt: skip
    p.add_argument(
        "--global-batch", action="store_true",
        help="--batch-size is the batch of all processes together (each gets its share), so "
        "any number of processes trains on the same batches",
    )  # fmt: skip
    p.add_argument("--drop-last", action="store_true", help="train on full batches only")
    p.add_argument(
        "--shuffle-block", type=_not_negative, default=t.shuffle_block, metavar="RECORDS",
        help="opt-in locality-aware order: shuffle 16 blocks of RECORDS stored records at a "
        "time instead of the whole split (a shard's records, 1048576, for a remote store "
        "larger than its cache; 1024 for a local store many times larger than the CPU's "
        "caches: README, 'Large stores')",
    )  # fmt: skip
    p.add_argument("--precision", default=t.precision, help="auto (bf16-mixed on GPU), 32-true, …")
    p.add_argument(
        "--compile", action="store_true",
        help="torch.compile the network for training (meant for GPUs; no faster on the CPU "
        "measured, BENCHMARKS.md); compiling takes tens of seconds at the start",
    )  # fmt: skip
    p.add_argument(
        "--num-workers", type=_not_negative, default=t.num_workers,
        help="DataLoader worker processes",
    )  # fmt: skip
    p.add_argument(
        "--limit-train-batches", type=_batch_limit, default=t.limit_train_batches,
        help="N batches (10) or a fraction of them (0.25)",
    )  # fmt: skip
    p.add_argument("--class-weights", action="store_true", help="weight the loss by 1/frequency")
    p.add_argument(
        "--dropout", type=float, default=t.dropout, metavar="P",
        help="dropout before the head (default: the preset's, 0.2 for small)",
    )  # fmt: skip
    p.add_argument(
        "--label-smoothing", type=float, default=t.label_smoothing, metavar="E",
        help="spread E of each level's target over all its classes (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--substitution", type=float, default=t.substitution, metavar="RATE",
        help="replace RATE of the training residues by a BLOSUM62 substitute, the same ones "
        "on resume (and, with --global-batch, on any number of processes) (default "
        "%(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--crop", type=_not_negative, default=t.crop, metavar="LENGTH",
        help="train on a random window of LENGTH residues of each longer protein, drawn like "
        "--substitution (default %(default)s: off)",
    )  # fmt: skip
    p.add_argument(
        "--max-time",
        type=_duration,
        default=None,
        help="stop after DD:HH:MM:SS of training (of this command: a --resume gets it afresh)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument(
        "--checkpoint-every", type=_positive, default=None, metavar="STEPS",
        help="also checkpoint every STEPS training steps, so that a pre-empted run resumes "
        "mid-epoch (on any number of processes)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="metrics and plots of a run on a store split or a labelled file",
        description="Write metrics.json, confusion.png, precision_coverage.png and (for a CNN "
        "run) learning_curves.png as the folder --out, whole; an earlier evaluation there is "
        "replaced.",
    )
    p.add_argument("run")
    p.add_argument("source", help="a store directory, or a labelled TSV/CSV/Parquet file")
    p.add_argument("--split", help="store split to evaluate (default test; not for a file)")
    p.add_argument("--out", required=True, help="directory for metrics.json and the plots")
    p.add_argument(
        "--bands", action=argparse.BooleanOptionalAction, default=None,
        help="accuracy per band of identity to the training split (default: if MMseqs2 is found)",
    )  # fmt: skip
    p.add_argument(
        "--allow-seen", action="store_true",
        help="evaluate even if over 1%% of the records are in the run's training split",
    )  # fmt: skip
    p.add_argument(
        "--families", action="store_true",
        help="cluster the evaluated proteins into families (MMseqs2, the strict split's "
        "thresholds) and give the class accuracy's interval over resampled families, overall, "
        "per band and, for a full-EC run, per EC level (not for a pipe)",
    )  # fmt: skip
    _precision_flag(p)
    _column_flags(p, ec=True)
    _allow_partial_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="two evaluations of the same proteins: which run is right more often",
        description="Compare two evaluation folders (ecstream evaluate --out) of the same "
        "proteins: class accuracy of each, A − B, and its interval resampling whole families "
        "(evaluate one of them, or both, with --families), overall, per band of identity and, "
        "between two full-EC runs, per EC level.",
    )
    p.add_argument("a", help="evaluation folder of run A")
    p.add_argument("b", help="evaluation folder of run B, of the same store split or file")
    p.add_argument("--out", help="also write the comparison as this JSON file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "predict",
        help="predict EC classes for a FASTA or a table of sequences",
        description="Stream INPUT (FASTA, or TSV/CSV with a sequence column; .gz ok) into a TSV.",
    )
    p.add_argument("run")
    p.add_argument(
        "input",
        help="FASTA or TSV/CSV (gzip ok), Parquet (a file or a directory of parts), - for "
        "stdin, or any of them in object storage (s3://bucket/key)",
    )
    p.add_argument("--out", required=True, help="TSV to write, or - for stdout (streamed)")
    p.add_argument(
        "--format", choices=(*TEXT_FORMATS, "parquet"), default=None,
        help="the input's format when its name and first line do not tell (a prefix of "
        "Parquet parts in object storage: parquet)",
    )  # fmt: skip
    p.add_argument(
        "--top-k", type=_positive, default=TOP_K,
        help="classes listed in top_k, and EC numbers in ec_top_k (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--min-confidence", type=_confidence, default=None,
        help="one threshold for every level (default: the run's, chosen for 90%% precision "
        "on validation)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=_positive, default=None,
        help="sequences per forward pass (default "
        f"{PREDICT_BATCH_SIZE['cpu']} on CPU, {PREDICT_BATCH_SIZE['cuda']} on a GPU)",
    )  # fmt: skip
    p.add_argument(
        "--shard", type=_part, default=None, metavar="I/N",
        help="score part I (from 0) of N of the input's records, as contiguous blocks; the N "
        "parts concatenated in order, repeated headers dropped, are the whole output",
    )  # fmt: skip
    _precision_flag(p)
    _column_flags(p, ec=False)
    _allow_partial_flag(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "leakage",
        help="how close val/test sequences are to training (MMseqs2 identity bands)",
        description="For every val/test sequence, its best identity to any training sequence.",
    )
    p.add_argument("store")
    p.add_argument("--threads", type=_positive, default=None, help="MMseqs2 threads (default: all)")
    p.add_argument("--no-record", action="store_true", help="do not write it into the manifest")
    p.set_defaults(func=cmd_leakage)

    p = sub.add_parser(
        "demo",
        help="build → train → evaluate → predict on the default data (~10 min on 2 cores)",
        description="The whole tour on a seeded ~30k sample of the shared data.",
    )
    p.add_argument(
        "--data", default=None, help="UniProt TSV (default: ../shared/data, ECSTREAM_DATA)"
    )
    p.add_argument("--out", default="demo-output", help="directory for everything the demo makes")
    p.add_argument("--minutes", type=_minutes, default=6.0, help="training time budget (≥ 1)")
    p.set_defaults(func=cmd_demo)
    return parser


def _precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", choices=SCORING_PRECISIONS, default=SCORING_PRECISIONS[0],
        help="number format of a CNN's forward pass: 32 (default, float32: as the run was "
        "trained and calibrated) or bf16 (for GPUs and CPUs with AVX512-BF16 or AMX; "
        "probabilities differ slightly from 32's: BENCHMARKS.md measures speed and metrics)",
    )  # fmt: skip


def _allow_partial_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-partial", action="store_true",
        help="an input that ends early or cannot be decoded: use the rows before the break "
        "(reported) instead of failing",
    )  # fmt: skip


def _column_flags(p: argparse.ArgumentParser, ec: bool) -> None:
    p.add_argument("--id-column", default=Columns.id)
    if ec:
        p.add_argument("--ec-column", default=Columns.ec)
    p.add_argument("--sequence-column", default=Columns.sequence)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) ends the command as an error would: the
    output being written is removed and its claim released, instead of being left for the next
    writer to clean up, as after ``kill -9``."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr unless ``--debug`` is given."""
    from rich.markup import escape

    from .errors import debugging, describe

    os.environ.setdefault("KERAS_BACKEND", "torch")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    if getattr(args, "out", None) == "":  # Path("") is the current directory
        parser.error("--out must not be empty")
    previous = None  # Lightning handles SIGTERM in training itself; a handler needs the main thread
    if (
        args.func not in (cmd_train, cmd_demo)
        and threading.current_thread() is threading.main_thread()
    ):
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(describe(exc))}")
        return 2
    finally:
        if previous is not None:  # main() called in a process that goes on (tests, notebooks)
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
