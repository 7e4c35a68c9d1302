"""Evaluation and prediction with a trained run: honest metrics, every record answered."""

import gzip
import itertools
import json
import shutil

import numpy as np
import pytest
from conftest import head_lines

import ecstream
from ecstream import alphabet
from ecstream.cli import main
from ecstream.config import SCORE_ROWS
from ecstream.evaluate import evaluate
from ecstream.predict import predict_file
from ecstream.predictors import load_model
from ecstream.runs import RunError, seal


def test_evaluate_a_store_split_writes_metrics_and_plots(cnn_run, small_store, tmp_path):
    result = evaluate(cnn_run, small_store.path, tmp_path / "ev", split="test", bands=False)
    n = small_store.single_class_records("test")
    assert result["n"] == n
    # the rows spanning several classes a class run leaves out are counted, as from a file
    left = small_store.num_records("test") - n
    assert left > 0 and result["set_aside"]["multiple_classes"]["count"] == left
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(result["accuracy"]) and 0 <= m["accuracy"] <= 1
    assert sum(c["support"] for c in m["per_class"].values()) == n
    confusion = np.array(m["confusion"]["rows_true_columns_predicted"])
    assert confusion.shape == (7, 7) and confusion.sum() == n
    assert m["accuracy"] == pytest.approx(np.trace(confusion) / n)
    per_class_recall = [c["recall"] for c in m["per_class"].values()]
    support = [c["support"] for c in m["per_class"].values()]
    assert m["accuracy"] == pytest.approx(np.dot(per_class_recall, support) / n)
    for png in ("confusion.png", "learning_curves.png"):
        assert (tmp_path / "ev" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_a_labelled_file_counts_what_it_sets_aside(cnn_run, data_path, tmp_path):
    path = tmp_path / "labelled.tsv"
    path.write_text("".join(head_lines(data_path, 400)) + "BAD1\t\tMKV\nBAD2\t1.1.1.1\tMK1V\n")
    # the run trained on most of these rows: evaluate says so, and measures when asked to
    with pytest.raises(RunError, match="are in the training split"):
        evaluate(cnn_run, path, tmp_path / "ev", bands=False)
    result = evaluate(cnn_run, path, tmp_path / "ev", bands=False, allow_seen=True)
    assert result["seen"]["checked"] and result["seen"]["in_train"] > 0.5 * result["n"]
    aside = result["set_aside"]
    assert aside["missing_ec"]["count"] == 1 and aside["invalid_characters"]["count"] == 1
    assert result["n"] + sum(v["count"] for v in aside.values()) == 401
    assert result["source"] == {"file": str(path)}


def test_evaluation_equals_the_exact_batches_of_the_store(cnn_run, small_store):
    """Scoring records one by one (length-sorted, own padding) = scoring the store's batches."""
    model = load_model(cnn_run)
    model.long = "truncated"  # as training and the store's batches see long proteins
    first = next(small_store.records("train"))
    direct = model.all_logits(first.seqs)
    batches = small_store.batches("train", shuffle=False, max_length=model.max_length)
    via_batches = np.concatenate([model.logits(b.x) for b in batches])
    assert len(direct) > SCORE_ROWS  # the head scores the features a part at a time
    assert np.allclose(direct, via_batches[: len(direct)], atol=1e-5)


def test_predict_answers_every_record_in_input_order(cnn_run, tmp_path):
    fasta = tmp_path / "in.fasta.gz"
    records = [
        ("p1", "MKVLAAGIVGLLLAAQPAMA"),
        ("empty", ""),
        ("bad", "MKV-LL"),
        ("long", "M" + "ACDEFGHIKL" * 80),
        ("lower", "mkvlaagivg*"),
    ]
    with gzip.open(fasta, "wt") as fh:
        fh.writelines(f">{i} desc\n{s}\n" for i, s in records)
    summary = predict_file(load_model(cnn_run), fasta, tmp_path / "out.tsv", top_k=2)
    assert summary["records"] == 5 and summary["scored"] == 3 and summary["errors"] == 2
    lines = (tmp_path / "out.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:4] == ["id", "ec_class", "class_name", "probability"]
    assert header[4:11] == [f"p_{k}" for k in range(1, 8)]
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert [r["id"] for r in rows] == [i for i, _ in records]
    assert rows[1]["error"] == "empty sequence" and rows[1]["ec_class"] == ""
    assert rows[2]["error"] == "character '-' at position 4 is not a residue letter"
    assert rows[3]["handled"] == "whole" and rows[3]["length"] == "801"  # no length cap
    assert rows[4]["length"] == "10" and rows[4]["handled"] == "whole"
    for r in (rows[0], rows[3], rows[4]):
        p = np.array([float(r[f"p_{k}"]) for k in range(1, 8)])
        assert p.sum() == pytest.approx(1, abs=1e-3)
        assert r["ec_class"] == str(int(p.argmax()) + 1) and float(r["probability"]) == p.max()
        assert len(r["top_k"].split("; ")) == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_macro_f1_averages_the_classes_that_occur():
    from ecstream.evaluate import metrics
    from ecstream.labels import LabelPolicy

    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    result = metrics(y_true, y_pred, LabelPolicy())  # 7 classes, 2 occur
    f1 = [result["per_class"][k]["f1"] for k in ("1", "2")]
    assert result["macro_f1"] == pytest.approx(np.mean(f1))
    assert result["per_class"]["5"]["f1"] == 0.0 and result["per_class"]["5"]["support"] == 0


def test_python_api_predicts_probabilities(cnn_run):
    model = load_model(cnn_run)
    probs = model.predict(["MKVLAAGIVGLLLAAQPAMA", "mkkllpt"])
    assert probs.shape == (2, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="sequence 1"):
        model.predict(["MKV", "MK V"])
    # bytes, as a store's records hold them, are the same sequences; other objects are named
    assert np.array_equal(model.predict([b"MKVLAAGIVGLLLAAQPAMA", b"mkkllpt"]), probs)
    for bad in (None, 1, np.array([1, 2, 3], np.uint8)):
        with pytest.raises(TypeError, match="sequence 1: a sequence is text"):
            model.predict(["MKV", bad])


def test_a_run_of_another_version_or_alphabet_is_refused(cnn_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(cnn_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["run_version"] = 99
    (copy / "config.json").write_text(json.dumps(config))
    seal(copy)  # as the other ecstream sealed it: whole, of another kind
    with pytest.raises(RunError, match="format 99"):
        load_model(copy)
    config["run_version"], config["alphabet"]["name"] = 1, "esm"
    (copy / "config.json").write_text(json.dumps(config))
    seal(copy)
    with pytest.raises(RunError, match="alphabet 'esm'"):
        load_model(copy)
    # our alphabet's name with other tokens, in a run without checksums: not "uses the same"
    config["alphabet"] = {**alphabet.spec(), "pad": 5}
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "checksums.json").unlink()
    with pytest.raises(RunError, match=r"config\.json: its alphabet entry is not that of"):
        load_model(copy)
    with pytest.raises(RunError, match="not an ecstream run"):
        load_model(tmp_path)


def test_readme_model_table_matches_the_code():
    """The parameter counts and FLOPs per residue quoted in the README are the models' own."""
    from pathlib import Path

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ecstream.model import PRESETS, ECClassifier, count_parameters, flops_per_residue

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, config in PRESETS.items():
        model = ECClassifier(config)
        assert f"| {count_parameters(model):,} |" in readme, name
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(1, 22, (1, 600), dtype=torch.uint8))
        measured = counter.get_total_flops() / 600
        assert abs(measured - flops_per_residue(config)) / measured < 0.01
        shown = f"{flops_per_residue(config) / 1e6:.2g} M"
        assert f"| {shown} |" in readme, (name, shown)


def test_predict_reads_a_csv_with_a_sequence_column(cnn_run, tmp_path):
    table = tmp_path / "mine.csv"
    table.write_text("name,seq,note\nx1,MKVLAAGIVG,a\nx2,,b\n")
    from ecstream.sources import Columns

    columns = Columns(id="name", ec=None, sequence="seq")
    summary = predict_file(load_model(cnn_run), table, tmp_path / "o.tsv", columns=columns)
    rows = (tmp_path / "o.tsv").read_text().splitlines()[1:]
    assert summary["scored"] == 1 and [r.split("\t")[0] for r in rows] == ["x1", "x2"]
    assert rows[1].endswith("empty sequence")


def test_evaluate_refuses_a_store_whose_test_split_the_run_trained_on(
    cnn_run, small_store, data_path, tmp_path, capsys
):
    other = ecstream.build_store(data_path, tmp_path / "seed1", max_records=3000, seed=1)
    with pytest.raises(RunError, match=r"are in the training split .*--allow-seen"):
        evaluate(cnn_run, other.path, tmp_path / "ev", bands=False)
    own = evaluate(cnn_run, small_store.path, tmp_path / "own", bands=False)
    assert own["seen"]["in_train"] == 0 and own["seen"]["records"] == own["n"]
    assert own["seen"]["in_val"] == 0  # test and val are disjoint by sequence
    on_val = evaluate(cnn_run, small_store.path, tmp_path / "val", split="val", bands=False)
    assert on_val["seen"]["in_val"] == on_val["n"] and on_val["seen"]["in_train"] == 0
    # a run made before runs recorded their sequences: evaluated, with a warning
    old = tmp_path / "old-run"
    shutil.copytree(cnn_run, old)
    (old / "seen.npz").unlink()
    (old / "checksums.json").unlink()  # which came later still
    assert main(["evaluate", str(old), str(other.path), "--out", str(tmp_path / "o"),
                 "--no-bands"]) == 0  # fmt: skip
    assert "cannot be checked" in capsys.readouterr().err


def test_long_proteins_are_scored_whole_in_windows_or_truncated(cnn_run):
    model = load_model(cnn_run)
    long = "MKVLAAGIVGLLLAAQPAMA" * 60  # 1,200 residues
    scores = {}
    for mode, handled in (
        ("whole", "whole"), ("windows", "3 windows of 660"), ("truncated", "truncated to 660"),
    ):  # fmt: skip
        model.long = mode
        assert model.handled(1200) == handled and model.handled(600) == "whole"
        scores[mode] = model.all_logits([long.encode()])[0]
    assert np.allclose(scores["truncated"], model.all_logits([long[:660].encode()])[0], atol=1e-5)
    model.long = "whole"
    pieces = [long[a:b].encode() for a, b in ((0, 660), (330, 990), (540, 1200))]
    model.long = "truncated"
    assert np.allclose(scores["windows"], model.all_logits(pieces).mean(0), atol=1e-5)
    assert not np.allclose(scores["whole"], scores["truncated"], atol=1e-4)


@pytest.fixture
def torch_threads():
    """PyTorch's intra-op threads, set by the test and restored after it."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _fasta_of_real_rows(data_path, path, n: int):
    """``n`` real records as FASTA, every 50th made unreadable (an error row inside a part)."""
    rows = [line.rstrip("\n").split("\t") for line in head_lines(data_path, n + 1)[1:]]
    path.write_text(
        "".join(f">{r[0]}\n{r[2] if k % 50 else r[2][:5] + '-'}\n" for k, r in enumerate(rows))
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize("long", ["whole", "windows"])
def test_predict_scores_parts_in_threads_as_one_after_the_other(
    long, cnn_run, data_path, tmp_path, monkeypatch, torch_threads
):
    import threading

    import torch

    ids = _fasta_of_real_rows(data_path, tmp_path / "in.fasta", 700)
    model = load_model(cnn_run, device="cpu")
    model.score_rows = 64  # 11 parts
    model.long = long  # windows: each part's long proteins in pieces, in its own thread
    scored_in, score = [], model.score

    def spy(*args):
        scored_in.append(threading.current_thread().name)
        return score(*args)

    monkeypatch.setattr(model, "score", spy)
    torch_threads(2)  # two parts at once, each on one thread
    both = predict_file(model, tmp_path / "in.fasta", tmp_path / "parallel.tsv")
    assert torch.get_num_threads() == 2  # restored
    assert len(scored_in) == 11 and len(set(scored_in)) == 2
    assert all(name.startswith("ecstream-score") for name in scored_in)
    scored_in.clear()
    torch_threads(1)  # one part after the other, in this thread: the same single-thread sums
    one = predict_file(model, tmp_path / "in.fasta", tmp_path / "serial.tsv")
    assert set(scored_in) == {threading.current_thread().name}
    assert both == {**one, "seconds": both["seconds"], "per_second": both["per_second"]}
    parallel = (tmp_path / "parallel.tsv").read_text()
    assert parallel == (tmp_path / "serial.tsv").read_text()
    rows = [line.split("\t") for line in parallel.splitlines()[1:]]
    assert [r[0] for r in rows] == ids and both["errors"] == 14
    assert all(r[-1] for k, r in enumerate(rows) if k % 50 == 0)  # the errors, in their place


def test_an_error_while_parts_are_scored_in_threads_leaves_no_output(
    cnn_run, data_path, tmp_path, monkeypatch, torch_threads
):
    import torch

    _fasta_of_real_rows(data_path, tmp_path / "in.fasta", 400)
    model = load_model(cnn_run, device="cpu")
    model.score_rows = 32
    calls, score = itertools.count(1), model.score
    started = []

    def fails_on_the_fourth(*args):
        started.append(call := next(calls))  # next() of a count is atomic: one number each
        if call == 4:
            raise RuntimeError("scoring failed")
        return score(*args)

    monkeypatch.setattr(model, "score", fails_on_the_fourth)
    torch_threads(2)
    with pytest.raises(RuntimeError, match="scoring failed"):
        predict_file(model, tmp_path / "in.fasta", tmp_path / "out.tsv")
    assert torch.get_num_threads() == 2
    assert len(started) <= 6  # no part started beyond the two scored ahead of the failed one
    assert not (tmp_path / "out.tsv").exists() and not list(tmp_path.glob(".*"))


def test_parts_at_once_are_capped_and_share_the_threads(cnn_run, torch_threads):
    import torch

    from ecstream.config import SCORING_WORKERS

    model = load_model(cnn_run, device="cpu")
    torch_threads(2 * SCORING_WORKERS)
    with model.parallel_parts() as workers:
        assert workers == SCORING_WORKERS and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2 * SCORING_WORKERS
    torch_threads(1)
    with model.parallel_parts() as workers:
        assert workers == 1 and torch.get_num_threads() == 1


def test_no_output_is_written_inside_a_run_or_a_store(cnn_run, small_store, data_path, tmp_path):
    """predict into a run's model.pt (its own or another run's) or a store's manifest; evaluate,
    train or build into a store's folder: refused before anything is written, and the runs and
    the store still load. A run already kept in a store resumes there."""
    from conftest import head_lines

    from ecstream.atomic import OutputIsInputError
    from ecstream.train import TrainConfig, train

    run, other, store = tmp_path / "run", tmp_path / "other", tmp_path / "store"
    shutil.copytree(cnn_run, run)
    shutil.copytree(cnn_run, other)
    shutil.copytree(small_store.path, store)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    model = load_model(run)
    inside = (run / "model.pt", run / "config.json", other / "model.pt",
              store / "manifest.json", store / "p.tsv")  # fmt: skip
    for out in inside:
        before = out.read_bytes() if out.exists() else None
        with pytest.raises(OutputIsInputError, match=r"lies inside the (run|store)"):
            predict_file(model, fasta, out)
        assert (out.read_bytes() if out.exists() else None) == before
    table = tmp_path / "t.tsv"
    table.write_text("".join(head_lines(data_path, 20)))
    with pytest.raises(OutputIsInputError, match="inside the store"):
        evaluate(run, table, store / "evaluation", bands=False, allow_seen=True)
    with pytest.raises(OutputIsInputError, match="inside the store"):
        train(store, store / "run", TrainConfig(epochs=1, progress=False))
    with pytest.raises(OutputIsInputError, match="inside the store"):
        ecstream.build_store(data_path, store / "sub", max_records=10)
    assert main(["predict", str(run), str(fasta), "--out", str(store / "test" / "x.tsv")]) == 2
    load_model(run).predict(["MKVLAAGIVG"])
    load_model(other).predict(["MKVLAAGIVG"])
    ecstream.open_store(store).check()  # raises if a shard or the manifest were damaged
    assert sorted(p.name for p in store.iterdir()) == sorted(
        p.name for p in small_store.path.iterdir()
    )
    # a run kept inside a store before the check existed is continued in place
    kept = tmp_path / "kept"
    shutil.copytree(small_store.path, kept)
    shutil.copytree(cnn_run, kept / "run")
    config = TrainConfig(epochs=3, batch_size=32, limit_train_batches=10, progress=False)
    assert train(kept, kept / "run", config, resume=True).epochs == 3


def test_prediction_arguments_of_the_python_api_are_checked_naming_them(cnn_run, tmp_path):
    """Refused before any output exists, naming the argument (the API hunt met numpy's and
    torch's messages instead, and a NaN threshold that silently called nothing)."""
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    out = tmp_path / "p.tsv"
    model = load_model(cnn_run, precision=32)  # the number 32 is the precision "32"
    refused = [
        ({"top_k": 0}, ValueError, "--top-k"),
        ({"top_k": 2.5}, ValueError, "--top-k"),
        ({"shard": (0, 0)}, ValueError, "part I"),
        ({"shard": (0.5, 2)}, ValueError, "part I"),
        ({"min_confidence": -0.1}, ValueError, "--min-confidence"),
        ({"min_confidence": float("nan")}, ValueError, "--min-confidence"),
        ({"min_confidence": "0.5"}, ValueError, "--min-confidence"),
    ]
    for options, error, said in refused:
        with pytest.raises(error, match=said):
            predict_file(model, fasta, out, **options)
        assert not out.exists()
    with pytest.raises(TypeError, match="give a loaded model"):
        predict_file(str(cnn_run), fasta, out)
    with pytest.raises(ValueError, match="--min-confidence"):
        model.predict_ec(["MKVLAAGIVG"], min_confidence=5)
    predict_file(model, fasta, out, top_k=np.int64(2), min_confidence=np.float32(0.5))
    assert out.is_file()


def test_a_run_made_of_parts_has_seen_what_they_saw(small_store, tmp_path):
    """A hybrid's parts may have been trained or tuned on another store's splits (one with the
    same training split, another val): what they saw, it has seen (evaluate counts it)."""
    from ecstream.runs import RunError, parts_seen, read_seen, record_seen

    part = tmp_path / "part"
    part.mkdir()
    np.savez(part / "seen.npz", train=np.array([5], np.uint64), val=np.array([1, 2], np.uint64))
    run = tmp_path / "hybrid"
    run.mkdir()
    record_seen(run, small_store, parts=parts_seen((part, tmp_path / "old-part-without-seen")))
    alone = tmp_path / "alone"
    alone.mkdir()
    record_seen(alone, small_store)
    seen, own = read_seen(run), read_seen(alone)
    assert set(seen["val"].tolist()) == set(own["val"].tolist()) | {1, 2}
    assert set(seen["train"].tolist()) == set(own["train"].tolist()) | {5}
    assert (np.diff(seen["val"].astype(np.float64)) > 0).all()  # sorted, distinct
    (part / "seen.npz").write_bytes(b"PK")  # damaged: named at once, with what to do
    with pytest.raises(RunError, match=r"part/seen\.npz: damaged.*train the run again"):
        parts_seen((part,))
