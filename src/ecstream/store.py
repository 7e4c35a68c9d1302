"""The store format: open a store, read its manifest and splits, verify it, record reports.

A store is a directory::

    manifest.json            format, alphabet, label policy, split policy, counts, fingerprints,
                             sources with checksums, every set-aside count with its reason
    train/shard-00000.arrow  Arrow IPC shards per split (id, sequence, length, label, ec)
    val/…  test/…

How a store is made lives in :mod:`ecstream.build`; this module only reads and describes one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import alphabet
from .atomic import write_json
from .batches import Batches
from .labels import ECVocabulary, LabelPolicy
from .plan import BatchSettings
from .records import Records
from .shards import SplitData, fingerprint_file, read_batches

SPLITS = ("train", "val", "test")
FORMAT = "ecstream-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Bins of the per-split length histograms in the manifest (the last edge: "any longer").
HISTOGRAM_EDGES = [*range(0, 1001, 50), 1200, 1500, 2000, 3000, 5000, 10000, 2**31 - 1]


class StoreError(Exception):
    """A store that cannot be built or opened, with the reason."""


def is_store(path: Any) -> bool:
    """Whether ``path`` is a directory holding a store manifest."""
    return isinstance(path, str | os.PathLike) and (Path(path) / MANIFEST).is_file()


def write_manifest(directory: Path, manifest: dict) -> None:
    write_json(directory / MANIFEST, manifest)


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
        batch_size: int = BatchSettings.batch_size,
        max_length: int = BatchSettings.max_length,
        shuffle: bool = BatchSettings.shuffle,
        seed: int = 0,
        epoch: int = 0,
        in_memory: bool = False,
        bucket: bool = BatchSettings.bucket,
        drop_last: bool = BatchSettings.drop_last,
        rank: int = 0,
        world_size: int = 1,
        padding: str = BatchSettings.padding,
        truncating: str = BatchSettings.truncating,
        window: int = BatchSettings.window,
        multi_class: bool = False,
    ) -> Batches:
        """Exact batches of one split; see :mod:`ecstream.batches` and :mod:`ecstream.plan`.

        Rows whose EC numbers span several classes are stored after all others and left out
        unless ``multi_class`` (a full-EC run learns from them; a class run cannot).
        """
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
        records = None if multi_class else self.single_class_records(split)
        return Batches(
            data, settings, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
            records=records,
        )  # fmt: skip

    def single_class_records(self, split: str) -> int:
        """How many of a split's records (the first ones) have all their numbers in one class.

        Stores of ecstream 0.1.0 hold no others."""
        info = self._split(split)
        return int(info.get("single_class_records", info["records"]))

    def shard_paths(self, split: str) -> list[Path]:
        return [self.path / s for s in self._split(split)["shards"]]

    def records(self, split: str) -> Iterator[Records]:
        """The records of a split in stored order, a record batch at a time."""
        for batch in read_batches(self.shard_paths(split)):
            yield Records(
                ids=batch.column("id").to_pylist(),
                seqs=batch.column("sequence").to_pylist(),
                labels=batch.column("label").to_numpy().astype(np.int64),
                ecs=batch.column("ec").to_pylist(),
            )

    def vocabulary(self, split: str = "train") -> ECVocabulary:
        """The EC classes of every level seen in a split (the label space of a full-EC run)."""
        return ECVocabulary.from_texts(text for chunk in self.records(split) for text in chunk.ecs)

    def record(self, key: str, report: dict[str, Any]) -> None:
        """Add a report (e.g. ``"leakage"``) to the manifest, atomically."""
        manifest = json.loads((self.path / MANIFEST).read_text())
        manifest[key] = report
        write_manifest(self.path, manifest)
        self.manifest[key] = report

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
    """Open a store built by :func:`ecstream.build_store` / ``ecstream build``."""
    return Store(path)
