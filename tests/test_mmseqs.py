"""MMseqs2 layer: cluster split, target databases and best hits, the leakage report.

These run the real ``mmseqs`` on small slices of the real data (1,500 rows). Without MMseqs2 they
skip and say why, except in CI (``CI=true``), where its absence is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ecstream
from ecstream import build, notices
from ecstream.cache import CacheWarning
from ecstream.hashing import hash64
from ecstream.identity import BANDS, band_accuracy, band_counts, identity_bands
from ecstream.mmseqs import binary, search
from ecstream.mmseqs.binary import MMseqs, MMseqsError, MMseqsNotFound
from ecstream.mmseqs.cluster import ClusterSplit
from ecstream.mmseqs.leakage import leakage_report
from ecstream.mmseqs.search import Hits, TargetDB, best_hits
from ecstream.records import pairs
from ecstream.report import format_leakage

ROWS = 1500
THREADS = 2
SENSITIVITY = 4.0  # the leakage tests compare splits; the default sensitivity only costs time


@pytest.fixture(scope="module")
def cluster_build(mmseqs, data_path, tmp_path_factory):
    """A cluster-split store (identity 0.5) built with a spy that keeps what the build deletes:
    the representative of each staged record and the split it was routed to, in input order."""
    real = build.cluster_split
    seen: dict = {"splits": [], "ids": [], "hashes_ok": True}

    def spy(chunks, workdir, *args, **kw):
        clustered = real(chunks, workdir, *args, **kw)
        seen["rep"] = np.load(Path(workdir) / "cluster" / "representatives.npy").copy()

        def routed():
            for kept, splits, seq_hashes in clustered.routed():
                seen["ids"].extend(kept.ids)
                seen["splits"].append(np.array(splits))
                seen["hashes_ok"] &= bool(np.array_equal(seq_hashes, hash64(kept.seqs)))
                yield kept, splits, seq_hashes

        return ClusterSplit(clustered.info, routed())

    out = tmp_path_factory.mktemp("homology") / "cluster-a"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "cluster_split", spy)
        store = ecstream.build_store(
            data_path, out, split="cluster", identity=0.5, max_records=ROWS, threads=THREADS
        )
    seen["splits"] = np.concatenate(seen["splits"])
    return store, seen


@pytest.fixture(scope="module")
def random_store(data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("homology") / "random"
    return ecstream.build_store(data_path, out, max_records=ROWS)


@pytest.fixture(scope="module")
def train_db(cluster_build, tmp_path_factory):
    store, _ = cluster_build
    return TargetDB.create(store, "train", tmp_path_factory.mktemp("db") / "train", THREADS)


# ----------------------------------------------------------------------------- no MMseqs2 needed


def test_bands_are_one_constant_and_map_identities():
    assert BANDS == (">=0.9", "0.5-0.9", "0.3-0.5", "<0.3", "no_hit")
    ident = np.array([1.0, 0.9, 0.899, 0.5, 0.49, 0.3, 0.0, np.nan])
    assert identity_bands(ident).tolist() == [
        ">=0.9",
        ">=0.9",
        "0.5-0.9",
        "0.5-0.9",
        "0.3-0.5",
        "0.3-0.5",
        "<0.3",
        "no_hit",
    ]
    counts = band_counts(ident)
    assert list(counts) == list(BANDS) and sum(counts.values()) == len(ident)


def test_band_accuracy_matches_a_hand_computed_example():
    nan = np.nan
    identity = np.array([0.95, 0.95, 0.95, nan, nan, nan, nan])
    y_true = np.array([0, 1, 1, 2, 2, 2, 3])
    y_pred = np.array([0, 1, 0, 2, 2, 2, 2])  # no hit: always the band's largest class
    bands = band_accuracy(y_true, y_pred, identity)
    assert bands[">=0.9"] == pytest.approx(
        {"n": 3, "accuracy": 2 / 3, "balanced_accuracy": 3 / 4, "classes": 2, "majority": 2 / 3}
    )
    assert bands["no_hit"] == pytest.approx(
        {"n": 4, "accuracy": 3 / 4, "balanced_accuracy": 1 / 2, "classes": 2, "majority": 3 / 4}
    )
    empty = {"n": 0, "accuracy": None, "balanced_accuracy": None, "classes": 0, "majority": None}
    assert bands["<0.3"] == empty


def test_the_bands_table_shows_balanced_accuracy_and_reads_older_results():
    from rich.console import Console

    from ecstream.report import bands_table

    identity = np.array([0.95, 0.95, 0.95, np.nan])
    bands = band_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 0, 2]), identity)
    table = bands_table({"identity_bands": bands, "levels": []})
    headers = [column.header for column in table.columns]
    assert headers == ["identity", "proteins", "class accuracy", "balanced", "largest class"]
    console = Console(record=True, width=200)
    console.print(table)

    def cells(text: str) -> list[str]:  # the last >=0.9 row, without the table's borders
        row = [line for line in text.splitlines() if ">=0.9" in line][-1]
        return row.replace("│", " ").split()[1:]

    assert cells(console.export_text(clear=False)) == ["3", "0.667", "0.750", "0.667"]
    older = {band: {"n": b["n"], "accuracy": b["accuracy"]} for band, b in bands.items()}
    console.print(bands_table({"identity_bands": older, "levels": []}))
    assert cells(console.export_text()) == ["3", "0.667", "–", "–"]


@given(st.lists(st.integers(0, 6), min_size=1, max_size=60), st.integers(0, 6))
def test_a_constant_guess_is_balanced_chance_and_the_largest_class_is_its_best(truth, guess):
    y_true = np.array(truth)
    band = band_accuracy(y_true, np.full(len(truth), guess), np.full(len(truth), np.nan))["no_hit"]
    present = np.unique(y_true)
    assert band["balanced_accuracy"] == pytest.approx((guess in present) / len(present))
    assert band["accuracy"] <= band["majority"] + 1e-12
    best = np.bincount(y_true).argmax()
    assert band_accuracy(y_true, np.full(len(truth), best), np.full(len(truth), 0.95))[">=0.9"][
        "accuracy"
    ] == pytest.approx(band["majority"])


def test_missing_binary_is_a_clear_error(monkeypatch, tmp_path, data_path):
    monkeypatch.setenv(binary.ENV_VAR, str(tmp_path / "no-such-mmseqs"))
    with pytest.raises(MMseqsNotFound, match=binary.ENV_VAR):
        binary.find_mmseqs()
    monkeypatch.delenv(binary.ENV_VAR)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MMseqsNotFound) as err:
        MMseqs.find()
    assert "apt-get install mmseqs2" in str(err.value)
    assert "conda install -c bioconda mmseqs2" in str(err.value)
    # a cluster build fails before any work, and leaves nothing behind
    out = tmp_path / "store"
    with pytest.raises(MMseqsNotFound):
        ecstream.build_store(data_path, out, split="cluster", max_records=50)
    assert not out.exists() and not list(tmp_path.glob(".store.*"))


# ----------------------------------------------------------------------------- with MMseqs2


def test_failed_command_names_command_and_stderr(mmseqs, tmp_path):
    mm = MMseqs.find(THREADS)
    assert mm.version and mm.threads == THREADS
    assert MMseqs.find().threads == (os.cpu_count() or 1)
    with pytest.raises(MMseqsError, match=r"(?s)createdb .*no-such\.fasta.*does not exist"):
        mm.run(["createdb", tmp_path / "no-such.fasta", tmp_path / "db"], tmp_path, "createdb")


def test_cluster_split_keeps_clusters_whole(cluster_build):
    store, seen = cluster_build
    rep, splits = seen["rep"], seen["splits"]
    assert len(rep) == len(splits) == store.manifest["records"]
    assert rep.min() >= 0 and (rep[rep] == rep).all()  # representatives represent themselves
    assert (splits == splits[rep]).all()  # every member goes where its representative goes
    assert seen["hashes_ok"]
    # routed in input order: the first ids are the first rows of the file
    assert seen["ids"][:2] == ["UniRef90_A0A009HT58", "UniRef90_A0A009JDX8"]
    # the manifest's cluster counts agree with the mapping
    info = store.manifest["split"]
    reps = np.unique(rep)
    assert info["clusters"] == len(reps)
    per_split = np.bincount(splits[reps], minlength=3)
    splits_named = dict(zip(("train", "val", "test"), per_split.tolist(), strict=True))
    assert info["clusters_per_split"] == splits_named
    sizes = np.bincount(rep)
    assert info["singletons"] == int((sizes == 1).sum())
    assert info["largest_cluster"] == int(sizes.max()) > 1
    assert 1 < info["clusters"] < len(rep)  # real data at 50%: some clusters, not all singletons
    records = {s: store.num_records(s) for s in store.splits}
    assert records == {s: int((splits == k).sum()) for k, s in enumerate(("train", "val", "test"))}
    assert store.verify() == []


def test_manifest_records_method_and_thresholds(cluster_build, mmseqs):
    info = cluster_build[0].manifest["split"]
    assert info["method"] == "cluster"
    assert info["identity"] == 0.5 and info["coverage"] == 0.8 and info["cov_mode"] == 0
    assert info["tool"] == "mmseqs easy-cluster"
    assert info["options"] == "--min-seq-id 0.5 -c 0.8 --cov-mode 0"
    assert info["mmseqs_version"] == MMseqs(mmseqs, 1).version
    assert sum(info["clusters_per_split"].values()) == info["clusters"]
    assert info["seed"] == 0 and info["val"] == 0.1 and info["test"] == 0.1


def test_cluster_split_is_deterministic(cluster_build, data_path, tmp_path):
    first = cluster_build[0]
    again = ecstream.build_store(
        data_path, tmp_path / "b", split="cluster", identity=0.5, max_records=ROWS, threads=THREADS
    )
    assert again.manifest["split"] == first.manifest["split"]
    for split in first.splits:
        assert again.fingerprint(split) == first.fingerprint(split)


def test_best_hits_finds_own_sequence(train_db, cluster_build, tmp_path):
    store, _ = cluster_build
    train = list(pairs(store.records("train")))[:40]
    rng = np.random.default_rng(0)
    nonsense = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 120))
    queries = [*train, ("nonsense", nonsense)]
    hits = best_hits(queries, train_db, tmp_path, THREADS, sensitivity=SENSITIVITY)
    assert hits.query_ids == [q for q, _ in queries]
    own = hits.best_id[:40]
    assert own.tolist() == [q for q, _ in train]
    assert (hits.best_target[:40] == np.arange(40)).all()
    assert (hits.best_fident[:40] == 1.0).all() and (hits.max_fident[:40] == 1.0).all()
    labels = next(store.records("train")).labels[:40]
    assert (hits.best_label[:40] == labels).all()
    # a query without any hit is marked, not dropped
    assert not hits.has_hit[40] and hits.best_target[40] == -1 and hits.best_label[40] == -1
    assert hits.best_id[40] == "" and np.isnan(hits.max_fident[40])
    # the database reopens from its directory
    again = TargetDB(train_db.directory)
    assert again.records == store.num_records("train") and again.split == "train"
    assert again.ids(np.array([1, -1])).tolist() == [train[1][0], ""]


def test_leakage_report_cluster_vs_random(cluster_build, random_store, train_db):
    cluster_store = cluster_build[0]
    assert random_store.manifest["records"] == cluster_store.manifest["records"]  # same rows
    reports = {
        "cluster": leakage_report(cluster_store, THREADS, sensitivity=SENSITIVITY, target=train_db),
        "random": leakage_report(random_store, THREADS, sensitivity=SENSITIVITY),
    }
    high = {}
    for name, report in reports.items():
        store = cluster_store if name == "cluster" else random_store
        assert set(report["splits"]) == {"val", "test"}
        for split, info in report["splits"].items():
            assert list(info["counts"]) == list(BANDS)
            assert sum(info["counts"].values()) == info["records"] == store.num_records(split)
        high[name] = sum(
            info["counts"][">=0.9"] + info["counts"]["0.5-0.9"]
            for info in report["splits"].values()
        )
    # what remains after the cluster split are mostly partial alignments (under 80% coverage)
    assert high["cluster"] < high["random"] / 2

    table = format_leakage(reports["cluster"])
    assert all(b in table for b in BANDS) and "val" in table and "test" in table

    cluster_store.record("leakage", reports["cluster"])
    on_disk = json.loads((cluster_store.path / "manifest.json").read_text())
    assert on_disk["leakage"] == reports["cluster"] == cluster_store.manifest["leakage"]
    assert not list(cluster_store.path.glob(".*tmp*"))
    assert ecstream.open_store(cluster_store.path).verify() == []


def test_a_querys_hits_do_not_depend_on_the_other_queries_of_its_search(
    train_db, cluster_build, tmp_path
):
    """What lets a homology predictor search a group of records once and hand each part its
    slice (Hits.take): the plain search and the profile fallback answer a query alike alone
    or among others, in any order."""
    store, _ = cluster_build
    test = list(pairs(store.records("test")))[:60]
    part = test[40:][::-1]
    for kind, settings in (("plain", {}), ("profile", {"sensitivity": 7.5, "iterations": 3})):
        group = best_hits(test, train_db, tmp_path / f"{kind}-group", THREADS, **settings)
        alone = best_hits(part, train_db, tmp_path / f"{kind}-part", THREADS, **settings)
        taken = group.take(np.arange(40, 60)[::-1], [q for q, _ in part])
        for name in ("best_target", "best_id", "best_label", "best_fident", "best_bits",
                     "best_evalue", "max_fident", "max_target"):  # fmt: skip
            np.testing.assert_array_equal(getattr(taken, name), getattr(alone, name), name)
        assert alone.has_hit.any() and group.has_hit.sum() > alone.has_hit.sum(), kind


@given(st.lists(st.integers(0, 9), max_size=30), st.one_of(st.none(), st.integers(1, 25)))
def test_groups_keep_every_chunk_in_order_and_close_at_the_size(sizes, rows):
    from ecstream.records import groups

    chunks = [list(range(n)) for n in sizes]
    made = list(groups(iter(chunks), rows))
    assert [c for g in made for c in g] == chunks  # every chunk once, in order (no copies)
    assert all(g for g in made)
    for g in made:
        total = sum(map(len, g))
        if rows is None:
            assert len(g) == 1
        elif g is not made[-1]:
            assert total >= rows > total - len(g[-1])  # closed by its last chunk, not before
        else:
            assert total - len(g[-1]) < rows


def test_target_db_refuses_to_overwrite(train_db, cluster_build):
    before = (train_db.directory / TargetDB.META).read_bytes()
    with pytest.raises(FileExistsError):
        TargetDB.create(cluster_build[0], "train", train_db.directory, THREADS)
    assert (train_db.directory / TargetDB.META).read_bytes() == before
    assert TargetDB(train_db.directory).records == cluster_build[0].num_records("train")


def test_the_same_search_is_answered_from_the_cache(train_db, cluster_build, tmp_path, monkeypatch):
    store, _ = cluster_build
    queries = list(pairs(store.records("val")))[:25]
    first = best_hits(queries, train_db, tmp_path / "a", THREADS, sensitivity=SENSITIVITY)

    def no_mmseqs(*args, **kwargs):
        raise AssertionError("MMseqs2 ran again for a search already made")

    monkeypatch.setattr(search, "_easy_search", no_mmseqs)
    again = best_hits(queries, train_db, tmp_path / "b", THREADS, sensitivity=SENSITIVITY)
    assert np.array_equal(first.best_target, again.best_target)
    assert np.array_equal(first.max_fident, again.max_fident, equal_nan=True)
    with pytest.raises(AssertionError, match="ran again"):  # other settings: a new search
        best_hits(queries, train_db, tmp_path / "c", THREADS, sensitivity=SENSITIVITY + 1)


def test_a_strict_split_leaves_no_val_or_test_protein_with_a_training_hit_above_it(
    mmseqs, data_path, tmp_path
):
    store = ecstream.build_store(
        data_path, tmp_path / "strict", split="cluster", identity=0.3, strict=True,
        max_records=ROWS, threads=THREADS,
    )  # fmt: skip
    strict = store.manifest["split"]["strict"]
    rounds = strict["moved_per_round"]
    assert rounds[0] > 0 and rounds[-1] == 0 and strict["moved_to_train"] == sum(rounds)
    # the leakage report (the same search) finds nothing at or above 0.3 in val and test
    for split, info in store.manifest["leakage"]["splits"].items():
        assert info["records"] == store.num_records(split) > 0
        assert info["counts"][">=0.9"] == info["counts"]["0.5-0.9"] == 0
        assert info["counts"]["0.3-0.5"] == 0
    plain = ecstream.build_store(
        data_path, tmp_path / "plain", split="cluster", identity=0.3, max_records=ROWS,
        threads=THREADS,
    )  # fmt: skip
    moved = sum(plain.num_records(s) - store.num_records(s) for s in ("val", "test"))
    assert moved == strict["moved_to_train"] and store.verify() == []
    with pytest.raises(ecstream.StoreError, match="--strict applies to --split cluster"):
        ecstream.build_store(data_path, tmp_path / "x", strict=True, max_records=10)


def test_profile_hits_keep_their_whole_ids(monkeypatch):
    """The first search's id array is only as wide as its ids; a profile hit's id is longer."""
    none = Hits(
        query_ids=["a", "b"], best_target=np.array([-1, 3]), best_id=np.array(["", "X1"]),
        best_label=np.array([-1, 2]), best_fident=np.array([np.nan, 0.9]),
        best_bits=np.array([np.nan, 80.0]), best_evalue=np.array([np.nan, 1e-20]),
        max_fident=np.array([np.nan, 0.9]), max_target=np.array([-1, 3]),
    )  # fmt: skip
    found = Hits(
        query_ids=["a"], best_target=np.array([7]), best_id=np.array(["UniRef90_A0A0B1LONG"]),
        best_label=np.array([4]), best_fident=np.array([0.25]), best_bits=np.array([40.0]),
        best_evalue=np.array([1e-5]), max_fident=np.array([0.25]), max_target=np.array([7]),
    )  # fmt: skip
    monkeypatch.setattr(search, "best_hits", lambda *a, **k: found)
    merged = search.with_profile_fallback(none, [b"MKV", b"MKL"], None, "/nowhere")
    assert merged.best_id.tolist() == ["UniRef90_A0A0B1LONG", "X1"]
    assert merged.profile.tolist() == [True, False] and merged.best_label.tolist() == [4, 2]
    assert np.isnan(merged.max_fident[0])  # bands keep the first search's meaning


def test_a_damaged_or_foreign_cache_entry_is_searched_again_and_a_bad_cache_only_warns(
    train_db, cluster_build, tmp_path, monkeypatch
):
    """The cache can always be recomputed: an entry cut, bit-flipped or of another search is
    not used (the search runs again, with the same answer), and a cache that cannot be written
    costs a warning, not the command."""
    store, _ = cluster_build
    queries = list(pairs(store.records("val")))[:20]
    others = list(pairs(store.records("test")))[:20]
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache"))
    first = best_hits(queries, train_db, tmp_path / "a", THREADS, sensitivity=SENSITIVITY)
    (entry,) = (tmp_path / "cache" / "hits").iterdir()
    best_hits(others, train_db, tmp_path / "b", THREADS, sensitivity=SENSITIVITY)
    (foreign,) = set((tmp_path / "cache" / "hits").iterdir()) - {entry}
    whole = entry.read_bytes()
    searches = []
    easy_search = search._easy_search
    monkeypatch.setattr(
        search, "_easy_search", lambda *a, **k: searches.append(1) or easy_search(*a, **k)
    )
    damages = {
        "cut": whole[: len(whole) // 2],
        "flipped": whole[:300] + bytes([whole[300] ^ 4]) + whole[301:],
        "foreign": foreign.read_bytes(),
        "empty": b"",
    }
    for n, (what, data) in enumerate(damages.items(), start=1):
        entry.write_bytes(data)
        again = best_hits(queries, train_db, tmp_path / what, THREADS, sensitivity=SENSITIVITY)
        assert len(searches) == n, what  # searched again, and the entry made whole
        assert np.array_equal(first.best_target, again.best_target), what
        assert np.array_equal(first.max_fident, again.max_fident, equal_nan=True), what
        assert entry.read_bytes() == whole, what
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "afile" / "sub"))
    monkeypatch.setattr(notices, "_given", set())
    with pytest.warns(CacheWarning, match="cannot be cached") as caught:
        unkept = best_hits(queries, train_db, tmp_path / "u", THREADS, sensitivity=SENSITIVITY)
        best_hits(others, train_db, tmp_path / "v", THREADS, sensitivity=SENSITIVITY)
    assert np.array_equal(first.best_target, unkept.best_target)
    (warning,) = [w for w in caught if w.category is CacheWarning]  # once a process
    assert warning.filename.startswith(str(tmp_path / "afile")) and warning.lineno == 0
