"""Training end to end on real records: streamed equals in-memory, resume equals uninterrupted."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ecstream.runs import RunError, read_metrics
from ecstream.train import SamplesProgressBar, TrainConfig, train

# Bit-identical weights are promised on CPU only: CUDA's convolution backward is not
# deterministic (on an H200 the two identity tests below differ in the last bits on "auto").
FAST = {
    "epochs": 1,
    "batch_size": 32,
    "limit_train_batches": 12,
    "progress": False,
    "accelerator": "cpu",
}


def _weights(run):
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


class Initial(Callback):
    """Keeps a copy of the weights as training starts (after seeding and initialisation)."""

    def on_train_start(self, trainer, module):
        self.weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_streamed_and_in_memory_training_give_identical_weights(small_store, tmp_path):
    initial = Initial()
    config = TrainConfig(**FAST, in_memory=False)
    streamed = train(small_store.path, tmp_path / "mmap", config, callbacks=[initial])
    in_ram = train(small_store.path, tmp_path / "ram", TrainConfig(**FAST, in_memory=True))
    a, b = _weights(streamed.run), _weights(in_ram.run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert streamed.history[0]["val_loss"] == in_ram.history[0]["val_loss"]
    # and training moved every weight of this run away from where it started
    assert a.keys() == initial.weights.keys()
    assert all(not torch.equal(a[k], initial.weights[k]) for k in a)


class Crash(Callback):
    """Simulates a crash (power cut, OOM kill) in the middle of an epoch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_reaches_the_same_result(small_store, tmp_path):
    config = {**FAST, "epochs": 3, "limit_train_batches": 6}
    whole = train(small_store.path, tmp_path / "whole", TrainConfig(**config))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_store.path, tmp_path / "cut", TrainConfig(**config), callbacks=[Crash(1, 3)])
    assert len(read_metrics(tmp_path / "cut")) == 1  # only epoch 0 finished
    resumed = train(small_store.path, tmp_path / "cut", TrainConfig(**config), resume=True)
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1")
    assert [{k: r[k] for k in keys} for r in resumed.history] == [
        {k: r[k] for k in keys} for r in whole.history
    ]
    a, b = _weights(whole.run), _weights(resumed.run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_records_what_was_done(small_store, tmp_path):
    result = train(small_store.path, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 2}))
    run = result.run
    config = json.loads((run / "config.json").read_text())
    assert config["store"]["fingerprints"]["train"] == small_store.fingerprint("train")
    assert config["train"]["batch_size"] == 32 and config["model"]["channels"] > 0
    assert {"torch", "lightning", "numpy", "pyarrow", "ecstream"} <= set(config["versions"])
    history = read_metrics(run)
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["samples"]) == 12 * 32 for r in history)
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(run / "checkpoints" / name, weights_only=True)  # no pickle needed
        assert "state_dict" in checkpoint
    assert not list(run.rglob("*.tmp"))


class StepRecord(Callback):
    """Each training step's loss and batch size, and its top-1 hits by the network in eval mode
    (the same function as in training when dropout is 0 and the weights stay put)."""

    def __init__(self):
        self.losses, self.rows, self.hits = [], [], 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.rows.append(len(batch.y))
        module.model.eval()
        with torch.no_grad():
            self.hits += int((module.model(batch.x).argmax(1) == batch.y).sum())
        module.model.train()


def test_the_epochs_training_loss_and_accuracy_are_over_all_its_rows(small_store, tmp_path):
    """train_loss and train_acc, added up on the device and logged once an epoch, are the mean
    loss and top-1 accuracy over every row of the epoch (steps weighted by their rows). The
    weights barely move (lr 1e-30) and dropout is 0, so the steps' hits can be recounted."""
    record = StepRecord()
    config = TrainConfig(**{**FAST, "limit_train_batches": 5, "lr": 1e-30, "dropout": 0.0})
    train(small_store.path, tmp_path / "run", config, callbacks=[record])
    (row,) = read_metrics(tmp_path / "run")
    rows = sum(record.rows)
    loss = sum(v * n for v, n in zip(record.losses, record.rows, strict=True)) / rows
    assert float(row["train_loss"]) == pytest.approx(loss, abs=2e-6)
    assert float(row["train_acc"]) == pytest.approx(record.hits / rows, abs=2e-6)
    assert 0 < record.hits < rows  # an accuracy that tells right from wrong


def test_refuses_to_overwrite_a_run_or_resume_with_other_settings(small_store, tmp_path):
    train(small_store.path, tmp_path / "run", TrainConfig(**FAST))
    with pytest.raises(RunError, match="already holds a run"):
        train(small_store.path, tmp_path / "run", TrainConfig(**FAST))
    with pytest.raises(RunError, match="train settings differ"):
        train(small_store.path, tmp_path / "run", TrainConfig(**{**FAST, "lr": 0.1}), resume=True)
    with pytest.raises(RunError, match="nothing to resume"):
        train(small_store.path, tmp_path / "empty", TrainConfig(**FAST), resume=True)


def test_a_run_that_diverged_is_not_saved_and_its_weights_are_refused(
    small_store, cnn_run, tmp_path
):
    from ecstream.predictors import load_model
    from ecstream.train import TrainingDiverged

    run = tmp_path / "run"
    config = TrainConfig(**{**FAST, "limit_train_batches": 3, "lr": 1e30})
    with pytest.raises(TrainingDiverged, match="diverged: val_loss was not a finite number"):
        train(small_store.path, run, config)
    assert not (run / "model.pt").exists()  # nothing a predictor could load
    assert [row["val_loss"] for row in read_metrics(run)] == ["nan"]
    # the same --out, and through a link to it: a run folder is written into, never renamed
    link = tmp_path / "link"
    link.symlink_to(run)
    assert train(small_store.path, link, TrainConfig(**FAST)).epochs == 1
    assert link.is_symlink() and (run / "model.pt").is_file()

    # a model.pt with weights that are not finite (such a run, saved by older code) is refused
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in cnn_run.iterdir():  # without checksums, which would name the change first
        if f.is_file() and f.name != "checksums.json":
            (copy / f.name).write_bytes(f.read_bytes())
    payload = torch.load(copy / "model.pt", weights_only=True)
    payload["state_dict"]["head.bias"][0] = float("nan")
    torch.save(payload, copy / "model.pt")
    with pytest.raises(RunError, match=r"model\.pt: weights that are not finite"):
        load_model(copy)


@pytest.mark.parametrize(("setting", "value"), [("accelerator", "bogus"), ("precision", "bogus")])
def test_settings_lightning_refuses_are_one_error_and_the_run_can_start_again(
    setting, value, small_store, tmp_path
):
    run = tmp_path / "run"
    with pytest.raises(RunError, match=f"--{setting} {value}"):
        train(small_store.path, run, TrainConfig(**{**FAST, setting: value}))
    assert not (run / "model.pt").exists()
    assert train(small_store.path, run, TrainConfig(**FAST)).epochs == 1  # leftovers cleared


def test_two_ranks_on_cpu_share_each_epoch(small_store, tmp_path):
    """Lightning DDP (gloo, 2 CPU processes) through the CLI: one run, one metrics row per epoch."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "ecstream.cli", "train", str(small_store.path), "--out", str(run),
        "--accelerator", "cpu", "--devices", "2", "--epochs", "2", "--batch-size", "32",
        "--limit-train-batches", "4", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MEMBER: 2/2" in done.stderr  # a second process really joined
    assert done.stdout.count("Epochs") == 1 and done.stderr.count("run written to") == 1
    history = read_metrics(run)
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert (run / "model.pt").is_file()


def test_class_weights_reach_the_loss(small_store, tmp_path, monkeypatch):
    """The loss of every training step is weighted by 1/frequency of the training classes."""
    from torch.nn import functional as F

    seen = []
    real = F.cross_entropy

    def spy(logits, target, weight=None, **kwargs):
        seen.append(None if weight is None else weight.detach().clone())
        return real(logits, target, weight=weight, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    info = small_store.manifest["splits"]["train"]
    counts = torch.tensor(list(info["per_class_single_class"].values()), dtype=torch.float32)
    expected = counts.sum() / (len(counts) * counts)  # weighted class counts are all equal
    result = train(small_store.path, tmp_path / "w", TrainConfig(**FAST, class_weights=True))
    assert json.loads((result.run / "config.json").read_text())["train"]["class_weights"]
    assert len(seen) >= FAST["limit_train_batches"]
    assert all(w is not None and torch.allclose(w, expected, rtol=1e-5) for w in seen)
    seen.clear()
    train(small_store.path, tmp_path / "plain", TrainConfig(**FAST))
    assert seen and all(w is None for w in seen)


#: TrainConfig's fields in the first release (commit f27d3c8): a run made then has only these
FIRST_RELEASE_SETTINGS = {
    "model", "epochs", "patience", "batch_size", "max_length", "lr", "weight_decay", "bucket",
    "in_memory", "seed", "accelerator", "devices", "precision", "num_workers",
    "limit_train_batches", "class_weights", "max_time", "progress",
}  # fmt: skip


def test_every_setting_added_since_the_first_release_resumes_older_runs():
    """A setting added later must say what runs made before it had (ADDED_SETTINGS), or be free
    to change on resume; else `train --resume` refuses every older run ("settings differ").
    --target and --multi-class are exempt: a run made before them has a model of another
    shape, which the model settings refuse anyway."""
    from dataclasses import fields

    from ecstream.train import ADDED_SETTINGS, FREE_ON_RESUME

    known = FIRST_RELEASE_SETTINGS | set(ADDED_SETTINGS) | set(FREE_ON_RESUME)
    assert {f.name for f in fields(TrainConfig)} - known == {"target", "multi_class"}
    defaults = TrainConfig()
    for name, value in ADDED_SETTINGS.items():
        assert getattr(defaults, name) == value, name  # what a run without the option had


def test_regularisers_reach_training_only_and_a_run_records_them(
    small_store, tmp_path, monkeypatch
):
    """--dropout, --label-smoothing and --substitution: in the model and the training loss, not
    in validation; recorded, so that a resume with other values is refused, while a run made
    before they existed resumes as it was."""
    from torch.nn import functional as F

    from ecstream import train as training

    smoothing, changed = [], []
    real_loss, real_substitute = F.cross_entropy, training.substitute

    def loss_spy(logits, target, weight=None, label_smoothing=0.0, **kwargs):
        smoothing.append(label_smoothing)
        return real_loss(logits, target, weight=weight, label_smoothing=label_smoothing, **kwargs)

    def substitute_spy(tokens, rate, key, width, share=None):
        out = real_substitute(tokens, rate, key, width, share)
        changed.append(float((out != tokens).float().sum() / (tokens != 0).sum()))
        return out

    monkeypatch.setattr(F, "cross_entropy", loss_spy)
    monkeypatch.setattr(training, "substitute", substitute_spy)
    regularised = {"dropout": 0.5, "label_smoothing": 0.1, "substitution": 0.2}
    run = train(small_store.path, tmp_path / "r", TrainConfig(**FAST, **regularised)).run
    steps = FAST["limit_train_batches"]
    assert smoothing[:steps] == [0.1] * steps and set(smoothing[steps:]) == {0.0}  # val plain
    assert len(changed) == steps and all(0.15 < c < 0.25 for c in changed)
    assert torch.load(run / "model.pt", weights_only=True)["model"]["dropout"] == 0.5
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved["train"][k] for k in regularised} == regularised
    with pytest.raises(RunError, match="train settings differ"):
        other = {**regularised, "substitution": 0.05}
        train(small_store.path, run, TrainConfig(**FAST, **other), resume=True)
    # a run of an older ecstream: no such keys in its config (nor those of the other options
    # added since the first release); it had their defaults
    from ecstream.train import ADDED_SETTINGS

    plain = train(small_store.path, tmp_path / "p", TrainConfig(**FAST)).run
    saved = json.loads((plain / "config.json").read_text())
    assert set(regularised) <= set(ADDED_SETTINGS)
    for key in ADDED_SETTINGS:
        del saved["train"][key]
    (plain / "config.json").write_text(json.dumps(saved))
    (plain / "checksums.json").unlink()  # nor checksums
    train(small_store.path, plain, TrainConfig(**{**FAST, "epochs": 2}), resume=True)
    assert [int(r["epoch"]) for r in read_metrics(plain)] == [0, 1]


def test_a_compiled_run_saves_plain_weights_and_resumes_compiled(small_store, tmp_path):
    """``--compile`` keeps the parameters' names in checkpoints and ``model.pt`` (no
    ``_orig_mod``), so predict reads them; a resume must compile too (compiled dropout draws
    other masks, so switching would not reach an uninterrupted run's weights), while a run
    made before the option existed resumes as a plain one."""
    from torch._dynamo.utils import counters

    from ecstream.model import ECClassifier, preset
    from ecstream.predictors.cnn import read_weights

    torch._dynamo.reset()
    counters.clear()
    try:
        run = train(small_store.path, tmp_path / "c", TrainConfig(**FAST, compile=True)).run
        assert counters["stats"]["unique_graphs"] > 0
    finally:
        torch._dynamo.reset()
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    plain = ECClassifier(preset("small", (7,))).state_dict()
    assert _weights(run).keys() == plain.keys()
    assert read_weights(run / "model.pt", (7,)) is not None
    with pytest.raises(RunError, match="train settings differ"):
        train(small_store.path, run, TrainConfig(**{**FAST, "epochs": 2}), resume=True)
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["compile"]  # as an older ecstream wrote it: plain, without checksums
    (run / "config.json").write_text(json.dumps(saved))
    (run / "checksums.json").unlink()
    train(small_store.path, run, TrainConfig(**{**FAST, "epochs": 2}), resume=True)
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0, 1]


@pytest.mark.parametrize(
    "setting, value",
    [
        ("epochs", -1), ("epochs", 0), ("epochs", 2.5), ("patience", -1), ("batch_size", 0),
        ("seed", -1), ("seed", None), ("limit_train_batches", 0), ("limit_train_batches", -1),
        ("limit_train_batches", 1.5), ("lr", 0.0), ("lr", float("nan")), ("max_time", "bogus"),
        ("lr", True), ("seed", 2**32),
    ],
)  # fmt: skip
def test_settings_that_cannot_train_are_refused_naming_them(setting, value):
    """Checked when the config is made (the Python API's path too), not left to Lightning,
    which trained on with epochs -1, stopped at an assertion with 2.5 and blamed --max-time
    for a limit of 0 batches."""
    flag = "--" + setting.replace("_", "-")
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{setting: value})
    # numpy's numbers are numbers, stored as Python's (config.json is JSON)
    config = TrainConfig(epochs=np.int64(2), lr=np.float32(1e-3), limit_train_batches=np.int64(5))
    assert json.loads(json.dumps({k: getattr(config, k) for k in ("epochs", "lr")}))
    assert type(config.limit_train_batches) is int and type(config.lr) is float


def test_drop_last_with_a_batch_larger_than_the_split_is_refused(small_store, tmp_path):
    config = TrainConfig(**{**FAST, "batch_size": 5000}, drop_last=True)
    with pytest.raises(RunError, match="--drop-last with --batch-size 5000 leaves no training"):
        train(small_store.path, tmp_path / "r", config)


def test_a_validation_split_of_training_sequences_is_warned_about(data_path, tmp_path):
    """A column split may put one sequence in train and val (written otherwise: lower case, a
    stop '*'); a run tuned on such a val is optimistic and says so, as evaluate would refuse
    it. An honest split trains without the warning."""
    import warnings

    import pandas as pd

    from ecstream.build import build_store
    from ecstream.runs import ValidationInTrainWarning

    rows = pd.read_csv(data_path, sep="\t", nrows=400)
    rows["Set"] = ["train"] * 300 + ["val"] * 60 + ["test"] * 40
    copies = rows.iloc[:20].assign(Set="val")  # 20 training proteins again, as val
    copies["Sequence"] = copies["Sequence"].str.lower() + "*"
    leaky = build_store(pd.concat([rows, copies]), tmp_path / "leaky", split="column:Set")
    honest = build_store(rows, tmp_path / "honest", split="column:Set")
    with pytest.warns(ValidationInTrainWarning, match=r"20 of the \d+ distinct validation") as w:
        train(leaky.path, tmp_path / "a", TrainConfig(**FAST))
    assert [x.filename for x in w if x.category is ValidationInTrainWarning] == [str(leaky.path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationInTrainWarning)
        train(honest.path, tmp_path / "b", TrainConfig(**FAST))


def test_a_refused_resume_names_what_differs_and_the_command_that_continues(
    small_store, tmp_path, capsys
):
    """A resume must restate the run's settings: the refusal names each that differs, with both
    values, and prints the command that continues the run, which then does (RAM or disk may
    change on resume: their batches are the same)."""
    import shlex

    from ecstream.cli import main

    run = tmp_path / "run"
    made = ["--batch-size", "32", "--max-length", "300", "--limit-train-batches", "4"]
    assert main(["train", str(small_store.path), "--out", str(run), *made, "--epochs", "1",
                 "--accelerator", "cpu", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", str(small_store.path), "--out", str(run), "--resume", "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "batch_size 32 (this command: 64)" in err and "max_length 300 (this command: 660)" in err
    hint = err.split("continue it with: ")[1]
    assert "--batch-size 32" in hint and "--max-length 300" in hint and "--epochs 1" in hint
    assert "--accelerator" not in hint  # where it runs is the resuming machine's choice
    command = shlex.split(hint)[1:]  # after "ecstream"
    assert main([*command, "--epochs", "2", "--accelerator", "cpu", "--quiet", "--in-memory"]) == 0
    assert len(read_metrics(run)) == 2


def test_a_run_stopped_between_its_weights_and_its_calibration_is_never_used(
    small_store, tmp_path, monkeypatch
):
    """model.pt, calibration.json and checksums.json are written one after another: a run
    stopped in between (here, as it calibrates) carries a training mark, which every use
    refuses, until a resume finishes it."""
    from ecstream import train as training
    from ecstream.predictors import load_model

    run = tmp_path / "run"
    train(small_store.path, run, TrainConfig(**FAST))
    load_model(run)  # a finished run is used
    calibrate = training.calibrate_cnn

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill at that moment leaves the files

    monkeypatch.setattr(training, "calibrate_cnn", killed)
    with pytest.raises(KeyboardInterrupt):
        train(small_store.path, run, TrainConfig(**{**FAST, "epochs": 2}), resume=True)
    assert (run / "model.pt").is_file()  # the new weights, beside the old calibration
    with pytest.raises(RunError, match="its training has not finished"):
        load_model(run)
    monkeypatch.setattr(training, "calibrate_cnn", calibrate)
    train(small_store.path, run, TrainConfig(**{**FAST, "epochs": 2}), resume=True)
    load_model(run)


def test_a_fraction_of_batches_too_small_for_one_is_a_refusal_not_an_internal_error(
    small_store, tmp_path
):
    config = TrainConfig(**{**FAST, "limit_train_batches": 1e-4})
    with pytest.raises(RunError, match="Lightning refused these settings"):
        train(small_store.path, tmp_path / "r", config)


def test_max_time_is_this_commands_time_so_a_resume_trains_on(small_store, tmp_path):
    """Lightning's timer counts the run's time so far: a resume with the budget a run stopped at
    trained nothing and said it had finished."""
    config = {**FAST, "epochs": 1000, "patience": 1000, "limit_train_batches": 2,
              "max_time": "00:00:00:04"}  # fmt: skip
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"

    def steps() -> int:
        return torch.load(last, map_location="cpu", weights_only=False)["global_step"]

    train(small_store.path, tmp_path / "r", TrainConfig(**config))
    before = steps()
    assert 0 < len(read_metrics(tmp_path / "r")) < 1000
    train(small_store.path, tmp_path / "r", TrainConfig(**config), resume=True)
    assert steps() > before  # the resume trained (a row count can stay: a cut epoch is redone)
    # how much it trained depends on the machine; what it is given does not: no time so far
    from ecstream.train import InvocationTimer

    timer = InvocationTimer("00:00:00:04")
    timer.load_state_dict({"time_elapsed": {"train": 100.0}})  # as a checkpoint restores it
    assert timer.time_elapsed("train") == 0


def test_a_moved_run_keeps_its_best_checkpoint_when_resumed(tmp_path):
    """Lightning forgets the best score of a checkpoint saved in another folder, so the next
    epoch replaced best.ckpt whatever its loss; the paths are moved with the run instead."""
    import torch as th

    from ecstream.train import RunCheckpoint

    old, new = tmp_path / "before" / "checkpoints", tmp_path / "after" / "checkpoints"
    saved = RunCheckpoint(dirpath=old, filename="best", monitor="val_loss")
    saved.best_model_score, saved.best_model_path = th.tensor(0.5), str(old / "best.ckpt")
    saved.best_k_models = {str(old / "best.ckpt"): th.tensor(0.5)}
    moved = RunCheckpoint(dirpath=new, filename="best", monitor="val_loss")
    moved.load_state_dict(saved.state_dict())
    assert moved.best_model_score == 0.5 and moved.best_model_path == str(new / "best.ckpt")
    assert list(moved.best_k_models) == [str(new / "best.ckpt")]


def test_a_failure_after_a_checkpoint_says_how_to_continue(
    small_store, tmp_path, capsys, monkeypatch
):
    """The resume command is a note on the error, which the one-line message now includes (it
    was shown only with --debug)."""
    import errno

    from ecstream import train as training
    from ecstream.cli import main

    step = training.ECModule.training_step

    def full_disk_in_epoch_1(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x"))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(training.ECModule, "training_step", full_disk_in_epoch_1)
    args = [
        "train",
        str(small_store.path),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--limit-train-batches",
        "3",
        "--quiet",
        "--accelerator",
        "cpu",
    ]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no space left" in err.lower() and "the last checkpoint is intact" in err
    assert "--batch-size 32 --limit-train-batches 3 --resume" in err


def test_last_ckpt_is_the_last_epoch_even_when_the_loss_did_not_improve(small_store, tmp_path):
    """Lightning 2.6 writes last.ckpt only when val_loss improved: a resume then redid every
    epoch since. Here val_loss is made to rise after epoch 0, and last.ckpt still follows."""

    class Worse(Callback):  # Lightning runs checkpoint callbacks last: this comes first
        def on_validation_end(self, trainer, module):
            trainer.callback_metrics["val_loss"] = torch.tensor(float(trainer.current_epoch))

    run = tmp_path / "run"
    train(small_store.path, run, TrainConfig(**{**FAST, "epochs": 3, "limit_train_batches": 2}),
          callbacks=[Worse()])  # fmt: skip
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert best["epoch"] == 0  # the best stays where the loss was lowest


class _EpochTotals(Callback):
    """At each epoch's end: the progress bar's total and the records the epoch trained on."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, module) -> None:
        (bar,) = [c for c in trainer.callbacks if isinstance(c, SamplesProgressBar)]
        self.seen.append((bar.epoch_samples(trainer), module.samples_seen))


@pytest.mark.parametrize(
    "settings",
    [{"limit_train_batches": 3}, {"limit_train_batches": 0.05}, {"drop_last": True}, {}],
)
def test_the_progress_total_is_what_the_epoch_trains_on(small_store, tmp_path, settings):
    """The bar's ``samples seen/total`` ends at its total, also where --limit-train-batches and
    --drop-last leave records out (its total was the whole split)."""
    totals = _EpochTotals()
    config = TrainConfig(epochs=1, batch_size=64, progress=True, **settings)
    train(small_store.path, tmp_path / "run", config, callbacks=[totals])
    ((total, seen),) = totals.seen
    assert total == seen and seen > 0
    whole = small_store.single_class_records("train")
    assert (seen == whole) == (not settings)  # each setting trains on fewer than the split
