"""The on-disk store: build it from inputs, open it, describe it, verify it.

A store is a directory::

    manifest.json            format, alphabet, label policy, split policy, counts, fingerprints,
                             sources with checksums, every set-aside count with its reason
    train/shard-00000.arrow  Arrow IPC shards per split (id, sequence, length, label, ec)
    val/…  test/…

Records are assigned to splits from a hash of their sequence (or of their cluster
representative), never from their position, so identical sequences share a split and adding data
never moves an old record. The build streams its inputs in chunks and is atomic: it writes a
temporary directory and renames it into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, alphabet
from .batches import Batches
from .labels import ECError, LabelPolicy, class_keys
from .overlap import OverlapCheck, hash64
from .plan import BatchSettings, mix64
from .shards import SplitData, SplitWriter, fingerprint_file, read_batches
from .skips import Skips
from .sources import (
    Columns,
    InputError,
    describe,
    detect_format,
    file_sha256,
    read_rows,
    source_size,
)

SPLITS = ("train", "val", "test")
FORMAT = "ecstream-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HISTOGRAM_EDGES = [*range(0, 1001, 50), 1200, 1500, 2000, 3000, 5000, 10000, 2**31 - 1]

MISSING_ID = "missing_id"
MISSING_SEQUENCE = "missing_sequence"
INVALID_CHARACTERS = "invalid_characters"
UNKNOWN_SPLIT = "unknown_split_value"
SPLIT_NAMES = {
    "train": 0,
    "training": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "dev": 1,
    "test": 2,
}

DEFAULT_COLUMNS = Columns()
_SPLIT_SALT = 0x5EED5EED
_SAMPLE_SALT = 0x5A3B1E


class StoreError(Exception):
    """A store that cannot be built or opened, with the reason."""


@dataclass
class Kept:
    """A chunk of validated records, ready to be routed to splits."""

    ids: list[str] = field(default_factory=list)
    seqs: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    ecs: list[str] = field(default_factory=list)
    split_values: list[str] = field(default_factory=list)

    def take(self, mask: np.ndarray) -> Kept:
        idx = np.flatnonzero(mask).tolist()
        return Kept(*([values[i] for i in idx] if values else [] for values in vars(self).values()))


def unit_interval(hashes: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """Map 64-bit hashes to [0, 1) under a seed: the basis of split and sample decisions."""
    key = mix64(np.uint64(salt) ^ mix64(np.uint64(seed & (2**64 - 1))))
    return (mix64(hashes ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(hashes: np.ndarray, seed: int, val: float, test: float) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) from sequence (or cluster) hashes."""
    u = unit_interval(hashes, _SPLIT_SALT, seed)
    return np.where(u < test, 2, np.where(u < test + val, 1, 0)).astype(np.uint8)


@dataclass
class BuildConfig:
    """Everything a build was asked for; recorded in the manifest."""

    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    split: str = "random"  # random | column:NAME | cluster
    level: int = 1
    multi: str = "skip"
    max_records: int | None = None
    sample: float | None = None
    identity: float = 0.5
    coverage: float = 0.8

    def check(self) -> None:
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
        if not (self.split in ("random", "cluster") or self.split.startswith("column:")):
            raise StoreError(f"--split must be random, cluster or column:NAME, got {self.split!r}")


def validate(
    name: str, rows: list, policy: LabelPolicy, skips: Skips, split_column: bool = False
) -> Kept:
    """Rows that can be used, cleaned and labelled; every other row counted with its reason."""
    kept = Kept()
    for line, rid, ec, seq, split_value in rows:
        rid, seq, where = rid.strip(), seq.strip(), f"{name}:{line}"
        if not rid:
            skips.add(MISSING_ID, where)
            continue
        if not seq:
            skips.add(MISSING_SEQUENCE, where, rid)
            continue
        clean = alphabet.clean(seq)
        if clean is None:
            bad = next((c for c in seq.rstrip("*") if not (c.isascii() and c.isalpha())), "?")
            skips.add(INVALID_CHARACTERS, where, f"{rid}: {bad!r}")
            continue
        label, reason = policy.assign(ec)
        if reason is not None:
            skips.add(reason, where, f"{rid}: {ec!r}")
            continue
        if split_column:
            value = (split_value or "").strip().lower()
            if value not in SPLIT_NAMES:
                skips.add(UNKNOWN_SPLIT, where, f"{rid}: {split_value!r}")
                continue
            kept.split_values.append(value)
        kept.ids.append(rid)
        kept.seqs.append(clean.encode())
        kept.labels.append(label)
        kept.ecs.append(ec.strip())
    return kept


@dataclass
class _Reader:
    """Reads all inputs, validates each row and yields :class:`Kept` chunks; counts the rest."""

    inputs: Sequence[Any]
    columns: Columns
    policy: LabelPolicy
    config: BuildConfig
    fmt: str | None
    skips: Skips = field(default_factory=Skips)
    rows_read: int = 0
    not_sampled: int = 0
    sources: list[dict] = field(default_factory=list)

    def chunks(self, progress: Callable[[int | str], None] | None = None) -> Iterator[Kept]:
        limit = self.config.max_records
        split_column = self.config.split.startswith("column:")
        for source in self.inputs:
            name = describe(source)
            fmt = self.fmt or detect_format(source)
            if fmt == "fasta":
                raise InputError(
                    f"{name}: FASTA carries no EC numbers; build a store from a labelled table "
                    "(TSV, CSV, Parquet) and give FASTA to 'ecstream predict'"
                )
            entry = {"path": name, "format": fmt, "rows": 0}
            if isinstance(source, str | os.PathLike):
                entry |= {"sha256": file_sha256(source), "bytes": source_size(source)}
            self.sources.append(entry)
            for rows in read_rows(source, self.columns, self.skips, fmt):
                if limit is not None and self.rows_read + len(rows) > limit:
                    rows = rows[: limit - self.rows_read]
                entry["rows"] += len(rows)
                self.rows_read += len(rows)
                kept = validate(name, rows, self.policy, self.skips, split_column)
                if kept.ids:
                    yield self._sample(kept)
                if progress:
                    progress(self.rows_read)
                if limit is not None and self.rows_read >= limit:
                    return

    def _sample(self, kept: Kept) -> Kept:
        if self.config.sample is None:
            return kept
        keep = unit_interval(hash64(kept.seqs), _SAMPLE_SALT, self.config.seed) < self.config.sample
        self.not_sampled += int((~keep).sum())
        return kept.take(keep)


def _scan_keys(
    inputs: Sequence[Any], columns: Columns, config: BuildConfig, fmt: str | None
) -> list[str]:
    """Class keys at an EC level deeper than 1 (a first pass over the inputs, or their first
    ``max_records`` rows), from the rows the label policy keeps: a row spanning several classes
    adds none under ``multi="skip"`` and its first under ``"first"``."""
    keys: set[str] = set()
    left = config.max_records
    for source in inputs:
        for rows in read_rows(source, columns, Skips(), fmt):
            for _, _, ec, *_ in rows[:left]:
                with contextlib.suppress(ECError):
                    found = class_keys(ec or "", config.level)
                    if len(found) == 1 or (found and config.multi == "first"):
                        keys.add(found[0])
            if left is not None:
                left -= min(left, len(rows))
                if left == 0:
                    break
        if left == 0:
            break
    if not keys:
        raise StoreError(f"no EC number in the inputs is specific to level {config.level}")
    return sorted(keys)


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
    **options: Any,
) -> Store:
    """Build a store at ``out`` from one or more inputs (paths or DataFrames).

    ``options`` are the fields of :class:`BuildConfig` (``val``, ``test``, ``seed``, ``split``,
    ``level``, ``multi``, ``max_records``, ``sample``, ``identity``, ``coverage``).
    ``leakage`` adds the MMseqs2 leakage report to the manifest (default: for cluster splits).
    """
    config = BuildConfig(**options)
    config.check()
    inputs = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    if not inputs:
        raise StoreError("no input given")
    out = Path(out)
    if out.exists() and not force:
        raise StoreError(f"{out} already exists; use --force (force=True) to replace it")
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not an ecstream store; refusing to replace it")
    if config.split.startswith("column:"):
        columns = dataclasses.replace(columns, split=config.split.split(":", 1)[1])
    keys = _scan_keys(inputs, columns, config, fmt) if config.level > 1 else None
    policy = LabelPolicy.for_level(config.level, keys, multi=config.multi)

    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        manifest = _build_into(tmp, inputs, columns, policy, config, fmt, progress, threads)
        _write_json(tmp / MANIFEST, manifest)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        if leakage or (leakage is None and config.split == "cluster"):
            from .homology import leakage_report, record_leakage

            if progress:
                progress("leakage report (MMseqs2)")
            built = Store(tmp)
            record_leakage(built, leakage_report(built, threads))
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Store(out)


def _build_into(
    tmp: Path,
    inputs: list,
    columns: Columns,
    policy: LabelPolicy,
    config: BuildConfig,
    fmt: str | None,
    progress: Callable[[int | str], None] | None,
    threads: int | None,
) -> dict:
    reader = _Reader(inputs, columns, policy, config, fmt)
    writers = [SplitWriter(tmp / name) for name in SPLITS]
    check = OverlapCheck(tmp / ".work" / "overlap")
    counts = np.zeros((len(SPLITS), len(policy.classes)), dtype=np.int64)
    histogram = np.zeros((len(SPLITS), len(HISTOGRAM_EDGES) - 1), dtype=np.int64)
    split_info: dict[str, Any] = {
        "method": config.split,
        "val": config.val,
        "test": config.test,
        "seed": config.seed,
    }

    def route(kept: Kept, splits: np.ndarray, seq_hashes: np.ndarray) -> None:
        rows = np.empty(len(kept.ids), dtype=np.int64)
        for i, (rid, seq, label, ec) in enumerate(
            zip(kept.ids, kept.seqs, kept.labels, kept.ecs, strict=True)
        ):
            rows[i] = writers[splits[i]].add(rid, seq, label, ec)
        labels = np.asarray(kept.labels, dtype=np.int16)
        check.add("sequence", seq_hashes, splits, labels, rows)
        check.add("id", hash64([i.encode() for i in kept.ids]), splits, labels, rows)
        np.add.at(counts, (splits, labels), 1)
        lengths = np.fromiter((len(s) for s in kept.seqs), dtype=np.int64, count=len(kept.seqs))
        bins = np.searchsorted(HISTOGRAM_EDGES, lengths, side="right") - 1
        np.add.at(histogram, (splits, bins), 1)

    if config.split == "cluster":
        from .homology import cluster_split

        chunks = reader.chunks(progress)
        split_info.update(cluster_split(chunks, route, tmp / ".work", config, threads, progress))
    else:
        for kept in reader.chunks(progress):
            seq_hashes = hash64(kept.seqs)
            if config.split == "random":
                splits = assign_splits(seq_hashes, config.seed, config.val, config.test)
            else:
                splits = np.fromiter(
                    (SPLIT_NAMES[v] for v in kept.split_values), dtype=np.uint8, count=len(kept.ids)
                )
            route(kept, splits, seq_hashes)

    fingerprints = [w.close() for w in writers]
    total = int(counts.sum())
    if total == 0:
        reasons = "; ".join(reader.skips.lines()) or "the inputs hold no rows"
        raise StoreError(f"no usable record in {', '.join(describe(s) for s in inputs)}: {reasons}")
    overlap = check.finish()
    _name_examples(overlap, tmp, writers, fingerprints)

    splits_manifest = {}
    for k, name in enumerate(SPLITS):
        w = writers[k]
        splits_manifest[name] = {
            "records": w.records,
            "residues": w.residues,
            "fingerprint": fingerprints[k],
            "shards": [f"{name}/{s}" for s in w.shards],
            "per_class": {c: int(n) for c, n in zip(policy.classes, counts[k], strict=True)},
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
            "columns": vars(columns),
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
        SplitData(SPLITS[k], [tmp / SPLITS[k] / s for s in w.shards], fingerprints[k])
        for k, w in enumerate(writers)
    ]
    for report in overlap.values():
        for key, groups in report["examples"].items():
            report["examples"][key] = [
                [f"{SPLITS[s]}:{data[s].strings(np.array([r]))[0]}" for s, r in group]
                for group in groups
            ]


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


class Store:
    """An opened store: its manifest, and batches of its splits."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(
                f"{self.path}: not an ecstream store (no {MANIFEST}); "
                "build one with 'ecstream build'"
            )
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest_path}: not an ecstream store manifest")
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format {version}, this ecstream reads format "
                f"{FORMAT_VERSION}; rebuild the store"
            )
        if self.manifest["alphabet"] != alphabet.spec():
            raise StoreError(
                f"{self.path}: built with alphabet {self.manifest['alphabet']['name']!r}, "
                f"this ecstream uses {alphabet.NAME!r}; rebuild the store"
            )
        self.policy = LabelPolicy.from_dict(self.manifest["labels"])
        self._data: dict[tuple[str, bool], SplitData] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _split(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise KeyError(f"{self.path} has no split {split!r}; it has {', '.join(self.splits)}")
        return self.manifest["splits"][split]

    def fingerprint(self, split: str) -> str:
        return self._split(split)["fingerprint"]

    def num_records(self, split: str) -> int:
        return self._split(split)["records"]

    def split_data(self, split: str, in_memory: bool = False) -> SplitData:
        """The records of one split, memory-mapped or loaded into RAM (cached per mode)."""
        key = (split, in_memory)
        if key not in self._data:
            paths = self.shard_paths(split)
            self._data[key] = SplitData(split, paths, self.fingerprint(split), in_memory)
        return self._data[key]

    def batches(
        self,
        split: str,
        batch_size: int = 64,
        max_length: int = 660,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        in_memory: bool = False,
        bucket: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        padding: str = "post",
        truncating: str = "post",
        window: int = BatchSettings.window,
    ) -> Batches:
        """Exact batches of one split; see :mod:`ecstream.batches` and :mod:`ecstream.plan`."""
        settings = BatchSettings(
            batch_size=batch_size,
            max_length=max_length,
            shuffle=shuffle,
            bucket=bucket,
            window=window,
            drop_last=drop_last,
            padding=padding,
            truncating=truncating,
        )
        data = self.split_data(split, in_memory)
        return Batches(data, settings, seed=seed, epoch=epoch, rank=rank, world_size=world_size)

    def shard_paths(self, split: str) -> list[Path]:
        return [self.path / s for s in self._split(split)["shards"]]

    def records(self, split: str) -> Iterator[tuple[list[str], list[bytes], np.ndarray]]:
        """``(ids, sequences, labels)`` of a split in stored order, a record batch at a time."""
        for batch in read_batches(self.shard_paths(split)):
            yield (
                batch.column("id").to_pylist(),
                batch.column("sequence").to_pylist(),
                batch.column("label").to_numpy().astype(np.int64),
            )

    def verify(self) -> list[str]:
        """Recompute every split's fingerprint from its shards; returns the problems found."""
        problems = []
        for split in self.splits:
            info = self._split(split)
            try:
                digest, records = fingerprint_file(self.shard_paths(split))
            except (OSError, ValueError) as exc:
                problems.append(f"{split}: cannot read its shards: {exc}")
                continue
            if records != info["records"]:
                problems.append(
                    f"{split}: {records} records in the shards, manifest says {info['records']}"
                )
            if digest != info["fingerprint"]:
                problems.append(f"{split}: content fingerprint differs from the manifest")
        return problems


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a store built by :func:`build_store` / ``ecstream build``."""
    return Store(path)
