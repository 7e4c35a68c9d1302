"""The store format: open a store, read its manifest and splits, verify it, record reports.

A store is a directory::

    manifest.json            format, alphabet, label policy, split policy, counts, fingerprints,
                             sources with checksums, every set-aside count with its reason
    train/shard-00000.arrow  Arrow IPC shards per split (id, sequence, length, label, ec)
    val/…  test/…

Integrity: what the manifest records so that damage is an error, never a crash or other data.

- ``splits.SPLIT.shard_checksums``, parallel to ``splits.SPLIT.shards`` (which stays a list of
  names): per shard ``{"bytes", "xxh3_128", "records", "residues"}``, its size and XXH3-128
  (:func:`ecstream.hashing.file_checksum`) and the records and residues its Arrow footer and
  offsets must count.
- ``manifest_checksum``: XXH3-128 of the manifest's canonical JSON without that field
  (:func:`ecstream.hashing.json_checksum`). :func:`write_manifest` sets it, so
  :meth:`Store.record` keeps it valid; edited by hand, a manifest must be written again with it.

On open, the manifest's checksum is checked, and the k-th shard of split S must be named
``S/shard-k.arrow`` (k in five digits or more) and be a file of that split inside the store: no
absolute path, no ``..``, no symbolic link out of the split. A split's shards are checked when it
is first used in a process (:mod:`ecstream.integrity`; once per process tree), before any Arrow
is parsed, and their records, residues and labels per class must add up to the manifest's. A
store built before checksums (no ``shard_checksums`` in any split) still opens, with a warning
once per process: its shards get pyarrow's full validation and a check that residues are letters
instead, which turn a bad offset or byte into an error but cannot see a residue changed into
another letter. Checksums in some splits only, or shard checksums
without a manifest checksum, mean a damaged manifest.

A store may also live on object storage (``s3://bucket/prefix``, any URI of
:mod:`ecstream.remote`): its manifest is read from there, and its shards are fetched into a
bounded local cache as reads need them (ahead of the stream), each checked on arrival against
its checksum and its record and residue counts. Such a store needs shard checksums.

How a store is made lives in :mod:`ecstream.build`; this module only reads and describes one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import alphabet
from .atomic import JSONFileError, claim, enclosing, read_json, recover, write_json
from .batches import Batches
from .hashing import CHECKSUM, LineDigest, json_checksum
from .integrity import IntegrityError, StoreError
from .labels import ECVocabulary, LabelPolicy
from .notices import notify
from .plan import BatchSettings
from .records import Records
from .remote import URI, RemoteSplit, is_remote, read_bytes, write_object
from .shards import ShardView, SplitData, fingerprint_batches

SPLITS = ("train", "val", "test")
FORMAT = "ecstream-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest_checksum"
#: Bins of the per-split length histograms in the manifest (the last edge: "any longer").
HISTOGRAM_EDGES = [*range(0, 1001, 50), 1200, 1500, 2000, 3000, 5000, 10000, 2**31 - 1]


class UncheckedStoreWarning(UserWarning):
    """A store built before checksums: its bytes cannot be checked until it is rebuilt."""


def is_store(path: Any) -> bool:
    """Whether ``path`` is a directory (or a remote prefix) holding a store manifest."""
    if is_remote(path):
        from .remote import exists

        return exists(str(URI(path) / MANIFEST))
    return isinstance(path, str | os.PathLike) and (Path(path) / MANIFEST).is_file()


def store_holding(path: str | os.PathLike) -> Path | None:
    """The local store whose folder holds ``path`` (its manifest says it is ecstream's), if any:
    outputs are refused there (``runs.check_outside_runs_and_stores``), since a store holds
    only what ``build`` wrote, and a later ``build --force`` refuses a folder holding more."""
    return enclosing(path, MANIFEST, FORMAT)


def write_manifest(directory: Path | URI, manifest: dict) -> dict:
    """Write a manifest with its checksum (atomically on local disk; on object storage, one
    write is atomic anyway); returns it as it now reads back."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    body = json.loads(json.dumps(body))  # as it will read back: tuples are lists, keys strings
    sealed = {**body, MANIFEST_CHECKSUM: json_checksum(body)}
    if is_remote(directory):
        write_object(str(URI(directory) / MANIFEST), (json.dumps(sealed, indent=1) + "\n").encode())
    else:
        write_json(directory / MANIFEST, sealed)
    return sealed


def _read_manifest(path: Path | URI) -> dict:
    """A manifest whose format this ecstream reads and whose checksum (if any) matches."""
    try:
        if is_remote(path):
            try:
                manifest = json.loads(read_bytes(str(path)).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise JSONFileError(f"{path}: not valid JSON ({error})") from None
        else:
            manifest = read_json(path)
    except JSONFileError as error:
        raise IntegrityError(f"{error}; the manifest is damaged: rebuild the store") from None
    except OSError as error:
        raise StoreError(f"{path}: cannot be read ({error.strerror})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not an ecstream store manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {version}, this ecstream reads format {FORMAT_VERSION}; "
            "rebuild the store"
        )
    if MANIFEST_CHECKSUM in manifest:
        body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
        if manifest[MANIFEST_CHECKSUM] != json_checksum(body):
            raise IntegrityError(
                f"{path}: its content differs from its checksum; the manifest is damaged or "
                "was edited: rebuild the store"
            )
    return manifest


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_checksum_ok(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and all(_count(entry.get(k)) for k in ("bytes", "records", "residues"))
        and isinstance(entry.get(CHECKSUM), str)
    )


class Store:
    """An opened store: its manifest, and batches of its splits."""

    def __init__(self, path: str | os.PathLike[str]):
        self.remote = is_remote(path)
        self.path: Path | URI = URI(str(path).rstrip("/")) if self.remote else Path(path)
        self.manifest_path = self.path / MANIFEST
        if not self.remote and not self.path.exists():  # a replacement interrupted between
            with contextlib.suppress(OSError):  # its two renames (read-only: nothing to put back)
                recover(self.path)
        if not self.remote and not self.manifest_path.is_file():
            raise StoreError(
                f"{self.path}: not an ecstream store (no {MANIFEST}); "
                "build one with 'ecstream build'"
            )
        self.manifest = _read_manifest(self.manifest_path)
        if (found := self.manifest.get("alphabet")) != alphabet.spec():
            name = found.get("name") if isinstance(found, dict) else found
            raise StoreError(
                f"{self.manifest_path}: built with alphabet {name!r}, "
                f"this ecstream uses {alphabet.NAME!r}; rebuild the store"
            )
        try:
            self.policy = LabelPolicy.from_dict(self.manifest["labels"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntegrityError(f"{self.manifest_path}: its labels are unreadable") from None
        self.checksummed = self._check_structure()
        if self.remote and not self.checksummed:
            raise StoreError(
                f"{self.manifest_path}: a store on object storage needs shard checksums; "
                "rebuild it with this ecstream"
            )
        self._paths = {split: self._checked_paths(split) for split in self.splits}
        if not self.checksummed:
            _warn_unchecked(self)
        self._data: dict[tuple[str, bool], SplitData] = {}

    # --- the manifest, checked on open ------------------------------------------------------
    def _damaged(self, what: str) -> IntegrityError:
        return IntegrityError(f"{self.manifest_path}: {what}; the manifest is damaged")

    def _check_structure(self) -> bool:
        """Check the shape and the sums of the manifest; whether its shards have checksums."""
        splits = self.manifest.get("splits")
        if not isinstance(splits, dict) or not splits or not set(splits) <= set(SPLITS):
            raise self._damaged(f"its splits must be some of {', '.join(SPLITS)}")
        classes = list(self.policy.classes)
        for split, info in splits.items():
            if not (
                isinstance(info, dict)
                and _count(info.get("records"))
                and _count(info.get("residues"))
                and isinstance(info.get("fingerprint"), str)
                and isinstance(info.get("shards"), list)
                and all(isinstance(name, str) for name in info["shards"])
                and isinstance(info.get("per_class"), dict)
                and list(info["per_class"]) == classes
                and all(_count(n) for n in info["per_class"].values())
            ):
                raise self._damaged(f"split {split!r} lacks a field or has one of a wrong type")
            if sum(info["per_class"].values()) != info["records"]:
                raise self._damaged(f"split {split!r}: its records per class do not add up")
            single = info.get("single_class_records", info["records"])
            if not _count(single) or single > info["records"]:
                raise self._damaged(f"split {split!r}: its single-class records do not fit")
        if self.manifest.get("records") != sum(i["records"] for i in splits.values()):
            raise self._damaged("its total of records differs from the sum of its splits")
        with_checksums = [s for s, info in splits.items() if "shard_checksums" in info]
        if not with_checksums:
            return False
        if len(with_checksums) != len(splits) or MANIFEST_CHECKSUM not in self.manifest:
            raise self._damaged("some of its checksums are missing")
        for split, info in splits.items():
            entries = info["shard_checksums"]
            if not (
                isinstance(entries, list)
                and len(entries) == len(info["shards"])
                and all(_shard_checksum_ok(e) for e in entries)
            ):
                raise self._damaged(f"split {split!r}: its shard checksums do not fit its shards")
            for key in ("records", "residues"):
                if sum(e[key] for e in entries) != info[key]:
                    raise self._damaged(f"split {split!r}: its shards' {key} do not add up")
        return True

    def _checked_paths(self, split: str) -> list[Path | URI]:
        """The shard paths of a split: names inside the store, of their own split, in order."""
        root = os.path.realpath(self.path)
        paths = []
        for k, name in enumerate(self._split(split)["shards"]):
            expected = f"{split}/shard-{k:05d}.arrow"
            if name != expected:
                raise IntegrityError(
                    f"{self.manifest_path}: shard {k} of split {split!r} is named {name!r}, "
                    f"not {expected!r}; a manifest names only files of their own split inside "
                    "the store: refusing it"
                )
            path = self.path / name
            if self.remote:  # object names cannot be links
                paths.append(path)
                continue
            if os.path.realpath(path) != os.path.join(root, split, f"shard-{k:05d}.arrow"):
                raise IntegrityError(
                    f"{self.manifest_path}: {path} is a symbolic link out of split {split!r} "
                    "of the store: refusing it"
                )
            paths.append(path)
        return paths

    # --- what the manifest says ---------------------------------------------------------------
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

    def shard_paths(self, split: str) -> list[Path]:
        self._split(split)
        return list(self._paths[split])

    def shard_checksums(self, split: str) -> list[dict[str, Any]] | None:
        """What the manifest recorded of each shard; None for a store built before checksums."""
        return self._split(split)["shard_checksums"] if self.checksummed else None

    # --- reading checked records --------------------------------------------------------------
    def split_data(self, split: str, in_memory: bool = False) -> SplitData:
        """The records of one split, memory-mapped or loaded into RAM (cached per mode).

        Its shards are checked first, and what they hold must add up to the manifest's counts.
        """
        key = (split, in_memory)
        if key not in self._data:
            paths, checksums = self.shard_paths(split), self.shard_checksums(split)
            source = RemoteSplit([str(p) for p in paths], checksums) if self.remote else None
            data = SplitData(split, paths, self.fingerprint(split), in_memory, checksums, source)
            # a remote split's shards are counted as they arrive, against their own entries
            if not self.remote and (problems := self._count_problems(split, data.views)):
                raise IntegrityError(f"{problems[0]}; the store is damaged: rebuild it")
            self._data[key] = data
        return self._data[key]

    def check(self, *splits: str) -> None:
        """Check the shards of these splits (default: all) now, rather than at first use (on
        object storage: fetch them into the cache, which checks them)."""
        for split in splits or self.splits:
            data = self.split_data(split)
            if self.remote:
                data.fetch_all()

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
        global_batch: bool = BatchSettings.global_batch,
        block: int = BatchSettings.block,
        blocks: int = BatchSettings.blocks,
    ) -> Batches:
        """Exact batches of one split; see :mod:`ecstream.batches` and :mod:`ecstream.plan`.

        Rows whose EC numbers span several classes are stored after all others and left out
        unless ``multi_class`` (a full-EC run learns from them; a class run cannot).
        ``global_batch``: ``batch_size`` is the batch of all ``world_size`` ranks together.
        ``block``: shuffle ``blocks`` stored blocks of ``block`` records at a time instead of the
        whole split (opt-in; a remote store then needs only their shards in its cache).
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
            global_batch=global_batch,
            block=block,
            blocks=blocks,
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

    def record_batches(self, split: str) -> Iterator[pa.RecordBatch]:
        """The Arrow record batches of a split in stored order, parsed from checked bytes."""
        yield from self.split_data(split).record_batches()

    def records(self, split: str) -> Iterator[Records]:
        """The records of a split in stored order, a record batch at a time."""
        for batch in self.record_batches(split):
            yield Records(
                ids=batch.column("id").to_pylist(),
                seqs=batch.column("sequence").to_pylist(),
                labels=batch.column("label").to_numpy().astype(np.int64),
                ecs=batch.column("ec").to_pylist(),
            )

    def ec_fingerprint(self, split: str) -> str:
        """A digest of the EC fields of a split, in stored order."""
        digest = LineDigest()
        for chunk in self.records(split):
            digest.add(chunk.ecs)
        return digest.hexdigest()

    def vocabulary(self, split: str = "train") -> ECVocabulary:
        """The EC classes of every level seen in a split (the label space of a full-EC run)."""
        return ECVocabulary.from_texts(text for chunk in self.records(split) for text in chunk.ecs)

    def record(self, key: str, report: dict[str, Any]) -> None:
        """Add a report (e.g. ``"leakage"``) to the manifest, atomically, with a new checksum;
        refused when the store was replaced since it was opened (a ``build --force`` while the
        report was made): the report is of the old store's records."""
        # on local disk under the claim a build holds while it replaces the store; object
        # storage has no lock: there a replacement between this read and the write can win
        with contextlib.nullcontext() if self.remote else claim(self.path):
            manifest = _read_manifest(self.manifest_path)
            if _fingerprints(manifest) != _fingerprints(self.manifest):
                raise StoreError(
                    f"{self.path} was replaced while this command ran (build --force?): its "
                    f"report {key!r} was made of the store before and is not recorded; run it "
                    "again"
                )
            manifest[key] = report
            self.manifest = write_manifest(self.path, manifest)

    # --- counts and verification ----------------------------------------------------------------
    def _count_problems(self, split: str, views: Sequence[ShardView]) -> list[str]:
        """Where the shards' records, residues and labels differ from the manifest's counts."""
        info, where = self._split(split), f"{self.manifest_path}: split {split!r}"
        problems = []
        for view, entry in zip(views, self.shard_checksums(split) or [], strict=False):
            if (view.rows, view.residues) != (entry["records"], entry["residues"]):
                problems.append(
                    f"{where}: {view.path.name} holds {view.rows:,} records and "
                    f"{view.residues:,} residues, the manifest says {entry['records']:,} and "
                    f"{entry['residues']:,}"
                )
        for what, found in (
            ("records", sum(v.rows for v in views)),
            ("residues", sum(v.residues for v in views)),
        ):
            if found != info[what]:
                problems.append(
                    f"{where}: {found:,} {what} in its shards, the manifest says {info[what]:,}"
                )
        labels: dict[int, int] = {}
        for view in views:
            for value, n in view.label_counts.items():
                labels[value] = labels.get(value, 0) + n
        classes = list(info["per_class"])
        if outside := sum(n for value, n in labels.items() if not 0 <= value < len(classes)):
            problems.append(f"{where}: {outside:,} records with a label outside its classes")
        if [labels.get(i, 0) for i in range(len(classes))] != list(info["per_class"].values()):
            problems.append(f"{where}: its records per class differ from the shards'")
        return problems

    def verify(self) -> list[str]:
        """Check everything again, hashing every shard even if it was checked before: checksums,
        counts, and each split's fingerprint recomputed from its records. Returns every problem
        found, one line each; Arrow is parsed only from checked or fully validated bytes."""
        if self.remote:
            return self._verify_remote()
        problems = []
        for split in self.splits:
            views, readable = [], True
            checksums = self.shard_checksums(split)
            for k, path in enumerate(self.shard_paths(split)):
                expected = checksums[k] if checksums is not None else None
                try:
                    views.append(ShardView.open(path, expected, force=True))
                    continue
                except IntegrityError as error:
                    problems.append(f"{split}: {error}")
                    if expected is None or not path.is_file():
                        readable = False
                        continue
                try:  # is the damaged shard still readable? then say what else differs
                    views.append(ShardView.open(path, None))
                except IntegrityError as error:
                    problems.append(f"{split}: {error}")
                    readable = False
            if not readable:
                problems.append(f"{split}: counts and fingerprint not recomputed: unreadable shard")
                continue
            problems += self._count_problems(split, views)
            batches = (b for v in views for b in v.record_batches())
            digest, _ = fingerprint_batches(batches)
            if digest != self.fingerprint(split):
                problems.append(f"{split}: content fingerprint differs from the manifest")
        return problems

    def _verify_remote(self) -> list[str]:
        """:meth:`verify` of a store on object storage: every shard fetched and checked on
        arrival (the cache is trusted only for entries that hash right), counts, fingerprints."""
        problems = []
        for split in self.splits:
            data = SplitData(
                split, self.shard_paths(split), self.fingerprint(split), False,
                self.shard_checksums(split),
                RemoteSplit([str(p) for p in self.shard_paths(split)], self.shard_checksums(split)),
            )  # fmt: skip
            try:
                for k, expected in enumerate(data.checksums):
                    data._fetch(k)  # hashed on arrival; an entry already cached, here:
                    data.views[k] = ShardView.open(data.views[k].path, expected, force=True)
            except StoreError as error:
                problems.append(f"{split}: {error}")
                continue
            problems += self._count_problems(split, data.views)
            digest, _ = fingerprint_batches(data.record_batches())
            if digest != self.fingerprint(split):
                problems.append(f"{split}: content fingerprint differs from the manifest")
        return problems


def _fingerprints(manifest: dict) -> dict[str, str]:
    """Each split's fingerprint (of a manifest :func:`_read_manifest` has checked)."""
    return {split: info["fingerprint"] for split, info in manifest["splits"].items()}


def _warn_unchecked(store: Store) -> None:
    """Say once per process that a store built before checksums cannot be checked."""
    version = store.manifest.get("ecstream_version", "?")
    message = (
        f"built by ecstream {version} without checksums: its bytes cannot be checked until it "
        "is rebuilt ('ecstream build --force')"
    )
    notify(store.manifest_path, message, UncheckedStoreWarning, once=True)


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a store built by :func:`ecstream.build_store` / ``ecstream build``: a directory, or a
    URI on object storage (``s3://bucket/prefix``)."""
    return Store(path)
