"""Identical sequences and ids within and across splits, found with bounded memory.

During a build every kept record adds one small entry (a 64-bit hash of its sequence, or of its
id, with its split, label and row) to one of 64 bucket files chosen by the hash's top bits. At the
end each bucket is sorted on its own, in parts of about :data:`PART_ENTRIES` entries
(a large bucket is first spread over part files by further bits of the hash), so memory holds
the same few MB whatever the number of entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

ENTRY = np.dtype([("h", "<u8"), ("split", "u1"), ("label", "<i2"), ("row", "<i8")])
BUCKET_BITS = 6
#: Entries sorted at a time when the check finishes: sorting a structured array by several
#: fields takes many times its size at its peak, so a part is kept to a few MB whatever the
#: input (``benchmarks/overlap_probe.py`` measures the peak as the check finishes).
PART_ENTRIES = 1 << 16
EXAMPLES = 5


class OverlapCheck:
    """Collects (hash, split, label, row) entries in bucket files; :meth:`finish` reports."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._files = {
            kind: [open(workdir / f"{kind}-{b:02d}.bin", "wb") for b in range(1 << BUCKET_BITS)]  # noqa: SIM115
            for kind in ("sequence", "id")
        }

    def add(self, kind: str, hashes: np.ndarray, splits, labels, rows) -> None:
        entries = np.empty(len(hashes), dtype=ENTRY)
        entries["h"], entries["split"], entries["label"], entries["row"] = (
            hashes,
            splits,
            labels,
            rows,
        )
        _spread(entries, self._files[kind], 0, BUCKET_BITS)

    def finish(self) -> dict:
        """Counts (and example (split, row) pairs) of repeats, conflicts and cross-split overlap."""
        report = {}
        for kind, files in self._files.items():
            totals = {
                "repeated": 0,
                "records_in_repeats": 0,
                "conflicting_labels": 0,
                "across_splits": 0,
            }
            examples: dict[str, list] = {"conflicting_labels": [], "across_splits": []}
            for fh in files:
                fh.close()
                for entries in _parts(Path(fh.name)):
                    _count(entries, totals, examples)
            report[kind] = {**totals, "examples": examples}
        return report


def _spread(entries: np.ndarray, files: list, skip: int, bits: int) -> None:
    """Append each entry to ``files[k]``, k the ``bits`` bits of its hash after the top ``skip``."""
    key = (entries["h"] >> np.uint64(64 - skip - bits)) & np.uint64((1 << bits) - 1)
    order = np.argsort(key, kind="stable")
    entries, key = entries[order], key[order].astype(np.int64)
    edges = np.searchsorted(key, np.arange((1 << bits) + 1))
    for k, fh in enumerate(files):
        if edges[k + 1] > edges[k]:
            entries[edges[k] : edges[k + 1]].tofile(fh)


def _parts(path: Path) -> Iterator[np.ndarray]:
    """A bucket file's entries in parts of about :data:`PART_ENTRIES` (equal hashes in one part),
    the file removed afterwards. A large bucket is spread over part files by the next bits of
    the hash in one pass, so the check's memory stays flat however large the input."""
    n = path.stat().st_size // ENTRY.itemsize
    if n <= PART_ENTRIES:
        if n:
            yield np.fromfile(path, dtype=ENTRY)
        path.unlink()
        return
    bits = int(np.ceil(np.log2(n / PART_ENTRIES)))
    names = [path.with_name(f"{path.stem}-{k:03d}.bin") for k in range(1 << bits)]
    files = [open(name, "wb") for name in names]  # noqa: SIM115 (closed below)
    try:
        entries = np.memmap(path, dtype=ENTRY, mode="r")
        for start in range(0, n, PART_ENTRIES):
            _spread(np.array(entries[start : start + PART_ENTRIES]), files, BUCKET_BITS, bits)
        del entries
    finally:
        for fh in files:
            fh.close()
    path.unlink()
    for name in names:
        if name.stat().st_size:
            yield np.fromfile(name, dtype=ENTRY)
        name.unlink()


def _groups(entries: np.ndarray, second: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted entries, group id per entry, and number of distinct ``second`` values per group."""
    entries = np.sort(entries, order=["h", second, "row"])
    new = np.r_[True, entries["h"][1:] != entries["h"][:-1]]
    group = np.cumsum(new) - 1
    changed = new | np.r_[True, entries[second][1:] != entries[second][:-1]]
    return entries, group, np.bincount(group, weights=changed).astype(np.int64)


def _count(entries: np.ndarray, totals: dict, examples: dict) -> None:
    for second, key in (("label", "conflicting_labels"), ("split", "across_splits")):
        ordered, group, distinct = _groups(entries, second)
        if second == "label":
            sizes = np.bincount(group)
            totals["repeated"] += int((sizes > 1).sum())
            totals["records_in_repeats"] += int(sizes[sizes > 1].sum())
        bad = np.flatnonzero(distinct > 1)
        totals[key] += len(bad)
        for g in bad[: max(0, EXAMPLES - len(examples[key]))]:
            members = ordered[group == g]
            examples[key].append([(int(m["split"]), int(m["row"])) for m in members[:4]])
