"""Memory that does not grow with the data: free heap pages given back after each part.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so the
arrays of several MiB that every part of a prediction needs then come from the heap, which
fragments and keeps its free pages: a full-EC prediction's anonymous memory grew with every
chunk it scored. ``malloc_trim`` returns the free pages (also those inside the heap). Fixing
the threshold instead also held memory, but made every large block a fresh mapping to fault
in, which was slower. BENCHMARKS.md (prediction section) has the memory from 100k to 1M.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system; ``False`` where there is no glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
