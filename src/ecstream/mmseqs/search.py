"""Searches of a store split: a target database, the best hit of every query, a result cache.

A split becomes an MMseqs2 database (:class:`TargetDB`); :func:`best_hits` searches queries
against it and keeps, per query, the best hit by bit score and the highest identity over all
hits: the primitive of the leakage report, the nearest-homolog classifier and identity bands.
Search output is read back in blocks; results are cached per user, keyed by the queries, the
settings and the target split's fingerprint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..atomic import atomic_dir, read_json, write_json
from ..cache import cache_dir, cached_arrays, keep_arrays
from ..hashing import LineDigest, text_digest
from ..records import Records, groups, pairs
from ..store import Store
from .binary import MMseqs, MMseqsError, read_tsv, write_fasta

#: Sensitivity (``-s``) of every search by default (that of ``mmseqs easy-search``).
SEARCH_SENSITIVITY = 5.7
#: Prefilter candidates aligned per query (``--max-seqs``; MMseqs2's default is 300). The best
#: hit by bit score is almost always among the first few candidates, and alignment time grows
#: with this number (BENCHMARKS.md, accuracy section, has the search times).
MAX_SEQS = 100
#: Largest E-value of a hit: MMseqs2's default for easy-search.
SEARCH_EVALUE = 1e-3
#: The kNN's fallback for queries without a hit: an iterative profile search, more sensitive
#: (BENCHMARKS.md, remote proteins, has what it finds and what it costs).
PROFILE_ITERATIONS = 3
PROFILE_SENSITIVITY = 7.5
#: Queries a homology predictor searches in one go where its caller lets it (evaluate, predict:
#: :meth:`~ecstream.predictors.base.Predictor.search_ahead`). Each search pays a fixed cost,
#: MMseqs2 indexing the training split's k-mers anew unless the kNN run keeps its index (the
#: profile fallback at each of its iterations), large next to a chunk's queries
#: (BENCHMARKS.md, "Searching in groups"). A group's hits are a few numbers per query; its
#: records' text, some tens of MB, is held while it is scored.
SEARCH_ROWS = 32_768
_SEARCH_COLUMNS = ("query", "target", "fident", "bits", "evalue")


class TargetDB:
    """An MMseqs2 database of one store split, with the id and label of every target row.

    A directory holding ``db*`` (``mmseqs createdb``; ``db.idx`` after ``createindex``),
    ``labels.npy`` (``int16`` per row), ``ids.arrow`` (id and EC field per row) and
    ``target.json``. Target names inside MMseqs2 are the split's row numbers.
    """

    META = "target.json"

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        meta_path = self.directory / self.META
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.directory}: not an ecstream target database (no {self.META}); "
                "make one with TargetDB.create"
            )
        meta = read_json(meta_path)  # a damaged file is named
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: not an ecstream target database's description")
        self.meta: dict[str, Any] = meta
        self._table: pa.Table | None = None

    @property
    def db(self) -> Path:
        return self.directory / "db"

    def check_index(self, mm: MMseqs) -> None:
        """Refuse a kept k-mer index that another MMseqs2 version wrote: MMseqs2 stops at an
        index of another format, and one it did read could hold other k-mers."""
        made = self.meta.get("mmseqs_version")
        if self.meta.get("index") and made != mm.version:
            raise MMseqsError(
                f"{self.directory}: its k-mer index was written by MMseqs2 {made}, and this is "
                f"MMseqs2 {mm.version}: make the kNN run again (ecstream train STORE --model "
                "knn --index), or with the MMseqs2 that made it"
            )

    @property
    def records(self) -> int:
        return int(self.meta["records"])

    @property
    def split(self) -> str:
        return self.meta["split"]

    @property
    def labels(self) -> np.ndarray:
        """Label of every target row (memory-mapped)."""
        return np.load(self.directory / "labels.npy", mmap_mode="r")

    def _column(self, name: str) -> pa.Array:
        if self._table is None:
            # zero-copy views of the mapping, which stays open while they live
            source = pa.memory_map(str(self.directory / "ids.arrow"), "r")
            self._table = pa.ipc.open_file(source).read_all()
        if name not in self._table.column_names:
            raise FileNotFoundError(
                f"{self.directory}: this target database has no EC numbers (made by ecstream "
                "0.1.0); make the kNN run again"
            )
        return self._table.column(name).combine_chunks()

    def _take(self, name: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows), "", dtype=object)
        hit = rows >= 0
        out[hit] = self._column(name).take(pa.array(rows[hit])).to_numpy(zero_copy_only=False)
        return out.astype(str)

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Record ids of target rows; ``""`` for row ``-1`` (no hit)."""
        return self._take("id", rows)

    def ecs(self, rows: np.ndarray) -> np.ndarray:
        """EC fields (all numbers) of target rows; ``""`` for row ``-1`` (no hit)."""
        return self._take("ec", rows)

    @classmethod
    def create(
        cls,
        store: Store | str | os.PathLike[str],
        split: str,
        directory: str | os.PathLike[str],
        threads: int | None = None,
        *,
        force: bool = False,
        index: bool = False,
    ) -> TargetDB:
        """Build the database of ``store``'s ``split`` in ``directory`` (atomically).

        ``index``: keep MMseqs2's k-mer index of it too (``createindex``, many times the
        database's size), which every search would otherwise build anew: its fixed cost
        (BENCHMARKS.md). It is made for the highest sensitivity ecstream searches with and
        MMseqs2's defaults otherwise, which are every search's (:func:`_easy_search`): its hits
        are those of a search without it (tested). Made by one MMseqs2 version, it is refused
        by another (:meth:`check_index`)."""
        store = store if isinstance(store, Store) else Store(store)
        mm = MMseqs.find(threads)
        directory = Path(directory)
        n = store.num_records(split)
        if n == 0:
            raise ValueError(f"{store.path}: split {split!r} has no records to search against")
        # looked for under the claim: a writer that finished just before is seen, not redone
        with atomic_dir(directory, replace=force) as tmp:
            if (directory / cls.META).exists() and not force:
                raise FileExistsError(
                    f"{directory} already holds a target database; use force=True"
                )
            labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.int16, (n,))
            schema = pa.schema([("id", pa.string()), ("ec", pa.string())])
            row = 0
            with (
                open(tmp / "targets.fasta", "wb") as fa,
                pa.OSFile(str(tmp / "ids.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, schema) as ids,
            ):
                for batch in store.record_batches(split):
                    write_fasta(fa, row, batch.column("sequence").to_pylist())
                    labels[row : row + batch.num_rows] = batch.column("label").to_numpy()
                    columns = [batch.column("id"), batch.column("ec")]
                    ids.write_batch(pa.record_batch(columns, schema=schema))
                    row += batch.num_rows
            labels.flush()
            del labels
            mm.run(["createdb", tmp / "targets.fasta", tmp / "db"], tmp, "createdb")
            (tmp / "targets.fasta").unlink()
            if index:  # -s: what an index holds is made for the most sensitive search
                args = ["createindex", tmp / "db", tmp / "index-work", "--threads", mm.threads]
                args += ["-s", str(float(PROFILE_SENSITIVITY))]
                mm.run(args, tmp, "createindex")
                shutil.rmtree(tmp / "index-work")  # its work files, which the run must not keep
            meta = {
                "store": str(store.path.resolve()),
                "split": split,
                "fingerprint": store.fingerprint(split),
                "records": n,
                "index": index,
                "mmseqs_version": mm.version,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            write_json(tmp / cls.META, meta)
        return cls(directory)


@dataclass
class Hits:
    """Per query: its best hit by bit score, and the highest identity over all its hits.

    The two can differ: a long alignment at 60% identity outscores a short one at 95%. Use the
    best-bits hit to transfer a label (nearest homolog) and ``max_fident`` to measure how close
    the query's nearest relative is (leakage, identity bands). No hit: row ``-1``, label ``-1``,
    id ``""``, numbers NaN.
    """

    query_ids: list[str]
    best_target: np.ndarray  # int64 target row
    best_id: np.ndarray  # str
    best_label: np.ndarray  # int64
    best_fident: np.ndarray  # float64, in [0, 1]
    best_bits: np.ndarray  # float64
    best_evalue: np.ndarray  # float64
    max_fident: np.ndarray  # float64: max over all hits of the query
    max_target: np.ndarray  # int64: target row of that maximum (best bits among ties)
    profile: np.ndarray | None = None  # bool: the best hit came from the profile fallback

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def has_hit(self) -> np.ndarray:
        return self.best_target >= 0

    @property
    def by_profile(self) -> np.ndarray:
        """Which queries' best hit came from the profile fallback (none without one)."""
        return np.zeros(len(self), bool) if self.profile is None else self.profile

    def take(self, rows: np.ndarray, query_ids: list[str]) -> Hits:
        """The hits of queries ``rows``, renamed ``query_ids`` (a query's hits depend on its
        sequence alone, not on the other queries of its search)."""
        arrays = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if f.name != "query_ids" and getattr(self, f.name) is not None
        }
        return replace(self, query_ids=list(query_ids), **arrays)


@dataclass(frozen=True)
class _SearchParams:
    sensitivity: float
    evalue: float
    max_seqs: int
    coverage: float
    iterations: int = 1


def write_queries(queries: Iterable[tuple[str, bytes | str]], fasta: Path) -> tuple[list, str]:
    """Stream queries to a FASTA named by row numbers; returns their ids and a content digest."""
    ids: list[str] = []
    digest = LineDigest()
    with open(fasta, "wb") as fa:
        block: list[bytes] = []
        for qid, seq in queries:
            ids.append(qid)
            block.append(seq.encode() if isinstance(seq, str) else bytes(seq))
            if len(block) >= 4096:
                digest.add(block)
                write_fasta(fa, len(ids) - len(block), block)
                block = []
        digest.add(block)
        write_fasta(fa, len(ids) - len(block), block)
    return ids, digest.hexdigest()


def _easy_search(
    work: Path, target: TargetDB, p: _SearchParams, threads: int | None, any_query: bool
) -> Path:
    """Run ``mmseqs easy-search`` of ``work/queries.fasta``; returns the hit table's path."""
    fasta, out = work / "queries.fasta", work / "hits.tsv"
    if not any_query:
        out.write_bytes(b"")
        return out
    mm = MMseqs.find(threads)
    target.check_index(mm)
    # an option that a kept index fixes (k-mer size, alphabet, spaced k-mers, masking) would be
    # taken from the index, not from here: such options must go to createindex too
    args = [
        "easy-search", fasta, target.db, out, work / "tmp",
        "-s", str(float(p.sensitivity)), "-e", f"{p.evalue:g}", "--max-seqs", p.max_seqs,
        "--format-output", ",".join(_SEARCH_COLUMNS), "--threads", mm.threads,
        "--remove-tmp-files", "1",
    ]  # fmt: skip
    if p.coverage > 0:
        args += ["-c", str(float(p.coverage)), "--cov-mode", "0"]
    if p.iterations > 1:
        args += ["--num-iterations", p.iterations]
    mm.run(args, work, "easy-search")
    fasta.unlink()
    return out


def read_hits(path: Path) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of an ``easy-search`` hit table: ``query``, ``target`` (int64), ``fident``, ``bits``,
    ``evalue`` (float64)."""
    types = {"query": pa.int64(), "target": pa.int64()}
    types |= {c: pa.float64() for c in ("fident", "bits", "evalue")}
    yield from read_tsv(path, _SEARCH_COLUMNS, types)


def best_hits(
    queries: Iterable[tuple[str, bytes | str]],
    target: TargetDB | str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    threads: int | None = None,
    *,
    sensitivity: float = SEARCH_SENSITIVITY,
    evalue: float = SEARCH_EVALUE,
    max_seqs: int = MAX_SEQS,
    coverage: float = 0.0,
    iterations: int = 1,
) -> Hits:
    """Best hit (by bit score; ties by E-value, then target row) and max identity per query.

    ``queries`` are ``(id, sequence)`` records, streamed to a FASTA file in ``workdir``. The
    per-query result (a few MB) is cached in :func:`cache_dir`, keyed by the query sequences, the
    search settings and the target split's fingerprint: the same search (the leakage report,
    a kNN run, the hybrid built on it, identity bands of a CNN's evaluation) runs MMseqs2 once.
    """
    target = target if isinstance(target, TargetDB) else TargetDB(target)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ids, digest = write_queries(queries, work / "queries.fasta")
    params = _SearchParams(sensitivity, evalue, max_seqs, coverage, iterations)
    key = text_digest(digest, params, target.meta["fingerprint"])
    cache = cache_dir() / "hits" / f"{key[:32]}.npz"
    arrays = cached_arrays(cache, key, _HIT_ARRAYS, len(ids), lambda a: _in_range(a, target))
    if arrays is None:
        arrays = _reduce_hits(_easy_search(work, target, params, threads, bool(ids)), len(ids))
        keep_arrays(cache, key, arrays, "search results")
    best_t = arrays["best_target"]
    labels = np.full(len(ids), -1, dtype=np.int64)
    labels[best_t >= 0] = target.labels[best_t[best_t >= 0]]
    return Hits(
        query_ids=ids,
        best_id=target.ids(best_t),
        best_label=labels,
        **arrays,
    )


def hits_in_groups(
    chunks: Iterable[Records],
    target: TargetDB,
    workdir: str | os.PathLike[str],
    threads: int | None = None,
    **settings: Any,
) -> Iterator[Hits]:
    """:func:`best_hits` of the chunks' records, a group of :data:`SEARCH_ROWS` or so at a time
    (:func:`~ecstream.records.groups`). These are the query sets of a kNN or hybrid evaluation
    (``Predictor.search_ahead``), so the leakage report, a CNN's identity bands and the homology
    runs share each other's cached searches of a split, whatever its size; one group's ids are
    held at a time."""
    for k, group in enumerate(groups(chunks, SEARCH_ROWS)):
        yield best_hits(pairs(group), target, Path(workdir) / f"group-{k}", threads, **settings)
        group.clear()


_HIT_ARRAYS = (
    "best_target", "best_fident", "best_bits", "best_evalue", "max_fident", "max_target",
)  # fmt: skip


def _in_range(arrays: dict[str, np.ndarray], target: TargetDB) -> bool:
    return all(
        bool(((arrays[name] >= -1) & (arrays[name] < target.records)).all())
        for name in ("best_target", "max_target")
    )


def _reduce_hits(path: Path, m: int) -> dict[str, np.ndarray]:
    """Per query: best hit by bits and max identity over all hits, from a hit table."""
    best_t = np.full(m, -1, dtype=np.int64)
    best_bits = np.full(m, -np.inf)
    best_e = np.full(m, np.nan)
    best_f = np.full(m, np.nan)
    max_f = np.full(m, -np.inf)
    max_t = np.full(m, -1, dtype=np.int64)
    max_bits = np.full(m, -np.inf)
    for h in read_hits(path):
        q, t, f, b, e = h["query"], h["target"], h["fident"], h["bits"], h["evalue"]
        # best by bits within the block: sort by (query, -bits, evalue, target), take firsts
        order = np.lexsort((t, e, -b, q))
        first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
        qq = q[first]
        better = (b[first] > best_bits[qq]) | (
            (b[first] == best_bits[qq])
            & ((e[first] < best_e[qq]) | ((e[first] == best_e[qq]) & (t[first] < best_t[qq])))
        )
        sel, qs = first[better], qq[better]
        best_t[qs], best_bits[qs], best_e[qs], best_f[qs] = t[sel], b[sel], e[sel], f[sel]
        # max identity within the block: sort by (query, -fident, -bits, target)
        order = np.lexsort((t, -b, -f, q))
        first = order[np.r_[True, q[order][1:] != q[order][:-1]]]
        qq = q[first]
        better = (f[first] > max_f[qq]) | (
            (f[first] == max_f[qq])
            & ((b[first] > max_bits[qq]) | ((b[first] == max_bits[qq]) & (t[first] < max_t[qq])))
        )
        sel, qs = first[better], qq[better]
        max_f[qs], max_t[qs], max_bits[qs] = f[sel], t[sel], b[sel]
    none = best_t < 0
    best_bits[none] = np.nan
    max_f[max_t < 0] = np.nan
    return {
        "best_target": best_t,
        "best_fident": best_f,
        "best_bits": best_bits,
        "best_evalue": best_e,
        "max_fident": max_f,
        "max_target": max_t,
    }


def with_profile_fallback(
    hits: Hits,
    seqs: list[bytes],
    target: TargetDB,
    workdir: str | os.PathLike[str],
    threads: int | None = None,
) -> Hits:
    """``hits`` with the queries that have none searched again by an iterative profile search
    (:data:`PROFILE_ITERATIONS` iterations, ``-s`` :data:`PROFILE_SENSITIVITY`); a hit found so
    becomes the query's best hit, marked in ``profile``. ``max_fident`` stays that of the first
    search, so identity bands keep their meaning."""
    missing = np.flatnonzero(~hits.has_hit)
    profile = np.zeros(len(hits), dtype=bool)
    if len(missing) == 0:
        return replace(hits, profile=profile)
    again = best_hits(
        ((hits.query_ids[i], seqs[i]) for i in missing), target, workdir, threads,
        sensitivity=PROFILE_SENSITIVITY, iterations=PROFILE_ITERATIONS,
    )  # fmt: skip
    found = missing[again.has_hit]
    arrays = {}
    for name in ("best_target", "best_id", "best_label", "best_fident", "best_bits", "best_evalue"):
        old = getattr(hits, name)
        values = old.astype(object)  # an id found now may be longer than the old array's width
        values[found] = getattr(again, name)[again.has_hit]
        arrays[name] = values.astype(str if old.dtype.kind == "U" else old.dtype)
    profile[found] = True
    return replace(hits, **arrays, profile=profile)
