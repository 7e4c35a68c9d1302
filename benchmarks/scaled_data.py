"""A 10× larger input for the memory-scaling check: the shared table repeated with mutations.

Copy ``k`` (0 … copies-1) of every row gets its id suffixed with ``-k`` and its sequence point-
mutated: each residue is replaced with probability ``rate``, and one random position per
sequence always is, so no copy repeats another or the original. A replacement is always a
different standard amino acid. Deterministic in ``seed``; written as gzip TSV (level 1, for speed)
with the original header, so ``ecstream build`` reads it like the original.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

STANDARD = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
_INDEX = np.full(256, -1, dtype=np.int64)  # letter → position in STANDARD, -1 for others
_INDEX[STANDARD] = np.arange(len(STANDARD))


def read_table(path: Path) -> tuple[bytes, list[bytes], list[bytes], np.ndarray, np.ndarray]:
    """Header line, ids, EC fields and the concatenated residues (uint8) with row offsets."""
    ids, ecs, seqs = [], [], []
    with gzip.open(path, "rb") as fh:
        header = fh.readline()
        for line in fh:
            rid, ec, seq = line.rstrip(b"\r\n").split(b"\t")
            ids.append(rid)
            ecs.append(ec)
            seqs.append(seq)
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return header, ids, ecs, np.frombuffer(b"".join(seqs), dtype=np.uint8), offsets


def mutate(residues: np.ndarray, offsets: np.ndarray, rate: float, rng) -> np.ndarray:
    """A copy of ``residues`` with point mutations (at least one per sequence)."""
    starts, lengths = offsets[:-1], np.diff(offsets)
    hit = rng.random(len(residues)) < rate
    hit[starts + (rng.random(len(starts)) * lengths).astype(np.int64)] = True
    where = np.flatnonzero(hit)
    shift = rng.integers(1, len(STANDARD), size=len(where))  # never back to the same letter
    original = np.maximum(_INDEX[residues[where]], 0)
    out = residues.copy()
    out[where] = STANDARD[(original + shift) % len(STANDARD)]
    return out


def write_scaled(source: Path, dest: Path, copies: int = 10, rate: float = 0.015, seed=0) -> Path:
    """Write ``dest`` (gzip TSV) unless it exists already: it depends on the arguments only."""
    if dest.exists():
        return dest
    header, ids, ecs, residues, offsets = read_table(source)
    tmp = dest.with_name(dest.name + ".partial")
    bounds = offsets.tolist()
    with gzip.open(tmp, "wb", compresslevel=1) as out:
        out.write(header)
        for k in range(copies):
            mutated = mutate(residues, offsets, rate, np.random.default_rng([seed, k])).tobytes()
            suffix = f"-{k}\t".encode()
            out.write(
                b"".join(
                    rid + suffix + ec + b"\t" + mutated[bounds[i] : bounds[i + 1]] + b"\n"
                    for i, (rid, ec) in enumerate(zip(ids, ecs, strict=True))
                )
            )
    os.replace(tmp, dest)
    return dest
