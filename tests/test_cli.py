"""The command line: thin, helpful, and clear about errors (exit status 2, no traceback)."""

import json
import os
import shlex

import pytest

from ecstream import demo
from ecstream.cli import main


def test_build_info_train_evaluate_predict(data_path, tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["build", str(data_path), "--out", str(store), "--max-records", "1000"]) == 0
    out = capsys.readouterr().out
    assert "Records per split and EC class" in out and "several classes" in out
    assert main(["info", str(store), "--verify"]) == 0
    assert "every split matches its fingerprint" in capsys.readouterr().err
    assert main(["info", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_read"] == 1000
    args = ["train", str(store), "--out", str(run), "--epochs", "1", "--quiet"]
    assert main([*args, "--limit-train-batches", "4", "--batch-size", "16"]) == 0
    assert "val_acc" in capsys.readouterr().out
    assert (
        main(["evaluate", str(run), str(store), "--out", str(tmp_path / "ev"), "--no-bands"]) == 0
    )
    assert "macro-F1" in capsys.readouterr().out
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKVLAAGIVG\n>b\nMK-V\n")
    assert main(["predict", str(run), str(fasta), "--out", str(tmp_path / "p.tsv")]) == 0
    assert "2 records" in capsys.readouterr().err
    assert len((tmp_path / "p.tsv").read_text().splitlines()) == 3
    # a line that is not a record cannot have a row: it is reported with its place
    table = tmp_path / "q.tsv"
    table.write_text("Entry\tSequence\na\tMKVLAAGIVG\nb\tMKV\textra\nc\tMKKLLPT\n")
    assert main(["predict", str(run), str(table), "--out", str(tmp_path / "t.tsv")]) == 0
    err = capsys.readouterr().err
    assert "could not be read" in err and "q.tsv:3" in err
    assert len((tmp_path / "t.tsv").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit-train-batches", "1.5"], "a fraction must be in (0, 1]"),
        (["--limit-train-batches", "0"], "must be at least 1"),
        (["--batch-size", "-4"], "must be at least 1"),
        (["--model", "knn", "--threads", "0"], "must be at least 1"),
        (["--model", "huge"], "invalid choice"),
    ],
)
def test_train_refuses_bad_numbers_before_it_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "store", "--out", "run", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_limit_train_batches_reads_counts_and_fractions():
    from ecstream.cli import build_parser

    parse = build_parser().parse_args
    for text, value in (("10", 10), ("1.0", 1.0), ("0.25", 0.25)):
        limit = parse(
            ["train", "s", "--out", "r", "--limit-train-batches", text]
        ).limit_train_batches
        assert limit == value and type(limit) is type(value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "missing.tsv", "--out", "x"], "missing.tsv: no such file"),
        (["info", "."], "not an ecstream store"),
        (["predict", ".", "x.fa", "--out", "y.tsv"], "not an ecstream run"),
        (["build", "missing.tsv", "--out", "x", "--val", "0.7", "--test", "0.5"], "under 1"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err.replace("\n", " ") and "Traceback" not in err


def test_demo_without_data_says_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "DATA_NAME", "no-such-file.tsv.gz")
    monkeypatch.setenv("ECSTREAM_DATA", str(tmp_path / "nope.tsv"))
    with pytest.raises(demo.DemoDataMissing, match="Entry, EC number and Sequence") as info:
        demo.find_data()
    assert "ECSTREAM_DATA" in str(info.value) and "rest.uniprot.org" in str(info.value)


def test_demo_finds_the_shared_data_or_the_environment(data_path, monkeypatch):
    assert demo.find_data() == data_path.resolve() or demo.find_data().samefile(data_path)
    monkeypatch.setattr(demo, "DATA_NAME", "no-such-file.tsv.gz")
    monkeypatch.setenv("ECSTREAM_DATA", str(data_path))
    assert demo.find_data() == data_path


@pytest.mark.parametrize("given", [None, "32"])
def test_predict_keeps_onednn_primitive_cache_small_unless_told(
    cnn_run, tmp_path, monkeypatch, given
):
    """Scoring meets a new shape with nearly every pass; a cache of 1,024 primitives held half
    of a full-EC prediction's memory (BENCHMARKS.md). A user's own setting wins."""
    from ecstream.config import SCORING_PRIMITIVE_CACHE

    name = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
    monkeypatch.setenv(name, given or "")  # so that the test's end restores it either way
    if given is None:
        monkeypatch.delenv(name)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    assert main(["predict", str(cnn_run), str(fasta), "--out", str(tmp_path / "p.tsv")]) == 0
    assert os.environ[name] == (given or str(SCORING_PRIMITIVE_CACHE))


def test_evaluate_refuses_a_split_of_a_file(cnn_run, data_path, tmp_path, capsys):
    """A file has no splits: --split with one is an error, not a setting silently ignored."""
    from conftest import head_lines

    table = tmp_path / "t.tsv"
    table.write_text("".join(head_lines(data_path, 20)))
    out = tmp_path / "e"
    assert main(["evaluate", str(cnn_run), str(table), "--out", str(out), "--split", "val",
                 "--no-bands"]) == 2  # fmt: skip
    said = " ".join(capsys.readouterr().err.split())
    assert "--split val:" in said and "is a file, not a store" in said and not out.exists()
    assert main(["evaluate", str(cnn_run), str(table), "--out", str(out), "--no-bands",
                 "--allow-seen"]) == 0  # fmt: skip
    assert (out / "metrics.json").is_file()


def test_predict_fails_when_no_record_could_be_scored(cnn_run, data_path, tmp_path, capsys):
    """The rows are written, each with its error, and the exit status is 1."""
    from conftest import head_lines

    table = tmp_path / "t.tsv"
    table.write_text("".join(head_lines(data_path, 20)))
    out = tmp_path / "o.tsv"
    # the EC numbers read as sequences: digits and dots are no residues
    assert main(["predict", str(cnn_run), str(table), "--out", str(out),
                 "--sequence-column", "EC number"]) == 1  # fmt: skip
    said = " ".join(capsys.readouterr().err.split())  # the summary goes to stderr
    assert "(0 scored, 19 with an error)" in said and "error: no record could be scored" in said
    assert len(out.read_text().splitlines()) == 1 + 19
    # a FASTA has no columns: naming one is said, not silently ignored
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    assert main(["predict", str(cnn_run), str(fasta), "--out", str(out), "--id-column", "x"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "warning: a FASTA has no columns, so --id-column went unused" in said
    assert main(["predict", str(cnn_run), str(table), "--out", str(out)]) == 0
    assert "no record could be scored" not in capsys.readouterr().err


def test_the_resume_command_restates_every_setting_as_train_parses_it():
    """``resume_command`` prints a line ``ecstream train`` takes back to the same settings: a
    setting it emitted without a flag (``--weight-decay`` had none) failed the user's resume."""
    from dataclasses import asdict, fields

    from ecstream.cli import _train_config, build_parser
    from ecstream.config import TrainConfig
    from ecstream.train import _WHERE_IT_RUNS, resume_command

    changed = {
        "model": "deep", "target": "ec", "multi_class": "first", "patience": 7, "batch_size": 16,
        "max_length": 300, "lr": 0.005, "weight_decay": 0.0, "bucket": False, "seed": 3,
        "global_batch": True, "drop_last": True, "shuffle_block": 1024, "precision": "bf16-mixed",
        "compile": True, "limit_train_batches": 0.25, "class_weights": False, "dropout": 0.3,
        "label_smoothing": 0.1, "substitution": 0.05, "crop": 256, "epochs": 9,
        "checkpoint_every": 50, "max_time": "00:01:00:00",
    }  # fmt: skip
    # every setting a resume restates is changed here (class_weights: refused with ec)
    assert {f.name for f in fields(TrainConfig)} - set(_WHERE_IT_RUNS) == set(changed)
    made = TrainConfig(**changed)
    line = resume_command("store dir", "run", asdict(made)).split()
    args = build_parser().parse_args(shlex.split(" ".join(line[1:])))
    assert args.resume and args.store == "store dir" and args.out == "run"
    again = asdict(_train_config(args))
    assert {k: again[k] for k in changed} == {k: asdict(made)[k] for k in changed}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "knn", "--epochs", "3"], "--epochs: CNN training options; a knn run"),
        (["--model", "knn", "--resume"], "--resume: CNN training options"),
        (["--model", "knn", "--target", "ec", "--class-weights"],
         "--target, --class-weights: CNN training options"),
        (["--model", "hybrid", "--cnn", "a", "--knn", "b", "--lr", "0.1", "--crop", "9"],
         "--lr, --crop: CNN training options; a hybrid run"),
        (["--model", "hybrid", "--cnn", "a", "--knn", "b", "--threads", "2"],
         "--threads: options of the kNN run"),
        (["--threads", "2", "--no-profile-fallback"],
         "--threads, --no-profile-fallback: options of --model knn"),
    ],
)  # fmt: skip
def test_train_refuses_flags_its_model_does_not_use(argv, message, capsys, tmp_path):
    assert main(["train", str(tmp_path / "no store"), "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "r").exists()


def test_weight_decay_is_a_finite_number_of_at_least_zero(capsys):
    from ecstream.cli import build_parser

    assert build_parser().parse_args(["train", "s", "--out", "r"]).weight_decay == 0.01
    for bad in ("-0.1", "nan", "inf"):
        with pytest.raises(SystemExit):
            main(["train", "s", "--out", "r", "--weight-decay", bad])
        assert "must be a finite number of at least 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--identity", "0.3"], "--identity: settings of --split cluster (this split: random)"),
        (["--coverage", "0.5", "--identity", "0.3", "--split", "column:Split"],
         "--identity and --coverage: settings of --split cluster"),
        (["--threads", "2"], "--threads sets MMseqs2's: it needs --split cluster or --leakage"),
    ],
)  # fmt: skip
def test_build_refuses_settings_its_split_does_not_use(argv, message, data_path, tmp_path, capsys):
    assert main(["build", str(data_path), "--out", str(tmp_path / "s"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_build_into_a_file_says_force_would_not_replace_it(data_path, tmp_path, capsys):
    (tmp_path / "table.tsv").write_text("kept")
    assert main(["build", str(data_path), "--out", str(tmp_path / "table.tsv")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "--force" not in err
    assert (tmp_path / "table.tsv").read_text() == "kept"


def test_evaluate_refuses_column_names_for_a_store(cnn_run, small_store, tmp_path, capsys):
    argv = ["evaluate", str(cnn_run), str(small_store.path), "--out", str(tmp_path / "e")]
    assert main([*argv, "--ec-column", "Foo"]) == 2
    assert "name a file's columns" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_the_demo_refuses_a_run_folder_not_its_own_before_building(data_path, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not from a previous demo"):
        demo.run_demo(str(data_path), tmp_path)
    assert not (tmp_path / "store").exists() and (tmp_path / "run" / "notes.txt").exists()


def test_python_dash_m_ecstream_is_the_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ecstream", "--version"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("ecstream ")


def test_the_epoch_table_rounds_as_the_best_loss_line(capsys):
    """metrics.csv keeps six decimals; the table showed the first six characters (1.7648 of
    1.764853, beside 'best val_loss 1.7649')."""
    from ecstream.cli import _print_history

    row = {"epoch": "0", "train_loss": "1.912345", "val_loss": "1.764853", "val_acc": "0.299960",
           "val_macro_f1": "", "lr": "0.002", "samples_per_s": "512"}  # fmt: skip
    _print_history([row])
    shown = capsys.readouterr().out
    assert "1.7649" in shown and "1.9123" in shown and "0.3000" in shown and "1.7648" not in shown
