"""Cluster split: whole MMseqs2 clusters go to one split each (a step of a build); and the
families of evaluated proteins, clustered the same way (``evaluate --families``).

The shared data is non-redundant only at 90% identity, so a random split puts close relatives
on both sides; splitting whole clusters asks about new families instead. Nothing here holds a
per-residue array for the whole data: records are staged to Arrow shards and a FASTA file,
cluster membership lives in a memory-mapped ``int64`` array on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..cache import cache_dir, cached_arrays, keep_arrays
from ..hashing import hash64, text_digest
from ..records import Records
from ..shards import SplitWriter, read_batches
from ..splits import assign_splits
from ..store import SPLITS
from .binary import MMseqs, MMseqsError, read_tsv, write_fasta
from .search import MAX_SEQS, SEARCH_EVALUE, SEARCH_SENSITIVITY, write_queries

#: Above this many sequences a cluster split uses ``easy-linclust`` (linear time, a little less
#: sensitive) instead of the cascaded ``easy-cluster``.
LINCLUST_ABOVE = 1_000_000
#: Coverage mode 0: the alignment covers at least ``coverage`` of *both* sequences (MMseqs2's
#: default, what most published homology splits use: "same family over most of the length").
#: Relatives that share only a domain are not joined, so val/test can keep a partial training
#: hit above the threshold: the leakage report measures it, and ``--strict`` removes it.
COV_MODE = 0
#: Coverage of both sequences a cluster needs: a cluster split's default (``build --coverage``)
#: and the families of evaluated proteins.
COVERAGE = 0.8
_STAGE_CHUNK = 1 << 16  # rows per block when walking the on-disk cluster arrays
#: Families of evaluated proteins (:func:`families_of`): clusters at 30% identity (over
#: :data:`COVERAGE` of both sequences), the strict remote split's threshold, so a family is
#: what that split keeps whole.
FAMILY_IDENTITY = 0.3


@dataclass(frozen=True)
class ClusterSettings:
    """What a cluster split needs to know of a build."""

    identity: float
    coverage: float
    seed: int
    val: float
    test: float
    strict: bool = False  # then move val/test proteins with a training hit ≥ identity to train


@dataclass
class ClusterSplit:
    """The outcome of clustering: manifest info, and the records routed to their splits."""

    info: dict[str, Any]
    _routed: Iterator[tuple[Records, np.ndarray, np.ndarray]]

    def routed(self) -> Iterator[tuple[Records, np.ndarray, np.ndarray]]:
        """``(records, split index per record, sequence hash per record)`` in input order."""
        return self._routed


def cluster_split(
    chunks: Iterable[Records],
    workdir: Path,
    settings: ClusterSettings,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClusterSplit:
    """Stage and cluster records; each cluster's split comes from its representative's hash.

    1. Every record is staged on disk (Arrow shards via :class:`SplitWriter`, a FASTA named by
       staging row, and the 64-bit hash of its sequence in ``hashes.u64``).
    2. ``mmseqs easy-cluster`` (``easy-linclust`` above :data:`LINCLUST_ABOVE` records) clusters
       them with ``--min-seq-id identity -c coverage --cov-mode`` :data:`COV_MODE`.
    3. ``representatives.npy`` (``int64`` per staging row, memory-mapped) receives each record's
       cluster representative, parsed from ``*_cluster.tsv``; a record missing from the output is
       its own cluster.
    4. Each cluster's split is ``assign_splits(hash of the representative's sequence)``, so the
       split is deterministic in the seed and identical sequences (always in one cluster) share
       it. :meth:`ClusterSplit.routed` reads the records back in staging order.

    Memory holds one block of records at a time; disk holds about two copies of the input.
    """
    mm = MMseqs.find(threads)  # fail before reading any input if mmseqs is missing
    work = Path(workdir) / "cluster"
    work.mkdir(parents=True, exist_ok=True)

    # 1. stage
    writer = SplitWriter(work / "stage")
    fasta = work / "records.fasta"
    with open(fasta, "wb") as fa, open(work / "hashes.u64", "wb") as fh:
        for kept in chunks:
            first = writer.records
            for rid, seq, label, ec in zip(kept.ids, kept.seqs, kept.labels, kept.ecs, strict=True):
                writer.add(rid, seq, int(label), ec)
            write_fasta(fa, first, kept.seqs)
            hash64(kept.seqs).tofile(fh)
    writer.close()
    n = writer.records
    tool = workflow(n)
    options = _options(settings.identity, settings.coverage)
    info: dict[str, Any] = {
        "method": "cluster",
        "identity": settings.identity,
        "coverage": settings.coverage,
        "cov_mode": COV_MODE,
        "tool": f"mmseqs {tool}",
        "options": " ".join(options),
        "mmseqs_version": mm.version,
        "clusters": 0,
        "clusters_per_split": dict.fromkeys(SPLITS, 0),
        "singletons": 0,
        "largest_cluster": 0,
    }
    if n == 0:
        return ClusterSplit(info, iter(()))

    # 2. cluster
    if progress:
        progress(f"clustering {n:,} sequences with mmseqs {tool}")
    prefix = work / "clu"
    args = [tool, fasta, prefix, work / "tmp", *options, "--threads", mm.threads]
    mm.run([*args, "--remove-tmp-files", "1"], work, tool)
    for suffix in ("_all_seqs.fasta", "_rep_seq.fasta"):
        Path(f"{prefix}{suffix}").unlink(missing_ok=True)

    # 3. representative of every record, and cluster sizes, on disk
    rep = np.lib.format.open_memmap(work / "representatives.npy", "w+", np.int64, (n,))
    rep[:] = -1
    _read_representatives(Path(f"{prefix}_cluster.tsv"), rep)
    sizes = np.lib.format.open_memmap(work / "cluster_sizes.npy", "w+", np.int64, (n,))
    sizes[:] = 0
    unlisted = 0
    for start in range(0, n, _STAGE_CHUNK):
        block = rep[start : start + _STAGE_CHUNK]
        missing = block < 0
        if missing.any():
            unlisted += int(missing.sum())
            block[missing] = np.arange(start, start + len(block))[missing]
        np.add.at(sizes, block, 1)
    rep.flush()
    hashes = np.memmap(work / "hashes.u64", np.uint64, "r", shape=(n,))

    def split_of(rows: np.ndarray) -> np.ndarray:
        return assign_splits(hashes[rows], settings.seed, settings.val, settings.test)

    per_split = np.zeros(len(SPLITS), dtype=np.int64)
    for start in range(0, n, _STAGE_CHUNK):
        block = sizes[start : start + _STAGE_CHUNK]
        per_split += np.bincount(split_of(start + np.flatnonzero(block > 0)), minlength=3)
        info["singletons"] += int((block == 1).sum())
        info["largest_cluster"] = max(info["largest_cluster"], int(block.max(initial=0)))
    info["clusters"] = int(per_split.sum())
    info["clusters_per_split"] = {s: int(c) for s, c in zip(SPLITS, per_split, strict=True)}
    if unlisted:
        info["records_missing_from_output"] = unlisted
    assigned = np.lib.format.open_memmap(work / "splits.npy", "w+", np.uint8, (n,))
    for start in range(0, n, _STAGE_CHUNK):
        block = slice(start, min(n, start + _STAGE_CHUNK))
        assigned[block] = split_of(rep[block])
    if settings.strict:
        info["strict"] = strict_rounds(assigned, fasta, work / "strict", settings.identity, mm,
                                       progress)  # fmt: skip
    fasta.unlink()

    def routed() -> Iterator[tuple[Records, np.ndarray, np.ndarray]]:
        row = 0
        stage = [work / "stage" / s for s in writer.shards]
        for batch in read_batches(stage, writer.checksums):
            rows = np.arange(row, row + batch.num_rows)
            row += batch.num_rows
            records = Records(
                ids=batch.column("id").to_pylist(),
                seqs=batch.column("sequence").to_pylist(),
                labels=batch.column("label").to_numpy().astype(np.int64),
                ecs=batch.column("ec").to_pylist(),
            )
            yield records, np.asarray(assigned[rows]), np.asarray(hashes[rows])

    return ClusterSplit(info, routed())


def workflow(n: int) -> str:
    """The MMseqs2 workflow that clusters ``n`` sequences: cascaded, linear-time above
    :data:`LINCLUST_ABOVE`."""
    return "easy-linclust" if n > LINCLUST_ABOVE else "easy-cluster"


def _options(identity: float, coverage: float) -> list[str]:
    """The clustering thresholds, as MMseqs2 options."""
    return ["--min-seq-id", str(float(identity)), "-c", str(float(coverage)),
            "--cov-mode", str(COV_MODE)]  # fmt: skip


def _read_representatives(tsv: Path, rep: np.ndarray) -> None:
    """``rep[member] = representative`` for every line of an ``easy-cluster`` output, whose
    names are row numbers; a row outside ``rep`` is an :class:`MMseqsError`."""
    n = len(rep)
    types = {"rep": pa.int64(), "member": pa.int64()}
    for block in read_tsv(tsv, ("rep", "member"), types):
        if len(block["rep"]) and (
            min(block["rep"].min(), block["member"].min()) < 0
            or max(block["rep"].max(), block["member"].max()) >= n
        ):
            raise MMseqsError(f"{tsv} names a record outside 0..{n - 1}")
        rep[block["member"]] = block["rep"]


def strict_rounds(
    assigned: np.ndarray,
    fasta: Path,
    work: Path,
    identity: float,
    mm: MMseqs,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Move every val/test protein with a training hit at ≥ ``identity`` (any coverage, the
    leakage report's search) to train, until nothing moves; returns what moved, per round.

    The first round searches val/test against all of train; each next one only against the
    proteins just moved (a new training protein can only create hits to itself). A last round
    against all of train confirms that nothing is left, so the bands at and above the
    threshold are empty by construction.
    """
    work.mkdir(parents=True, exist_ok=True)
    rounds: list[int] = []
    target, whole = assigned == 0, True  # the first round searches all of train
    while True:
        queries = np.flatnonzero(assigned > 0)
        if not len(queries) or not target.any():
            break
        if progress:
            progress(f"strict split, round {len(rounds) + 1}: {len(queries):,} val/test proteins")
        where = work / f"round-{len(rounds) + 1}"
        closest = _max_identity(fasta, queries, np.flatnonzero(target), where, mm)
        moved = queries[closest >= identity]
        assigned[moved] = 0
        rounds.append(len(moved))
        if len(moved):  # next: only against the proteins that just arrived
            target, whole = np.zeros_like(target), False
            target[moved] = True
        elif whole:
            break
        else:  # nothing against the last arrivals: confirm against all of train
            target, whole = assigned == 0, True
    assigned.flush()
    return {
        "identity": identity,
        "search": f"mmseqs easy-search -s {SEARCH_SENSITIVITY:g} -e {SEARCH_EVALUE:g} "
        f"--max-seqs {MAX_SEQS}, any coverage, max identity over hits",
        "moved_per_round": rounds,
        "moved_to_train": int(sum(rounds)),
    }


def _max_identity(
    fasta: Path, queries: np.ndarray, targets: np.ndarray, work: Path, mm: MMseqs
) -> np.ndarray:
    """Each query row's highest identity to any target row (-1: no hit)."""
    work.mkdir(parents=True, exist_ok=True)
    _subset(fasta, queries, work / "q.fasta")
    _subset(fasta, targets, work / "t.fasta")
    out = work / "hits.tsv"
    mm.run(
        [
            "easy-search", work / "q.fasta", work / "t.fasta", out, work / "tmp",
            "-s", SEARCH_SENSITIVITY, "-e", f"{SEARCH_EVALUE:g}", "--max-seqs", MAX_SEQS,
            "--format-output", "query,target,fident", "--threads", mm.threads,
            "--remove-tmp-files", "1",
        ],
        work, "easy-search",
    )  # fmt: skip
    best = np.full(len(queries), -1.0)
    local = {int(r): k for k, r in enumerate(queries.tolist())}
    types = {"query": pa.int64(), "target": pa.int64(), "fident": pa.float64()}
    for block in read_tsv(out, ("query", "target", "fident"), types):
        at = np.fromiter((local[q] for q in block["query"].tolist()), np.int64, len(block["query"]))
        np.maximum.at(best, at, block["fident"])
    shutil.rmtree(work, ignore_errors=True)
    return best


def _subset(fasta: Path, rows: np.ndarray, out: Path) -> None:
    """The records of ``rows`` from the staging FASTA (named by row, one line per sequence)."""
    wanted = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=bool)
    wanted[rows] = True
    with open(fasta, "rb") as fi, open(out, "wb") as fo:
        for header in fi:
            sequence = next(fi)
            row = int(header[1:])
            if row < len(wanted) and wanted[row]:
                fo.write(header + sequence)


def families_of(
    queries: Iterable[tuple[str, bytes | str]],
    workdir: Path,
    identity: float = FAMILY_IDENTITY,
    coverage: float = COVERAGE,
    threads: int | None = None,
) -> np.ndarray:
    """The family of each query: ``int64`` 0..F-1 (by first member, in query order), from
    MMseqs2 clustering of the queries among themselves (:func:`workflow`; thresholds as a
    cluster split's, by default those of the strict remote split). Cached per user like
    searches, keyed by the sequences, in order, and the settings."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "queries.fasta"
    ids, digest = write_queries(queries, fasta)
    n = len(ids)
    tool, options = workflow(n), _options(identity, coverage)
    key = text_digest(digest, "families-v1", tool, *options)
    cache = cache_dir() / "families" / f"{key[:32]}.npz"
    got = cached_arrays(
        cache, key, ("family",), n, lambda a: bool(((a["family"] >= 0) & (a["family"] < n)).all())
    )
    if got is not None:
        return got["family"]
    rep = np.arange(n, dtype=np.int64)  # a query missing from the output is its own family
    if n:
        mm = MMseqs.find(threads)
        prefix = work / "clu"
        args = [tool, fasta, prefix, work / "tmp", *options, "--threads", mm.threads]
        mm.run([*args, "--remove-tmp-files", "1"], work, tool)
        _read_representatives(Path(f"{prefix}_cluster.tsv"), rep)
    # numbered by first appearance, so the numbers do not depend on MMseqs2's choice of
    # representative
    _, first, inverse = np.unique(rep, return_index=True, return_inverse=True)
    family = np.argsort(np.argsort(first))[inverse].astype(np.int64)
    keep_arrays(cache, key, {"family": family}, "families")
    return family
