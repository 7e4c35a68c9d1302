"""Building a store: read inputs in chunks, validate, split, write shards, record a manifest.

The build streams its inputs, so memory does not grow with them, and is atomic: everything is
written into a temporary directory beside ``out`` that is renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import alphabet
from .atomic import JSONFileError, atomic_dir, check_not_input, read_json
from .hashing import file_sha256, hash64
from .kinds import is_real, is_whole
from .labels import LEVELS, LabelPolicy, level_keys
from .mmseqs.cluster import COVERAGE, ClusterSettings, cluster_split
from .mmseqs.leakage import leakage_report
from .overlap import OverlapCheck
from .records import Records
from .remote import check_destination, is_remote, publish, staging
from .runs import check_outside_runs_and_stores
from .shards import SHARD_NAME, SharedBuffer, SplitData, SplitWriter
from .skips import Skips
from .sources import (
    Columns,
    InputError,
    SourceInfo,
    describe,
    detect_format,
    is_stream,
    read_rows,
    source_size,
)
from .splits import (
    SPLIT_NAMES,
    SplitMethod,
    SplitMethodError,
    assign_splits,
    sample_mask,
    validate,
)
from .store import (
    FORMAT,
    FORMAT_VERSION,
    HISTOGRAM_EDGES,
    MANIFEST,
    SPLITS,
    Store,
    StoreError,
    write_manifest,
)
from .version import __version__

DEFAULT_COLUMNS = Columns()
#: Build options of ecstream 0.1.0 that went, with what replaces them.
GONE_OPTIONS = {
    "level": "build --level went: a store keeps every EC number, and 'ecstream train --target "
    "ec' predicts all four levels",
    "multi": "build --multi-class moved to training: rows spanning several classes are kept in "
    "the store, and 'ecstream train --multi-class first' uses them in a class run",
}


@dataclass
class BuildConfig:
    """Everything a build is asked for, with its defaults (the CLI reads them from here)."""

    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    split: str = "random"  # random | column:NAME | cluster (see SplitMethod)
    max_records: int | None = None
    sample: float | None = None
    identity: float = 0.5
    coverage: float = COVERAGE
    strict: bool = False  # cluster split: no val/test protein with a training hit ≥ identity
    method: SplitMethod = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Check every option before any input is read; parse the split method once. Numbers
        are stored as Python's (numpy's would not write to the manifest)."""
        for name in ("val", "test", "identity", "coverage", "sample"):
            value = getattr(self, name)
            if value is None and name == "sample":
                continue
            if not is_real(value):
                flag = "--" + name
                raise StoreError(f"{flag} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not is_whole(self.seed):
            raise StoreError(f"--seed must be a whole number, got {self.seed!r}")
        self.seed = int(self.seed)
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise StoreError(
                "--val and --test must be fractions adding up to under 1, "
                f"got {self.val} and {self.test}"
            )
        if not (0 <= self.identity <= 1 and 0 <= self.coverage <= 1):
            raise StoreError(
                f"--identity and --coverage are fractions in [0, 1], got {self.identity} and "
                f"{self.coverage}"
            )
        if self.sample is not None and not 0 < self.sample <= 1:
            raise StoreError(f"--sample must be a fraction in (0, 1], got {self.sample}")
        if self.max_records is not None and (
            not is_whole(self.max_records) or self.max_records < 1
        ):  # a negative count would slice rows from the end of each chunk
            raise StoreError(f"--max-records must be at least 1, got {self.max_records!r}")
        if self.max_records is not None:
            self.max_records = int(self.max_records)
        try:
            self.method = SplitMethod.parse(self.split)
        except SplitMethodError as error:
            raise StoreError(str(error)) from None
        if self.strict and self.method.kind != "cluster":
            raise StoreError("--strict applies to --split cluster only")
        given = [n for n in ("identity", "coverage") if getattr(self, n) != getattr(type(self), n)]
        if given and self.method.kind != "cluster":
            flags = " and ".join(f"--{n}" for n in given)
            raise StoreError(f"{flags}: settings of --split cluster (this split: {self.split})")

    def manifest_split(self) -> dict[str, Any]:
        return {"method": str(self.method), "val": self.val, "test": self.test, "seed": self.seed}


@dataclass
class _Reader:
    """Reads all inputs, validates each row and yields :class:`Records` chunks; counts the rest."""

    inputs: Sequence[Any]
    columns: Columns
    policy: LabelPolicy
    config: BuildConfig
    fmt: str | None
    allow_partial: bool = False
    skips: Skips = field(default_factory=Skips)
    rows_read: int = 0
    not_sampled: int = 0
    sources: list[dict] = field(default_factory=list)

    def chunks(self, progress: Callable[[int | str], None] | None = None) -> Iterator[Records]:
        limit = self.config.max_records
        split_column = self.config.method.kind == "column"
        for source in self.inputs:
            name = describe(source)
            fmt = self.fmt or detect_format(source)  # None for a pipe: sniffed as it is read
            info = SourceInfo(name, fmt)
            _refuse_fasta(info)
            entry: dict[str, Any] = {"path": name, "format": fmt, "rows": 0}
            # a remote input is read once, as it streams: hashing it first would fetch it twice
            local = isinstance(source, str | os.PathLike) and not is_remote(str(source))
            if local and not is_stream(source):
                entry |= {"sha256": file_sha256(source), "bytes": source_size(source)}
            self.sources.append(entry)
            chunks = read_rows(
                source, self.columns, self.skips, fmt, allow_partial=self.allow_partial,
                info=info, limit=None if limit is None else limit - self.rows_read,
            )  # fmt: skip
            for rows in chunks:
                _refuse_fasta(info)
                entry["format"] = info.format
                entry["rows"] += len(rows)
                self.rows_read += len(rows)
                kept = validate(name, rows, self.policy, self.skips, split_column)
                if len(kept):
                    yield self._sample(kept)
                if progress:
                    progress(self.rows_read)
                if limit is not None and self.rows_read >= limit:
                    return
            _refuse_fasta(info)
            entry["format"] = info.format
            if info.stopped is not None:  # with allow_partial: say how much was kept
                entry["partial"] = info.partial()

    def _sample(self, kept: Records) -> Records:
        if self.config.sample is None:
            return kept
        keep = sample_mask(hash64(kept.seqs), self.config.seed, self.config.sample)
        self.not_sampled += int((~keep).sum())
        return kept.take(keep)


def _refuse_fasta(info: SourceInfo) -> None:
    if info.format == "fasta":
        raise InputError(
            f"{info.name}: FASTA carries no EC numbers; build a store from a labelled table "
            "(TSV, CSV, Parquet) and give FASTA to 'ecstream predict'"
        )


def build_store(
    inputs: Sequence[Any] | Any,
    out: str | os.PathLike[str],
    *,
    columns: Columns = DEFAULT_COLUMNS,
    fmt: str | None = None,
    force: bool = False,
    progress: Callable[[int | str], None] | None = None,
    threads: int | None = None,
    leakage: bool | None = None,
    allow_partial: bool = False,
    **options: Any,
) -> Store:
    """Build a store at ``out`` from one or more inputs (paths, ``"-"`` for stdin, DataFrames).

    ``options`` are the fields of :class:`BuildConfig` (``val``, ``test``, ``seed``, ``split``,
    ``max_records``, ``sample``, ``identity``, ``coverage``, ``strict``). Every labelled row
    is kept with all its EC numbers; rows whose numbers span several classes are stored after
    the others in each split (a ``--target class`` run leaves them out, ``--target ec`` learns
    from them).
    ``leakage`` adds the MMseqs2 leakage report to the manifest (default: for cluster splits).
    An input that ends early or cannot be decoded fails the build unless ``allow_partial``; then
    its rows before the break are kept and its entry in the manifest's ``sources`` says where
    reading stopped and how many rows were kept. ``out`` never holds an input. ``out`` may be
    a URI on object storage (``s3://bucket/prefix``): the store is built in a local temporary
    directory and published there (:func:`ecstream.remote.publish`).
    """
    for gone, why in GONE_OPTIONS.items():
        if gone in options:
            raise StoreError(why)
    if is_remote(out):  # built on local disk, then published: shards first, manifest last
        check_destination(str(out), MANIFEST, force)
        with staging() as local:
            build_store(
                inputs, local / "store", columns=columns, fmt=fmt, progress=progress,
                threads=threads, leakage=leakage, allow_partial=allow_partial, **options,
            )  # fmt: skip
            if progress:
                progress(f"uploading to {out}")
            publish(local / "store", str(out), MANIFEST, force)
        return Store(out)
    config = BuildConfig(**options)
    if threads is not None and config.method.kind != "cluster" and not leakage:
        raise StoreError("--threads sets MMseqs2's: it needs --split cluster or --leakage")
    inputs = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    if not inputs:
        raise StoreError("no input given")
    out = Path(out)
    check_not_input(out, inputs)
    check_outside_runs_and_stores(out)
    if out.exists():
        if not force and out.is_dir() and not out.is_symlink():  # else --force would not help
            raise StoreError(f"{out} already exists; use --force (force=True) to replace it")
        _check_replaceable(out)
    if config.method.kind == "column":
        columns = dataclasses.replace(columns, split=config.method.column)
    # a row spanning several classes is kept, labelled with its first number's class
    policy = LabelPolicy.for_level(1, multi="first")

    with atomic_dir(out, replace=True) as tmp:
        reader = _Reader(inputs, columns, policy, config, fmt, allow_partial)
        manifest = _build_into(tmp, reader, policy, config, progress, threads)
        write_manifest(tmp, manifest)
        if leakage or (leakage is None and config.method.kind == "cluster"):
            if progress:
                progress("leakage report (MMseqs2)")
            built = Store(tmp)
            built.record("leakage", leakage_report(built, threads))
    return Store(out)


def _check_replaceable(out: Path) -> None:
    """``--force`` replaces an ecstream store and nothing else: a directory holding only a
    store manifest and split directories (or nothing at all)."""
    if out.is_symlink() or not out.is_dir():
        raise StoreError(f"{out} exists and is not a directory; refusing to replace it")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    extra = sorted(entries - {MANIFEST, *SPLITS})
    if MANIFEST not in entries or extra:
        what = f"it also holds {', '.join(extra[:3])}" if extra else f"it has no {MANIFEST}"
        raise StoreError(f"{out} is not an ecstream store ({what}); refusing to replace it")
    try:
        is_store = read_json(out / MANIFEST).get("format") == FORMAT
    except (JSONFileError, OSError):
        # a damaged manifest ('info' says: rebuild the store) beside nothing but shards
        is_store = _only_shards(out)
    except AttributeError:  # JSON, but not an object: some other tool's file
        is_store = False
    if not is_store:
        raise StoreError(
            f"{out}/{MANIFEST} is not an ecstream store manifest; refusing to replace {out}"
        )


def _only_shards(out: Path) -> bool:
    """Whether the split folders of ``out`` hold shards and nothing else (at least one)."""
    names = [f.name for split in SPLITS if (out / split).is_dir() for f in (out / split).iterdir()]
    return bool(names) and all(SHARD_NAME.fullmatch(name) for name in names)


def _build_into(
    tmp: Path,
    reader: _Reader,
    policy: LabelPolicy,
    config: BuildConfig,
    progress: Callable[[int | str], None] | None,
    threads: int | None,
) -> dict:
    shared = SharedBuffer()  # the six writers' buffers, capped together
    writers = [SplitWriter(tmp / name, shared=shared) for name in SPLITS]
    work = Path(tmp) / ".work"
    # rows spanning several classes wait here, to follow the others of their split
    spanning = [SplitWriter(work / "multi" / name, shared=shared) for name in SPLITS]
    check = OverlapCheck(work / "overlap")
    counts = np.zeros((len(SPLITS), len(policy.classes)), dtype=np.int64)  # by label, all rows
    single_counts = np.zeros_like(counts)  # rows whose numbers are all in one class
    histogram = np.zeros((len(SPLITS), len(HISTOGRAM_EDGES) - 1), dtype=np.int64)
    numbers = [[set() for _ in range(LEVELS)] for _ in SPLITS]  # EC classes seen per level
    split_info: dict[str, Any] = config.manifest_split()

    def route(kept: Records, splits: np.ndarray, seq_hashes: np.ndarray) -> None:
        several = np.array([len(level_keys(e, 1)) > 1 for e in kept.ecs], dtype=bool)
        rows = np.empty(len(kept), dtype=np.int64)
        for i, (rid, seq, label, ec) in enumerate(
            zip(kept.ids, kept.seqs, kept.labels.tolist(), kept.ecs, strict=True)
        ):
            target = spanning if several[i] else writers
            rows[i] = target[splits[i]].add(rid, seq, label, ec)
            for level, seen in enumerate(numbers[splits[i]], start=1):
                seen.update(level_keys(ec, level))
        single = ~several  # the others are checked once their rows are known (see below)
        labels = kept.labels.astype(np.int16)
        add_to_checks(seq_hashes[single], splits[single], labels[single], rows[single],
                      [i for i, s in zip(kept.ids, single, strict=True) if s])  # fmt: skip
        np.add.at(counts, (splits, kept.labels), 1)
        np.add.at(single_counts, (splits[single], kept.labels[single]), 1)
        lengths = np.fromiter((len(s) for s in kept.seqs), dtype=np.int64, count=len(kept))
        bins = np.searchsorted(HISTOGRAM_EDGES, lengths, side="right") - 1
        np.add.at(histogram, (splits, bins), 1)

    def add_to_checks(hashes, splits, labels, rows, ids) -> None:
        check.add("sequence", hashes, splits, labels, rows)
        check.add("id", hash64(i.encode() for i in ids), splits, labels, rows)

    try:
        if config.method.kind == "cluster":
            settings = ClusterSettings(
                config.identity, config.coverage, config.seed, config.val, config.test,
                config.strict,
            )  # fmt: skip
            clustered = cluster_split(reader.chunks(progress), work, settings, threads, progress)
            split_info.update(clustered.info)
            for kept, splits, seq_hashes in clustered.routed():
                route(kept, splits, seq_hashes)
        else:
            for kept in reader.chunks(progress):
                seq_hashes = hash64(kept.seqs)
                if config.method.kind == "random":
                    splits = assign_splits(seq_hashes, config.seed, config.val, config.test)
                else:
                    splits = np.fromiter(
                        (SPLIT_NAMES[v] for v in kept.split_values), np.uint8, count=len(kept)
                    )
                route(kept, splits, seq_hashes)

        for k, (writer, extra) in enumerate(zip(writers, spanning, strict=True)):
            base = writer.records  # the rows spanning several classes follow the others
            extra.close()
            row = 0
            for batch in extra.batches():
                n = batch.num_rows
                rows = base + row + np.arange(n, dtype=np.int64)
                labels = np.asarray(batch.column("label").to_pylist(), dtype=np.int16)
                add_to_checks(hash64(batch.column("sequence").to_pylist()),
                              np.full(n, k, np.uint8), labels, rows,
                              batch.column("id").to_pylist())  # fmt: skip
                row += n
            writer.extend(extra)
        single_class = [w.records - x.records for w, x in zip(writers, spanning, strict=True)]
        fingerprints = [w.close() for w in writers]
        total = sum(w.records for w in writers)
        if total == 0:
            reasons = "; ".join(reader.skips.lines()) or "the inputs hold no rows"
            names = ", ".join(describe(s) for s in reader.inputs)
            raise StoreError(f"no usable record in {names}: {reasons}")
        overlap = check.finish()
        _name_examples(overlap, tmp, writers, fingerprints)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    splits_manifest = {}
    for k, name in enumerate(SPLITS):
        w = writers[k]
        splits_manifest[name] = {
            "records": w.records,
            "residues": w.residues,
            "fingerprint": fingerprints[k],
            "shards": [f"{name}/{s}" for s in w.shards],
            "shard_checksums": w.checksums,
            "single_class_records": single_class[k],
            # by label: a row spanning several classes counts in its first number's class
            "per_class": {c: int(n) for c, n in zip(policy.classes, counts[k], strict=True)},
            "per_class_single_class": {
                c: int(n) for c, n in zip(policy.classes, single_counts[k], strict=True)
            },
            "ec_classes_per_level": [len(seen) for seen in numbers[k]],
            **({"ec_numbers_not_in_train": len(numbers[k][-1] - numbers[0][-1])} if k else {}),
            "length_histogram": histogram[k].tolist(),
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ecstream_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "alphabet": alphabet.spec(),
        "labels": policy.to_dict(),
        "split": split_info,
        "build": {
            "max_records": config.max_records,
            "sample": config.sample,
            "columns": vars(reader.columns),
        },
        "sources": reader.sources,
        "rows_read": reader.rows_read,
        "records": total,
        "not_sampled": reader.not_sampled,
        "set_aside": reader.skips.to_dict(),
        "set_aside_total": reader.skips.total,
        "duplicates": overlap,
        "length_histogram_edges": HISTOGRAM_EDGES,
        "splits": splits_manifest,
    }


def _name_examples(
    overlap: dict, tmp: Path, writers: list[SplitWriter], fingerprints: list[str]
) -> None:
    """Turn (split, row) examples into record ids, reading the shards just written."""
    data = [
        SplitData(
            SPLITS[k], [tmp / SPLITS[k] / s for s in w.shards], fingerprints[k], False, w.checksums
        )
        for k, w in enumerate(writers)
    ]
    try:
        for report in overlap.values():
            for key, groups in report["examples"].items():
                report["examples"][key] = [
                    [f"{SPLITS[s]}:{data[s].strings(np.array([r]))[0]}" for s, r in group]
                    for group in groups
                ]
    finally:
        for split in data:
            split.close()
