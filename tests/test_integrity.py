"""Integrity of stores end to end: damage is a one-line error naming the file, never a crash and
never other data; checks happen once per process tree; old stores still open, with a warning.

Every fault is made on a copy of a real store built from a slice of the real data.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback

import ecstream
from ecstream import hashing, integrity, notices, runs
from ecstream.cli import main
from ecstream.shards import ShardView
from ecstream.store import (
    MANIFEST_CHECKSUM,
    IntegrityError,
    StoreError,
    UncheckedStoreWarning,
    open_store,
    write_manifest,
)

SHARD = "shard-00000.arrow"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import faults  # noqa: E402 - the kinds of damage are the benchmark's, shared


@pytest.fixture(scope="module")
def base(data_path, tmp_path_factory) -> ecstream.Store:
    """A store of the first 600 rows: one shard per split."""
    return ecstream.build_store(data_path, tmp_path_factory.mktemp("integrity") / "base",
                                max_records=600)  # fmt: skip


@pytest.fixture(scope="module")
def other(data_path, tmp_path_factory) -> ecstream.Store:
    """Another store, whose training shard a damaged manifest may point at."""
    out = tmp_path_factory.mktemp("integrity") / "other"
    return ecstream.build_store(data_path, out, max_records=400, seed=7)


def copy_of(source: ecstream.Store, where: Path) -> Path:
    shutil.copytree(source.path, where)
    return where


def snapshot(path: Path) -> list:
    """Everything a consumer reads from a store: batches (ids too) and records of every split."""
    opened = open_store(path)
    seen: list = [opened.policy.classes]
    for split in opened.splits:
        seen.append((split, opened.fingerprint(split), opened.num_records(split)))
        for b in opened.batches(split, batch_size=32, seed=1, bucket=True):
            seen.append((b.x.tobytes(), b.y.tobytes(), b.lengths.tobytes(), b.ids.tolist()))
        for r in opened.records(split):
            seen.append((r.ids, r.seqs, r.labels.tolist(), r.ecs))
    return seen


def one_line_naming(message: str, path: Path) -> bool:
    return "\n" not in message.strip() and str(path) in message


def squeezed(text: str) -> str:
    """Terminal output without the line breaks (and spaces) rich wraps long lines with."""
    return "".join(text.split())


# --------------------------------------------------------------------------- the faults


def _view(path: Path) -> ShardView:
    return ShardView.open(path, None)


def _patch(path: Path, at: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + len(new)] = new
    path.write_bytes(bytes(data))


def _manifest(copy: Path) -> dict:
    return json.loads((copy / "manifest.json").read_text())


def flipped_residue(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    at = int(_view(shard).seq_data[0]) + 3
    _patch(shard, at, b"W" if shard.read_bytes()[at] != ord("W") else b"A")
    return shard


def nul_byte(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    _patch(shard, int(_view(shard).seq_data[0]) + 5, b"\0")
    return shard


def label_to_another_class(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    at = int(_view(shard).labels[0])
    label = int(np.frombuffer(shard.read_bytes()[at : at + 2], np.int16)[0])
    _patch(shard, at, np.int16((label + 1) % 7).tobytes())
    return shard


def corrupted_offset(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    _patch(shard, int(_view(shard).seq_offsets[0]) + 8, np.int32(0x7FFFFF00).tobytes())
    return shard


def truncated_shard(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def deleted_shard(copy: Path, split: str, other: ecstream.Store) -> Path:
    shard = copy / split / SHARD
    shard.unlink()
    return shard


def wrong_count_in_manifest(copy: Path, split: str, other: ecstream.Store) -> Path:
    manifest = _manifest(copy)
    manifest["splits"][split]["records"] += 1  # an edit that keeps the JSON valid
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return copy / "manifest.json"


def wrong_counts_sealed(copy: Path, split: str, other: ecstream.Store) -> Path:
    """Counts that add up within the manifest and carry a valid checksum, but not the shards'."""
    manifest = _manifest(copy)
    manifest["splits"][split]["residues"] += 5
    manifest["splits"][split]["shard_checksums"][0]["residues"] += 5
    write_manifest(copy, manifest)
    return copy / "manifest.json"


def absolute_shard_path(copy: Path, split: str, other: ecstream.Store) -> Path:
    manifest = _manifest(copy)
    manifest["splits"][split]["shards"] = [str((copy / split / SHARD).resolve())]
    write_manifest(copy, manifest)
    return copy / "manifest.json"


def dotdot_shard_path(copy: Path, split: str, other: ecstream.Store) -> Path:
    manifest = _manifest(copy)
    manifest["splits"][split]["shards"] = [f"{split}/../{split}/{SHARD}"]
    write_manifest(copy, manifest)
    return copy / "manifest.json"


def _take_split(manifest: dict, split: str, source: ecstream.Store) -> None:
    """Make ``split`` describe the training split of ``source``, consistently (counts, classes,
    checksums, fingerprint), as a careless or malicious copy would."""
    taken = dict(source.manifest["splits"]["train"])
    manifest["records"] += taken["records"] - manifest["splits"][split]["records"]
    manifest["splits"][split] = taken


def another_stores_shard(copy: Path, split: str, other: ecstream.Store) -> Path:
    manifest = _manifest(copy)
    _take_split(manifest, split, other)
    relative = os.path.relpath(other.path / "train" / SHARD, copy)
    manifest["splits"][split]["shards"] = [relative]
    write_manifest(copy, manifest)
    return copy / "manifest.json"


def symlink_to_another_store(copy: Path, split: str, other: ecstream.Store) -> Path:
    manifest = _manifest(copy)
    _take_split(manifest, split, other)
    manifest["splits"][split]["shards"] = [f"{split}/{SHARD}"]
    write_manifest(copy, manifest)
    (copy / split / SHARD).unlink()
    (copy / split / SHARD).symlink_to(other.path / "train" / SHARD)
    return copy / "manifest.json"


FAULTS: list[Callable[[Path, str, ecstream.Store], Path]] = [
    flipped_residue,
    nul_byte,
    label_to_another_class,
    corrupted_offset,
    truncated_shard,
    deleted_shard,
    wrong_count_in_manifest,
    wrong_counts_sealed,
    absolute_shard_path,
    dotdot_shard_path,
    another_stores_shard,
    symlink_to_another_store,
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_damage_stops_batches_and_records_with_one_line_naming_the_file(
    fault, base, other, tmp_path
):
    copy = copy_of(base, tmp_path / "store")
    named = fault(copy, "train", other)
    with pytest.raises(StoreError) as batches:
        for _ in open_store(copy).batches("train"):
            pass
    with pytest.raises(StoreError) as records:
        for _ in open_store(copy).records("train"):
            pass
    for error in (batches, records):
        assert one_line_naming(str(error.value), named), str(error.value)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_damage_stops_train_evaluate_and_verify(fault, base, other, cnn_run, tmp_path, capsys):
    """Each command exits non-zero with one error naming the file; nothing exits 0."""
    copy = copy_of(base, tmp_path / "train-store")
    named = fault(copy, "train", other)
    run = tmp_path / "run"
    argv = ["train", str(copy), "--out", str(run), "--epochs", "1", "--quiet"]
    assert main([*argv, "--limit-train-batches", "2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and squeezed(str(named)) in squeezed(err) and "Traceback" not in err
    assert not (run / "model.pt").exists()

    copy = copy_of(base, tmp_path / "test-store")
    named = fault(copy, "test", other)
    argv = ["evaluate", str(cnn_run), str(copy), "--split", "test", "--no-bands"]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and squeezed(str(named)) in squeezed(err) and "Traceback" not in err
    assert not (tmp_path / "eval" / "metrics.json").exists()

    assert main(["info", str(copy), "--verify"]) != 0
    assert squeezed(str(named)) in squeezed(capsys.readouterr().err)


def test_a_corrupted_offset_is_an_error_in_a_fresh_process_not_a_crash(base, cnn_run, tmp_path):
    """The commands that segfaulted on a bad offset, run as a user runs them."""
    copy = copy_of(base, tmp_path / "store")
    test = corrupted_offset(copy, "test", base)
    train = corrupted_offset(copy, "train", base)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    commands = [
        (["info", str(copy), "--verify"], 1, test),
        (["evaluate", str(cnn_run), str(copy), "--no-bands", "--out", str(tmp_path / "ev")], 2,
         test),
        (["train", str(copy), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"], 2,
         train),
    ]  # fmt: skip
    for argv, status, named in commands:
        done = subprocess.run([sys.executable, "-m", "ecstream.cli", *argv], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == status, (argv, done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and squeezed(str(named)) in squeezed(done.stderr)


def test_verify_reports_every_problem(base, tmp_path):
    copy = copy_of(base, tmp_path / "store")
    residue = flipped_residue(copy, "train", base)
    offset = corrupted_offset(copy, "test", base)
    label = label_to_another_class(copy, "val", base)
    problems = open_store(copy).verify()
    text = "\n".join(problems)
    assert all(str(p) in text for p in (residue, offset, label))
    # the damaged but readable shards are still compared: their content differs
    assert any(p.startswith("train: content fingerprint differs") for p in problems)
    assert any(p.startswith("val: content fingerprint differs") for p in problems)
    assert any("records per class" in p and "'val'" in p for p in problems)
    assert any(p.startswith("test: counts and fingerprint not recomputed") for p in problems)
    assert open_store(base.path).verify() == []


def test_verify_rehashes_what_was_checked_before(base, tmp_path, monkeypatch):
    copy = copy_of(base, tmp_path / "store")
    opened = open_store(copy)
    opened.check()
    calls = _count_hashes(monkeypatch)
    assert opened.verify() == []
    assert len(calls) == 3  # one per shard: verify trusts no memo or stamp


def test_a_check_in_the_same_tick_as_a_write_is_not_trusted(base, tmp_path):
    """A shard rewritten in place right after it was checked (same size, maybe the same
    timestamps) is hashed again, not served from the memo."""
    copy = copy_of(base, tmp_path / "store")
    assert len(list(open_store(copy).batches("train"))) > 0
    flipped_residue(copy, "train", base)
    with pytest.raises(IntegrityError, match="checksum differs"):
        list(open_store(copy).batches("train"))


# --------------------------------------------------------------------------- once per tree


def _count_hashes(monkeypatch) -> list[str]:
    """Patch the one full hash of a file to record the process that ran it."""
    calls: list[str] = []
    real = hashing.file_checksum

    def counting(source):
        calls.append(str(os.getpid()))
        return real(source)

    monkeypatch.setattr(hashing, "file_checksum", counting)
    return calls


def _settle(path: Path) -> None:
    """Wait until a store's files are older than the racy window, as any store but a fresh
    copy is, so that a check of them is remembered."""
    newest = max(max(f.stat().st_mtime_ns, f.stat().st_ctime_ns) for f in path.rglob("*"))
    time.sleep(max(0.0, (newest + integrity.RACY_NS - time.time_ns()) / 1e9 + 0.05))


def test_a_dataloader_with_workers_does_not_hash_again(base, tmp_path, monkeypatch):
    from ecstream.adapters.torch import loader

    copy = copy_of(base, tmp_path / "store")
    _settle(copy)
    log = tmp_path / "hashes.log"
    real = hashing.file_checksum

    def counting(source):  # forked workers inherit the patch: they would write to the log
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(source)

    monkeypatch.setattr(hashing, "file_checksum", counting)
    batches = open_store(copy).batches("train", batch_size=16)
    assert log.read_text().split() == [str(os.getpid())]  # the one train shard, here
    seen = [b.y for b in loader(batches, num_workers=2, persistent_workers=False)]
    seen += [b.y for b in loader(batches, num_workers=2, persistent_workers=False)]
    assert sum(len(y) for y in seen) == 2 * base.num_records("train")
    assert log.read_text().split() == [str(os.getpid())]  # no worker hashed
    # nor does another store object in this process, nor a process of the same tree
    assert len(list(open_store(copy).batches("train"))) > 0
    assert log.read_text().split() == [str(os.getpid())]


CHILD = """
import os, sys
from ecstream import hashing, open_store
calls = []
real = hashing.file_checksum
hashing.file_checksum = lambda source: calls.append(1) or real(source)
store = open_store(sys.argv[1])
for split in store.splits:
    list(store.batches(split))
print(len(calls))
"""


def test_a_process_of_the_same_tree_uses_the_stamps_a_new_tree_checks_again(base, tmp_path):
    """DDP ranks re-run the command with the parent's environment: they find the stamps. A new
    command (no session in its environment) hashes again, so damage since is found."""
    copy = copy_of(base, tmp_path / "store")
    _settle(copy)
    open_store(copy).check()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def hashes(environment: dict) -> int:
        done = subprocess.run([sys.executable, "-c", CHILD, str(copy)], env=environment,
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        return int(done.stdout.split()[-1])

    assert env[integrity.SESSION_VARIABLE] == integrity.session()
    assert hashes(env) == 0
    fresh = {k: v for k, v in env.items() if k != integrity.SESSION_VARIABLE}
    assert hashes(fresh) == 3
    assert list((Path(env["ECSTREAM_CACHE"]) / "verified" / integrity.session()).iterdir())
    assert {p.name for p in copy.rglob("*") if p.is_file()} == {"manifest.json", SHARD}


def test_an_unwritable_cache_and_a_store_that_is_never_written(base, tmp_path, monkeypatch):
    """Stamps are best effort (a cache may be unwritable); nothing is written into a store."""
    copy = copy_of(base, tmp_path / "store")
    _settle(copy)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in copy.rglob("*")}
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "not-a-directory"))
    monkeypatch.setattr(integrity, "_memo", set())
    assert snapshot(copy) == snapshot(base.path)
    assert open_store(copy).verify() == []
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in copy.rglob("*")} == before


# --------------------------------------------------------------------------- old stores


OLD = ROOT / "tests" / "data" / "store-0.1.0"


def test_a_store_without_checksums_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(notices, "_given", set())
    with pytest.warns(UncheckedStoreWarning, match="cannot be checked until it is rebuilt") as w:
        open_store(OLD)
        open_store(OLD)
    assert len(w) == 1 and w[0].filename == str(OLD / "manifest.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_store(OLD)  # no second warning in this process


def _without_checksums(copy: Path) -> None:
    """Turn a store into one as built before checksums."""
    manifest = _manifest(copy)
    manifest.pop(MANIFEST_CHECKSUM, None)
    for info in manifest["splits"].values():
        info.pop("shard_checksums", None)
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.mark.filterwarnings("ignore::ecstream.store.UncheckedStoreWarning")
@pytest.mark.parametrize(
    "fault",
    [nul_byte, corrupted_offset, truncated_shard, deleted_shard, label_to_another_class,
     wrong_count_in_manifest, absolute_shard_path, another_stores_shard],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_a_store_without_checksums_still_refuses_what_it_can_see(fault, base, other, tmp_path):
    """Without checksums a residue changed into another letter cannot be seen, but a byte that
    is no letter, a bad offset, a truncation, a changed label (the counts per class), a count
    or a path can: errors, never a crash."""
    copy = copy_of(base, tmp_path / "store")
    named = fault(copy, "train", other)
    _without_checksums(copy)
    with pytest.raises(StoreError) as error:
        list(open_store(copy).batches("train"))
    message = str(error.value)
    # without a checksum, a count that differs cannot say whether shard or manifest is wrong
    assert one_line_naming(message, named) or one_line_naming(message, copy / "manifest.json")


def test_recording_a_report_keeps_the_manifest_checksum_valid(base, tmp_path):
    copy = copy_of(base, tmp_path / "store")
    opened = open_store(copy)
    opened.record("note", {"a": (1, 2), "b": float("nan")})
    again = open_store(copy)
    assert again.manifest["note"]["a"] == [1, 2] and again.checksummed
    assert snapshot(copy) == snapshot(base.path)


def test_a_manifest_with_some_checksums_removed_is_damaged(base, tmp_path):
    copy = copy_of(base, tmp_path / "store")
    manifest = _manifest(copy)
    del manifest["splits"]["val"]["shard_checksums"]
    write_manifest(copy, manifest)
    with pytest.raises(IntegrityError, match="checksums are missing"):
        open_store(copy)
    manifest = _manifest(copy)
    manifest["splits"]["val"]["shard_checksums"] = base.manifest["splits"]["val"]["shard_checksums"]
    manifest.pop(MANIFEST_CHECKSUM)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="checksums are missing"):
        open_store(copy)


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def tiny(data_path, tmp_path_factory) -> tuple[ecstream.Store, list]:
    """A store of 150 rows (fast to copy and read) and everything a consumer reads from it."""
    built = ecstream.build_store(data_path, tmp_path_factory.mktemp("fuzz") / "tiny",
                                 max_records=150)  # fmt: skip
    return built, snapshot(built.path)


corruption = st.tuples(
    st.sampled_from(["bit", "byte", "range", "zeros", "cut", "append"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 64),
    st.integers(0, 255),
)


def _check_case(tiny, tmp_path: Path, target: str, how: tuple) -> str:
    """Damage one file of a copy of the tiny store; every consumer must then fail naming that
    file (verify: list it), or read exactly the original data."""
    built, original = tiny
    copy = tmp_path / f"case-{time.monotonic_ns()}"
    shutil.copytree(built.path, copy)
    damaged = copy / target
    damaged.write_bytes(faults.corrupt(damaged.read_bytes(), *how))
    try:
        try:
            problems = open_store(copy).verify()
        except StoreError as error:  # IntegrityError included: a damaged manifest
            assert one_line_naming(str(error), damaged), (how, str(error))
            return "error"
        assert all("\n" not in p for p in problems)
        try:
            seen = snapshot(copy)
        except StoreError as error:
            assert one_line_naming(str(error), damaged), (how, str(error))
            assert any(str(damaged) in p for p in problems), (how, problems)
            return "error"
        assert seen == original, f"{target} {how}: other data served without an error"
        assert problems == [], (how, problems)
        return "same"
    finally:
        shutil.rmtree(copy)


SHARDS = [f"{split}/{SHARD}" for split in ("train", "val", "test")]


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(target=st.sampled_from(SHARDS), how=corruption)
def test_fuzz_damaged_shards_give_an_error_or_the_same_data(tiny, tmp_path, target, how):
    _check_case(tiny, tmp_path, target, how)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(how=corruption)
def test_fuzz_damaged_manifests_give_an_error_or_the_same_data(tiny, tmp_path, how):
    _check_case(tiny, tmp_path, "manifest.json", how)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=40), st.integers(0, 6)),
        max_size=60,
    ),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    piece=st.integers(1, 20),
)
def test_a_split_fingerprint_is_the_hash_of_its_records_however_they_are_fed(records, cuts, piece):
    """The fingerprint is SHA-256 over "id TAB sequence TAB label" lines, whatever batches the
    writer hands over and however the digest slices them inside (``DIGEST_SLICE``)."""
    import hashlib

    from ecstream import hashing

    expected = hashlib.sha256(
        b"".join(i.encode() + b"\t" + s + b"\t" + str(y).encode() + b"\n" for i, s, y in records)
    ).hexdigest()
    bounds = [0, *sorted(min(c, len(records)) for c in cuts), len(records)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashing, "DIGEST_SLICE", piece)
        digest = hashing.RecordDigest()
        for a, b in itertools.pairwise(bounds):
            part = records[a:b]
            digest.update([r[0] for r in part], [r[1] for r in part], [r[2] for r in part])
    assert digest.hexdigest() == expected


# ----------------------------------------------------------------------------- runs


def _flip_inside_largest_part(archive: Path) -> str:
    """Flip one bit in the data of a PyTorch file's largest part (a float32 tensor), leaving
    the zip's structure whole: the highest mantissa bit of a value in its middle, which changes
    the value by up to half; returns the part's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(archive) as z:
        part = max(z.infolist(), key=lambda i: i.file_size)
    with open(archive, "r+b") as fh:
        fh.seek(part.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", fh.read(4))
        at = part.header_offset + 30 + name_length + extra_length + part.file_size // 8 * 4 + 2
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x40]))
    return part.filename


def test_a_run_records_its_files_and_refuses_one_that_changed(cnn_run, tmp_path, capsys):
    from ecstream.predictors import load_model
    from ecstream.runs import CHECKSUMS, RunError

    sealed = json.loads((cnn_run / CHECKSUMS).read_text())["files"]
    assert {"config.json", "model.pt", "calibration.json", "seen.npz", "metrics.csv"} <= set(sealed)
    assert not any(name.startswith("checkpoints") for name in sealed)  # rewritten while training
    expected = load_model(cnn_run).predict(["MKVLAAGIVGLLAAPQAFA"])

    copy = tmp_path / "run"
    shutil.copytree(cnn_run, copy)
    np.testing.assert_array_equal(load_model(copy).predict(["MKVLAAGIVGLLAAPQAFA"]), expected)

    # a flipped bit in a weight: torch.load reads it as another weight, the checksum does not
    _flip_inside_largest_part(copy / "model.pt")
    with pytest.raises(RunError, match=r"model\.pt: its checksum differs.*train the run again"):
        load_model(copy)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVGLLAAPQAFA\n")
    assert main(["predict", str(copy), str(fasta), "--out", str(tmp_path / "p.tsv")]) == 2
    err = capsys.readouterr().err
    assert "model.pt: its checksum differs" in err and "Traceback" not in err
    assert not (tmp_path / "p.tsv").exists()
    (copy / CHECKSUMS).unlink()  # the same weights, unchecked, load and answer otherwise
    with pytest.warns(runs.UncheckedRunWarning, match="no checksums"):
        changed = load_model(copy).predict(["MKVLAAGIVGLLAAPQAFA"])
    assert not np.array_equal(changed, expected)

    # valid JSON with one number changed, a file gone, the list itself damaged
    for case in ("calibration", "missing", "list"):
        shutil.rmtree(copy)
        shutil.copytree(cnn_run, copy)
        if case == "calibration":
            text = (copy / "calibration.json").read_text()
            (copy / "calibration.json").write_text(text.replace("0.", "1.", 1))  # same size
            why = r"calibration\.json: its checksum differs"
        elif case == "missing":
            (copy / "seen.npz").unlink()
            why = r"seen\.npz: missing, though its run recorded it"
        else:
            (copy / CHECKSUMS).write_text('{"format": "ecstream-run-checksums", "files": {"../x"')
            why = r"checksums\.json: not valid JSON"
        with pytest.raises((RunError, ValueError), match=why):
            load_model(copy)


def test_a_damaged_checkpoint_is_refused_on_resume_and_a_resumed_run_is_sealed_again(
    small_store, tmp_path
):
    from ecstream.runs import CHECKSUMS, RunError, verify
    from ecstream.train import TrainConfig, train

    run = tmp_path / "run"
    fast = {"batch_size": 32, "limit_train_batches": 4, "progress": False}
    train(small_store.path, run, TrainConfig(epochs=1, **fast))
    first = json.loads((run / CHECKSUMS).read_text())["files"]["model.pt"]

    kept = tmp_path / "last.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", kept)
    part = _flip_inside_largest_part(run / "checkpoints" / "last.ckpt")
    with pytest.raises(RunError, match=rf"last\.ckpt: damaged \(the CRC-32 of its part {part}"):
        train(small_store.path, run, TrainConfig(epochs=2, **fast), resume=True)
    assert verify(run)  # refused before anything changed: still the finished run, sealed

    shutil.copy(kept, run / "checkpoints" / "last.ckpt")
    with pytest.raises(RunError, match="Lightning refused"):  # refused before it trained
        train(small_store.path, run, TrainConfig(epochs=2, accelerator="bogus", **fast), True)
    assert verify(run)  # so the finished run keeps its checksums
    train(small_store.path, run, TrainConfig(epochs=3, **fast), resume=True)
    assert verify(run)
    assert json.loads((run / CHECKSUMS).read_text())["files"]["model.pt"] != first
    # fewer epochs than it has trained: refused (Lightning took one fewer and trained nothing,
    # with config.json rewritten to say 2 epochs of a run of 3)
    for fewer in (2, 1):
        with pytest.raises(RunError, match=f"--epochs {fewer}: it has trained 3 epochs"):
            train(small_store.path, run, TrainConfig(epochs=fewer, **fast), resume=True)
    assert verify(run) and json.loads((run / "config.json").read_text())["train"]["epochs"] == 3

    class FailsBeforeTraining(Callback):
        def on_fit_start(self, trainer, module):
            raise RuntimeError("refused inside fit, before training")

    # a failure inside fit before training starts leaves the finished run as it was (marked
    # as training before fit, it had been refused by every use)
    with pytest.raises(RuntimeError, match="before training"):
        train(small_store.path, run, TrainConfig(epochs=4, **fast), True, [FailsBeforeTraining()])
    assert verify(run) and json.loads((run / "config.json").read_text())["train"]["epochs"] == 3


RUN_FILES = ["model.pt", "config.json", "calibration.json", "seen.npz", "metrics.csv"]


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(target=st.sampled_from([*RUN_FILES, "checksums.json"]), how=corruption)
def test_fuzz_damaged_run_files_are_refused_naming_a_file(cnn_run, tmp_path, target, how):
    """Any change to a finished run's file refuses the run in one line naming that file (a
    damaged list of checksums may name the file whose entry it changed instead)."""
    from ecstream.predictors import load_model
    from ecstream.runs import RunError

    copy = tmp_path / f"run-{time.monotonic_ns()}"
    shutil.copytree(cnn_run, copy)
    try:
        damaged = copy / target
        before = damaged.read_bytes()
        damaged.write_bytes(faults.corrupt(before, *how))
        if damaged.read_bytes() == before:  # zeros over zeros: nothing changed
            load_model(copy)
            return
        with pytest.raises((RunError, ValueError)) as error:
            load_model(copy)
        named = [damaged] if target in RUN_FILES else [copy / f for f in [*RUN_FILES, target]]
        assert any(one_line_naming(str(error.value), f) for f in named), (how, str(error.value))
    finally:
        shutil.rmtree(copy)


def test_a_seal_leaves_out_what_other_writers_leave_and_what_evaluate_adds(cnn_run, tmp_path):
    """Claims and temporaries of writers inside a run (a killed evaluate's ``.targets.lock``),
    and the bands' database a later evaluate makes in a CNN run, are not the run's: their
    coming and going never makes a healthy run fail its check. The list is checked by name."""
    from ecstream.runs import CHECKSUMS, RunError, seal, verify

    copy = tmp_path / "run"
    shutil.copytree(cnn_run, copy)
    (copy / ".targets.lock").write_text("123\n")
    (copy / ".targets.tmp-123-abcdef12").mkdir()
    (copy / ".targets.tmp-123-abcdef12" / "createdb.err").write_text("")
    (copy / "targets").mkdir(exist_ok=True)
    (copy / "targets" / "target.json").write_text("{}")
    seal(copy, leave_out=("targets",))
    listed = json.loads((copy / CHECKSUMS).read_text())["files"]
    assert not any(n.startswith((".", "targets")) for n in listed) and "model.pt" in listed
    for leftover in (".targets.lock", ".targets.tmp-123-abcdef12", "targets"):
        shutil.rmtree(copy / leftover) if (copy / leftover).is_dir() else (copy / leftover).unlink()
    assert verify(copy)

    outside = tmp_path / "model.pt"  # a file kept as a link (DVC, git-annex) is followed
    (copy / "model.pt").rename(outside)
    (copy / "model.pt").symlink_to(outside)
    assert verify(copy)
    sealed = json.loads((copy / CHECKSUMS).read_text())
    for name in ("../run/model.pt", "/etc/passwd", ""):
        entry = {"bytes": 1, hashing.CHECKSUM: "0"}
        (copy / CHECKSUMS).write_text(json.dumps({**sealed, "files": {name: entry}}))
        with pytest.raises(RunError, match=r"checksums\.json: damaged \(its entry"):
            verify(copy)
    (copy / CHECKSUMS).write_text(json.dumps({**sealed, "files": {"model.pt": {"bytes": 5}}}))
    with pytest.raises(RunError, match=r"checksums\.json: damaged \(its entry 'model.pt'\)"):
        verify(copy)


def test_a_run_without_checksums_warns_once_per_process(cnn_run, tmp_path):
    from ecstream.predictors import load_model

    copy = tmp_path / "old"
    shutil.copytree(cnn_run, copy, ignore=shutil.ignore_patterns("checksums.json"))
    with pytest.warns(runs.UncheckedRunWarning, match="no checksums") as caught:
        load_model(copy)
        load_model(copy)
    assert len([w for w in caught if w.category is runs.UncheckedRunWarning]) == 1


def test_the_integrity_session_is_a_plain_name_in_the_cache(monkeypatch):
    monkeypatch.setenv(integrity.SESSION_VARIABLE, "../../elsewhere")
    name = integrity.session()
    assert "/" not in name and name not in (".", "..") and name != "../../elsewhere"
    monkeypatch.setenv(integrity.SESSION_VARIABLE, "job-42")
    assert integrity.session() == "job-42"


def test_a_report_of_a_store_replaced_meanwhile_is_not_recorded(data_path, tmp_path):
    """``leakage`` records its report in the store it opened; if ``build --force`` replaced
    the store in between, the report is of other records and is refused."""
    old = ecstream.build_store(data_path, tmp_path / "s", max_records=300, seed=0)
    ecstream.build_store(data_path, tmp_path / "s", max_records=250, seed=1, force=True)
    with pytest.raises(StoreError, match="was replaced while this command ran"):
        old.record("leakage", {"splits": {}})
    assert "leakage" not in open_store(tmp_path / "s").manifest


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(how=corruption)
def test_fuzz_damaged_checkpoints_are_refused_in_one_line_or_pass(cnn_run, tmp_path, how):
    """A resume checks ``last.ckpt`` against its zip's CRC-32s: any damage is a RunError naming
    it (never zipfile's or another exception), or bytes the CRC-32s do not cover."""
    from ecstream.runs import RunError, check_archive

    damaged = tmp_path / "last.ckpt"
    original = (cnn_run / "checkpoints" / "last.ckpt").read_bytes()
    damaged.write_bytes(faults.corrupt(original, *how))
    try:
        check_archive(damaged)
    except RunError as error:
        assert one_line_naming(str(error), damaged), (how, str(error))


@pytest.mark.parametrize("field", ["encrypted", "method"])
def test_a_checkpoint_with_a_damaged_zip_field_is_one_line_naming_it(cnn_run, tmp_path, field):
    """Damage that zipfile reports as other exceptions (an "encrypted" flag: RuntimeError; an
    unknown compression method: NotImplementedError), set in the last central directory entry."""
    import struct

    from ecstream.runs import RunError, check_archive

    data = bytearray((cnn_run / "checkpoints" / "last.ckpt").read_bytes())
    entry = data.rfind(b"PK\x01\x02")
    flags, method = struct.unpack_from("<HH", data, entry + 8)
    struct.pack_into("<HH", data, entry + 8, *((flags | 1, method) if field == "encrypted"
                                                else (flags, 99)))  # fmt: skip
    damaged = tmp_path / "last.ckpt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(RunError) as error:
        check_archive(damaged)
    assert one_line_naming(str(error.value), damaged)
