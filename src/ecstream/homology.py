"""MMseqs2 for ecstream: homology-aware splits, nearest-homolog search and the leakage report.

The shared data is non-redundant only at 90% identity, so a random split puts close relatives on
both sides and validation accuracy says little about new families. This module

- wraps the ``mmseqs`` binary (:class:`MMseqs`: locate it, report its version, run it with its
  output captured to log files in a work directory, fail with the command and the tail of stderr);
- builds a **cluster split** (:func:`cluster_split`, called by ``build_store(split="cluster")``):
  records are staged on disk, clustered with ``mmseqs easy-cluster`` and every whole cluster goes to
  one split, chosen from the hash of its representative's sequence;
- searches a store split as a target database (:class:`TargetDB`, :func:`best_hits`), the
  primitive of the leakage report, a nearest-homolog classifier and identity-band evaluation;
- measures **leakage** (:func:`leakage_report`): each val/test sequence's highest identity to any
  training sequence, counted in the bands of :data:`BAND_EDGES`.

Identity everywhere is MMseqs2's ``fident``: identical residues / alignment columns of a local
alignment (``--seq-id-mode 0``), the same measure ``--min-seq-id`` uses when clustering.

Nothing here holds a per-residue array for the whole data: records are streamed to FASTA files,
cluster membership lives in a memory-mapped ``int64`` array on disk, search output is read back
in blocks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .overlap import hash64
from .shards import SplitWriter, read_batches

if TYPE_CHECKING:  # store imports this module lazily; a module-level import would be circular
    from .store import BuildConfig, Kept, Store

ENV_VAR = "ECSTREAM_MMSEQS"
INSTALL_HINT = (
    "install MMseqs2 (Debian/Ubuntu: 'apt-get install mmseqs2'; conda: "
    "'conda install -c bioconda mmseqs2'; or a static build from https://mmseqs.com), "
    f"or point {ENV_VAR} at the mmseqs executable"
)

#: Above this many sequences a cluster split uses ``easy-linclust`` (linear time, a little less
#: sensitive) instead of the cascaded ``easy-cluster``.
LINCLUST_ABOVE = 1_000_000
#: Coverage mode of the cluster split: 0 = the alignment covers at least ``coverage`` of *both*
#: sequences (MMseqs2's default, what most published homology splits use: "same family over
#: most of the length"). Relatives that share only a domain or a fragment are not joined, so a
#: cluster split still leaves some val/test sequences with a partial training hit above the
#: threshold; :func:`leakage_report` measures exactly that. On 1,500 real rows at 50% identity,
#: cov-mode 1 or 2, ``-c 0.5``, connected-component clustering (``--cluster-mode 1``) or ``-s 7.5``
#: changed that residue by no more than sampling noise (about 10% of val/test, against about 50%
#: for a random split).
COV_MODE = 0
#: Sensitivity (``-s``) of :func:`best_hits` by default (that of ``mmseqs easy-search``).
SEARCH_SENSITIVITY = 5.7
#: Prefilter candidates aligned per query (``--max-seqs``; MMseqs2's default is 300). The best
#: hit by bit score is almost always among the first few candidates, and alignment time grows
#: with this number: on the full shared data 300 made a search of 40k proteins take over half an
#: hour on 2 cores.
MAX_SEQS = 100
#: Sensitivity of the leakage report: the same as every other search, so that its bands and
#: those of ``evaluate`` count the same hits (``-s 7.5`` finds a few more remote homologs, at
#: about twice the time on the full data).
LEAKAGE_SENSITIVITY = SEARCH_SENSITIVITY
#: Lower edges of the identity bands, high to low; one place for the report and for evaluation.
BAND_EDGES: tuple[float, ...] = (0.9, 0.5, 0.3)
NO_HIT = "no_hit"


def _edge(x: float) -> str:
    return f"{x:g}"


#: Band names, high identity first: ``>=0.9``, ``0.5-0.9``, ``0.3-0.5``, ``<0.3``, ``no_hit``.
BANDS: tuple[str, ...] = (
    f">={_edge(BAND_EDGES[0])}",
    *(f"{_edge(lo)}-{_edge(hi)}" for hi, lo in itertools.pairwise(BAND_EDGES)),
    f"<{_edge(BAND_EDGES[-1])}",
    NO_HIT,
)

_STAGE_CHUNK = 1 << 16  # rows per block when walking the on-disk cluster arrays
_SEARCH_COLUMNS = ("query", "target", "fident", "bits", "evalue")
_TSV_BLOCK = 1 << 24  # bytes per block when reading MMseqs2 tab-separated output


# --------------------------------------------------------------------------- the binary


class MMseqsNotFound(RuntimeError):
    """The ``mmseqs`` executable is not installed (or not where ``ECSTREAM_MMSEQS`` says)."""


class MMseqsError(RuntimeError):
    """An MMseqs2 command failed; the message holds the command and the tail of its stderr."""


def find_mmseqs() -> str:
    """Path of the mmseqs executable: ``$ECSTREAM_MMSEQS`` if set, else ``mmseqs`` on the PATH."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = shutil.which(env)
        if path is None:
            raise MMseqsNotFound(f"{ENV_VAR}={env!r} is not an executable file: {INSTALL_HINT}")
        return path
    path = shutil.which("mmseqs")
    if path is None:
        raise MMseqsNotFound(f"MMseqs2 ('mmseqs') was not found on the PATH: {INSTALL_HINT}")
    return path


@cache
def _version(binary: str) -> str:
    done = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MMseqsError(f"'{binary} version' failed: {_tail(done.stderr or done.stdout)}")
    return done.stdout.strip()


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class MMseqs:
    """The mmseqs executable and the number of threads to run it with."""

    binary: str
    threads: int

    @classmethod
    def find(cls, threads: int | None = None) -> MMseqs:
        """Locate mmseqs (see :func:`find_mmseqs`); ``threads`` defaults to ``os.cpu_count()``."""
        return cls(find_mmseqs(), int(threads or os.cpu_count() or 1))

    @property
    def version(self) -> str:
        """Version string, e.g. ``14-7e284`` (Debian builds append ``+ds-…``)."""
        return _version(self.binary)

    def run(self, args: Sequence[str | int | os.PathLike[str]], workdir: Path, log: str) -> None:
        """Run ``mmseqs ARGS``; stdout and stderr go to ``workdir/LOG.{out,err}``.

        Raises :class:`MMseqsError` with the command, its exit status and the tail of stderr.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        command = [self.binary, *map(str, args)]
        out, err = workdir / f"{log}.out", workdir / f"{log}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            code = subprocess.run(command, stdout=fo, stderr=fe, check=False).returncode
        if code != 0:
            tail = _tail(err.read_text(errors="replace")) or _tail(out.read_text(errors="replace"))
            raise MMseqsError(
                f"MMseqs2 failed (exit status {code}): {' '.join(command)}\n{tail}\n"
                f"(full output: {out}, {err})"
            )


# --------------------------------------------------------------------------- helpers


def _write_fasta(fh: BinaryIO, first: int, seqs: Sequence[bytes]) -> None:
    """Records as FASTA with their row numbers as names (MMseqs2 keeps only the first word)."""
    fh.write(b"".join(b">%d\n%s\n" % (first + i, s) for i, s in enumerate(seqs)))


def split_records(store: Store, split: str) -> Iterator[tuple[str, bytes]]:
    """``(id, sequence)`` of every record of a store split, in stored order (row ``0 … n-1``)."""
    for ids, seqs, _ in store.records(split):
        yield from zip(ids, seqs, strict=True)


def _read_tsv(path: Path, names: Sequence[str], types: dict[str, pa.DataType]) -> Iterator[dict]:
    """Blocks of a headerless tab-separated file as dicts of numpy arrays."""
    if path.stat().st_size == 0:
        return
    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(column_names=list(names), block_size=_TSV_BLOCK),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    for batch in reader:
        yield {n: batch.column(n).to_numpy(zero_copy_only=False) for n in names}


def _open_store(store: Store | str | os.PathLike[str]) -> Store:
    from .store import Store

    return store if isinstance(store, Store) else Store(store)


# --------------------------------------------------------------------------- cluster split


def cluster_split(
    chunks: Iterable[Kept],
    route: Callable[[Kept, np.ndarray, np.ndarray], None],
    workdir: Path,
    config: BuildConfig,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Split records by whole MMseqs2 clusters; route them in input order; manifest info.

    1. Every record is staged on disk (Arrow shards via :class:`SplitWriter`, a FASTA named by
       staging row, and the 64-bit hash of its sequence in ``hashes.u64``).
    2. ``mmseqs easy-cluster`` (``easy-linclust`` above :data:`LINCLUST_ABOVE` records) clusters
       them with ``--min-seq-id config.identity -c config.coverage --cov-mode`` :data:`COV_MODE`.
    3. ``representatives.npy`` (``int64`` per staging row, memory-mapped) receives each record's
       cluster representative, parsed from ``*_cluster.tsv``; a record missing from the output is
       its own cluster.
    4. Each cluster's split is ``assign_splits(hash64([representative sequence]), seed, val,
       test)``, so the split is deterministic in the seed and identical sequences (always in one
       cluster) share it. Records are read back in staging order and passed to ``route``.

    Memory holds one block of records at a time; disk holds about two copies of the input.
    """
    from .store import SPLITS, Kept, assign_splits

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
                writer.add(rid, seq, label, ec)
            _write_fasta(fa, first, kept.seqs)
            hash64(kept.seqs).tofile(fh)
    writer.close()
    n = writer.records
    tool = "easy-linclust" if n > LINCLUST_ABOVE else "easy-cluster"
    options = [
        "--min-seq-id",
        str(float(config.identity)),
        "-c",
        str(float(config.coverage)),
        "--cov-mode",
        str(COV_MODE),
    ]
    info: dict[str, Any] = {
        "method": "cluster",
        "identity": config.identity,
        "coverage": config.coverage,
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
        return info

    # 2. cluster
    if progress:
        progress(f"clustering {n:,} sequences with mmseqs {tool}")
    prefix = work / "clu"
    args = [tool, fasta, prefix, work / "tmp", *options, "--threads", mm.threads]
    mm.run([*args, "--remove-tmp-files", "1"], work, tool)
    for suffix in ("_all_seqs.fasta", "_rep_seq.fasta"):
        Path(f"{prefix}{suffix}").unlink(missing_ok=True)
    fasta.unlink()

    # 3. representative of every record, and cluster sizes, on disk
    rep = np.lib.format.open_memmap(work / "representatives.npy", "w+", np.int64, (n,))
    rep[:] = -1
    types = {"rep": pa.int64(), "member": pa.int64()}
    for block in _read_tsv(Path(f"{prefix}_cluster.tsv"), ("rep", "member"), types):
        if len(block["rep"]) and (
            min(block["rep"].min(), block["member"].min()) < 0
            or max(block["rep"].max(), block["member"].max()) >= n
        ):
            raise MMseqsError(f"{prefix}_cluster.tsv names a record outside 0..{n - 1}")
        rep[block["member"]] = block["rep"]
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

    per_split = np.zeros(len(SPLITS), dtype=np.int64)
    for start in range(0, n, _STAGE_CHUNK):
        block = sizes[start : start + _STAGE_CHUNK]
        reps = start + np.flatnonzero(block > 0)
        splits = assign_splits(hashes[reps], config.seed, config.val, config.test)
        per_split += np.bincount(splits, minlength=len(SPLITS))
        info["singletons"] += int((block == 1).sum())
        info["largest_cluster"] = max(info["largest_cluster"], int(block.max(initial=0)))
    info["clusters"] = int(per_split.sum())
    info["clusters_per_split"] = {s: int(c) for s, c in zip(SPLITS, per_split, strict=True)}
    if unlisted:
        info["records_missing_from_output"] = unlisted

    # 4. route in staging (= input) order
    row = 0
    for batch in read_batches(work / "stage" / s for s in writer.shards):
        rows = np.arange(row, row + batch.num_rows)
        row += batch.num_rows
        kept = Kept(
            ids=batch.column("id").to_pylist(),
            seqs=batch.column("sequence").to_pylist(),
            labels=batch.column("label").to_numpy().tolist(),
            ecs=batch.column("ec").to_pylist(),
        )
        splits = assign_splits(hashes[rep[rows]], config.seed, config.val, config.test)
        route(kept, splits, np.asarray(hashes[rows]))
    return info


# --------------------------------------------------------------------------- search


class TargetDB:
    """An MMseqs2 database of one store split, with the id and label of every target row.

    A directory holding ``db*`` (``mmseqs createdb``; ``db.idx`` after ``createindex``),
    ``labels.npy`` (``int16`` per row), ``ids.arrow`` and ``target.json`` (written last: a
    directory without it is incomplete). Target names inside MMseqs2 are the split's row numbers.
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
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self._ids: pa.Array | None = None

    @property
    def db(self) -> Path:
        return self.directory / "db"

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

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """Record ids of target rows; ``""`` for row ``-1`` (no hit)."""
        if self._ids is None:
            # the ids may be zero-copy views of the mapping, which stays open while they live
            source = pa.memory_map(str(self.directory / "ids.arrow"), "r")
            self._ids = pa.ipc.open_file(source).read_all().column("id").combine_chunks()
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows), "", dtype=object)
        hit = rows >= 0
        out[hit] = self._ids.take(pa.array(rows[hit])).to_numpy(zero_copy_only=False)
        return out.astype(str)

    @classmethod
    def create(
        cls,
        store: Store | str | os.PathLike[str],
        split: str,
        directory: str | os.PathLike[str],
        threads: int | None = None,
        *,
        force: bool = False,
    ) -> TargetDB:
        """Build the database of ``store``'s ``split`` in ``directory`` (atomically)."""
        store = _open_store(store)
        mm = MMseqs.find(threads)
        directory = Path(directory)
        if (directory / cls.META).exists() and not force:
            raise FileExistsError(f"{directory} already holds a target database; use force=True")
        n = store.num_records(split)
        if n == 0:
            raise ValueError(f"{store.path}: split {split!r} has no records to search against")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".{directory.name}.building-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.int16, (n,))
            schema = pa.schema([("id", pa.string())])
            row = 0
            with (
                open(tmp / "targets.fasta", "wb") as fa,
                pa.OSFile(str(tmp / "ids.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, schema) as ids,
            ):
                for batch in read_batches(store.shard_paths(split)):
                    _write_fasta(fa, row, batch.column("sequence").to_pylist())
                    labels[row : row + batch.num_rows] = batch.column("label").to_numpy()
                    ids.write_batch(pa.record_batch([batch.column("id")], schema=schema))
                    row += batch.num_rows
            labels.flush()
            del labels
            mm.run(["createdb", tmp / "targets.fasta", tmp / "db"], tmp, "createdb")
            (tmp / "targets.fasta").unlink()
            meta = {
                "store": str(store.path.resolve()),
                "split": split,
                "fingerprint": store.fingerprint(split),
                "records": n,
                "mmseqs_version": mm.version,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (tmp / cls.META).write_text(json.dumps(meta, indent=1) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def has_hit(self) -> np.ndarray:
        return self.best_target >= 0


@dataclass(frozen=True)
class _SearchParams:
    sensitivity: float
    evalue: float
    max_seqs: int
    coverage: float


def _write_queries(queries: Iterable[tuple[str, bytes | str]], fasta: Path) -> tuple[list, str]:
    """Stream queries to a FASTA named by row numbers; returns their ids and a content digest."""
    ids: list[str] = []
    digest = hashlib.sha256()
    with open(fasta, "wb") as fa:
        block: list[bytes] = []
        for qid, seq in queries:
            ids.append(qid)
            block.append(seq.encode() if isinstance(seq, str) else bytes(seq))
            if len(block) >= 4096:
                digest.update(b"\n".join(block) + b"\n")
                _write_fasta(fa, len(ids) - len(block), block)
                block = []
        digest.update(b"\n".join(block) + b"\n")
        _write_fasta(fa, len(ids) - len(block), block)
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
    args = [
        "easy-search", fasta, target.db, out, work / "tmp",
        "-s", str(float(p.sensitivity)), "-e", f"{p.evalue:g}", "--max-seqs", p.max_seqs,
        "--format-output", ",".join(_SEARCH_COLUMNS), "--threads", mm.threads,
        "--remove-tmp-files", "1",
    ]  # fmt: skip
    if p.coverage > 0:
        args += ["-c", str(float(p.coverage)), "--cov-mode", "0"]
    mm.run(args, work, "easy-search")
    fasta.unlink()
    return out


def read_hits(path: Path) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of an ``easy-search`` hit table: ``query``, ``target`` (int64), ``fident``, ``bits``,
    ``evalue`` (float64)."""
    types = {"query": pa.int64(), "target": pa.int64()}
    types |= {c: pa.float64() for c in ("fident", "bits", "evalue")}
    yield from _read_tsv(path, _SEARCH_COLUMNS, types)


def best_hits(
    queries: Iterable[tuple[str, bytes | str]],
    target: TargetDB | str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    threads: int | None = None,
    *,
    sensitivity: float = SEARCH_SENSITIVITY,
    evalue: float = 1e-3,
    max_seqs: int = MAX_SEQS,
    coverage: float = 0.0,
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
    ids, digest = _write_queries(queries, work / "queries.fasta")
    params = _SearchParams(sensitivity, evalue, max_seqs, coverage)
    key = hashlib.sha256(f"{digest}|{params}|{target.meta['fingerprint']}".encode()).hexdigest()
    cache = cache_dir() / "hits" / f"{key[:32]}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            arrays = {name: saved[name] for name in saved.files}
    else:
        arrays = _reduce_hits(_easy_search(work, target, params, threads, bool(ids)), len(ids))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.{uuid.uuid4().hex[:8]}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache)
    best_t = arrays["best_target"]
    labels = np.full(len(ids), -1, dtype=np.int64)
    labels[best_t >= 0] = target.labels[best_t[best_t >= 0]]
    return Hits(
        query_ids=ids,
        best_id=target.ids(best_t),
        best_label=labels,
        **arrays,
    )


def cache_dir() -> Path:
    """Where search results are cached: ``$ECSTREAM_CACHE``, else ``$XDG_CACHE_HOME/ecstream``
    (``~/.cache/ecstream``). Safe to delete at any time."""
    if env := os.environ.get("ECSTREAM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecstream"


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


# --------------------------------------------------------------------------- identity bands


def band_index(identity: np.ndarray) -> np.ndarray:
    """Index into :data:`BANDS` for identities in [0, 1]; NaN (no hit) maps to ``no_hit``."""
    x = np.asarray(identity, dtype=np.float64)
    index = (x[..., None] < np.asarray(BAND_EDGES)).sum(axis=-1)
    return np.where(np.isnan(x), len(BANDS) - 1, index)


def identity_bands(identity: np.ndarray) -> np.ndarray:
    """Band name (one of :data:`BANDS`) of each identity."""
    return np.asarray(BANDS)[band_index(identity)]


def band_counts(identity: np.ndarray) -> dict[str, int]:
    """How many identities fall in each band, every band present."""
    counts = np.bincount(band_index(identity).ravel(), minlength=len(BANDS))
    return {name: int(c) for name, c in zip(BANDS, counts, strict=True)}


# --------------------------------------------------------------------------- leakage


def leakage_report(
    store: Store | str | os.PathLike[str],
    threads: int | None = None,
    *,
    reference: str = "train",
    splits: Sequence[str] = ("val", "test"),
    sensitivity: float = LEAKAGE_SENSITIVITY,
    evalue: float = 1e-3,
    workdir: str | os.PathLike[str] | None = None,
    target: TargetDB | None = None,
    examples: int = 5,
) -> dict[str, Any]:
    """Each val/test sequence's highest identity to any training sequence, counted in bands.

    ``target`` reuses a database of the reference split (else one is built in ``workdir``, a
    temporary directory by default, removed afterwards). The result lists the band counts per
    split and the closest pairs found; :func:`record_leakage` stores it in the manifest and
    :func:`format_leakage` prints it.
    """
    store = _open_store(store)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="ecstream-leakage-")) if own else Path(workdir)
    try:
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
        for split in chosen:  # one search per split: each is then cached for kNN and evaluation
            hits = best_hits(
                split_records(store, split), target, work / split, mm.threads,
                sensitivity=sensitivity, evalue=evalue,
            )  # fmt: skip
            max_fident, max_target = hits.max_fident, hits.max_target
            found = np.flatnonzero(max_target >= 0)
            top = found[np.lexsort((found, -max_fident[found]))][:examples]
            report["splits"][split] = {
                "records": len(hits),
                "counts": band_counts(max_fident),
                "median_max_identity": (
                    float(np.median(max_fident[found])) if len(found) else None
                ),
                "closest": [
                    [hits.query_ids[i], str(tid), float(max_fident[i])]
                    for i, tid in zip(top, target.ids(max_target[top]), strict=True)
                ],
            }
        return report
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def record_leakage(store: Store | str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Store a leakage report under ``"leakage"`` in the store's manifest.json, atomically."""
    from .store import MANIFEST, Store

    path = Path(store.path if isinstance(store, Store) else store) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["leakage"] = report
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if isinstance(store, Store):
        store.manifest["leakage"] = report


def format_leakage(report: dict[str, Any]) -> str:
    """The leakage report as a plain-text table (counts and percentages per band)."""
    bands = report["bands"]
    head = (
        f"Highest identity of each sequence to any of {report['reference_records']:,} "
        f"{report['reference']} sequences (MMseqs2 {report['mmseqs_version']}, "
        f"-s {report['sensitivity']:g}, E <= {report['evalue']:g})"
    )
    rows = []
    for split, info in report["splits"].items():
        n = max(info["records"], 1)
        cells = [f"{c:,} ({100 * c / n:.1f}%)" for c in (info["counts"][b] for b in bands)]
        rows.append([split, f"{info['records']:,}", *cells])
    header = ["split", "records", *bands]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = [head]
    for r in [header, *rows]:
        lines.append(
            f"{r[0]:<{widths[0]}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True))
        )
    for split, info in report["splits"].items():
        for qid, tid, ident in info.get("closest", [])[:3]:
            lines.append(f"  closest {split}: {qid} ~ {tid} at {ident:.3f}")
    return "\n".join(lines)
