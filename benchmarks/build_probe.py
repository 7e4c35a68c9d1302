"""What sets the build's peak anonymous memory: record batches, buffers and pyarrow's allocator.

``python benchmarks/build_probe.py``: builds the shared data (1×) and its 10× mutated copy
(``scaled_data.py``, as the scale section) once for each arm of :data:`ARMS` (record-batch size,
the former 16,384 and today's :data:`ecstream.shards.BATCH_ROWS`; each writer capped on its own,
or the six sharing today's :data:`ecstream.shards.BUILD_BUFFER_ROWS`) and each pyarrow memory
pool (its default, mimalloc, and the system allocator, ``ARROW_DEFAULT_MEMORY_POOL=system``,
which a build's record batches use anyway since 2026-11-30: ``allocator.build_pool``),
each build in a fresh process with ``RssAnon`` sampled every 2 ms from a thread. Prints the peak
and the swing (highest minus lowest sample between 20% and 90% of the build: what the split
writers' buffers take as they fill and flush) and the most records the writers held together.

``python benchmarks/build_probe.py why``: what grows, for today's arm with pyarrow's default
pool: the same builds once plain, once under ``tracemalloc`` (the peak of Python's and numpy's
live memory beside the anonymous memory) and once with ``malloc_trim`` after every flush (the C
heap's free pages given back). A probe, not a section of BENCHMARKS.md (the scale section
quotes it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from common import DATA, OUTPUT, rss_anon_bytes
from scaled_data import write_scaled

#: (records per batch, records the six writers hold together at most; 0: no shared cap)
ARMS = ((16384, 0), (4096, 0), (4096, 8192))
POOLS = ("mimalloc", "system")
WAYS = ("plain", "tracemalloc", "trim")  # how the `why` builds run
MB = 1 << 20


def child(data: str, out: str, batch_rows: int, cap: int, way: str = "plain") -> None:
    """Build ``data`` into ``out`` with record batches of ``batch_rows`` and the writers' shared
    ``cap`` (one of :data:`WAYS`); print the samples' peak and swing (MB), the most records the
    writers held together and, under tracemalloc, its peak (MB) as one JSON line."""
    import tracemalloc

    import ecstream
    from ecstream.allocator import release_free_memory
    from ecstream.shards import SharedBuffer, SplitWriter

    defaults = SplitWriter.__init__.__defaults__
    SplitWriter.__init__.__defaults__ = (batch_rows, *defaults[1:])
    # no shared cap: one that six writers, each flushing at batch_rows, never reach
    SharedBuffer.__init__.__defaults__ = (cap or 6 * batch_rows,)
    held, added, flush = [0], SharedBuffer.added, SplitWriter._flush

    def counted(self) -> None:
        held[0] = max(held[0], self.held + 1)
        added(self)

    def trimmed(self) -> None:
        flush(self)
        release_free_memory()

    SharedBuffer.added = counted
    if way == "trim":
        SplitWriter._flush = trimmed
    if way == "tracemalloc":
        tracemalloc.start()
    samples, done = [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_anon_bytes() / MB)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    ecstream.build_store(data, out, force=True)
    done.set()
    sampler.join()
    middle = samples[len(samples) // 5 : len(samples) * 9 // 10]
    traced = tracemalloc.get_traced_memory()[1] / MB if way == "tracemalloc" else None
    figures = {"peak": max(samples), "swing": max(middle) - min(middle), "held": held[0]}
    print(json.dumps({**figures, "traced": traced}))


def build(data, rows: int, cap: int, pool: str, way: str = "plain") -> dict:
    """:func:`child`'s figures, from a fresh process with ``pool`` as pyarrow's default."""
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": pool}
    with tempfile.TemporaryDirectory(dir=OUTPUT) as d:
        command = [sys.executable, __file__, "child", str(data), f"{d}/s", str(rows), str(cap), way]
        out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    inputs = {1: DATA, 10: write_scaled(DATA, OUTPUT / "bacteria-ec-x10-mut0.015-seed0.tsv.gz")}
    if sys.argv[1:2] == ["why"]:
        print("| build | 1× peak | 10× peak | 1× traced peak | 10× traced peak |")
        print("|---|---:|---:|---:|---:|")
        for way in WAYS:
            got = [build(data, *ARMS[-1], "mimalloc", way) for data in inputs.values()]
            traced = [f"{g['traced']:.1f} MB" if g["traced"] else "–" for g in got]
            peaks = [f"{g['peak']:.1f} MB" for g in got]
            print(f"| {way} | {' | '.join(peaks + traced)} |", flush=True)
        return
    print("| record batch | shared cap | pyarrow pool | 1× peak (swing) | 10× peak (swing) | "
          "held at most, 1× / 10× |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|")
    for rows, cap in ARMS:
        for pool in POOLS:
            got = [build(data, rows, cap, pool) for data in inputs.values()]
            cells = [f"{g['peak']:.0f} MB ({g['swing']:.0f})" for g in got]
            held = " / ".join(f"{g['held']:,}" for g in got)
            shared = f"{cap:,}" if cap else "–"
            print(f"| {rows:,} | {shared} | {pool} | {' | '.join(cells)} | {held} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
