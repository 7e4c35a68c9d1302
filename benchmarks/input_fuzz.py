"""Input fuzzing: damaged TSV/CSV/FASTA inputs (plain and gzip) must never be read as wrong records.

Each case is a small real input (the first rows of the shared data written as TSV, CSV or FASTA,
plain or gzip) damaged in one way: bytes replaced, inserted or deleted, the file cut at a random
point, or garbage appended (in the compressed bytes for a gzip input). It is read with
``read_rows`` as build, evaluate and predict read their inputs, and the rows are cleaned and
labelled as build does. The outcome of a case is one of:

- ``error``: an ``InputError`` naming the file (the command would exit non-zero);
- ``exact``: the original records (damage that changes nothing, e.g. a gzip header's time);
- ``prefix``: the records of the rows before a cut that fell on a row boundary (a plain text
  file cut there looks complete: nothing in it says that more should follow);
- ``changed where damaged`` (plain text only): every record the damage did not touch comes back
  exactly and in order; one it touched is set aside or read as what the file now says (a
  residue letter flipped to another letter is a valid sequence; no reader can tell without a
  checksum, which gzip has and plain text has not);
- ``crash``: any other exception, or a worker process that died;
- ``silent-different``: anything else, e.g. a gzip input read as other records;
- ``unclear error``: an ``InputError`` that does not name the file.

The last three must never happen. :func:`run` (the ``input-fuzz`` section of BENCHMARKS.md)
runs :data:`CASES` seeded cases in subprocess workers, so that a crash of the interpreter is
counted too; ``tests/test_io_faults.py`` runs a few hundred hypothesis-chosen cases through the
same :func:`judge`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bacteria-ec.tsv.gz"
CASES = 12_000
ROWS = 16  # rows of the real data per input: small inputs make many cases
WORKERS = 2
FORMATS = ("tsv", "csv", "fasta")
KINDS = ("flip", "insert", "delete", "cut", "append")
FAILURES = ("crash", "silent-different", "unclear error")
OUTCOMES = ("error", "exact", "prefix", "changed where damaged", *FAILURES)
# ids that only quoted CSV can hold: the CSV input carries them, so damage meets quoting
ODD_IDS = {2: 'odd, "quoted" id', 5: "two\nlines"}

Record = tuple[str, "str | None", str]  # (id, EC field or None, sequence)


@dataclass(frozen=True)
class Case:
    """One damaged input: its format, whether gzip, and the damage (positions as fractions)."""

    fmt: str
    gz: bool
    kind: str
    where: tuple[float, ...]
    values: bytes

    @classmethod
    def from_seed(cls, seed: int) -> Case:
        rng = random.Random(seed)
        kind = rng.choice(KINDS)
        where = tuple(rng.random() for _ in range(rng.randint(1, 3) if kind == "flip" else 1))
        values = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return cls(rng.choice(FORMATS), rng.random() < 0.5, kind, where, values)


@cache
def originals(data: Path = DATA, rows: int = ROWS) -> tuple[Record, ...]:
    """The first ``rows`` rows of the real data as (id, EC, sequence)."""
    with gzip.open(data, "rt", encoding="utf-8") as fh:
        next(fh)
        return tuple(tuple(next(fh).rstrip("\n").split("\t")) for _ in range(rows))


def render(fmt: str, records: tuple[Record, ...]) -> tuple[bytes, list[tuple[int, int]], int]:
    """The input's bytes, each record's span (first byte, last byte) and the header's end.

    A span includes the line ends on both sides (and for FASTA the next record's ``>``), so
    that damage to a byte that separates two records counts as touching both.
    """
    out = io.BytesIO()
    spans: list[tuple[int, int]] = []
    if fmt == "fasta":
        starts = []
        for rid, _, seq in records:
            starts.append(out.tell())
            wrapped = "".join(seq[k : k + 60] + "\n" for k in range(0, len(seq), 60))
            out.write(f">{rid} from the shared data\n{wrapped}".encode())
        ends = [*starts[1:], out.tell()]
        return out.getvalue(), [(a - 1, b) for a, b in zip(starts, ends, strict=True)], -1
    text = io.StringIO(newline="")
    writer = csv.writer(text, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    writer.writerow(["Entry", "EC number", "Sequence"])
    header_end = len(text.getvalue().encode()) - 1
    for rid, ec, seq in records:
        start = len(text.getvalue().encode())
        writer.writerow([rid, ec, seq])
        spans.append((start - 1, len(text.getvalue().encode()) - 1))
    return text.getvalue().encode(), spans, header_end


def expected_records(fmt: str, data: Path = DATA) -> tuple[Record, ...]:
    """The records an undamaged input of ``fmt`` reads as."""
    rows = originals(data)
    if fmt == "csv":
        return tuple((ODD_IDS.get(k, r[0]), r[1], r[2]) for k, r in enumerate(rows))
    if fmt == "fasta":
        return tuple((r[0], None, r[2]) for r in rows)
    return rows


def damage(data: bytes, case: Case) -> tuple[bytes, int | None, set[int]]:
    """The damaged bytes, where a cut begins (None: no cut) and the byte positions touched."""
    at = [int(w * len(data)) for w in case.where]
    if case.kind == "flip":
        damaged = bytearray(data)
        for k, p in enumerate(at):
            damaged[p] = case.values[k % len(case.values)]
        return bytes(damaged), None, set(at)
    p = at[0]
    if case.kind == "insert":
        return data[:p] + case.values + data[p:], None, {p - 1, p}
    if case.kind == "delete":
        n = 1 + case.values[0] % 4
        return data[:p] + data[p + n :], None, set(range(p, p + n))
    if case.kind == "cut":
        return data[:p], p, set()
    return data + case.values, None, {len(data)}


def _touched(spans: list[tuple[int, int]], header_end: int, cut: int | None, hits: set[int]):
    """Indices of the records that the damage touched (all of them when the header was)."""
    if any(p <= header_end for p in hits) or (cut is not None and cut <= header_end):
        return set(range(len(spans)))
    return {
        k
        for k, (a, b) in enumerate(spans)
        if (cut is not None and b >= cut) or any(a <= p <= b for p in hits)
    }


def changed_only_where_touched(got: list, expected: tuple, touched: set[int]) -> bool:
    """Untouched records come back exactly and in order; a touched one may be missing, changed
    or (a line end or ``>`` flipped into it) split in two."""
    j = 0
    for i, record in enumerate(expected):
        if i not in touched:
            if j >= len(got) or got[j] != record:
                return False
            j += 1
            continue
        following = next(
            (expected[k] for k in range(i + 1, len(expected)) if k not in touched), None
        )
        for _ in range(2):
            if j < len(got) and got[j] != following:
                j += 1
    return j == len(got)


def _read(path: Path, fmt: str, allow_partial: bool) -> list[Record]:
    """Read as build/predict do, then clean and label the rows as build does."""
    from ecstream.alphabet import SequenceError, clean_sequence
    from ecstream.labels import LabelPolicy
    from ecstream.skips import Skips
    from ecstream.sources import Columns, read_rows
    from ecstream.splits import validate

    columns = Columns(ec=None) if fmt == "fasta" else Columns()
    got = []
    for chunk in read_rows(path, columns, Skips(), allow_partial=allow_partial):
        got.extend((r[1], r[2], r[3]) for r in chunk)
        if fmt == "fasta":  # predict's cleaning
            for r in chunk:
                with contextlib.suppress(SequenceError):
                    clean_sequence(r[3])
        else:  # build's validation
            validate(str(path), chunk, LabelPolicy.for_level(1), Skips())
    return got


def judge(case: Case, workdir: Path, data: Path = DATA) -> dict:
    """Write the case's damaged input into ``workdir``, read it, and classify what came back.

    Also reads it with ``allow_partial=True`` and says whether the rows kept are the original
    ones (``partial_kept_exact``): for a cut they must be; for damaged gzip data they need not
    be, as gzip's checksum covers the whole stream and is checked only at its end.
    """
    expected = expected_records(case.fmt, data)
    plain, spans, header_end = render(case.fmt, expected)
    raw = gzip.compress(plain, mtime=0) if case.gz else plain
    damaged, cut, hits = damage(raw, case)
    ext = {"tsv": ".tsv", "csv": ".csv", "fasta": ".faa"}[case.fmt] + (".gz" if case.gz else "")
    path = workdir / f"input{ext}"
    path.write_bytes(damaged)
    touched = set() if case.gz else _touched(spans, header_end, cut, hits)
    result = {"outcome": _outcome(path, case, expected, touched), "partial_kept_exact": None}
    if result["outcome"][0] == "error":
        try:
            kept = _read(path, case.fmt, allow_partial=True)
        except Exception as error:  # classified below, not hidden
            if not isinstance(error, _input_error()):
                result["outcome"] = ("crash", f"allow_partial: {error!r}")
        else:
            fine = kept == list(expected[: len(kept)]) or (
                not case.gz and changed_only_where_touched(kept, expected, touched)
            )
            result["partial_kept_exact"] = fine
            if case.kind == "cut" and not fine:  # rows before a cut must be the real ones
                result["outcome"] = ("silent-different", "allow_partial kept other rows")
    return result


def _input_error() -> type:
    from ecstream.sources import InputError

    return InputError


def _outcome(path: Path, case: Case, expected: tuple, touched: set[int]) -> tuple[str, str]:
    try:
        got = _read(path, case.fmt, allow_partial=False)
    except Exception as error:  # classified below, not hidden
        if not isinstance(error, _input_error()):
            return "crash", repr(error)
        return ("error" if str(path) in str(error) else "unclear error"), str(error)
    if got == list(expected):
        return "exact", ""
    if not case.gz:
        if case.kind == "cut" and got == list(expected[: len(got)]):
            return "prefix", ""
        if changed_only_where_touched(got, expected, touched):
            return "changed where damaged", ""
    return "silent-different", f"{len(got)} records, expected {len(expected)}"


# --------------------------------------------------------------------------- workers


def worker(start: int, stop: int) -> None:
    """Judge seeds ``start``…``stop - 1``, one JSON line each (read by :func:`run`)."""
    with tempfile.TemporaryDirectory(prefix="ecstream-fuzz-") as work:
        for seed in range(start, stop):
            case = Case.from_seed(seed)
            result = judge(case, Path(work))
            outcome, detail = result["outcome"]
            line = {
                "seed": seed, "fmt": case.fmt, "gz": case.gz, "kind": case.kind,
                "outcome": outcome, "detail": detail[:300],
                "partial_kept_exact": result["partial_kept_exact"],
            }  # fmt: skip
            print(json.dumps(line), flush=True)


def _run_range(start: int, stop: int) -> list[dict]:
    """Seeds in a fresh worker; a worker that dies is counted as a crash of its current case
    and a new one carries on after it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    results: list[dict] = []
    while start < stop:
        proc = subprocess.Popen(
            [sys.executable, __file__, "worker", str(start), str(stop)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        out, err = proc.communicate()
        for line in out.splitlines():
            results.append(json.loads(line))
            start = results[-1]["seed"] + 1
        if start < stop:  # it died in the middle of seed ``start``
            case = Case.from_seed(start)
            results.append({
                "seed": start, "fmt": case.fmt, "gz": case.gz, "kind": case.kind,
                "outcome": "crash", "detail": f"worker exit {proc.returncode}: {err[-300:]}",
                "partial_kept_exact": None,
            })  # fmt: skip
            start += 1
    return results


def run(cases: int = CASES, workers: int = WORKERS) -> str:
    """Run the cases in ``workers`` subprocesses; the markdown of the ``input-fuzz`` section."""
    from concurrent.futures import ThreadPoolExecutor

    from common import machine_info, machine_markdown

    started = time.perf_counter()
    bounds = [cases * k // workers for k in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(_run_range, bounds[:-1], bounds[1:])
        results = [r for part in parts for r in part]
    seconds = time.perf_counter() - started
    return report(results, seconds, workers, machine_markdown(machine_info()))


def report(results: list[dict], seconds: float, workers: int, machine: str) -> str:
    """The section's markdown: outcomes per kind of input, the failures, sample errors."""
    counts = Counter(r["outcome"] for r in results)
    kinds = sorted({(r["gz"], r["fmt"]) for r in results})
    by_kind = Counter((r["gz"], r["fmt"], r["outcome"]) for r in results)
    lines = [
        "## Input fuzzing",
        "",
        machine.rstrip(),
        "",
        f"`benchmarks/run.py input-fuzz`: {len(results):,} damaged inputs, each the first "
        f"{ROWS} rows of the shared data as TSV, CSV or FASTA, plain or gzip, with bytes "
        "replaced, inserted or deleted, cut at a random point, or garbage appended (in the "
        "compressed bytes of a gzip input); read with `read_rows` and validated as `build` "
        f"does, in {workers} subprocess workers (a dead worker counts as a crash) in "
        f"{seconds:.0f} s ({1000 * seconds * workers / max(len(results), 1):.1f} ms a case).",
        "",
        "| input | cases | error naming the file | exact | rows before a cut | "
        "changed where damaged | crash | silent-different | unclear error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for gz, fmt in kinds:
        n = sum(by_kind[(gz, fmt, o)] for o in OUTCOMES)
        cells = " | ".join(f"{by_kind[(gz, fmt, o)]:,}" for o in OUTCOMES)
        lines.append(f"| {fmt}{'.gz' if gz else ''} | {n:,} | {cells} |")
    cells = " | ".join(f"**{counts[o]:,}**" for o in OUTCOMES)
    lines.append(f"| all | **{len(results):,}** | {cells} |")
    gz_partial = [r for r in results if r["gz"] and r["partial_kept_exact"] is not None]
    cut_partial = [r for r in results if r["kind"] == "cut" and r["partial_kept_exact"]]
    lines += [
        "",
        f"Failures (crash, silent-different, unclear error): **{sum(counts[o] for o in FAILURES)}"
        '**. "Changed where damaged" happens only in plain text, where a flipped byte can be '
        "another valid letter: every record that the damage did not touch came back exactly, "
        "in order. A gzip input came back exact or was refused.",
        "",
        f"With `--allow-partial`: of the {sum(r['kind'] == 'cut' for r in results):,} cut "
        f"inputs that were refused, {len(cut_partial):,} kept exactly the rows before the cut "
        "(the rest: plain text, where only the touched row differs). Of the "
        f"{len(gz_partial):,} refused gzip inputs read again with `--allow-partial`, "
        f"{sum(not r['partial_kept_exact'] for r in gz_partial):,} kept rows that differ from "
        "the original: damaged (not cut) deflate data can decode to wrong bytes before the "
        "damage shows, and gzip checks its data only at the end of the stream, so the message "
        "(and the manifest's `partial`) calls the rows kept from damaged gzip data unverified.",
    ]
    bad = [r for r in results if r["outcome"] in FAILURES]
    if bad:
        lines += ["", "First failures (seed: outcome, detail):", ""]
        lines += [f"- {r['seed']}: {r['outcome']}, {r['detail']}" for r in bad[:10]]
    samples: dict[tuple[bool, str], str] = {}
    for r in results:
        if r["outcome"] == "error":
            samples.setdefault((r["gz"], r["kind"]), r["detail"])
    lines += ["", "Sample errors:", ""]
    for key in ((False, "flip"), (False, "cut"), (True, "cut"), (True, "flip"), (True, "append")):
        if key in samples:
            lines.append(f"- {key[1]}{' (gzip)' if key[0] else ''}: `{_short(samples[key])}`")
    return "\n".join(lines) + "\n"


def _short(message: str) -> str:
    """An error message with the temporary directory dropped from the file name."""
    text = message.replace("`", "'").replace("\n", " ")
    _, sep, rest = text.partition("/input.")
    return ("input." + rest if sep else text)[:300]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        print(run(int(sys.argv[1]) if len(sys.argv) > 1 else CASES))
