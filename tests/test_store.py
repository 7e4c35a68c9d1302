"""Building, opening and verifying stores on real data; bad input counted per reason."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import head_lines
from hypothesis import given, settings
from hypothesis import strategies as st

import ecstream
from ecstream.build import build_store
from ecstream.sources import DamagedInputError
from ecstream.store import SPLITS, StoreError, open_store, write_manifest


def _split_of_ids(store):
    return {
        rid: split
        for split in SPLITS
        for b in store.batches(split, shuffle=False, batch_size=512)
        for rid in b.ids
    }


def test_manifest_records_what_a_user_needs(small_store, data_path):
    m = small_store.manifest
    assert m["format_version"] == 1 and m["alphabet"]["standard"] == "ACDEFGHIKLMNPQRSTVWY"
    assert m["labels"]["names"][2] == "Hydrolases"
    assert m["rows_read"] == 3000
    kept = sum(m["splits"][s]["records"] for s in SPLITS)
    assert kept == m["records"] == 3000 - m["set_aside_total"]
    # rows whose numbers span classes are kept, after the others of their split
    assert "multiple_classes" not in m["set_aside"]
    spanning = 0
    for s in SPLITS:
        info = m["splits"][s]
        assert sum(info["per_class"].values()) == info["records"]
        single = info["single_class_records"]
        assert sum(info["per_class_single_class"].values()) == single
        spanning += info["records"] - single
        ecs = [e for chunk in small_store.records(s) for e in chunk.ecs]
        assert all(len({n.split(".")[0] for n in e.split("; ")}) == 1 for e in ecs[:single])
        assert all(len({n.split(".")[0] for n in e.split("; ")}) > 1 for e in ecs[single:])
        assert sum(info["length_histogram"]) == info["records"]
        assert len(info["fingerprint"]) == 64
    assert spanning > 0
    assert m["sources"][0]["sha256"] and m["sources"][0]["rows"] == 3000
    val_share = m["splits"]["val"]["records"] / kept
    assert 0.07 < val_share < 0.13


def test_same_seed_same_store_other_seed_other_split(small_store, data_path, tmp_path):
    again = build_store(data_path, tmp_path / "again", max_records=3000)
    other = build_store(data_path, tmp_path / "other", max_records=3000, seed=1)
    for s in SPLITS:
        assert again.fingerprint(s) == small_store.fingerprint(s)
        assert other.fingerprint(s) != small_store.fingerprint(s)


def test_adding_data_never_moves_an_old_record(small_store, data_path, tmp_path):
    bigger = build_store(data_path, tmp_path / "bigger", max_records=4500)
    before, after = _split_of_ids(small_store), _split_of_ids(bigger)
    assert len(after) > len(before)
    assert all(after[rid] == split for rid, split in before.items())


def test_identical_sequences_share_a_split_and_conflicts_are_reported(tmp_path):
    rows = ["Entry\tEC number\tSequence"]
    rows += [f"P{i}\t{1 + i % 2}.1.1.1\tMKVLAAGIVGLLLA" for i in range(20)]
    rows += [f"Q{i}\t3.1.1.1\tMKVLAAGIVGLLLAW{'A' * i}" for i in range(50)]
    path = tmp_path / "dups.tsv"
    path.write_text("\n".join(rows) + "\n")
    store = build_store(path, tmp_path / "s")
    splits = _split_of_ids(store)
    assert len({splits[f"P{i}"] for i in range(20)}) == 1
    dup = store.manifest["duplicates"]["sequence"]
    assert dup["repeated"] == 1 and dup["records_in_repeats"] == 20
    assert dup["conflicting_labels"] == 1 and dup["across_splits"] == 0
    assert dup["examples"]["conflicting_labels"][0][0].split(":")[1].startswith("P")


def test_column_split_follows_the_column_and_reports_overlap(tmp_path):
    df = pd.DataFrame(
        {
            "Entry": ["a", "b", "c", "d", "e"],
            "EC number": ["1.1.1.1", "2.1.1.1", "3.1.1.1", "4.1.1.1", "5.1.1.1"],
            "Sequence": ["MKV", "MKL", "MKV", "MAA", "MCC"],
            "fold": ["train", "validation", "TEST", "train", "holdout"],
        }
    )
    store = build_store(df, tmp_path / "s", split="column:fold")
    assert _split_of_ids(store) == {"a": "train", "b": "val", "c": "test", "d": "train"}
    assert store.manifest["set_aside"]["unknown_split_value"]["count"] == 1
    assert store.manifest["duplicates"]["sequence"]["across_splits"] == 1


def test_refuses_to_overwrite_without_force_and_replaces_with_it(small_store, data_path):
    with pytest.raises(StoreError, match=r"already exists.*--force"):
        build_store(data_path, small_store.path, max_records=10)
    path = small_store.path.parent / "replaced"
    build_store(data_path, path, max_records=100)
    replaced = build_store(data_path, path, max_records=200, force=True)
    assert replaced.manifest["rows_read"] == 200
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("Entry\tEC number\tSequence\nA\t\t\n")
    with pytest.raises(StoreError, match=r"no usable record.*missing_sequence"):
        build_store(path, tmp_path / "s")
    assert list(tmp_path.iterdir()) == [path]


def test_refuses_a_non_store_directory_even_with_force(tmp_path, data_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not an ecstream store"):
        build_store(data_path, tmp_path / "mine", max_records=10, force=True)


def test_another_alphabet_or_format_is_refused(small_store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_store.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["alphabet"]["name"] = "esm-33"
    write_manifest(copy, manifest)  # a store of another alphabet, with a valid checksum
    with pytest.raises(StoreError, match=r"alphabet 'esm-33'.*rebuild"):
        open_store(copy)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="format 99"):
        open_store(copy)


def test_verify_detects_a_changed_shard(small_store, tmp_path):
    import shutil

    assert small_store.verify() == []
    copy = tmp_path / "copy"
    shutil.copytree(small_store.path, copy)
    shard = copy / small_store.manifest["splits"]["val"]["shards"][0]
    data = bytearray(shard.read_bytes())
    seq = small_store.batches("val", shuffle=False)[0]
    first = bytes(ecstream.alphabet.decode(seq.x[0])[:30], "ascii")
    at = data.find(first)
    data[at] = ord("W") if data[at] != ord("W") else ord("A")
    shard.write_bytes(bytes(data))
    assert any("fingerprint" in p for p in open_store(copy).verify())


def test_bad_input_is_counted_per_reason_with_file_and_line(tmp_path, data_path):
    good = head_lines(data_path, 40)
    bad = [
        "X1\t1.1.1.1\t\n",  # missing sequence
        "X2\t9.1.1.1\tMKV\n",  # invalid EC
        "X3\t1.1.1.1\tMK-V\n",  # not letters
        "X4\t1.1.1.1\n",  # wrong column count
        "X5\t\tMKV\n",  # missing EC
        "\t1.1.1.1\tMKV\n",  # missing id
        "X7\t1.1.1.1; 2.1.1.1\tMKV\n",  # different classes
    ]
    path = tmp_path / "mixed.tsv"
    path.write_text("".join(good[:20] + bad + good[20:]))
    cut = tmp_path / "cut.tsv.gz"
    whole = gzip.compress("".join(head_lines(data_path, 3000)).encode())
    cut.write_bytes(whole[: len(whole) // 2])
    store = build_store([path, cut], tmp_path / "s", allow_partial=True)
    aside = store.manifest["set_aside"]
    expected = {
        "missing_sequence": 21,
        "invalid_ec": 22,
        "invalid_characters": 23,
        "wrong_column_count": 24,
        "missing_ec": 25,
        "missing_id": 26,
    }
    assert "multiple_classes" not in aside  # X7, spanning two classes, is kept
    for reason, line in expected.items():
        assert aside[reason]["count"] == 1, reason
        assert aside[reason]["first"][0].startswith(f"{path}:{line}"), (reason, aside[reason])
    assert aside["truncated_or_corrupt_input"]["count"] == 1
    assert aside["truncated_or_corrupt_input"]["first"][0].startswith(f"{cut}:")
    assert "'-'" in aside["invalid_characters"]["first"][0]
    m = store.manifest
    # nothing lost: every row read is either in a split or counted with a reason
    assert m["sources"][0]["rows"] == 39 + len(bad) - 1  # the wrong-column row is not a row
    row_reasons = m["set_aside_total"] - 2  # minus the truncation and the wrong-column counts
    assert m["records"] + row_reasons == m["rows_read"]
    assert m["sources"][1]["rows"] > 1000
    assert m["sources"][1]["partial"]["rows_kept"] == m["sources"][1]["rows"]
    assert m["sources"][1]["partial"]["stopped_at"].startswith(f"{cut}:")


def test_max_records_reads_nothing_beyond_them(data_path, tmp_path):
    """The first N rows of a partly downloaded file are the first N rows: a bad row or the
    damage after them neither fails the build nor is counted, wherever reading chunks end."""
    lines = head_lines(data_path, 1001)
    path = tmp_path / "late.tsv"
    bad_row = "X\t1.1.1.1\n"  # wrong column count, at line 502
    path.write_bytes(("".join(lines[:501]) + bad_row + "".join(lines[501:])).encode() + b"\xff\n")
    with pytest.raises(DamagedInputError, match=r"late\.tsv:1003"):
        build_store(path, tmp_path / "all")
    for limit in (100, 500):
        m = build_store(path, tmp_path / f"n{limit}", max_records=limit).manifest
        assert m["rows_read"] == limit and m["sources"][0]["rows"] == limit
        assert m["set_aside_total"] == 0 and "partial" not in m["sources"][0]
    m = build_store(path, tmp_path / "n600", max_records=600).manifest
    assert m["rows_read"] == 600 and m["set_aside"]["wrong_column_count"]["count"] == 1
    assert m["set_aside_total"] == 1


def test_sample_keeps_a_seeded_fraction(data_path, tmp_path):
    a = build_store(data_path, tmp_path / "a", max_records=3000, sample=0.3)
    b = build_store(data_path, tmp_path / "b", max_records=3000, sample=0.3)
    assert a.manifest["records"] == b.manifest["records"]
    assert 700 < a.manifest["records"] < 1100
    assert a.manifest["not_sampled"] + a.manifest["records"] + a.manifest["set_aside_total"] == 3000


def test_build_options_that_went_say_what_replaces_them(data_path, tmp_path, capsys):
    with pytest.raises(StoreError, match="train --target ec"):
        build_store(data_path, tmp_path / "l2", max_records=100, level=2)
    with pytest.raises(StoreError, match="train --multi-class first"):
        build_store(data_path, tmp_path / "m", max_records=100, multi="first")
    from ecstream.cli import main

    assert main(["build", str(data_path), "--out", str(tmp_path / "c"), "--level", "2"]) == 2
    assert "--target ec" in capsys.readouterr().err
    assert not (tmp_path / "l2").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val": 0.6, "test": 0.5}, "adding up to under 1"),
        ({"identity": 1.5}, r"\[0, 1\]"),
        ({"sample": 0}, "--sample"),
        ({"split": "by-phase-of-moon"}, "random, cluster or column:NAME"),
    ],
)
def test_bad_build_options_are_refused_before_reading(options, message, tmp_path):
    with pytest.raises(StoreError, match=message):
        build_store(tmp_path / "never-read.tsv", tmp_path / "s", **options)
    assert not (tmp_path / "s").exists()


@pytest.mark.filterwarnings("ignore::ecstream.store.UncheckedStoreWarning")
def test_a_run_of_today_evaluates_a_store_of_ecstream_0_1_0(cnn_run, tmp_path):
    from ecstream.evaluate import evaluate

    old = open_store(Path(__file__).parent / "data" / "store-0.1.0")
    result = evaluate(cnn_run, old.path, tmp_path / "ev", bands=False, allow_seen=True)
    assert result["n"] == old.num_records("test") > 0


def test_a_store_built_by_ecstream_0_1_0_still_opens_and_matches_a_rebuild(data_path, tmp_path):
    """tests/data/store-0.1.0: the first 60 rows, built before the upper half was restructured."""
    old = open_store(Path(__file__).parent / "data" / "store-0.1.0")
    assert old.manifest["ecstream_version"] == "0.1.0" and old.verify() == []
    new = build_store(data_path, tmp_path / "new", max_records=60)
    for split in SPLITS:
        assert old.fingerprint(split) == new.fingerprint(split)
        a = [b.x.tobytes() for b in old.batches(split, seed=3)]
        assert a == [b.x.tobytes() for b in new.batches(split, seed=3)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 2_000), distinct=st.integers(1, 60), seed=st.integers(0, 2**32 - 1))
def test_the_overlap_check_counts_the_same_when_it_sorts_in_parts(
    n, distinct, seed, tmp_path_factory
):
    """A bucket larger than PART_ENTRIES is spread over part files (flat memory at any size):
    the counts are those of sorting it whole."""
    from ecstream import overlap

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**64, distinct, dtype=np.uint64)  # few hashes: many repeats
    hashes, splits = rng.choice(pool, n), rng.integers(0, 3, n).astype(np.uint8)
    labels, rows = rng.integers(0, 7, n).astype(np.int16), np.arange(n, dtype=np.int64)

    def report(part_entries: int) -> dict:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(overlap, "PART_ENTRIES", part_entries)
            check = overlap.OverlapCheck(tmp_path_factory.mktemp("overlap"))
            for kind in ("sequence", "id"):
                check.add(kind, hashes, splits, labels, rows)
            return check.finish()

    whole, parts = report(1 << 30), report(4)
    for kind in ("sequence", "id"):
        counts = {k: v for k, v in whole[kind].items() if k != "examples"}
        assert counts == {k: v for k, v in parts[kind].items() if k != "examples"}
        for key, found in parts[kind]["examples"].items():
            assert len(found) == len(whole[kind]["examples"][key])


def test_a_build_leaves_no_file_open(data_path, tmp_path):
    """The shards a build reads back (to name duplicate examples) are closed when it is done,
    not left to the garbage collector (a ResourceWarning per split)."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        store = ecstream.build_store(data_path, tmp_path / "s", max_records=500)
        assert store.manifest["duplicates"]  # the examples were named from the shards
        gc.collect()
    # only this build's files: other tests' stores, let go, may be collected here too
    ours = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [m for m in ours if str(tmp_path) in m] == []


@settings(max_examples=40, deadline=None)
@given(
    choices=st.lists(st.integers(0, 2), min_size=1, max_size=120),
    cap=st.integers(1, 12),
    batch_rows=st.integers(1, 8),
)
def test_split_writers_sharing_a_buffer_hold_at_most_its_cap_and_lose_nothing(
    choices, cap, batch_rows, tmp_path_factory
):
    """A build's writers together hold fewer records than their shared cap after every add: each
    flushes at its own batch size, and the add that reaches the cap flushes the one holding
    most (the first of equals), as a model of the rule says; each writes exactly the records it
    was given, in order, with their rows."""
    from ecstream.shards import SharedBuffer, SplitWriter

    tmp = tmp_path_factory.mktemp("writers")
    shared = SharedBuffer(cap)
    writers = [SplitWriter(tmp / f"w{k}", batch_rows, shared=shared) for k in range(3)]
    given_to: list[list[tuple[str, bytes, int]]] = [[], [], []]
    held = [0, 0, 0]  # the model
    for n, k in enumerate(choices):
        record = (f"r{n}", b"ACDE"[: 1 + n % 4], n % 7)
        assert writers[k].add(*record, ec="1.1.1.1") == len(given_to[k])
        given_to[k].append(record)
        held[k] = (held[k] + 1) % batch_rows
        if sum(held) >= cap:
            held[held.index(max(held))] = 0
        assert [w.buffered for w in writers] == held
        assert shared.held == sum(held) < cap
    for writer, records in zip(writers, given_to, strict=True):
        writer.close()
        columns = ("id", "sequence", "label")
        written = [
            record
            for batch in writer.batches()
            for record in zip(*(batch.column(c).to_pylist() for c in columns), strict=True)
        ]
        assert written == records


@pytest.mark.parametrize("chosen", ["", "mimalloc"])
def test_a_builds_record_batches_come_from_the_system_pool_unless_told_otherwise(
    tmp_path, monkeypatch, chosen
):
    """pyarrow's default pool keeps the memory a build frees (BENCHMARKS.md, scale): a split
    writer makes its record batches from build_pool(), the system allocator unless
    ARROW_DEFAULT_MEMORY_POOL names a pool; the process's default pool is left alone."""
    import pyarrow as pa

    from ecstream import allocator, shards

    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", chosen)
    expected = pa.default_memory_pool() if chosen else pa.system_memory_pool()
    assert allocator.build_pool().backend_name == expected.backend_name
    default = pa.default_memory_pool().backend_name
    # the writer allocates from whatever build_pool() gives: a pool that counts, over the system's
    counted = pa.proxy_memory_pool(pa.system_memory_pool())
    monkeypatch.setattr(shards, "build_pool", lambda: counted)
    writer = shards.SplitWriter(tmp_path / "w", batch_rows=4)
    for n in range(10):
        writer.add(f"id{n}", b"ACDEFGHIKL" * 3, n % 7, "1.1.1.1")
    writer.close()
    assert counted.max_memory() > 0  # the batches' strings were allocated there
    assert pa.default_memory_pool().backend_name == default
