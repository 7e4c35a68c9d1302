"""Beyond one machine: sharded prediction, a constant global batch across process counts, and
training on two "nodes" (two processes on localhost, gloo)."""

from __future__ import annotations

import gzip
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ecstream import build_store
from ecstream.cli import main
from ecstream.predict import predict_file
from ecstream.predictors import load_model
from ecstream.runs import read_metrics
from ecstream.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _fasta(data_path: Path, out: Path, n: int) -> Path:
    """``n`` records of the real data as gzip FASTA, with two that cannot be scored."""
    with gzip.open(data_path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in itertools.islice(fh, 1, n + 1)]
    with gzip.open(out, "wt") as fh:
        for k, (rid, _, seq) in enumerate(rows):
            fh.write(f">{rid} x\n{'MKV-LL' if k == 7 else '' if k == 40 else seq}\n")
    return out


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_sharded_predict_equals_one_machine(cnn_run, data_path, tmp_path, parts):
    source = _fasta(data_path, tmp_path / "in.faa.gz", 101)
    model = load_model(cnn_run)
    predict_file(model, source, tmp_path / "whole.tsv")
    whole = (tmp_path / "whole.tsv").read_text().splitlines()
    joined, sizes = [], []
    for i in range(parts):
        out = tmp_path / f"part-{i}.tsv"
        assert main(["predict", str(cnn_run), str(source), "--out", str(out),
                     "--shard", f"{i}/{parts}"]) == 0  # fmt: skip
        lines = out.read_text().splitlines()
        assert lines[0] == whole[0]  # every part has the header
        joined += lines[1:]
        sizes.append(len(lines) - 1)
    assert joined == whole[1:]
    assert max(sizes) - min(sizes) <= 1  # contiguous blocks of nearly equal size


def test_each_unreadable_line_is_counted_by_exactly_one_part(cnn_run, data_path, tmp_path):
    with gzip.open(data_path, "rt") as fh:
        lines = list(itertools.islice(fh, 0, 41))
    bad = {3, 4, 17, 18, 30, 40}  # before a part's first record, inside, and at the very end
    body = [("only\ttwo\n" if k in bad else line) for k, line in enumerate(lines[1:], 1)]
    source = tmp_path / "in.tsv"
    source.write_text(lines[0] + "".join(body))
    model = load_model(cnn_run)
    whole = predict_file(model, source, tmp_path / "whole.tsv")
    assert whole["unreadable"]["wrong_column_count"]["count"] == len(bad)
    # small chunks put part boundaries on chunk edges (34 records: 2 parts of 17 at chunks of
    # 17; 34 at chunks of 2, 17 or 34 ends a chunk with the last record)
    for parts, chunk_rows in itertools.product((2, 3, 7, 50), (2, 17, 34, 8192)):
        counted = []
        for i in range(parts):
            result = predict_file(model, source, tmp_path / f"p{i}.tsv", shard=(i, parts),
                                  chunk_rows=chunk_rows)  # fmt: skip
            counted.append(result["unreadable"].get("wrong_column_count", {}).get("count", 0))
        assert sum(counted) == len(bad), (parts, chunk_rows, counted)


def test_sharded_predict_refuses_stdin_and_bad_parts(cnn_run, tmp_path):
    with pytest.raises(SystemExit):
        main(["predict", str(cnn_run), "x.faa", "--out", "o.tsv", "--shard", "3/3"])
    assert main(["predict", str(cnn_run), "-", "--out", str(tmp_path / "o.tsv"),
                 "--shard", "0/2"]) == 2  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(store, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ecstream.cli", "train", str(store), "--out", str(out),
        "--accelerator", "cpu", "--epochs", "1", "--quiet", *extra,
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_one_process_of_64_and_two_of_32_train_the_same_weights(small_store, tmp_path):
    """A constant global batch: 1×B and 2×B/2 (Lightning DDP, gloo) step through the same
    global batches, with the loss averaged over each, and end with the same weights."""
    # in float64: the two runs differ only by rounding (the order of the gradient sums), which
    # float32 keeps near 1e-7 per step and Adam amplifies, on this data, to about 3e-5 in 20
    # steps; in float64 the rounding is 1e-15, so any real difference in batches, dropout masks
    # or loss weights shows
    # a whole epoch, its last global batch odd, so that the two processes share it unevenly
    # (their dropout masks must still be the rows of the global batch's mask)
    n = small_store.single_class_records("train")
    size = next(b for b in range(64, 32, -2) if n % b % 2 and n % b > 2)
    # residue substitution and cropping too: each process substitutes (crops) the residues
    # (rows) of its share that one process substitutes (crops) in the whole global batch
    common = ("--batch-size", str(size), "--global-batch", "--precision", "64-true",
              "--substitution", "0.1", "--crop", "150")  # fmt: skip
    runs = {}
    for devices in ("1", "2"):
        runs[devices] = tmp_path / f"d{devices}"
        command = _train(small_store.path, runs[devices], "--devices", devices, *common)
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (torch.load(runs[d] / "model.pt", weights_only=True)["state_dict"]
                for d in ("1", "2"))  # fmt: skip
    for name, a in one.items():
        if a.is_floating_point():
            difference = (a - two[name]).norm() / a.norm().clamp_min(1e-12)
            assert difference <= 1e-10, (name, float(difference))
    # and the epoch's training loss and accuracy are over all rows of both processes
    (whole,), (shared,) = (read_metrics(runs[d]) for d in ("1", "2"))
    for key in ("train_loss", "train_acc"):
        assert float(shared[key]) == pytest.approx(float(whole[key]), abs=2e-6), key


def test_two_nodes_on_localhost_train_one_run(small_store, tmp_path):
    """Two "machines" (torchrun, one process each, gloo on 127.0.0.1): --num-nodes 2."""
    run, port = tmp_path / "two-nodes", _free_port()
    procs = []
    for node in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
            "1", "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port",
            str(port), "-m", "ecstream.cli", *_train(small_store.path, run)[3:],
            "--devices", "1", "--num-nodes", "2", "--batch-size", "32",
            "--limit-train-batches", "4",
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=ENV))  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "MEMBER: 2/2" in outputs[0][1] + outputs[1][1]
    assert (run / "model.pt").is_file()
    assert [int(r["epoch"]) for r in read_metrics(run)] == [0]


class _Crash(Callback):
    """A crash (pre-emption, OOM kill) at a step in the middle of an epoch."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


FAST = {"batch_size": 32, "progress": False, "accelerator": "cpu", "checkpoint_every": 3}


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def test_a_mid_epoch_checkpoint_resumes_to_the_same_weights(small_store, tmp_path):
    """--checkpoint-every: a crash mid-epoch loses at most those steps, and the resumed run
    ends with the weights of an uninterrupted one (CPU), its residue substitutions and label
    smoothing included."""
    regularised = {"substitution": 0.1, "label_smoothing": 0.1, "dropout": 0.5}
    config = TrainConfig(**FAST, **regularised, epochs=2, limit_train_batches=10)
    whole = train(small_store.path, tmp_path / "whole", config)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_store.path, tmp_path / "cut", config, callbacks=[_Crash(1, 7)])
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["StoreData"]["stream"]["step"] == 6  # the checkpoint after step 6 of epoch 1
    resumed = train(small_store.path, tmp_path / "cut", config, resume=True)
    a, b = _weights(whole.run), _weights(resumed.run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the resumed epoch's row counts the steps before the checkpoint too
    for key in ("train_loss", "train_acc", "samples", "val_loss"):
        got, want = (float(r[key]) for r in (resumed.history[1], whole.history[1]))
        assert got == pytest.approx(want, abs=2e-6), key


def test_the_end_of_an_epoch_replaces_the_mid_epoch_checkpoint(small_store, tmp_path):
    """With --checkpoint-every, the checkpoint at an epoch's end is ``last.ckpt`` too (Lightning
    would have named it ``last-v1.ckpt`` beside the step checkpoint): a crash early in the next
    epoch resumes from there, losing none of the finished epoch."""
    config = TrainConfig(**FAST, epochs=2, limit_train_batches=10)
    whole = train(small_store.path, tmp_path / "whole", config)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_store.path, cut, config, callbacks=[_Crash(1, 1)])  # before step 3
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    state = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (0, 10)
    resumed = train(small_store.path, cut, config, resume=True)
    assert [r["samples"] for r in read_metrics(cut)] == [r["samples"] for r in whole.history]
    a, b = _weights(whole.run), _weights(resumed.run)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _CrashInValidation(Callback):
    """A crash (pre-emption) during an epoch's validation."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_crash_in_validation_resumes_into_that_validation(small_store, tmp_path):
    """--checkpoint-every dividing the epoch's steps: no step checkpoint at its last step (the
    epoch's own follows its validation), so a crash in validation resumes from the step
    checkpoint before, replays the last steps, and validates: every epoch's row, and the
    uninterrupted run's weights."""
    config = TrainConfig(**FAST, epochs=2, limit_train_batches=9)  # checkpoint every 3 steps
    whole = train(small_store.path, tmp_path / "whole", config)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_store.path, cut, config, callbacks=[_CrashInValidation(0)])
    state = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["StoreData"]["stream"]["step"] == 6
    train(small_store.path, cut, config, resume=True)
    assert [int(r["epoch"]) for r in read_metrics(cut)] == [0, 1]
    a, b = _weights(whole.run), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_checkpointed_on_one_process_continues_on_two(data_path, tmp_path):
    """Elastic: checkpointed mid-epoch by 1 process, resumed by 2 (gloo), which see exactly the
    records of that epoch not yet seen (their count; the plan tests check which)."""
    small_store = build_store(data_path, tmp_path / "store", max_records=800)
    run = tmp_path / "elastic"
    config = TrainConfig(**{**FAST, "checkpoint_every": 4}, epochs=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(small_store.path, run, config, callbacks=[_Crash(0, 10)])
    stream = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["StoreData"]
    consumed = stream["stream"]["consumed"]
    assert consumed == 8 * 32
    command = _train(small_store.path, run, "--devices", "2", "--batch-size", "32",
                     "--checkpoint-every", "4", "--resume")  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [0]
    records = small_store.single_class_records("train")
    # the 8 steps of the one process and the rest on two: each rank counts its own batches, and
    # shares differ by less than a batch
    assert abs(int(rows[0]["samples"]) - records) < 2 * 32
