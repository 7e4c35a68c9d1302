"""The homology baseline and the hybrid on a cluster split of real records (real MMseqs2)."""

import json

import numpy as np
import pytest

from ecstream.baselines import choose, class_accuracy, make_hybrid_run, make_knn_run
from ecstream.build import build_store
from ecstream.evaluate import evaluate
from ecstream.mmseqs.search import Hits
from ecstream.predict import predict_file
from ecstream.predictors import load_model
from ecstream.runs import RunError
from ecstream.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(mmseqs, data_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("knn")
    store = build_store(
        data_path, base / "store", split="cluster", identity=0.5, max_records=1500, threads=2
    )
    cnn = train(
        store.path, base / "cnn",
        TrainConfig(epochs=1, batch_size=32, limit_train_batches=8, progress=False),
    ).run  # fmt: skip
    knn_val = make_knn_run(store.path, base / "knn", threads=2)
    hybrid_val = make_hybrid_run(store.path, base / "hybrid", cnn, base / "knn")
    return store, cnn, base / "knn", base / "hybrid", knn_val, hybrid_val


def test_cluster_build_records_leakage_in_the_manifest(runs):
    store = runs[0]
    leakage = store.manifest["leakage"]
    for split in ("val", "test"):
        assert sum(leakage["splits"][split]["counts"].values()) == store.num_records(split)


def test_knn_transfers_the_class_of_the_best_hit_and_marks_no_hit(runs, tmp_path):
    store, _, knn, *_ = runs
    model = load_model(knn)
    first = next(store.records("train"))
    ids, seqs, labels = first.ids, first.seqs, first.labels
    scores = model.score([*ids[:20], "none"], [*seqs[:20], b"WWWWHHHHWWWWHHHHCCCCWWWW"])
    assert (scores.probs[:20].argmax(1) == labels[:20]).all()  # itself, at identity 1
    assert scores.extra["source"][:20] == ["homolog"] * 20
    assert scores.extra["identity"][0] == "1.000"
    assert np.isnan(scores.probs[20]).all() and scores.extra["source"][20] == "no_hit"


def test_every_run_kind_answers_the_python_api(runs):
    import ecstream

    store, cnn, knn, hybrid, *_ = runs
    first = next(store.records("train"))
    seqs, labels = first.seqs, first.labels
    texts = [s.decode() for s in seqs[:5]] + ["WWWWHHHHWWWWHHHHCCCCWWWW"]
    probs = {run: ecstream.load_model(run).predict(texts) for run in (cnn, knn, hybrid)}
    assert all(p.shape == (6, 7) for p in probs.values())
    assert (probs[knn][:5].argmax(1) == labels[:5]).all() and np.isnan(probs[knn][5]).all()
    assert not np.isnan(probs[hybrid]).any()  # no hit: the CNN answers
    hybrid16 = ecstream.load_model(hybrid, precision="bf16")  # its CNN scores in bfloat16
    assert hybrid16.precision == hybrid16.cnn.precision == "bf16"


def test_a_knn_run_refuses_bf16_in_one_line_and_writes_nothing(runs, tmp_path, capsys):
    from ecstream.cli import main

    store, _, knn, *_ = runs
    out = tmp_path / "eval"
    argv = ["evaluate", str(knn), str(store.path), "--out", str(out), "--precision", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--precision: a knn run has no forward pass" in err.replace("\n", " ")
    assert "Traceback" not in err and not out.exists()


def test_a_failed_knn_run_leaves_nothing_and_its_out_can_be_reused(runs, tmp_path, monkeypatch):
    from ecstream.predictors.homolog import KNNPredictor

    store = runs[0]
    out = tmp_path / "knn"

    def broken(*args, **kwargs):
        raise RuntimeError("search failed")

    monkeypatch.setattr(KNNPredictor, "hits", broken)
    with pytest.raises(RuntimeError, match="search failed"):
        make_knn_run(store.path, out, threads=2)
    assert not out.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    assert make_knn_run(store.path, out, threads=2)["val_records"] == store.num_records("val")
    assert (out / "config.json").is_file()


def _hits(rows) -> Hits:
    _, _, hit_label, fident, *rest = (np.array(c) for c in zip(*rows, strict=True))
    has = hit_label >= 0
    n = len(rows)
    return Hits(
        query_ids=[str(i) for i in range(n)],
        best_target=np.where(has, np.arange(n), -1),
        best_id=np.array(["t"] * n),
        best_label=hit_label,
        best_fident=fident,
        best_bits=np.where(has, 50.0, np.nan),
        best_evalue=np.where(has, 1e-9, np.nan),
        max_fident=fident,
        max_target=np.where(has, np.arange(n), -1),
        profile=rest[0].astype(bool) if rest else None,
    )


def test_the_threshold_is_the_lowest_with_the_best_accuracy():
    # (label, CNN's label, homolog's label, identity, found by profile): worked out by hand,
    # the hybrid is right on 2 of 6 at t <= 0.2, on 3 at 0.25-0.6 (the homolog at 0.2 is wrong,
    # at 0.6 right), on 2 at 0.65-0.95 and on 3 again at 1.0 (only the CNN): the lowest best is
    # 0.25. The profile hit (identity 0.4, right) adds one more from a profile threshold 0.4 on.
    rows = [
        (0, 0, 1, 0.95, 0), (1, 0, 1, 0.6, 0), (2, 2, 2, 0.3, 0), (3, 0, -1, np.nan, 0),
        (4, 4, 5, 0.2, 0), (5, 0, 5, 0.4, 1),
    ]  # fmt: skip
    hits = _hits(rows)
    labels, cnn = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])

    def accuracy(t: float, tp: float | None) -> float:
        return class_accuracy(labels, cnn, hits, None, t, tp)

    best, profile, curve, profile_curve = choose(accuracy)
    assert best == 0.25 and profile == 0.0  # the lowest profile threshold that adds it
    assert curve["0.20"] == pytest.approx(2 / 6) and curve["0.25"] == pytest.approx(3 / 6)
    assert curve["0.60"] == pytest.approx(3 / 6) and curve["0.65"] == pytest.approx(2 / 6)
    assert curve["1.00"] == pytest.approx(3 / 6)
    assert profile_curve["never"] == pytest.approx(3 / 6)
    assert profile_curve["0.40"] == pytest.approx(4 / 6) and profile_curve["0.45"] == 3 / 6
    # a profile hit that is wrong is never taken: "never" wins the tie
    wrong = [*rows[:5], (5, 5, 4, 0.4, 1)]
    hits, cnn = _hits(wrong), np.array([r[1] for r in wrong])
    assert choose(lambda t, tp: class_accuracy(labels, cnn, hits, None, t, tp))[1] is None


def test_a_homolog_with_a_partial_number_leaves_the_deeper_levels_to_the_cnn():
    from ecstream.hierarchy import decode
    from ecstream.labels import ECVocabulary
    from ecstream.predictors.homolog import combine

    vocab = ECVocabulary.from_texts(["3.1.1.1", "3.1.1.2", "2.7.7.7"])
    cnn = [np.zeros((1, n), np.float32) for n in vocab.sizes]
    for level, key in enumerate(("3", "3.1", "3.1.1", "3.1.1.1")):
        cnn[level][0, vocab.index(level + 1, key)] = 0.95
    hit_multi_hot, _ = vocab.targets(["3.1.-.-"])
    from ecstream.hierarchy import split_levels

    hit = [b.astype(bool) for b in split_levels(hit_multi_hot, vocab)]
    homolog = [h.astype(np.float32) * 0.97 for h in hit]
    hits = _hits([(0, 0, 2, 0.95)])
    levels, decided = combine(vocab, cnn, hit, homolog, hits, [0.0] * 4)
    assert decided[:, 0].tolist() == [True, True, False, False]
    assert [c.number for c in decode(levels, vocab, [0.5] * 4)[0]] == ["3.1.1.1"]


def test_the_hybrid_trusts_a_homolog_its_cnn_agrees_with_as_validation_says():
    from ecstream.labels import ECVocabulary
    from ecstream.predictors.homolog import cnn_agrees, homolog_confidence
    from ecstream.tuning import homolog_curves

    vocab = ECVocabulary.from_texts(["1.1.1.1", "2.1.1.1"])
    # eight hits at 0.45 identity, all to 1.1.1.1: right where the truth is 1.1.1.1
    truth = ["1.1.1.1"] * 3 + ["2.1.1.1"] + ["1.1.1.1"] + ["2.1.1.1"] * 3
    best = ["1.1.1.1"] * 8
    hits = _hits([(0, 0, 0, 0.45)] * 8)
    one = vocab.index(1, "1")
    cnn = [np.full((8, n), 0.1, np.float32) for n in vocab.sizes]
    cnn[0][:4, one] = 0.9  # the CNN agrees on the first four (3 of 4 right), not on the rest
    cnn[0][4:, vocab.index(1, "2")] = 0.9
    multi_hot = [np.tile(b.astype(bool), (8, 1)) for b in _levels(vocab, "1.1.1.1")]
    agrees = cnn_agrees(cnn, multi_hot)
    assert agrees[0].tolist() == [True] * 4 + [False] * 4
    # a seven-class CNN says nothing deeper: there, whether it agreed at level 1
    assert all((a == agrees[0]).all() for a in cnn_agrees(cnn[:1], multi_hot))
    curves = homolog_curves(vocab, best, hits.best_fident, truth, hits.by_profile, agrees)
    conf = homolog_confidence(hits, curves, 0, agrees[0])
    assert conf.tolist() == pytest.approx([0.75] * 4 + [0.25] * 4)
    # without agreement (a kNN run) the same hits are right half the time
    plain = homolog_curves(vocab, best, hits.best_fident, truth, hits.by_profile)
    assert homolog_confidence(hits, plain, 0).tolist() == pytest.approx([0.5] * 8)
    # where the CNN agrees everywhere, the hits it disagrees with have no curve of their own:
    # they take the kind's, never 0
    everywhere = [np.ones(8, bool), *agrees[1:]]
    curves = homolog_curves(vocab, best, hits.best_fident, truth, hits.by_profile, everywhere)
    assert curves["search"][0] == curves["search+cnn"][0] == plain["search"][0]


def _levels(vocab, ec: str) -> list[np.ndarray]:
    from ecstream.hierarchy import split_levels

    return split_levels(vocab.targets([ec])[0], vocab)


def test_the_rows_the_cnn_decides_are_rescaled_and_the_homologs_kept():
    from ecstream.labels import ECVocabulary
    from ecstream.predictors.homolog import rescaled

    vocab = ECVocabulary.from_texts(["1.1.1.1", "2.1.1.1"])
    levels = [np.array([[0.8, 0.2], [0.9, 0.1]], np.float32)] + [
        np.array([[0.8, 0.2], [0.9, 0.1]], np.float32) for _ in range(3)
    ]
    decided = np.array([[True, False]] * 4)  # row 0: the homolog; row 1: the CNN
    halve = [[0.0, 1.0], [0.0, 0.5]]  # the CNN is right half as often as it says
    out = rescaled(levels, decided, [halve] * 4, vocab)
    for level in out:
        assert level[0].tolist() == pytest.approx([0.8, 0.2])  # the homolog's row is untouched
        assert level[1].tolist() == pytest.approx([0.45, 0.05])  # top 0.9 -> 0.45, shape kept


def test_hybrid_threshold_is_chosen_on_validation(runs):
    *_, hybrid, knn_val, hybrid_val = runs
    config = json.loads((hybrid / "config.json").read_text())
    curve = config["validation"]["accuracy_by_threshold"]
    assert curve[f"{config['threshold']:.2f}"] == max(curve.values())
    # given it, the threshold of profile hits (or none) can only add
    profile = (
        config["validation"]["accuracy_by_threshold"]
        and json.loads((hybrid / "calibration.json").read_text())["accuracy_by_profile_threshold"][
            "1"
        ]
    )
    assert hybrid_val["val_acc"] == max(profile.values()) >= max(curve.values())
    assert hybrid_val["val_acc"] >= max(hybrid_val["val_acc_cnn"], hybrid_val["val_acc_knn"])
    assert hybrid_val["val_acc_knn"] == pytest.approx(knn_val["val_acc"])
    # and its own confidences: the homolog's by identity and agreement, the CNN's mapped
    calibration = json.loads((hybrid / "calibration.json").read_text())
    assert set(calibration["identity_curves"]) == {"search", "search+cnn", "profile", "profile+cnn"}
    assert len(calibration["cnn_maps"]) == 4
    model = load_model(hybrid)
    assert model.curves == calibration["identity_curves"] and model.cnn_maps


def test_all_three_evaluate_and_predict_alike(runs, tmp_path):
    store, cnn, knn, hybrid, *_ = runs
    results = {}
    for name, run in (("cnn", cnn), ("knn", knn), ("hybrid", hybrid)):
        results[name] = evaluate(run, store.path, tmp_path / name, split="test")
        bands = results[name]["identity_bands"]
        assert sum(b["n"] for b in bands.values()) == store.single_class_records("test")
    # the three see the same records, so their band counts agree
    assert results["cnn"]["identity_bands"].keys() == results["knn"]["identity_bands"].keys()
    assert [b["n"] for b in results["cnn"]["identity_bands"].values()] == [
        b["n"] for b in results["knn"]["identity_bands"].values()
    ]
    knn_result = results["knn"]
    # a protein without a hit in the search is predicted only when the profile fallback finds one
    profile_hits = knn_result["levels"][0]["profile_hits"]["n"]
    no_hit = knn_result["identity_bands"]["no_hit"]["n"]
    assert 0 < profile_hits < no_hit
    assert knn_result["no_prediction"] + profile_hits == no_hit

    fasta = tmp_path / "q.fasta"
    first = next(store.records("test"))
    ids, seqs = first.ids, first.seqs
    fasta.write_text(
        "".join(f">{i}\n{s.decode()}\n" for i, s in zip(ids[:30], seqs[:30], strict=True))
    )
    sources = {}
    for name, run in (("knn", knn), ("hybrid", hybrid)):
        predict_file(load_model(run), fasta, tmp_path / f"{name}.tsv")
        lines = (tmp_path / f"{name}.tsv").read_text().splitlines()
        header = lines[0].split("\t")
        rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
        assert [r["id"] for r in rows] == ids[:30]
        sources[name] = [r["source"] for r in rows]
    assert set(sources["knn"]) <= {"homolog", "profile", "no_hit"}
    knn_rows = (tmp_path / "knn.tsv").read_text().splitlines()
    header = knn_rows[0].split("\t")
    for line in knn_rows[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        if row["source"] == "no_hit":  # nothing to say: depth 0, no number
            assert row["depth"] == "0" and row["ec_number"] == "" and row["ec_class"] == ""
    assert load_model(hybrid).handled(5000) == "whole"  # as its CNN scores it
    assert set(sources["hybrid"]) <= {"homolog", "profile", "cnn"}
    # the hybrid's class view is its own calibrated level 1 (not a homolog's one-hot 1.0 at any
    # identity, nor its CNN's probabilities before the hybrid's maps)
    scores = load_model(hybrid).score(ids[:30], seqs[:30])
    assert np.array_equal(scores.probs, scores.levels[0])
    assert (scores.probs.max(axis=1) < 1).any()
    lines = (tmp_path / "hybrid.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        if row["depth"] == "1":  # the class is the number stated: one confidence for both
            assert row["probability"] == row["confidence"], row


def counted_searches(monkeypatch, logs: list[str] | None = None) -> list[tuple[int, int]]:
    """Every MMseqs2 search from now on, as (iterations, queries), in a list; with ``logs``,
    each search's MMseqs2 output is added to it as well."""
    from ecstream.mmseqs import search

    searched = []
    easy_search = search._easy_search

    def counted(work, target, params, threads, any_query):
        searched.append((params.iterations, (work / "queries.fasta").read_text().count(">")))
        hits = easy_search(work, target, params, threads, any_query)
        if logs is not None:
            logs.append((work / "easy-search.out").read_text())
        return hits

    monkeypatch.setattr(search, "_easy_search", counted)
    return searched


def store_chunks_of_64(monkeypatch):
    """Store splits read in chunks of 64 records (many chunks from a small store); returns the
    reader as it was."""
    from ecstream.store import Store

    whole = Store.records

    def in_chunks_of_64(self, split):
        for chunk in whole(self, split):
            place = np.arange(len(chunk))
            yield from (chunk.take(place // 64 == k) for k in range(-(-len(chunk) // 64)))

    monkeypatch.setattr(Store, "records", in_chunks_of_64)
    return whole


def search_groups_of(monkeypatch, rows: int | None) -> None:
    """Homology runs and whole-split searches (leakage, identity bands) search groups of
    ``rows`` records (``None``: each chunk alone)."""
    from ecstream.mmseqs import search
    from ecstream.predictors.homolog import HybridPredictor, KNNPredictor

    for kind in (KNNPredictor, HybridPredictor):
        monkeypatch.setattr(kind, "search_rows", rows)
    monkeypatch.setattr(search, "SEARCH_ROWS", rows)


def test_homology_runs_search_a_group_of_chunks_once_with_the_same_answers(
    runs, tmp_path, monkeypatch
):
    """A store of many record batches (here: chunks of 64) and an input of many chunks: the kNN
    and the hybrid search each group of chunks in one MMseqs2 call (and one profile search),
    and answer alike in one group, in several (evaluate) and each chunk searched on its own
    (predict; every search costs seconds); a chunk outside the group announced is searched."""
    from ecstream.predictors.homolog import KNNPredictor

    store, _, knn, hybrid, *_ = runs

    def plain(mode: str) -> list[int]:
        return [q for i, q in counts[mode] if i == 1]

    whole = store_chunks_of_64(monkeypatch)
    searched = counted_searches(monkeypatch)
    sizes = [len(c) for c in store.records("test")]  # a full-EC run scores every row
    first = next(whole(store, "test"))
    fasta = tmp_path / "q.fasta"  # lower case and a record that cannot be scored, too
    seqs = [s.decode() for s in first.seqs[:100]]
    seqs[3], seqs[7] = seqs[3].lower(), "MKV1X"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in enumerate(seqs)))
    results, rows, files, counts = {}, {}, {}, {}
    for mode in ("one group", "groups of 100", "each chunk"):
        if mode == "groups of 100":
            search_groups_of(monkeypatch, 100)
        if mode == "each chunk":  # as before groups: every chunk searched on its own
            search_groups_of(monkeypatch, None)
            monkeypatch.setattr(KNNPredictor, "search_ahead", lambda self, seqs: None)
        monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / f"cache-{mode}"))
        searched.clear()
        if mode != "each chunk":
            out = tmp_path / f"eval-{mode}"
            results[mode] = evaluate(knn, store.path, out, split="test", bands=False)
            rows[mode] = dict(np.load(out / "classes.npz"))
        if mode != "groups of 100":  # a cache of its own: the file's rows are the store's first
            monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / f"predict-cache-{mode}"))
            for name, run in (("knn", knn), ("hybrid", hybrid)):
                predict_file(load_model(run), fasta, tmp_path / f"{name}.tsv", chunk_rows=50)
                files[mode, name] = (tmp_path / f"{name}.tsv").read_bytes()
        counts[mode] = list(searched)
    assert results["one group"]["levels"][0]["profile_hits"]["n"] > 0  # the fallback worked
    # one group: one search of every record, then of the 99 predicted (the hybrid reuses the
    # kNN's, cached), each with one profile search of those without a hit
    assert plain("one group") == [sum(sizes), 99] and len(counts["one group"]) == 4
    # groups of 100: the store's chunks of 64 gathered two at a time, the last ones as they come
    assert sizes[:2] == [64, 64] and plain("groups of 100") == [128, sum(sizes) - 128]
    assert plain("each chunk") == [49, 50]  # as many searches as chunks
    for key in ("accuracy", "levels", "n", "no_prediction"):
        assert results["one group"][key] == results["groups of 100"][key], key
    for name in rows["one group"]:
        np.testing.assert_array_equal(rows["one group"][name], rows["groups of 100"][name])
    assert files["one group", "knn"] == files["each chunk", "knn"]
    assert files["one group", "hybrid"] == files["each chunk", "hybrid"]
    assert files["one group", "knn"].count(b"\n") == 101  # the header and every record's row

    monkeypatch.undo()  # the predictors as they are; the searches counted again
    searched = counted_searches(monkeypatch)
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "predict-cache-one group"))
    model = load_model(knn)
    model.search_ahead([s for i, s in enumerate(first.seqs[:100]) if i != 7])  # cached
    searched.clear()
    inside = model.hits([f"q{i}" for i in range(5)], first.seqs[10:15])
    assert searched == [] and inside.query_ids == [f"q{i}" for i in range(5)]
    outside = model.hits(["a", "b"], [first.seqs[12], first.seqs[150]])  # b: not announced
    assert [q for i, q in searched if i == 1] == [2]
    assert outside.best_target[0] == inside.best_target[2]
    assert outside.best_id[0] == inside.best_id[2] and outside.query_ids == ["a", "b"]


def test_a_knn_run_with_its_index_loads_it_and_finds_what_one_without_finds(
    runs, tmp_path, monkeypatch
):
    """``train --model knn --index`` keeps MMseqs2's k-mer index of the training split in the
    run, sealed with it: its searches, plain and profile, load the index instead of building
    one (MMseqs2's log says which), and predict writes what the run without it writes. An
    index another MMseqs2 version wrote is refused."""
    import shutil

    from ecstream.cli import main
    from ecstream.mmseqs.binary import MMseqsError
    from ecstream.runs import verify

    store, _, knn, *_ = runs
    logs: list[str] = []
    searched = counted_searches(monkeypatch, logs)
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache-index"))
    indexed = tmp_path / "knn-index"
    args = ["train", str(store.path), "--model", "knn", "--out", str(indexed), "--threads", "2"]
    assert main([*args, "--index"]) == 0
    assert (indexed / "targets" / "db.idx").is_file()
    assert not (indexed / "targets" / "index-work").exists()  # createindex's work files go
    assert "targets/db.idx" in json.loads((indexed / "checksums.json").read_text())["files"]
    assert main(["train", str(store.path), "--out", str(tmp_path / "cnn"), "--index"]) == 2
    # a hybrid's parts named for another kind of run are refused, not ignored
    assert main(["train", str(store.path), "--out", str(tmp_path / "cnn"), "--knn", "x"]) == 2
    with pytest.raises(ValueError, match=r"up to -s 7\.5"):  # what the index is made for
        make_knn_run(store.path, tmp_path / "knn-s8", sensitivity=8.0, index=True)
    assert not (tmp_path / "knn-s8").exists() and not (tmp_path / "cnn").exists()

    first = next(store.records("test"))
    fasta = tmp_path / "q.fasta"  # a protein of no family: searched again by profile
    seqs = [s.decode() for s in first.seqs[:40]] + ["WWWWHHHHWWWWHHHHCCCCWWWW"]
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = {}
    for name, run in (("index", indexed), ("plain", knn)):
        monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / f"cache-{name}"))
        searched.clear()
        logs.clear()
        predict_file(load_model(run), fasta, tmp_path / f"{name}.tsv")
        out[name] = (tmp_path / f"{name}.tsv").read_bytes()
        assert sorted(i for i, _ in searched) == [1, 3]  # one plain search, one by profile
        built = ["Index table: counting k-mers" in log for log in logs]
        assert built == [name == "plain"] * 2, name
    assert out["index"] == out["plain"] and out["plain"].count(b"\n") == 42
    assert verify(indexed)  # the sealed run, index included, as it was made

    # an index that another MMseqs2 wrote is refused, in words (MMseqs2 would stop at it)
    old = tmp_path / "old-index"
    shutil.copytree(indexed, old, ignore=shutil.ignore_patterns("checksums.json"))
    meta = json.loads((old / "targets" / "target.json").read_text())
    (old / "targets" / "target.json").write_text(json.dumps({**meta, "mmseqs_version": "0-x"}))
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache-old"))  # searched, not cached
    with pytest.raises(MMseqsError, match=r"written by MMseqs2 0-x.*make the kNN run again"):
        predict_file(load_model(old), fasta, tmp_path / "old.tsv")


def test_one_search_of_a_store_split_serves_the_evaluations_of_every_run(
    runs, tmp_path, monkeypatch
):
    """The class CNN's identity bands, the leakage report, the full-EC kNN and the class hybrid
    on one store split (many chunks, searched in several groups): each searches every row of it
    (those a class run leaves out too) in the same groups, so the first search is the only one,
    and the hybrid reuses the kNN's profile search as well."""
    from ecstream.mmseqs.leakage import leakage_report
    from ecstream.records import groups

    store, cnn, knn, hybrid, *_ = runs
    n, single = store.num_records("test"), store.single_class_records("test")
    assert n > single  # rows spanning several classes, which the class runs do not score
    store_chunks_of_64(monkeypatch)
    search_groups_of(monkeypatch, 100)
    searched = counted_searches(monkeypatch)
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache"))
    made = {}
    for name, run in (("cnn", cnn), ("leakage", None), ("knn", knn), ("hybrid", hybrid)):
        searched.clear()
        if run is None:
            leakage = leakage_report(store, splits=["test"], workdir=tmp_path / "leakage",
                                     examples=20)  # fmt: skip
            made[name] = list(searched)
            assert leakage["splits"]["test"]["records"] == n
            continue
        result = evaluate(run, store.path, tmp_path / name, split="test", bands=True)
        made[name] = list(searched)
        assert result["n"] == single
        assert sum(b["n"] for b in result["identity_bands"].values()) == single
    sizes = [sum(map(len, g)) for g in groups(store.records("test"), 100)]
    assert sizes == [128, n - 128]  # chunks of 64 two at a time, the rest
    assert made["cnn"] == [(1, size) for size in sizes]  # every row, the bands of `single`
    assert made["leakage"] == []
    assert {i for i, _ in made["knn"]} == {3}  # its profile searches only
    assert made["hybrid"] == []
    # the report is that of other groups: each chunk of 64 searched alone, a cache of its own
    search_groups_of(monkeypatch, None)
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache-chunks"))
    searched.clear()
    alone = leakage_report(store, splits=["test"], workdir=tmp_path / "alone", examples=20)
    assert [q for _, q in searched] == [len(c) for c in store.records("test")]
    assert alone["splits"] == leakage["splits"]
    assert len(alone["splits"]["test"]["closest"]) == 20


def test_bands_by_default_are_skipped_not_fatal_when_the_training_store_is_gone(runs, tmp_path):
    import shutil

    store, cnn, *_ = runs
    moved = tmp_path / "cnn"
    # without its checksums, which would refuse the edited config.json
    shutil.copytree(cnn, moved, ignore=shutil.ignore_patterns("targets", "checksums.json"))
    config = json.loads((moved / "config.json").read_text())
    config["store"]["path"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    result = evaluate(moved, store.path, tmp_path / "eval", split="test")
    assert "identity_bands" not in result and "gone" in result["identity_bands_skipped"]
    assert result["n"] == store.single_class_records("test")
    with pytest.raises(RunError, match="training store"):
        evaluate(moved, store.path, tmp_path / "eval2", split="test", bands=True)


def test_a_hybrid_made_before_its_own_confidences_scores_as_it_did(runs, tmp_path):
    """Without ``identity_curves`` and ``cnn_maps`` in its calibration, a hybrid weighs its
    homolog by the kNN's curves and leaves the CNN's rows as they are, as it always did."""
    import shutil

    from ecstream.predictors.homolog import combine

    store, _, _, hybrid, *_ = runs
    old = tmp_path / "old-hybrid"
    shutil.copytree(hybrid, old, ignore=shutil.ignore_patterns("checksums.json"))  # nor these
    calibration = json.loads((old / "calibration.json").read_text())
    for key in ("identity_curves", "cnn_maps"):
        del calibration[key]
    (old / "calibration.json").write_text(json.dumps(calibration))
    model, new = load_model(old), load_model(hybrid)
    assert model.curves is None and model.cnn_maps is None
    chunk = next(store.records("test"))
    ids, seqs = chunk.ids[:60], chunk.seqs[:60]
    cnn = model.cnn.score(ids, seqs)
    hits = model.knn.hits(ids, seqs)
    expected, _ = combine(model.vocab, cnn.levels, *model.knn.homolog_levels(hits), hits,
                          model.identity, model.profile_identity)  # fmt: skip
    got = model.score(ids, seqs).levels
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # the hybrid with them has confidences of its own
    mine = new.score(ids, seqs).levels
    assert any(not np.array_equal(a, b) for a, b in zip(mine, got, strict=True))


def test_knn_and_hybrid_runs_refuse_a_damaged_database_their_own_or_their_parts(runs):
    """Every file of a kNN run is checked before it is used, its MMseqs2 database too (a
    changed byte there is a changed training sequence), and a hybrid checks the runs it is
    made of."""
    from ecstream.runs import CHECKSUMS

    _, _, knn, hybrid, *_ = runs
    listed = json.loads((knn / CHECKSUMS).read_text())["files"]
    assert {"targets/db", "targets/labels.npy", "targets/ids.arrow", "calibration.json"} <= set(
        listed
    )
    database = knn / "targets" / "db"
    data = database.read_bytes()
    at = len(data) // 2
    try:
        with open(database, "r+b") as fh:
            fh.seek(at)
            fh.write(bytes([data[at] ^ 0x01]))
        for run in (knn, hybrid):
            with pytest.raises(RunError, match=r"targets/db: its checksum differs"):
                load_model(run)
    finally:
        database.write_bytes(data)
    assert load_model(hybrid).kind == "hybrid"  # restored: checked again, and whole


def test_a_hybrid_refuses_a_part_that_is_not_the_run_it_was_made_with(runs):
    """A hybrid's thresholds and confidences were fitted with two exact runs: a part replaced
    by another run (or trained on since), whose own checksums are valid, is refused; so is a
    change to the hybrid's own files."""
    from ecstream.runs import CHECKSUMS, seal

    _, _, knn, hybrid, *_ = runs
    listed = json.loads((hybrid / CHECKSUMS).read_text())["files"]
    assert {"config.json", "calibration.json", "seen.npz"} <= set(listed)
    calibration = knn / "calibration.json"
    kept, sealed = calibration.read_bytes(), (knn / CHECKSUMS).read_bytes()
    try:
        calibration.write_bytes(kept.replace(b"0.", b"1.", 1))
        seal(knn)  # another kNN run at the same path: whole, and not the hybrid's
        load_model(knn)
        with pytest.raises(RunError, match=r"its KNN run .* is not the one it was made with"):
            load_model(hybrid)
    finally:
        calibration.write_bytes(kept)
        (knn / CHECKSUMS).write_bytes(sealed)
    assert load_model(hybrid).kind == "hybrid"
    # made of a kNN run without checksums then: one that has them now was trained on since
    # (or is another run), refused too
    import shutil

    earlier = hybrid.parent / "hybrid-of-an-unchecked-knn"
    shutil.copytree(hybrid, earlier)
    config = json.loads((earlier / "config.json").read_text())
    config["parts"]["knn"] = None
    (earlier / "config.json").write_text(json.dumps(config))
    seal(earlier)
    with pytest.raises(RunError, match=r"its KNN run .* is not the one it was made with"):
        load_model(earlier)
    shutil.rmtree(earlier)
    own = hybrid / "calibration.json"
    kept = own.read_bytes()
    try:
        own.write_bytes(kept.replace(b"0.", b"1.", 1))
        with pytest.raises(RunError, match=r"hybrid/calibration\.json: its checksum differs"):
            load_model(hybrid)
    finally:
        own.write_bytes(kept)


def test_a_hybrid_has_seen_what_its_parts_saw(runs, tmp_path):
    """A part tuned on another val split (here: a kNN run whose seen records hold one more
    sequence) passes what it saw on to a hybrid made of it."""
    import shutil

    from ecstream.runs import read_seen

    store, cnn, knn, *_ = runs
    part = tmp_path / "knn"
    shutil.copytree(knn, part, ignore=shutil.ignore_patterns("checksums.json"))  # edited below
    seen = read_seen(part)
    extra = np.uint64(12345)
    assert extra not in seen["val"]
    np.savez(part / "seen.npz", train=seen["train"], val=np.union1d(seen["val"], [extra]))
    make_hybrid_run(store.path, tmp_path / "hybrid", cnn, part)
    assert extra in read_seen(tmp_path / "hybrid")["val"]


def test_compare_pairs_two_evaluations_protein_by_protein(runs, tmp_path, capsys):
    """``ecstream compare``: two runs' evaluations of the same test proteins give each run's
    accuracy as evaluate measured it, their difference with an interval from the families of
    either evaluation, and the bands both share; different proteins, a damaged or missing
    class file, and an output inside an evaluation are refused in one line."""
    from ecstream.cli import main
    from ecstream.compare import CompareError, compare, seen_warnings
    from ecstream.identity import BANDS

    store, cnn, _, hybrid, *_ = runs
    a, b = tmp_path / "cnn", tmp_path / "hybrid"
    ev_a = evaluate(cnn, store.path, a, split="test", families=True)
    ev_b = evaluate(hybrid, store.path, b, split="test")
    result = compare(a, b)
    every = result["all"]
    assert every["n"] == ev_a["n"] == ev_b["n"]
    assert every["accuracy_a"] == pytest.approx(ev_a["accuracy"])
    assert every["accuracy_b"] == pytest.approx(ev_b["accuracy"])
    assert every["difference"] == pytest.approx(ev_a["accuracy"] - ev_b["accuracy"])
    assert every["families"] == ev_a["families"]["all"]["families"]
    low, high = every["interval"]
    assert low <= every["difference"] <= high
    assert list(result["bands"]) == list(BANDS)  # the same training split: the same bands
    for band in BANDS:
        assert result["bands"][band]["n"] == ev_a["identity_bands"][band]["n"]
    back = compare(b, a)["all"]
    assert back["difference"] == pytest.approx(-every["difference"])
    assert back["interval"] == pytest.approx([-high, -low])  # B's lacking families: A's used
    itself = compare(a, a)["all"]
    assert itself["difference"] == 0 and itself["interval"] == [0.0, 0.0]

    assert seen_warnings(result) == []  # test records: neither run had seen them
    val = tmp_path / "val"
    evaluate(hybrid, store.path, val, split="val", allow_seen=True)
    with pytest.raises(CompareError, match="measured different proteins"):
        compare(a, val)
    val_cnn = tmp_path / "val-cnn"
    evaluate(cnn, store.path, val_cnn, split="val", allow_seen=True)
    on_val = seen_warnings(compare(val_cnn, val))  # the hybrid tuned its thresholds there
    n = json.loads((val / "metrics.json").read_text())["seen"]["records"]
    assert on_val[1] == (
        f"B: 0 of the {n:,} records evaluated are in its training split and {n:,} in its "
        "validation split: its accuracy is optimistic on them"
    )
    assert len(on_val) == 2 and on_val[0].startswith(f"A: 0 of the {n:,} records evaluated")
    import shutil

    from ecstream.hashing import file_sha256

    def rewritten(source, name, edit):
        """A copy of an evaluation whose class file is ``edit``ed and recorded as written."""
        other = tmp_path / name
        shutil.copytree(source, other)
        with np.load(source / "classes.npz") as npz:
            arrays = dict(npz)
        edit(arrays)
        np.savez(other / "classes.npz", **arrays)
        meta = json.loads((other / "metrics.json").read_text())
        meta["class_rows"]["sha256"] = file_sha256(other / "classes.npz")
        (other / "metrics.json").write_text(json.dumps(meta))
        return other

    def swap(arrays):  # the same number of proteins, two of them swapped
        arrays["hash"][[0, 1]] = arrays["hash"][[1, 0]]

    with pytest.raises(CompareError, match="measured different proteins"):
        compare(a, rewritten(b, "reordered", swap))

    def regroup(arrays):  # another clustering of the same proteins
        arrays["family"] = np.arange(len(arrays["hash"]))

    with pytest.raises(CompareError, match="in different families"):
        compare(a, rewritten(a, "regrouped", regroup))

    def drop_families(arrays):  # metrics.json still says it has families
        del arrays["family"]

    with pytest.raises(CompareError, match="holds hash, identity, predicted, true"):
        compare(rewritten(a, "no-families", drop_families), b)
    rows = b / "classes.npz"
    kept = rows.read_bytes()
    middle = len(kept) // 2
    rows.write_bytes(kept[:middle] + bytes([kept[middle] ^ 0xFF]) + kept[middle + 1 :])
    with pytest.raises(CompareError, match=r"classes\.npz: damaged"):
        compare(a, b)
    rows.unlink()
    with pytest.raises(CompareError, match="evaluate the run again"):
        compare(a, b)
    rows.write_bytes(kept)

    out = tmp_path / "comparison.json"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A − B" in printed and "95% interval" in printed
    assert json.loads(out.read_text())["all"]["difference"] == pytest.approx(every["difference"])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    for inside in (a / "comparison.json", b / "sub" / "comparison.json"):
        assert main(["compare", str(a), str(b), "--out", str(inside)]) == 2
        assert "lies inside the evaluation" in " ".join(capsys.readouterr().err.split())
        assert not inside.exists()


def test_evaluate_families_counts_the_families_overall_and_per_band(runs, tmp_path, capsys):
    """``--families``: the class accuracy's proteins, their families (fewer than proteins on a
    cluster split's test, whose clusters stay whole) and the interval, overall and per band,
    in metrics.json and in the printed table."""
    from ecstream.cli import main
    from ecstream.identity import BANDS

    store, cnn, *_ = runs
    result = evaluate(cnn, store.path, tmp_path / "eval", split="test", families=True)
    fam = result["families"]
    assert fam["all"]["n"] == result["n"] and fam["all"]["accuracy"] == result["accuracy"]
    assert 0 < fam["all"]["families"] < fam["all"]["n"]
    low, high = fam["all"]["interval"]
    assert low <= result["accuracy"] <= high
    assert list(fam["bands"]) == list(BANDS)
    for band in BANDS:
        assert fam["bands"][band]["n"] == result["identity_bands"][band]["n"]
        if fam["bands"][band]["n"]:
            assert fam["bands"][band]["accuracy"] == result["identity_bands"][band]["accuracy"]
    assert "families" not in evaluate(cnn, store.path, tmp_path / "plain", split="test")
    out = tmp_path / "cli"
    argv = ["evaluate", str(runs[3]), str(store.path), "--out", str(out), "--families"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Families (0.3 identity" in printed and "interval" in printed
    assert json.loads((out / "metrics.json").read_text())["families"]["all"]["n"] > 0
