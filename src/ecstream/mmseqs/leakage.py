"""Leakage: each val/test sequence's highest identity to any training sequence, in bands.

:func:`leakage_report` computes it; ``Store.record("leakage", report)`` keeps it in the
manifest and :func:`ecstream.report.format_leakage` prints it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import scratch
from ..identity import BAND_EDGES, BANDS, band_counts
from ..store import Store
from .binary import MMseqs
from .search import MAX_SEQS, SEARCH_EVALUE, SEARCH_SENSITIVITY, TargetDB, hits_in_groups

#: Sensitivity of the leakage report: the same as every other search, so that its bands and
#: those of ``evaluate`` count the same hits.
LEAKAGE_SENSITIVITY = SEARCH_SENSITIVITY


def leakage_report(
    store: Store | str | os.PathLike[str],
    threads: int | None = None,
    *,
    reference: str = "train",
    splits: Sequence[str] = ("val", "test"),
    sensitivity: float = LEAKAGE_SENSITIVITY,
    evalue: float = SEARCH_EVALUE,
    workdir: str | os.PathLike[str] | None = None,
    target: TargetDB | None = None,
    examples: int = 5,
) -> dict[str, Any]:
    """Each val/test sequence's highest identity to any training sequence, counted in bands.

    ``target`` reuses a database of the reference split (else one is built in ``workdir``, a
    temporary directory by default, removed afterwards). The result lists the band counts per
    split and the closest pairs found.
    """
    store = store if isinstance(store, Store) else Store(store)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(scratch("leakage")) if workdir is None else Path(workdir)
        mm = MMseqs.find(threads)
        if target is None:
            target = TargetDB.create(store, reference, work / "target", mm.threads, force=True)
        elif target.meta["fingerprint"] != store.fingerprint(reference):
            raise ValueError(
                f"target database {target.directory} is not of {store.path}:{reference}"
            )
        report: dict[str, Any] = {
            "reference": reference,
            "reference_records": target.records,
            "identity": "fident (identical residues / aligned columns), max over all hits",
            "tool": "mmseqs easy-search",
            "mmseqs_version": mm.version,
            "sensitivity": sensitivity,
            "evalue": evalue,
            "max_seqs": MAX_SEQS,
            "band_edges": list(BAND_EDGES),
            "bands": list(BANDS),
            "splits": {},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        chosen = [s for s in splits if s in store.splits and s != reference]
        for split in chosen:  # searched as kNN and evaluation search it: they reuse the cache
            found_ids: list[str] = []
            parts: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0, np.int64))]
            for hits in hits_in_groups(
                store.records(split), target, work / split, mm.threads,
                sensitivity=sensitivity, evalue=evalue,
            ):  # fmt: skip
                found_ids += hits.query_ids
                parts.append((hits.max_fident, hits.max_target))
            max_fident, max_target = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
            found = np.flatnonzero(max_target >= 0)
            top = found[np.lexsort((found, -max_fident[found]))][:examples]
            report["splits"][split] = {
                "records": len(found_ids),
                "counts": band_counts(max_fident),
                "median_max_identity": (
                    float(np.median(max_fident[found])) if len(found) else None
                ),
                "closest": [
                    [found_ids[i], str(tid), float(max_fident[i])]
                    for i, tid in zip(top, target.ids(max_target[top]), strict=True)
                ],
            }
        return report
