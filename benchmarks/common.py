"""Helpers shared by the benchmark sections: threads, machine facts, memory, timing, markdown.

Memory is always *anonymous* memory (``RssAnon`` in ``/proc/<pid>/status``): the heap, numpy
arrays, Python objects. Never RSS, which also counts the page cache of memory-mapped files and so
grows with whatever part of a store was read, although the kernel can drop it at any time.

Peak memory of a workload is measured by running it as a fresh child process
(``benchmarks/consumers.py``) while a thread in the parent reads the child's ``RssAnon`` every
:data:`SAMPLE_EVERY_S` seconds; the peak is the largest value seen over the child's whole life
(imports and setup included). The child never samples itself, so its timing is not disturbed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
OUTPUT = ROOT / "bench-output"
REPORT = ROOT / "BENCHMARKS.md"
# $ECSTREAM_BENCH_DATA: the shared data elsewhere (a GPU machine gets no ../shared)
DATA = Path(
    os.environ.get("ECSTREAM_BENCH_DATA", ROOT.parent / "shared" / "data" / "bacteria-ec.tsv.gz")
)
CONSUMERS = BENCH_DIR / "consumers.py"

SAMPLE_EVERY_S = 0.002
MB = 1e6  # figures are in decimal megabytes, as the targets are
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def limit_threads() -> None:
    """One compute thread everywhere: call before numpy/torch/pyarrow are imported.

    The variables are inherited by the child processes; pyarrow's pool also follows
    ``OMP_NUM_THREADS``.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    os.environ.setdefault("KERAS_BACKEND", "torch")


# --- machine -------------------------------------------------------------------------------
#: /proc/cpuinfo flags of the vector units that set this machine's speed, as reports name them
_UNITS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX"),
)


def _cpu_model() -> str:
    """The CPU's name, and the vector units that set its speed here (a virtual machine's
    name can hide which generation it is: "AMD EPYC" was AVX-512 one day, AVX2 the next)."""
    text = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    name = match.group(1).strip() if match else platform.processor() or "unknown"
    flags = set((re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE) or ["", ""])[1].split())
    units = [u for f, u in _UNITS if f in flags] or ["no AVX2"]
    return f"{name} ({', '.join(units)})"


def _ram_gib() -> float:
    match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match.group(1)) / 2**20 if match else float("nan")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """CPU, cores, RAM, OS and library versions, for the report header."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "ram": f"{_ram_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **{p: _version(p) for p in ("ecstream", "numpy", "pyarrow", "pandas", "torch")},
    }


def machine_markdown(info: dict[str, str]) -> str:
    versions = ", ".join(f"{p} {info[p]}" for p in ("numpy", "pyarrow", "pandas", "torch"))
    return (
        f"- Date: {info['date']}\n"
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, {info['os']} "
        "(shared with other users: timings are noisy, so compare figures of the same run)\n"
        f"- Python {info['python']}, ecstream {info['ecstream']}, {versions}\n"
    )


# --- memory --------------------------------------------------------------------------------
def rss_anon_bytes(pid: int | str = "self") -> int | None:
    """Anonymous resident memory of a process, or None once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    match = re.search(r"^RssAnon:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


@dataclass
class ChildRun:
    """A workload run in a fresh process: what it printed, its peak anonymous memory, its time."""

    result: dict
    peak_anon: int  # bytes, sampled from the parent
    samples: int  # how many times RssAnon was read
    wall_s: float  # the whole process, interpreter start to exit

    @property
    def peak_mb(self) -> float:
        return self.peak_anon / MB


def run_child(workload: str, **kwargs: object) -> ChildRun:
    """Run ``consumers.py WORKLOAD KWARGS-JSON`` in a fresh interpreter and sample its memory.

    The child prints one JSON line as its last line of output; that becomes ``ChildRun.result``.
    """
    command = [sys.executable, str(CONSUMERS), workload, json.dumps(kwargs)]
    out, _, peak, samples, wall = run_sampled(command)
    return ChildRun(json.loads(out.strip().splitlines()[-1]), peak, samples, wall)


def run_sampled(
    command: Sequence[str], env: dict[str, str] | None = None
) -> tuple[str, str, int, int, float]:
    """Run a command, sampling its ``RssAnon`` from a thread.

    Returns (stdout, stderr, peak anonymous bytes, number of samples, wall seconds).

    Only the command's own process is sampled (not children it may start).
    """
    peak, samples = 0, 0
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip

    def sample() -> None:
        nonlocal peak, samples
        while proc.poll() is None:
            value = rss_anon_bytes(proc.pid)
            if value is not None:
                peak, samples = max(peak, value), samples + 1
            time.sleep(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{err[-4000:]}")
    return out, err, peak, samples, wall


ECSTREAM = [sys.executable, "-m", "ecstream.cli"]
TWO_CORES = {name: "2" for name in THREAD_VARIABLES}  # training and prediction use both cores


# --- timing and formatting -----------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min–max`` of repeated measurements, for the reader to judge the noise."""
    return f"{fmt(min(values))}–{fmt(max(values))}"


def fmt(value: float) -> str:
    """Numbers as a reader wants them: 531,204 · 12.3 · 0.412."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def verdict(met: bool | None) -> str:
    return "" if met is None else "yes" if met else "**NO**"


def targets_table(rows: Sequence[tuple[str, str, str, bool | None]]) -> list[str]:
    """Markdown lines of a (measurement, figure, target, met) table; met None: no target."""
    return [
        "| Measurement | Figure | Target | Met |",
        "|---|---:|---:|:---:|",
        *(f"| {m} | {f} | {t} | {verdict(ok)} |" for m, f, t, ok in rows),
    ]


# --- BENCHMARKS.md -------------------------------------------------------------------------
HEADER = """# Benchmarks

Measured runs, not timed tests. `make bench` (that is, `.venv/bin/python benchmarks/run.py`) runs
every section and rewrites this file; `benchmarks/run.py SECTION` reruns one section and leaves the
others as they are. Every figure below comes from the run whose date its section gives.
"""


def write_section(name: str, body: str, path: Path = REPORT) -> None:
    """Replace (or append) the block between ``<!-- section:NAME -->`` markers in the report."""
    begin, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# --- reading a store's split as a table (for the baselines) ----------------------------------
def split_table(store_path: Path, split: str, columns: Sequence[str] = ("id", "sequence", "label")):
    """Columns of one split of a store as a ``pyarrow.Table`` (read whole, as a user would)."""
    import pyarrow as pa

    manifest = json.loads((store_path / "manifest.json").read_text())
    tables = []
    for shard in manifest["splits"][split]["shards"]:
        with pa.memory_map(str(store_path / shard)) as source:
            tables.append(pa.ipc.open_file(source).read_all().select(list(columns)))
    return pa.concat_tables(tables)
