"""Hashes: 64-bit record hashes, key derivation, split fingerprints and file checksums.

One place for every digest ecstream computes, so that a record hashes the same way wherever it
is hashed (splits, samples, overlap checks, search caches) and nobody re-implements BLAKE2b
truncation or SplitMix64 by hand.

Store checksums (shards and the manifest) use XXH3-128 from the ``xxhash`` package: they guard
against damage, not against someone who can rewrite the manifest too, so they need speed, not
cryptographic strength. On the 2-core EPYC of BENCHMARKS.md it hashes about 26 GB/s in memory
against 1.8 GB/s for SHA-256 (with SHA-NI) and 0.9 GB/s for BLAKE2b, so a full check of a store
costs about as much as reading it (BENCHMARKS.md, faults section).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import xxhash

MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DIGEST_SLICE = 1024  # records hashed per update: a few hundred KB


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * MIX1
        x = (x ^ (x >> np.uint64(27))) * MIX2
        return x ^ (x >> np.uint64(31))


def hash64(items: Iterable[bytes]) -> np.ndarray:
    """64-bit BLAKE2b hashes of byte strings, as uint64."""
    items = list(items)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") for b in items),
        dtype=np.uint64,
        count=len(items),
    )


def derive_key(*parts: object) -> int:
    """A 64-bit key from any printable parts (fingerprint, seed, epoch, …)."""
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def unit_interval(hashes: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """Map 64-bit hashes to [0, 1) under a salt and a seed: the basis of split and sampling."""
    key = mix64(np.uint64(salt) ^ mix64(np.uint64(seed & (2**64 - 1))))
    return (mix64(hashes ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class LineDigest:
    """SHA-256 of a stream of texts, each ended by a newline, in bounded memory."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, items: Iterable[str | bytes]) -> None:
        self._digest.update(
            b"".join((i.encode() if isinstance(i, str) else i) + b"\n" for i in items)
        )

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def text_digest(*parts: object) -> str:
    """SHA-256 hex digest of printable parts (cache keys)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


class RecordDigest:
    """A split's content fingerprint: SHA-256 over its records, independent of chunking."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, ids: list[str], seqs: list[bytes], labels: Iterable[int]) -> None:
        lines = (
            i.encode() + b"\t" + s + b"\t" + str(int(y)).encode() + b"\n"
            for i, s, y in zip(ids, seqs, labels, strict=True)
        )
        # hashed a slice at a time: one join of a whole batch of records would be a large
        # block, which glibc then keeps as heap (see ecstream.allocator), for the same digest
        while piece := b"".join(itertools.islice(lines, DIGEST_SLICE)):
            self._digest.update(piece)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def file_sha256(*paths: str | os.PathLike[str]) -> str:
    """Checksum of files (a directory: every file under it, in sorted order), in order."""
    digest = hashlib.sha256()
    for path in paths:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


#: The hash of store checksums; also the key under which a shard's digest is recorded.
CHECKSUM = "xxh3_128"
_BLOCK = 1 << 22  # 4 MiB reads: large enough that Python's per-call cost vanishes


def file_checksum(source: str | os.PathLike[str] | BinaryIO) -> dict[str, Any]:
    """Size and XXH3-128 of a whole file (a path, or an open binary file read from its start):
    ``{"bytes": n, "xxh3_128": hex}``, as a store manifest records each shard."""
    if not hasattr(source, "readinto"):
        with open(source, "rb") as fh:
            return file_checksum(fh)
    digest, size = xxhash.xxh3_128(), 0
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    source.seek(0)
    while n := source.readinto(buffer):
        digest.update(view[:n])
        size += n
    return {"bytes": size, CHECKSUM: digest.hexdigest()}


def json_checksum(obj: Any) -> str:
    """XXH3-128 of a JSON value's canonical text (sorted keys, no spaces, ASCII): two texts that
    parse to the same value have the same checksum, whatever their layout."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return xxhash.xxh3_128(text.encode()).hexdigest()
