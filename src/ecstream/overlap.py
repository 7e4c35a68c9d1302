"""Identical sequences and ids within and across splits, found with bounded memory.

During a build every kept record adds one small entry (a 64-bit hash of its sequence, or of its
id, with its split, label and row) to one of 64 bucket files chosen by the hash's top bits. At the
end each bucket is sorted on its own, so memory holds 1/64 of the entries at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ENTRY = np.dtype([("h", "<u8"), ("split", "u1"), ("label", "<i2"), ("row", "<i8")])
BUCKET_BITS = 6
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
        bucket = (entries["h"] >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        entries, bucket = entries[order], bucket[order]
        edges = np.searchsorted(bucket, np.arange((1 << BUCKET_BITS) + 1))
        for b, fh in enumerate(self._files[kind]):
            if edges[b + 1] > edges[b]:
                entries[edges[b] : edges[b + 1]].tofile(fh)

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
                entries = np.fromfile(fh.name, dtype=ENTRY)
                if len(entries):
                    _count(entries, totals, examples)
            report[kind] = {**totals, "examples": examples}
        return report


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
