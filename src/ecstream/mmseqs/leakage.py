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
            identities, closest, done = [np.empty(0)], [], 0
            for hits in hits_in_groups(
                store.records(split), target, work / split, mm.threads,
                sensitivity=sensitivity, evalue=evalue,
            ):  # fmt: skip
                fident = hits.max_fident  # a group's closest pairs are kept, not all its ids
                found = np.flatnonzero(hits.max_target >= 0)
                for i in found[np.lexsort((found, -fident[found]))][:examples].tolist():
                    closest.append((-fident[i], done + i, hits.query_ids[i], hits.max_target[i]))
                identities.append(fident)
                done += len(hits)
            max_fident = np.concatenate(identities)
            hit = ~np.isnan(max_fident)  # NaN: no hit
            closest = sorted(closest)[:examples]  # by identity, then by row, as in each group
            targets = target.ids(np.array([c[3] for c in closest], dtype=np.int64))
            report["splits"][split] = {
                "records": done,
                "counts": band_counts(max_fident),
                "median_max_identity": float(np.median(max_fident[hit])) if hit.any() else None,
                "closest": [
                    [qid, str(tid), float(-negative)]
                    for (negative, _, qid, _), tid in zip(closest, targets, strict=True)
                ],
            }
        return report
