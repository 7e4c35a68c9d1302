"""Peak anonymous memory of the build's duplicate check (``ecstream.overlap``) as it finishes.

``python benchmarks/overlap_probe.py``: random 64-bit hashes for 206 k, 2.06 M and 20.6 M
entries of each kind (the 1×, 10× and 100× stores' records), added in chunks of 8,192 as a build
adds them, then :meth:`OverlapCheck.finish` with ``RssAnon`` sampled every 2 ms from a thread.
Prints one line per size; a probe, not a section of BENCHMARKS.md (its figures are quoted in the
scale section's history).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import OUTPUT, rss_anon_bytes

from ecstream.overlap import OverlapCheck

SIZES = (206_000, 2_060_000, 20_600_000)
CHUNK = 8192
MB = 1 << 20


def finish_peak(n: int, workdir: Path) -> tuple[float, float]:
    """(anonymous MB before ``finish``, peak anonymous MB during it) for ``n`` entries a kind."""
    check = OverlapCheck(workdir)
    rng = np.random.default_rng(0)
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        hashes = rng.integers(0, 2**63, k, dtype=np.uint64)
        rows = np.arange(start, start + k, dtype=np.int64)
        for kind in ("sequence", "id"):
            check.add(kind, hashes, np.zeros(k, np.uint8), np.zeros(k, np.int16), rows)
    before = rss_anon_bytes() / MB
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_bytes() / MB)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    check.finish()
    done.set()
    sampler.join()
    return before, peak[0]


if __name__ == "__main__":
    OUTPUT.mkdir(exist_ok=True)
    for n in SIZES:
        with tempfile.TemporaryDirectory(dir=OUTPUT) as d:
            before, peak = finish_peak(n, Path(d) / "overlap")
        print(f"{n:>11,} entries a kind: {before:.1f} MB before finish, peak {peak:.1f} MB "
              f"(+{peak - before:.1f})", flush=True)  # fmt: skip
