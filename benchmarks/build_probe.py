"""What sets the build's peak anonymous memory: record-batch size and pyarrow's allocator.

``python benchmarks/build_probe.py``: builds the shared data (1×) and its 10× mutated copy
(``scaled_data.py``, as the scale section) once for each record-batch size (the former 16,384
and today's :data:`ecstream.shards.BATCH_ROWS`) and each pyarrow memory pool (its default,
mimalloc, and the system allocator, ``ARROW_DEFAULT_MEMORY_POOL=system``), each build in a fresh
process with ``RssAnon`` sampled every 2 ms from a thread. Prints the peak and the swing
(highest minus lowest sample between 20% and 90% of the build: what the split writers' buffers
take as they fill and flush). A probe, not a section of BENCHMARKS.md (the scale section quotes
it).
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

BATCH_ROWS = (16384, 4096)
POOLS = ("mimalloc", "system")
MB = 1 << 20


def child(data: str, out: str, batch_rows: int) -> None:
    """Build ``data`` into ``out`` with record batches of ``batch_rows``; print the samples'
    peak and swing (MB) as one JSON line."""
    import ecstream
    from ecstream.shards import SplitWriter

    defaults = SplitWriter.__init__.__defaults__
    SplitWriter.__init__.__defaults__ = (batch_rows, *defaults[1:])
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
    print(json.dumps({"peak": max(samples), "swing": max(middle) - min(middle)}))


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    inputs = {1: DATA, 10: write_scaled(DATA, OUTPUT / "bacteria-ec-x10-mut0.015-seed0.tsv.gz")}
    print("| record batch | pyarrow pool | 1× peak (swing) | 10× peak (swing) |")
    print("|---:|---|---:|---:|")
    for rows in BATCH_ROWS:
        for pool in POOLS:
            env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": pool}
            cells = []
            for data in inputs.values():
                with tempfile.TemporaryDirectory(dir=OUTPUT) as d:
                    command = [sys.executable, __file__, "child", str(data), f"{d}/s", str(rows)]
                    out = subprocess.run(command, env=env, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(out.stderr[-2000:])
                    figures = json.loads(out.stdout.strip().splitlines()[-1])
                cells.append(f"{figures['peak']:.0f} MB ({figures['swing']:.0f})")
            print(f"| {rows:,} | {pool} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
