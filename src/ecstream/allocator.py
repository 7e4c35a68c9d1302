"""Memory that does not grow with the data: free heap pages given back after each part, and
oneDNN's cache of primitives kept small when scoring.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so the
arrays of several MiB that every part of a prediction needs then come from the heap, which
fragments and keeps its free pages: a full-EC prediction's anonymous memory grew with every
chunk it scored. ``malloc_trim`` returns the free pages (also those inside the heap). Fixing
the threshold instead also held memory, but made every large block a fresh mapping to fault
in, which was slower. BENCHMARKS.md (prediction section) has the memory from 100k to 1M.

pyarrow's default memory pool (mimalloc) keeps the segments it frees: a build, which makes and
drops a record batch per few thousand records, held more at its peak with it than with the
system allocator, and more the longer the build ran (BENCHMARKS.md, scale: build_probe.py). So a
build's record batches come from the system pool (:func:`build_pool`), unless the user chose a
pool with ``ARROW_DEFAULT_MEMORY_POOL``. Named where the batches are made, not set as the
process's default pool, which would be state shared with the caller's threads.

PyTorch's CPU convolutions are oneDNN primitives, cached per shape (1,024 by default), each
with memory of its own. Training meets a few shapes again and again; prediction scores whole
proteins in length-sorted passes, so nearly every pass has a new (batch, width) shape and the
cache fills with primitives used once, each holding memory (BENCHMARKS.md has the figures).
The scorer now runs its blocks as matrix products, not convolutions. The cache stays small
for bfloat16 scoring: PyTorch hands bfloat16 matrix products to oneDNN on CPUs with AVX-512,
and those are primitives made per shape too (from PyTorch's source; not measured here).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache

import pyarrow as pa

from .config import SCORING_PRIMITIVE_CACHE


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system; ``False`` where there is no glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def build_pool() -> pa.MemoryPool:
    """The pool a build's record batches come from: the system allocator (see the module doc),
    or pyarrow's default where ``ARROW_DEFAULT_MEMORY_POOL`` names one."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool()
    return pa.system_memory_pool()


def small_primitive_cache() -> None:
    """Keep oneDNN's primitive cache at :data:`~ecstream.config.SCORING_PRIMITIVE_CACHE` shapes
    unless the user set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``; oneDNN reads it when it makes its
    first primitive, so call this before a process scores anything."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(SCORING_PRIMITIVE_CACHE))
