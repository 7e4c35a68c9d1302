"""Integrity: damaged stores in subprocess workers, and what the checks cost.

What :func:`run` measures:

1. **Fuzzing** (``FUZZ_CASES`` cases): each case copies a small real store (150 rows of the
   shared data), damages one file (a shard or the manifest: a flipped bit, a byte or a range
   overwritten, zeroed bytes, a cut, junk appended; position, length and values drawn from the
   case number) and then reads it as a user would: ``open_store(...).verify()``, every split's
   batches (ids too) and records. Each case ends as an error naming the damaged file, the
   original data byte for byte, or other data without an error (*silent-different*). Cases run
   in worker processes, ``WORKERS`` at a time, so that an interpreter crash (a segfault) is
   counted, and the worker restarted after it, instead of ending the benchmark. Three quarters
   of the cases damage a store with checksums; the rest one built before checksums (same bytes,
   the checksums removed from its manifest), where only pyarrow's full validation and the
   manifest's counts stand between damage and the data: it must not crash, but it can serve
   other residues, which is what its warning says.
2. **Cost**: the full check (open a store, hash and scan every shard; a fresh process and a new
   session, so nothing is remembered) of the full shared data in MB/s, page cache warm; the
   same files through XXH3-128, SHA-256 and BLAKE2b; the check against the wall time of one
   epoch of ``ecstream train --model small`` on the same store (both cores); and streamed
   batches/s (mmap, fixed, B=64, L=660, one thread) of the code before checksums against the
   code now, taking turns in fresh processes on the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

from common import (
    DATA,
    ECSTREAM,
    MB,
    OUTPUT,
    ROOT,
    TWO_CORES,
    fmt,
    machine_info,
    machine_markdown,
    median,
    run_sampled,
    spread,
    targets_table,
)

FUZZ_CASES, WORKERS, CHUNK = 10_000, 2, 500
FUZZ_ROWS, LEGACY_SHARE = 150, 0.25
TARGETS = ("train/shard-00000.arrow", "val/shard-00000.arrow", "test/shard-00000.arrow",
           "manifest.json")  # fmt: skip
KINDS = ("bit", "byte", "range", "zeros", "cut", "append")
MIN_CHECK_MB_S, MAX_EPOCH_SHARE, MAX_LOADER_CHANGE = 500, 0.05, 0.05
HASH_ROUNDS, LOADER_ROUNDS, LOADER_EPOCHS = 5, 11, 3
#: the training section's bucketed CPU speed (BENCHMARKS.md), to scale an epoch run under load
TRAINING_SEQ_S = 1011
#: set to 1: reuse the last epoch measured on the same training split
REUSE_EPOCH = "ECSTREAM_FAULTS_REUSE_EPOCH"

WORK = OUTPUT / "faults"
SRC = ROOT / "src"


# --------------------------------------------------------------------------- cases


def case(i: int) -> dict:
    """The damage of case ``i``: a pure function of ``i``, so any case can be rerun alone."""
    rng = random.Random(f"ecstream-faults/{i}")
    return {
        "i": i,
        "mode": "legacy" if rng.random() < LEGACY_SHARE else "checked",
        "target": rng.choice(TARGETS),
        "kind": rng.choice(KINDS),
        "at": rng.random(),
        "length": rng.choice([1, 2, 4, 8, rng.randint(1, 4096)]),
        "value": rng.randint(0, 255),
    }


def corrupt(data: bytes, kind: str, at: float, length: int, value: int) -> bytes:
    """Damage bytes as :func:`case` says: a flipped bit, a byte or a range overwritten, a range
    zeroed, a cut, or junk appended (tests/test_integrity.py fuzzes the same kinds)."""
    data = bytearray(data)
    i = min(int(at * len(data)), len(data) - 1)
    if kind == "bit":
        data[i] ^= 1 << (value % 8)
    elif kind == "byte":
        data[i] = value if value != data[i] else (value + 1) % 256
    elif kind == "range":
        data[i : i + length] = bytes((value + 31 * k) % 256 for k in range(length))
    elif kind == "zeros":
        data[i : i + length] = bytes(min(length, len(data) - i))
    elif kind == "cut":
        del data[i:]
    elif kind == "append":
        data += bytes([value]) * length
    return bytes(data)


def snapshot(path: Path) -> str:
    """A digest of everything a consumer reads from a store: batches (ids too) and records."""
    from ecstream import open_store

    opened = open_store(path)
    digest = hashlib.sha256(repr(opened.policy.classes).encode())
    for split in opened.splits:
        digest.update(f"{split} {opened.fingerprint(split)} {opened.num_records(split)}".encode())
        for b in opened.batches(split, batch_size=32, seed=1, bucket=True):
            digest.update(b.x.tobytes() + b.y.tobytes() + b.lengths.tobytes())
            digest.update("\t".join(b.ids.tolist()).encode())
        for r in opened.records(split):
            digest.update(repr((r.ids, r.seqs, r.labels.tolist(), r.ecs)).encode())
    return digest.hexdigest()


def _outcome(error: Exception, names: list[Path], **extra: object) -> dict:
    text = str(error)
    named = any(str(p) in text for p in names)
    return {"outcome": "error", "named": named, "one_line": "\n" not in text, **extra}


def run_case(c: dict, stores: dict[str, Path], originals: dict[str, str], work: Path) -> dict:
    """Damage a copy of a store as case ``c`` says, read it, and say how it ended."""
    from ecstream import StoreError, open_store

    copy = work / "store"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(stores[c["mode"]], copy)
    damaged = copy / c["target"]
    before = damaged.read_bytes()
    after = corrupt(before, c["kind"], c["at"], c["length"], c["value"])
    damaged.write_bytes(after)
    # without checksums, counts that differ cannot say whether the shard or the manifest is wrong
    names = [damaged] if c["mode"] == "checked" else [damaged, copy / "manifest.json"]
    try:
        problems = open_store(copy).verify()
    except StoreError as error:
        return _outcome(error, names, stage="open")
    listed = any(str(p) in line for p in names for line in problems)
    try:
        seen = snapshot(copy)
    except StoreError as error:
        return _outcome(error, names, stage="read", verify_listed=listed)
    if seen == originals[c["mode"]]:
        return {"outcome": "same", "verify_clean": not problems, "bytes_changed": after != before}
    return {"outcome": "different", "verify_flagged": bool(problems)}


def worker(config: dict) -> None:
    """Run cases ``first … last - 1``: one JSON line each, flushed, so that the parent knows
    which case a crash interrupted."""
    os.environ["ECSTREAM_CACHE"] = config["cache"]
    sys.path.insert(0, config["src"])
    warnings.simplefilter("ignore")  # the stores without checksums warn once each
    stores = {mode: Path(p) for mode, p in config["stores"].items()}
    originals = {mode: snapshot(path) for mode, path in stores.items()}
    work = Path(tempfile.mkdtemp(prefix="case-", dir=config["work"]))
    for i in range(config["first"], config["last"]):
        c = case(i)
        started = time.perf_counter()
        try:
            result = run_case(c, stores, originals, work)
        except Exception as error:  # a Python error that is not a clear StoreError: a finding
            result = {"outcome": "exception", "type": type(error).__name__,
                      "message": str(error)[:300]}  # fmt: skip
        result |= {"i": i, "ms": (time.perf_counter() - started) * 1e3}
        print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- fuzz driver


def _run_chunk(config: dict, first: int, last: int, results: dict[int, dict]) -> None:
    """Run cases [first, last) in worker processes; a case that kills its worker is a crash."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    while first < last:
        command = [sys.executable, __file__, "worker",
                   json.dumps({**config, "first": first, "last": last})]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                results[result["i"]] = result
                first = max(first, result["i"] + 1)
        if proc.returncode != 0 and first < last:
            # this case killed the interpreter (or the worker died otherwise): count it, go on
            results[first] = {"i": first, "outcome": "crash", "returncode": proc.returncode,
                              "stderr": proc.stderr[-300:]}  # fmt: skip
            first += 1


def fuzz(stores: dict[str, Path], cases: int = FUZZ_CASES) -> tuple[dict[int, dict], float]:
    cache = WORK / "cache"
    config = {"stores": {k: str(v) for k, v in stores.items()}, "cache": str(cache),
              "work": str(WORK), "src": str(SRC)}  # fmt: skip
    results: dict[int, dict] = {}
    chunks = [(a, min(a + CHUNK, cases)) for a in range(0, cases, CHUNK)]
    lock = threading.Lock()
    started = time.perf_counter()

    def drain() -> None:
        while True:
            with lock:
                if not chunks:
                    return
                first, last = chunks.pop(0)
            _run_chunk(config, first, last, results)
            print(f"   fuzz: {len(results):,} of {cases:,} cases", flush=True)

    threads = [threading.Thread(target=drain) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


def _fuzz_stores() -> dict[str, Path]:
    """A store of the first FUZZ_ROWS rows, and the same store as built before checksums."""
    import ecstream
    from ecstream.store import MANIFEST_CHECKSUM

    checked = WORK / "fuzz-checked"
    ecstream.build_store(DATA, checked, max_records=FUZZ_ROWS, force=True)
    legacy = WORK / "fuzz-legacy"
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(checked, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    manifest.pop(MANIFEST_CHECKSUM)
    for info in manifest["splits"].values():
        info.pop("shard_checksums")
    (legacy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {"checked": checked, "legacy": legacy}


# --------------------------------------------------------------------------- cost


CHECK_CHILD = """
import json, sys, time
started = time.perf_counter()
from ecstream import open_store
imported = time.perf_counter()
store = open_store(sys.argv[1])
store.check(*sys.argv[2:])
done = time.perf_counter()
print(json.dumps({"check_s": done - imported, "import_s": imported - started}))
"""

LOADER_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import ecstream
assert ecstream.__file__.startswith(sys.argv[1]), ecstream.__file__
started = time.perf_counter()
store = ecstream.open_store(sys.argv[2])
batches = store.batches("train", batch_size=64, max_length=660, shuffle=True, seed=0)
next(iter(batches))
first = time.perf_counter() - started
passes, cpu = [], []
for epoch in range(int(sys.argv[3])):
    batches.set_epoch(epoch)
    t, c, n = time.perf_counter(), time.process_time(), 0
    for batch in batches:
        n += len(batch)
    passes.append(n / (time.perf_counter() - t))
    cpu.append(n / (time.process_time() - c))
print(json.dumps({"first_batch_s": first, "seq_s": passes, "seq_cpu_s": cpu}))
"""


def _child(code: str, *args: str, env: dict | None = None) -> dict:
    """Run code in a fresh interpreter as a new command would (no integrity session)."""
    environment = {**os.environ, "PYTHONPATH": str(SRC), "ECSTREAM_CACHE": str(WORK / "cache"),
                   **(env or {})}  # fmt: skip
    environment.pop("ECSTREAM_INTEGRITY_SESSION", None)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=environment, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shard_files(store: Path) -> list[Path]:
    manifest = json.loads((store / "manifest.json").read_text())
    return [store / name for info in manifest["splits"].values() for name in info["shards"]]


def hash_speeds(files: list[Path]) -> dict[str, list[float]]:
    """MB/s of whole-file hashes over ``files`` (page cache warm), rounds taking turns."""
    import xxhash

    from ecstream.hashing import file_checksum

    def through(new) -> None:
        for f in files:
            with open(f, "rb") as fh:
                hashlib.file_digest(fh, new)

    ways = {
        "XXH3-128 (ecstream.hashing.file_checksum)": lambda: [file_checksum(f) for f in files],
        "XXH3-128, hashlib.file_digest": lambda: through(xxhash.xxh3_128),
        "SHA-256 (OpenSSL, SHA-NI)": lambda: through(hashlib.sha256),
        "BLAKE2b": lambda: through(hashlib.blake2b),
    }
    size = sum(f.stat().st_size for f in files)
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    for way in ways.values():  # one untimed pass each: the page cache is warm
        way()
    for _ in range(HASH_ROUNDS):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            speeds[name].append(size / MB / (time.perf_counter() - started))
    return speeds


def _before_checksums() -> tuple[str, Path]:
    """The source tree of the commit before checksums came in, exported under WORK."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "src/ecstream/integrity.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not added:
        raise RuntimeError("src/ecstream/integrity.py is not committed yet: commit, then rerun")
    base = subprocess.run(["git", "rev-parse", "--short", f"{added[-1]}^"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    out = WORK / f"before-{base}"
    if not (out / "src" / "ecstream").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", base, "src"], cwd=ROOT, capture_output=True,
                                 check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return base, out / "src"


def loader_speeds(store: Path) -> tuple[str, dict[str, dict[str, list[float]]]]:
    """Streamed seq/s and open-to-first-batch time, code before checksums vs now, in turns."""
    base, before = _before_checksums()
    keys = ("seq_s", "seq_cpu_s", "first_batch_s")
    figures = {name: {k: [] for k in keys} for name in ("before", "now")}
    for _ in range(LOADER_ROUNDS):
        for name, src in (("before", before), ("now", SRC)):
            env = {"OMP_NUM_THREADS": "1"}
            result = _child(LOADER_CHILD, str(src), str(store), str(LOADER_EPOCHS), env=env)
            for k in keys:
                figures[name][k].append(median(result[k]) if k != "first_batch_s" else result[k])
    return base, figures


def epoch_time(store: Path, fingerprint: str) -> dict:
    """Wall time of ``ecstream train --epochs 1`` (model small) on both cores, its metrics, when
    and under which load it ran. With ``$ECSTREAM_FAULTS_REUSE_EPOCH=1`` the last measurement
    on the same training split is reused (an epoch takes minutes to most of an hour here)."""
    saved = WORK / "epoch.json"
    if os.environ.get(REUSE_EPOCH) == "1" and saved.is_file():
        last = json.loads(saved.read_text())
        if last["fingerprint"] == fingerprint:
            return last | {"reused": True}
    run = WORK / "epoch-run"
    shutil.rmtree(run, ignore_errors=True)
    command = [*ECSTREAM, "train", str(store), "--out", str(run), "--epochs", "1", "--quiet"]
    env = {**TWO_CORES, "PYTHONPATH": str(SRC), "ECSTREAM_CACHE": str(WORK / "cache")}
    load = os.getloadavg()[0]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _, _, _, _, wall = run_sampled(command, env=env)
    lines = (run / "metrics.csv").read_text().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    measured = {
        "wall_s": wall,
        "metrics": dict(zip(header, last, strict=False)),
        "date": date,
        "load": f"{load:.1f} → {os.getloadavg()[0]:.1f}",
        "fingerprint": fingerprint,
    }
    saved.write_text(json.dumps(measured, indent=1))
    return measured | {"reused": False}


# --------------------------------------------------------------------------- report


def _fuzz_tables(results: dict[int, dict], seconds: float) -> tuple[list[str], Counter]:
    totals: Counter = Counter()
    rows = []
    for mode in ("checked", "legacy"):
        for target in TARGETS:
            mine = [r for i, r in results.items() if (c := case(i))["mode"] == mode
                    and c["target"] == target]  # fmt: skip
            n = Counter(r["outcome"] for r in mine)
            named = sum(1 for r in mine if r["outcome"] == "error" and r["named"]
                        and r["one_line"])  # fmt: skip
            flagged = sum(1 for r in mine if r["outcome"] == "different" and r["verify_flagged"])
            totals.update({f"{mode} {k}": v for k, v in n.items()})
            totals[f"{mode} named"] += named
            totals[f"{mode} flagged"] += flagged
            rows.append(
                f"| {mode} | `{target}` | {len(mine):,} | {n['error']:,} | {named:,} | "
                f"{n['same']:,} | {n['different']:,} ({flagged:,}) | {n['crash']:,} | "
                f"{n['exception']:,} |"
            )
    ms = [r["ms"] for r in results.values() if "ms" in r]
    lines = [
        f"{len(results):,} cases in {seconds:.0f} s ({WORKERS} worker processes at a time, "
        f"{CHUNK} cases per process; median {median(ms):.1f} ms a case).",
        "",
        "| store | damaged file | cases | errors | … one line naming the file | same data "
        "| silent-different (verify flags it) | crashes | other exceptions |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    odd = [r for r in results.values() if r["outcome"] in ("crash", "exception")]
    odd += [r for i, r in results.items() if case(i)["mode"] == "checked"
            and r["outcome"] == "different"]  # fmt: skip
    if odd:
        lines += ["", "Findings (case: result):", ""]
        lines += [f"- {r['i']} {json.dumps(case(r['i']))}: {json.dumps(r)}" for r in odd[:20]]
    return lines, totals


def run() -> str:
    import ecstream

    info = machine_info()
    load_before = os.getloadavg()[0]
    WORK.mkdir(parents=True, exist_ok=True)
    print("   building the fuzz stores and the full store", flush=True)
    stores = _fuzz_stores()
    full = WORK / "full"
    ecstream.build_store(DATA, full, force=True)
    files = _shard_files(full)
    size = sum(f.stat().st_size for f in files)

    print("   hashing", flush=True)
    speeds = hash_speeds(files)
    checks = [_child(CHECK_CHILD, str(full)) for _ in range(HASH_ROUNDS)]
    check_mb_s = [size / MB / c["check_s"] for c in checks]
    train_checks = [_child(CHECK_CHILD, str(full), "train", "val")["check_s"]
                    for _ in range(HASH_ROUNDS)]  # fmt: skip
    print("   loader before and after checksums", flush=True)
    base, loaders = loader_speeds(full)
    print("   one training epoch", flush=True)
    epoch = epoch_time(full, ecstream.open_store(full).fingerprint("train"))
    epoch_s, metrics = epoch["wall_s"], epoch["metrics"]
    print(f"   fuzzing {FUZZ_CASES:,} cases", flush=True)
    results, fuzz_s = fuzz(stores)
    fuzz_lines, totals = _fuzz_tables(results, fuzz_s)

    check_s = median(train_checks)
    share = check_s / epoch_s
    records = {s: ecstream.open_store(full).num_records(s) for s in ("train", "val", "test")}
    unloaded_s = records["train"] / TRAINING_SEQ_S
    now, before = median(loaders["now"]["seq_s"]), median(loaders["before"]["seq_s"])
    now_cpu, before_cpu = (median(loaders[k]["seq_cpu_s"]) for k in ("now", "before"))
    change, change_cpu = now / before - 1, now_cpu / before_cpu - 1
    crashes = totals["checked crash"] + totals["legacy crash"]
    exceptions = totals["checked exception"] + totals["legacy exception"]
    unnamed = sum(totals[f"{m} error"] - totals[f"{m} named"] for m in ("checked", "legacy"))
    table = targets_table([
        ("Full check of the store (open, hash, scan; fresh process), MB/s, median",
         fmt(median(check_mb_s)), f"≥ {MIN_CHECK_MB_S}", median(check_mb_s) >= MIN_CHECK_MB_S),
        ("Check of train + val / one `small` training epoch on the full data",
         f"{check_s:.3f} s / {epoch_s:.0f} s = {share:.3%}", f"≤ {MAX_EPOCH_SHARE:.0%}",
         share <= MAX_EPOCH_SHARE),
        ("Streamed batches, mmap fixed, now / before checksums (seq per CPU-second, medians)",
         f"{fmt(now_cpu)} / {fmt(before_cpu)} ({change_cpu:+.1%})",
         f"within ±{MAX_LOADER_CHANGE:.0%}", abs(change_cpu) <= MAX_LOADER_CHANGE),
        ("Fuzz cases run in subprocess workers", f"{len(results):,}", "≥ 10,000",
         len(results) >= 10_000),
        ("Crashes (all stores)", f"{crashes:,}", "0", crashes == 0),
        ("Silent-different, store with checksums", f"{totals['checked different']:,}", "0",
         totals["checked different"] == 0),
        ("Errors that do not name the damaged file in one line", f"{unnamed:,}", "0",
         unnamed == 0),
        ("Other exceptions (not a StoreError)", f"{exceptions:,}", "0", exceptions == 0),
    ])  # fmt: skip
    hash_rows = [f"| {name} | {fmt(median(v))} | {spread(v)} |" for name, v in speeds.items()]
    first_now = median(loaders["now"]["first_batch_s"])
    first_before = median(loaders["before"]["first_batch_s"])
    took = (time.perf_counter() - _STARTED) / 60
    load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"
    val_acc = float(metrics.get("val_acc", "nan"))
    check_all_s = median([c["check_s"] for c in checks])
    # fmt: off
    lines = [
        "## Integrity: damaged stores and the cost of checking",
        "",
        "Command: `.venv/bin/python benchmarks/run.py faults` (part of `make bench`; this "
        f"section took {took:.1f} min).",
        "",
        machine_markdown(info),
        f"Store: `bacteria-ec.tsv.gz`, {sum(records.values()):,} records (train "
        f"{records['train']:,}, val {records['val']:,}, test {records['test']:,}), "
        f"{len(files)} shards, {size / MB:.1f} MB. Fuzzing: a store of the first "
        f"{FUZZ_ROWS} rows. Machine load: {load} (1-minute load average, 2 cores; other "
        "users' work shares them, so timings are noisy).",
        "",
        "### Targets",
        "",
        *table,
        "",
        "### Fuzzing",
        "",
        *fuzz_lines,
        "",
        "*silent-different* on a store without checksums is what its warning says: "
        "pyarrow's validation, the letter check and the manifest's counts catch what changes "
        "the structure, a residue into a non-letter, or the counts (offsets, lengths, cuts, "
        "labels), not a residue changed into another letter; `verify` still finds that by the "
        "split's fingerprint (which covers ids, residues and labels, not the EC text).",
        "",
        "### Cost",
        "",
        "| Whole-file hash of the store's shards (page cache warm) | MB/s, median "
        "| min–max |",
        "|---|---:|---:|",
        *hash_rows,
        "",
        "The full check (a fresh process with a new session: "
        f"`open_store(STORE).check()`) ran at {fmt(median(check_mb_s))} MB/s "
        f"({spread(check_mb_s)}), {size / MB:.1f} MB in {check_all_s:.3f} s; train and val "
        f"alone, as `ecstream train` checks them before it starts, took {check_s:.3f} s. One "
        "epoch of `ecstream train STORE --out RUN --epochs 1 --quiet` (model `small`, both "
        f"cores, start-up and validation included) took {epoch_s:,.0f} s (val accuracy "
        f"{val_acc:.3f}; run {epoch['date']}, machine load {epoch['load']}"
        f"{', reused from that run' if epoch['reused'] else ''}): the check is {share:.3%} of "
        "it, paid once per command, not per epoch. At the training section's "
        f"{TRAINING_SEQ_S:,} seq/s of an unloaded machine, the epoch's "
        f"{records['train']:,} training records alone would take {unloaded_s:.0f} s, and the "
        f"check {check_s / unloaded_s:.2%} of it.",
        "",
        f"Streamed batches (mmap, fixed, B=64, L=660, one thread, {LOADER_EPOCHS} epochs "
        f"per process, {LOADER_ROUNDS} processes each, taking turns) with the code now and "
        f"with that of `{base}`, the commit before checksums: {fmt(now_cpu)} against "
        f"{fmt(before_cpu)} sequences per CPU-second ({change_cpu:+.1%}; "
        f"{spread(loaders['now']['seq_cpu_s'])} and {spread(loaders['before']['seq_cpu_s'])}), "
        f"{fmt(now)} against {fmt(before)} seq/s by wall clock ({change:+.1%}; "
        f"{spread(loaders['now']['seq_s'])} and {spread(loaders['before']['seq_s'])}), which "
        "other users' load disturbs more. Open to first batch: "
        f"{first_now * 1e3:.0f} ms now, {first_before * 1e3:.0f} ms before (now including the "
        "check of the training shard).",
        "",
        "### Method",
        "",
        "- A case: copy the store, damage one file as the case number says (a flipped bit, "
        "a byte, a range of 1 to 4,096 bytes overwritten or zeroed, a cut, junk appended, at "
        "a random position), then `open_store(COPY).verify()`, every split's bucketed "
        "batches with their ids, and `records()`; the outcome is compared with the undamaged "
        "store's. `benchmarks/faults.py worker` runs cases and prints a line for each; the "
        "parent counts a case that ends its worker as a crash and starts a new worker at the "
        "next case.",
        "- Hash speeds: every shard file of the full store hashed whole, after an untimed "
        "pass (page cache warm: the figures are the hashes, not the disk); rounds take turns.",
        "- The epoch: the whole command in a fresh process, as a user runs it.",
    ]
    # fmt: on
    return "\n".join(lines) + "\n"


_STARTED = time.perf_counter()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        with contextlib.suppress(BrokenPipeError):
            worker(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: faults.py worker CONFIG-JSON (run the section with benchmarks/run.py)")
