"""Training: a LightningModule says *what* is trained, Lightning's Trainer owns *how*.

``train(store, out, TrainConfig(...))`` writes a run directory::

    RUN/config.json          exact config, store fingerprints, label policy, library versions
    RUN/metrics.csv          one row per epoch (losses, accuracy, macro-F1, lr, samples/s)
    RUN/checkpoints/         last.ckpt and best.ckpt (atomic; loaded with weights_only=True)
    RUN/model.pt             the best weights and the model config (what predict/evaluate load)
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import logging
import math
import os
import shlex
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from torch.nn import functional as F

from .adapters.torch import loader
from .atomic import atomic_open, claim, read_json, write_bytes, write_json
from .augment import crop, substitute
from .batches import Batches
from .config import TrainConfig
from .hashing import LineDigest, hash64
from .labels import ECVocabulary
from .model import ECClassifier, ModelConfig, compile_network, preset
from .runs import (
    CHECKSUMS,
    RUN_FORMAT,
    SEEN,
    TARGETS,
    RunError,
    base_config,
    check_archive,
    check_outside_runs_and_stores,
    mark_training,
    read_metrics,
    record_seen,
    seal,
    unique_hashes,
    verify,
)
from .store import Store, open_store
from .tuning import calibrate_cnn

# --- the LightningModule ------------------------------------------------------------------

#: a checkpoint's entry for the epoch's training sums so far (ECModule.carried)
EPOCH_SUMS = "ecstream_epoch_sums"


class ECModule(L.LightningModule):
    """Training of :class:`ECClassifier`: the seven classes (cross-entropy, accuracy, macro-F1)
    or, given a vocabulary, all four EC levels at once (:func:`level_loss`)."""

    def __init__(
        self,
        model_config: ModelConfig,
        lr: float,
        weight_decay: float,
        class_weights: torch.Tensor | None = None,
        seed: int = 0,
        vocab: ECVocabulary | None = None,
        global_batch: bool = False,
        label_smoothing: float = 0.0,
        substitution: float = 0.0,
        crop: int = 0,
        max_length: int = TrainConfig.max_length,
        compile: bool = False,
    ):
        super().__init__()
        self.model = ECClassifier(model_config)
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        # training only: validation loss (early stopping, the best checkpoint) stays plain
        self.label_smoothing, self.substitution = label_smoothing, substitution
        self.crop = crop
        self.max_length = max_length  # the widest batch: substitution draws at this width
        self.vocab = vocab
        self.register_buffer("class_weights", class_weights, persistent=False)
        c = model_config.heads[0]
        # the epoch's summed training loss × rows and top-1 hits, added up on the device every
        # step and logged once an epoch: a torchmetrics update checks its input (a wait for the
        # GPU every step) and each self.log costs Lightning host time (BENCHMARKS.md, GPU).
        # Not a buffer: DDP would overwrite it with rank 0's every step, and a half-precision
        # run would convert it. ``carried``: (epoch, [loss × rows, hits, rows] of all ranks)
        # before the checkpoint a run resumed mid-epoch began from.
        self.seen, self.train_sums = 0, None
        self.carried: tuple[int, list[float]] | None = None
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=c)
        self.val_f1 = torchmetrics.F1Score(task="multiclass", num_classes=c, average="macro")
        self.val_loss = torchmetrics.MeanMetric()
        # full EC: how often the top prediction of level 1 and of the deepest level is true
        self.val_hits = torchmetrics.MeanMetric()
        self.val_hits_ec = torchmetrics.MeanMetric()
        self.global_batch = global_batch
        if global_batch:  # the same sample gets the same mask on any number of processes
            self.model.dropout = GlobalDropout(model_config.dropout)
        if compile:  # in place: parameter names, checkpoints and model.pt stay as they are
            compile_network(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_start(self) -> None:
        # a checkpoint's sums continue the epoch it was written in, and only that one
        if self.carried is not None and self.carried[0] != self.trainer.current_epoch:
            self.carried = None

    def on_train_epoch_start(self) -> None:
        self.seen, self.train_sums, self.carried = 0, None, None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank writes a checkpoint's contents (rank 0 the file): a collective is safe
        sums = self._epoch_sums().tolist()
        checkpoint[EPOCH_SUMS] = {"epoch": self.trainer.current_epoch, "sums": sums}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if saved := checkpoint.get(EPOCH_SUMS):  # older checkpoints have none
            self.carried = (int(saved["epoch"]), [float(v) for v in saved["sums"]])

    def _epoch_sums(self) -> torch.Tensor:
        """[loss × rows, hits, rows] of this epoch's training so far, all ranks (a collective
        under DDP), those before a mid-epoch resume included."""
        mine = self.train_sums
        if mine is None:  # no step of this epoch here (other ranks may have had some)
            mine = torch.zeros(2, dtype=_sums_dtype(self.device), device=self.device)
        sums = self.trainer.strategy.reduce(
            torch.cat([mine, mine.new_tensor([self.seen])]), reduce_op="sum"
        )
        return sums if self.carried is None else sums + sums.new_tensor(self.carried[1])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout draws from a generator seeded per step: a run resumed mid-epoch repeats it
        torch.manual_seed(self._step_key())

    @property
    def samples_seen(self) -> int:
        """Training records of this epoch so far, all ranks (ranks' shares differ by < 1 batch),
        those before a mid-epoch resume included."""
        carried = 0 if self.carried is None else int(self.carried[1][2])
        return self.seen * self.trainer.world_size + carried

    def _loss(self, logits: torch.Tensor, batch, smoothing: float = 0.0) -> torch.Tensor:
        if self.vocab is None:
            return F.cross_entropy(
                logits, batch.y, weight=self.class_weights, label_smoothing=smoothing
            )
        return level_loss(logits, batch.y, batch.known, self.vocab.offsets.tolist(), smoothing)

    def _top_hits(self, logits: torch.Tensor, batch, level: int) -> torch.Tensor:
        """Whether the most probable class of a level is a true one (full EC)."""
        o = self.vocab.offsets
        block = batch.y[:, o[level - 1] : o[level]]
        top = logits[:, o[level - 1] : o[level]].argmax(1, keepdim=True)
        return block.gather(1, top).squeeze(1).float()

    def _step_key(self) -> int:
        """What keys the random draws of a training step (dropout, substitution, crop)."""
        return self.seed * 1_000_003 + self.global_step

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # augmented on the host, before the batch goes to the device: no round trip
        if not self.trainer.training:
            return batch
        x = batch.x
        if self.crop:  # first: the residues it keeps are those substitution may then replace
            x = crop(x, self.crop, self._step_key(), batch.share)
        if self.substitution:
            x = substitute(x, self.substitution, self._step_key(), self.max_length, batch.share)
        return batch._replace(x=x) if x is not batch.x else batch

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.global_batch:
            drop = self.model.dropout
            drop.key = self._step_key()
            drop.share = batch.share
        logits = self.model(batch.x)
        loss = self._loss(logits, batch, self.label_smoothing)
        n = len(batch.x)
        self.seen += n
        top = logits.detach()
        hits = top.argmax(1) == batch.y if self.vocab is None else self._top_hits(top, batch, 1)
        dtype = _sums_dtype(loss.device)
        step = torch.stack([loss.detach().to(dtype) * n, hits.sum().to(dtype)])
        self.train_sums = step if self.train_sums is None else self.train_sums + step
        if self.trainer.progress_bar_callback is not None:  # only a bar shows a step's loss
            self.log("loss", loss.detach(), prog_bar=True, batch_size=n)
        if batch.weight is not None:  # averaged over the global batch, however it was shared
            loss = loss * batch.weight
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        logits = self.model(batch.x)
        self.val_loss.update(self._loss(logits, batch), len(batch.x))
        if self.vocab is None:
            self.val_acc.update(logits, batch.y)
            self.val_f1.update(logits, batch.y)
            return
        self.val_hits.update(self._top_hits(logits, batch, 1)[batch.known[:, 0]])
        deepest = self.vocab.depth
        hits = self._top_hits(logits, batch, deepest)
        self.val_hits_ec.update(hits[batch.known[:, deepest - 1]])

    def on_validation_epoch_end(self) -> None:
        # the epoch's training metrics too, here: EpochLog writes its row before the module's
        # on_train_epoch_end. Every rank adds up all ranks' sums (a collective under DDP).
        if self.trainer.state.fn == TrainerFn.FITTING:
            loss, hits, rows = self._epoch_sums()
            if rows > 0:
                self.log("train_loss", (loss / rows).float())
                self.log("train_acc", (hits / rows).float())
        self.log("val_loss", self.val_loss.compute(), prog_bar=True)
        if self.vocab is None:
            self.log("val_acc", self.val_acc.compute(), prog_bar=True)
            self.log("val_macro_f1", self.val_f1.compute())
            metrics = [self.val_loss, self.val_acc, self.val_f1]
        else:
            self.log("val_acc", self.val_hits.compute(), prog_bar=True)
            self.log("val_acc_ec", self.val_hits_ec.compute(), prog_bar=True)
            metrics = [self.val_loss, self.val_hits, self.val_hits_ec]
        for metric in metrics:
            metric.reset()

    def configure_optimizers(self) -> dict:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def _sums_dtype(device: torch.device) -> torch.dtype:
    """float64 for the epoch's sums (exact counts of hits and rows up to 2^53), where the device
    has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


class GlobalDropout(torch.nn.Module):
    """Dropout whose mask is drawn for the whole global batch from a generator keyed by the
    step, each rank taking the rows of its share (``share``: where it begins, and the global
    batch's records): a run on 1 process and one on W processes drop the same features of the
    same sample, also where the last global batch is shared unevenly (plain dropout draws per
    process)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.key = p, 0
        self.share: tuple[int, int] | None = None

    # outside `--compile`'s graphs: a graph would be specialised to each step's key
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        first, total = self.share or (0, len(x))
        generator = torch.Generator().manual_seed(self.key)
        draw = torch.rand((total, *x.shape[1:]), generator=generator)
        keep = draw[first : first + len(x)] >= self.p
        return x * keep.to(x.device, x.dtype) / (1 - self.p)


def level_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    offsets: list[int],
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean over levels of a softmax cross-entropy whose target shares its mass equally among
    a record's true classes at that level; a level the record does not state is left out.
    ``smoothing`` spreads that share of each target over all the level's classes."""
    total, levels = logits.new_zeros(()), 0
    for level in range(len(offsets) - 1):
        rows = known[:, level]
        if not rows.any():
            continue
        z = logits[rows, offsets[level] : offsets[level + 1]]
        t = targets[rows, offsets[level] : offsets[level + 1]].to(z.dtype)
        has = t.sum(1) > 0  # a class training never saw has no output
        if not has.any():
            continue
        q = t[has] / t[has].sum(1, keepdim=True)
        q = (1 - smoothing) * q + smoothing / q.shape[1]
        total = total - (q * F.log_softmax(z[has], dim=1)).sum(1).mean()
        levels += 1
    return total / max(levels, 1)


class ECTargets:
    """Picklable: a batch's multi-hot targets, for DataLoader workers."""

    def __init__(self, vocab: ECVocabulary):
        self.vocab = vocab

    def __call__(self, batch) -> tuple[np.ndarray, np.ndarray]:
        return self.vocab.targets(batch.ecs.tolist())


class StoreData(L.LightningDataModule):
    """Train and validation loaders over a store, one rank's share each.

    A class run reads the single-class rows (and, with ``--multi-class first``, the others with
    their first number's class); a full-EC run reads every row, with multi-hot targets."""

    def __init__(self, store: Store, config: TrainConfig, vocab: ECVocabulary | None = None):
        super().__init__()
        self.store, self.config, self.vocab = store, config, vocab
        self._train: Batches | None = None  # the training stream, whose position checkpoints keep
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        """Where the training stream stands, saved in every checkpoint: the records of this
        epoch all ranks have consumed (any number of ranks can resume from it)."""
        b, trainer = self._train, self.trainer
        if b is None or trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        step = done - (b.epoch_steps - len(b))  # Lightning counts the whole epoch's steps
        if not 0 <= step <= len(b):
            return {}
        stream = b.state_dict(step)
        return {"stream": {**stream, "epoch": trainer.current_epoch}, "steps": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None

    def _continue(self, batches: Batches) -> None:
        """Continue a checkpoint's epoch where it stood, on this run's number of ranks, and
        move Lightning's count of steps to the same place in this world's epoch."""
        state, self._resume = self._resume, None
        trainer = self.trainer
        if state is None or state["stream"]["epoch"] != trainer.current_epoch:
            return  # saved at the end of an epoch: the next one starts from its beginning
        batches.load_state_dict(state["stream"])
        shift = batches.epoch_steps - len(batches) + batches.step - state["steps"]
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        for name in ("ready", "started", "processed", "completed"):
            setattr(progress, name, getattr(progress, name) + shift)

    def _batches(self, split: str, shuffle: bool):
        c, trainer = self.config, self.trainer
        return self.store.batches(
            split,
            batch_size=c.batch_size,
            max_length=c.max_length,
            shuffle=shuffle,
            seed=c.seed,
            epoch=trainer.current_epoch if trainer else 0,  # a resumed run starts mid-way
            in_memory=c.in_memory,
            bucket=c.bucket,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            multi_class=self.vocab is not None or c.multi_class == "first",
            global_batch=c.global_batch,
            drop_last=c.drop_last and shuffle,  # validation sees every record
            block=c.shuffle_block if shuffle else 0,
        )

    def _loader(self, split: str, shuffle: bool):
        targets = None if self.vocab is None else ECTargets(self.vocab)
        batches = self._batches(split, shuffle)
        if split == "train":
            self._continue(batches)
            self._train = batches
        # pinned only for a GPU: pinning starts a thread and CUDA, also under --accelerator cpu
        pin = self.config.on_gpu()
        return loader(batches, self.config.num_workers, pin, ids=False, targets=targets)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)


# --- callbacks ------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed; loaded with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_bytes(path, _serialized(checkpoint))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class StepCheckpoint(Callback):
    """Writes ``last.ckpt`` every ``every`` training steps, with the stream's position, so that
    a pre-empted run loses at most that many steps (``--checkpoint-every``)."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        # not at an epoch's last step: the epoch's own checkpoint follows its validation, and
        # Lightning resumes from one written at the last step as from a finished epoch, skipping
        # a validation (its row, the learning-rate schedule) that a crash interrupted
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if (batch_idx + 1) % self.every == 0:
            trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes


class EpochLog(Callback):
    """Writes ``metrics.csv``: one row per finished epoch, rewritten atomically."""

    FIELDS = (
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_acc_ec",
        "lr", "samples", "seconds", "samples_per_s",
    )  # fmt: skip

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] | None = None
        self._start, self._train_seconds = 0.0, None

    def on_train_start(self, trainer, module) -> None:
        # a run resumed mid-epoch starts without on_train_epoch_start
        self.on_train_epoch_start(trainer, module)

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.rows is None:  # first epoch of this process: keep the rows of a resumed run
            self.rows = []
            if self.path.exists():
                with open(self.path) as fh:
                    done = trainer.current_epoch
                    self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < done]
        self._start, self._train_seconds = time.perf_counter(), None

    def on_validation_epoch_start(self, trainer, module) -> None:
        if not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer, module) -> None:
        # runs after this epoch's validation: train and val metrics are both in callback_metrics
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        seconds = self._train_seconds or time.perf_counter() - self._start
        samples = module.samples_seen
        row = {
            "epoch": trainer.current_epoch,
            **{k: f"{m[k]:.6f}" for k in self.FIELDS[1:7] if k in m},
            "lr": f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}",
            "samples": samples,
            "seconds": f"{seconds:.1f}",
            # the records this process's run trained in those seconds (not a resume's carried)
            "samples_per_s": f"{module.seen * trainer.world_size / max(seconds, 1e-9):.1f}",
        }
        self.rows = [r for r in self.rows if int(r["epoch"]) != row["epoch"]] + [row]
        with atomic_open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)


class SamplesProgressBar(TQDMProgressBar):
    """Lightning's bar (steps) with the samples seen beside it: steps and samples, never mixed."""

    def __init__(
        self, samples: int, step_records: Callable[[int], int], refresh_rate: int = 1
    ) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.samples, self.step_records = samples, step_records

    def epoch_samples(self, trainer) -> int:
        """The records an epoch trains on: the split, or fewer where ``--limit-train-batches``
        or ``--drop-last`` leave batches out (every batch but the split's last is full)."""
        steps = trainer.num_training_batches
        if not math.isfinite(steps):
            return self.samples
        return min(self.samples, int(steps) * self.step_records(trainer.world_size))

    def get_metrics(self, trainer, module) -> dict:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        items["samples"] = f"{module.samples_seen:,}/{self.epoch_samples(trainer):,}"
        return items


# --- the run directory ----------------------------------------------------------------------


def _run_config(
    store: Store, config: TrainConfig, model_config: ModelConfig, survey: _Survey
) -> dict:
    extra = {} if survey.vocab is None else {"vocabulary": survey.vocab.to_dict()}
    return {
        **base_config("cnn", store, survey.ec_fingerprint),
        "train": asdict(config),
        "model": model_config.to_dict(),
        **extra,
    }


@dataclass
class _Survey:
    """What training needs to know of the train and val splits before it starts."""

    vocab: ECVocabulary | None  # the label space of a full-EC run
    seen: dict[str, np.ndarray]  # hashes of the sequences the run sees (runs.record_seen)
    ec_fingerprint: str  # of the train split's EC numbers (runs.base_config)


def _survey(store: Store, full_ec: bool) -> _Survey:
    """Train and val read once, before training. Every shard is checked as it is read (on
    object storage: as it arrives), so a damaged store fails here; a remote split larger than
    the cache is downloaded once for all of it, not once for each."""
    hashes: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    digest = LineDigest()

    def texts(split: str) -> Iterator[str]:
        for chunk in store.records(split):
            hashes[split].append(hash64(chunk.seqs))
            if split == "train":
                digest.add(chunk.ecs)
            yield from chunk.ecs

    vocab = ECVocabulary.from_texts(texts("train")) if full_ec else None
    if not full_ec:
        collections.deque(texts("train"), maxlen=0)
    collections.deque(texts("val"), maxlen=0)
    seen = {split: unique_hashes(parts) for split, parts in hashes.items()}
    return _Survey(vocab, seen, digest.hexdigest())


def _class_weights(store: Store, multi_class: str) -> torch.Tensor:
    """1/frequency of the classes of the rows a class run trains on."""
    info = store.manifest["splits"]["train"]
    every_row = multi_class == "first"  # rows spanning classes count in their first class
    per_class = (
        info["per_class"] if every_row else info.get("per_class_single_class", info["per_class"])
    )
    counts = np.array(list(per_class.values()), float)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class TrainResult:
    run: Path
    best_val_loss: float
    epochs: int
    history: list[dict] = field(default_factory=list)
    rank: int = 0  # under DDP every rank returns; only rank 0 should report


def train(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train a CNN on a store's train split, validating on its val split; see the module doc.

    The run directory is claimed (locked) by rank 0 while it trains, so a second ``train`` or
    ``--resume`` of the same run fails at once instead of mixing two runs' checkpoints.
    """
    store = open_store(store_path)
    run = Path(out)
    if not resume:  # a run kept in such a place before this check existed still resumes
        check_outside_runs_and_stores(run)
        if config.target == "ec" and config.multi_class != "skip":  # it would do nothing
            raise ValueError(
                "--multi-class applies to --target class runs: a --target ec run learns every "
                "EC number of each row"
            )
    if store.num_records("train") == 0 or store.num_records("val") == 0:
        raise RunError(f"{store.path}: training needs records in both train and val splits")
    # read here, before DDP starts the other ranks, so that they find every shard checked
    survey = _survey(store, config.target == "ec")
    vocab = survey.vocab
    heads = vocab.sizes if vocab is not None else (len(store.policy.classes),)
    model_config = preset(config.model, heads)
    if config.dropout is not None:
        model_config = replace(model_config, dropout=config.dropout)
    run_config = _run_config(store, config, model_config, survey)
    last = run / "checkpoints" / "last.ckpt"
    with contextlib.ExitStack() as stack:
        if _launched_rank() == 0:  # DDP starts the other ranks by re-running this command
            stack.enter_context(claim(run))
            if resume:
                _check_resumable(run, run_config, last)
            else:
                _check_new(run, last)
            run.mkdir(parents=True, exist_ok=True)
            if not resume:
                write_json(run / "config.json", run_config)
                mark_training(run)  # refused by every use until it is sealed
                record_seen(run, store, survey.seen)

        begun = False

        def begin() -> None:
            """A resumed run changes once the Trainer has restored it and starts training: a
            resume that fails before (Lightning's checks on restoring, say) leaves a finished
            run as it was, checksums included. Lightning skips training (and so this hook)
            where the run has its epochs already: then it is called before the run's files are
            written again."""
            nonlocal begun
            if resume and _launched_rank() == 0 and not begun:
                begun = True
                mark_training(run)  # its files change from here until it finishes again
                write_json(run / "config.json", run_config)

        stack.enter_context(_quiet_lightning())
        trainer, best = _fit(
            store, run, config, model_config, vocab, resume, last, callbacks, begin
        )
        if trainer.global_rank == 0:
            begin()
            _check_learned(run, config)
            _export(run, best.best_model_path or str(last), model_config)
            calibrate_cnn(run, store)
            seal(run, leave_out=(TARGETS,))  # evaluate may add the bands' database later
    history = read_metrics(run)
    best_loss = min((float(r["val_loss"]) for r in history), default=math.nan)
    return TrainResult(run, best_loss, len(history), history, trainer.global_rank)


def _fit(
    store: Store,
    run: Path,
    config: TrainConfig,
    model_config: ModelConfig,
    vocab: ECVocabulary | None,
    resume: bool,
    last: Path,
    callbacks: list[Callback] | None,
    begin: Callable[[], None],
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Fit with Lightning, calling ``begin`` as training starts; an interruption or failure says
    how to continue."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    # bit-identical runs are promised on CPU; CUDA's convolution backward is not deterministic
    on_cpu = config.accelerator == "cpu" or not torch.cuda.is_available()
    was_deterministic = torch.are_deterministic_algorithms_enabled()  # the Trainer changes it
    weights = _class_weights(store, config.multi_class) if config.class_weights else None
    module = ECModule(
        model_config, config.lr, config.weight_decay, weights, config.seed, vocab,
        global_batch=config.global_batch, label_smoothing=config.label_smoothing,
        substitution=config.substitution, crop=config.crop, max_length=config.max_length,
        compile=config.compile,
    )  # fmt: skip
    data = StoreData(store, config, vocab)
    every_row = vocab is not None or config.multi_class == "first"
    samples = store.num_records("train") if every_row else store.single_class_records("train")
    best = RunCheckpoint(
        dirpath=run / "checkpoints", filename="best", monitor="val_loss", save_last=True,
        # last.ckpt is replaced, not versioned: StepCheckpoint writes it too, and Lightning
        # would put the epoch's end beside it as last-v1.ckpt, which --resume never reads
        enable_version_counter=False,
    )  # fmt: skip
    steps = [StepCheckpoint(last, config.checkpoint_every)] if config.checkpoint_every else []
    # a redraw reads the step's loss from the device, a wait for the GPU: every 10th step
    bar = SamplesProgressBar(samples, config.step_records, 1 if on_cpu else 10)
    hooks = [
        EarlyStopping("val_loss", patience=config.patience),
        best,
        EpochLog(run / "metrics.csv"),
        *steps,
        *([bar] if config.progress else []),
        *([InvocationTimer(config.max_time)] if config.max_time else []),
        _OnTrainStart(begin),  # after Lightning restored the checkpoint and checked it
        *(callbacks or []),
    ]
    try:
        trainer = L.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            precision=config.resolved_precision(),
            max_epochs=config.epochs,
            limit_train_batches=config.limit_train_batches,
            callbacks=hooks,
            plugins=[AtomicCheckpointIO()],
            logger=False,
            deterministic=on_cpu,
            use_distributed_sampler=False,
            enable_progress_bar=config.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, ValueError, TypeError) as error:  # Lightning's checks
        raise RunError(
            f"{_refused(error)} (--accelerator {config.accelerator}, --devices "
            f"{config.devices}, --num-nodes {config.num_nodes}, --precision {config.precision})"
        ) from error
    step_records = config.step_records(trainer.world_size)
    if config.drop_last and samples < step_records:
        processes = "" if trainer.world_size == 1 else f" on {trainer.world_size} processes"
        raise RunError(
            f"--drop-last with --batch-size {config.batch_size}{processes} leaves no training "
            f"step: the training split has {samples:,} records to train on"
        )
    sigint = signal.getsignal(signal.SIGINT)
    resume_hint = f"continue it with: {resume_command(store.path, run, asdict(config))}"
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    except SystemExit:  # Lightning's answer to Ctrl-C: it has saved nothing more, and exits
        signal.signal(signal.SIGINT, sigint)  # Lightning leaves Ctrl-C ignored
        raise TrainingInterrupted(
            f"training of {run} was interrupted; "
            + (resume_hint if last.is_file() else "no epoch had finished: start it again")
        ) from None
    except MisconfigurationException as error:  # checks Lightning makes once it sees the data
        raise RunError(_refused(error)) from error
    except Exception as error:
        if last.is_file() and trainer.global_rank == 0:
            error.add_note(f"the last checkpoint is intact: {resume_hint}")
        raise
    finally:  # Lightning sets deterministic algorithms for the whole process; give it back
        torch.use_deterministic_algorithms(was_deterministic)
    return trainer, best


def _refused(error: BaseException) -> str:
    said = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"Lightning refused these settings: {said}"


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, writing ``last.ckpt`` after every epoch's validation, with
    saved paths that follow the run. Lightning 2.6 writes ``last.ckpt`` only when the monitored
    loss improved, so a resume redid every epoch since the last improvement; and it forgets
    the best score of a run resumed from another folder (moved or copied), whose next epoch
    then replaced ``best.ckpt`` whatever its loss."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_too(trainer, at_epoch_end=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_too(trainer, at_epoch_end=False)

    def _save_last_too(self, trainer: L.Trainer, at_epoch_end: bool) -> None:
        """``last.ckpt`` where Lightning saves (the epoch's end, after its validation, unless
        validation runs several times an epoch), if it did not save at this step already."""
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer) == at_epoch_end
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path: str | None) -> str | None:
                if not path or os.path.dirname(path) != old:
                    return path
                return os.path.join(self.dirpath, os.path.basename(path))

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                          "last_model_path")},
                "best_k_models": {
                    moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                },
            }  # fmt: skip
        super().load_state_dict(state_dict)


class _OnTrainStart(Callback):
    """Calls ``begin`` once training starts, after every check Lightning makes on restoring."""

    def __init__(self, begin: Callable[[], None]):
        self.begin = begin

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.begin()


class InvocationTimer(Timer):
    """``--max-time``: the training time of this invocation. Lightning's Timer restores the
    time of the run so far from a checkpoint, so a resume with the budget the run stopped at
    trained nothing and said it had finished (a pre-empted job gets its time afresh)."""

    def __init__(self, duration: str):
        super().__init__(duration=duration, interval="step", verbose=False)

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class TrainingInterrupted(RunError):
    """Training stopped by the user (Ctrl-C); the message says how to continue."""


class TrainingDiverged(RunError):
    """No epoch ended with a finite validation loss: there are no weights worth saving."""


def _check_learned(run: Path, config: TrainConfig) -> None:
    """Refuse to make a model of a run with no epoch to show for it: none ended (a
    ``--max-time`` shorter than an epoch), or every one ended with a loss that is not a finite
    number (Lightning's early stopping ends such a run quietly; its weights are NaN)."""
    losses = [float(row["val_loss"]) for row in read_metrics(run)]
    if not losses:
        raise RunError(
            f"training of {run} ended before its first epoch did: no model to save (a "
            "--max-time shorter than an epoch?)"
        )
    if not any(math.isfinite(loss) for loss in losses):
        # its checkpoints hold NaN weights: without them the same --out can be trained again
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        raise TrainingDiverged(
            f"training of {run} diverged: val_loss was not a finite number after any of its "
            f"{len(losses)} epoch(s), so no model was saved; train again (the same --out will "
            f"do) with a lower --lr (this run's: {config.lr:g})"
        )


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's notices that are not the user's to act on, for this call only."""
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = tips.level
    tips.setLevel(logging.WARNING)  # "💡 Tip: …" advertisements
    with warnings.catch_warnings():
        # a deprecation inside Lightning itself, and a notice on every resume
        warnings.filterwarnings("ignore", message=r".*isinstance.treespec, LeafSpec.*")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        # the stream's position is the datamodule's state, which Lightning does not look at
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
        # the module substitutes residues there; the datamodule has no such hook of its own
        warnings.filterwarnings("ignore", message=r".*overridden `on_before_batch_transfer`.*")
        # under DDP: the epoch's metrics are reduced over ranks already (torchmetrics' compute,
        # the module's training sums), which Lightning's generic check cannot know
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log")
        # a loss that is not finite ends in TrainingDiverged, which says it once and clearly
        warnings.filterwarnings("ignore", message=r"Encountered `nan` values in tensor")
        try:
            yield
        finally:
            tips.setLevel(level)


def _check_new(run: Path, last: Path) -> None:
    """A new run needs an empty ``--out``. Leftovers of a CNN run that never finished an epoch
    (a failure before the first checkpoint, e.g. a full disk: its config, the sequences it was
    to learn from and an empty checkpoint directory) are cleared and reused; anything else —
    a finished run of any kind, or files that are not a run's — is refused."""
    if not run.exists() or not any(run.iterdir()):
        return
    if last.is_file():
        raise RunError(f"{run} already holds a run; use --resume to continue it or another --out")
    try:
        config = read_json(run / "config.json")
        unfinished = config.get("format") == RUN_FORMAT and config.get("kind") == "cnn"
    except (OSError, ValueError, AttributeError):
        unfinished = False
    present = {p.name for p in run.iterdir()}
    checkpoints = run / "checkpoints"
    if checkpoints.is_dir() and any(not p.name.startswith(".") for p in checkpoints.iterdir()):
        unfinished = False  # some checkpoint was written: not ours to delete
    if not unfinished or not present <= set(UNFINISHED_FILES):
        raise RunError(f"{run} already holds a run or other files; choose another --out")
    for name in UNFINISHED_FILES:
        path = run / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


#: What a CNN run that failed before its first checkpoint can leave behind.
UNFINISHED_FILES = ("config.json", CHECKSUMS, SEEN, "checkpoints", "metrics.csv")


def _launched_rank() -> int:
    """This process's global rank as set by a launcher (Lightning DDP, torchrun, SLURM), else 0."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


#: Training settings added after runs were first made, with the value those runs had (not
#: ``target`` and ``multi_class``: a run made before them has a model of another shape, which
#: the model settings refuse anyway).
ADDED_SETTINGS = {
    "global_batch": False, "drop_last": False,
    "dropout": None, "label_smoothing": 0.0, "substitution": 0.0, "crop": 0, "compile": False,
    "shuffle_block": 0,
}  # fmt: skip

#: Training settings a resume may change: more epochs or another progress setting, the number
#: of processes (an epoch boundary is a resume point for any number: elastic), and whether the
#: splits are read from RAM or disk.
#: --compile is not one: compiled dropout draws other masks than plain dropout.
FREE_ON_RESUME = (
    "epochs", "progress", "max_time", "num_workers", "devices", "num_nodes", "accelerator",
    "checkpoint_every", "in_memory",  # RAM and disk give the same batches (tested)
)  # fmt: skip


def _check_resumable(run: Path, run_config: dict, last: Path) -> None:
    if not last.is_file():
        raise RunError(
            f"{run}: nothing to resume (no checkpoints/last.ckpt: no epoch finished); "
            "start it again without --resume"
        )
    verify(run, training_ok=True)  # a finished run trained on, or one stopped in training
    check_archive(last)
    finished, epochs = len(read_metrics(run)), run_config["train"]["epochs"]
    if epochs < finished:  # Lightning refuses only below the epoch it would restore to
        raise RunError(
            f"{run}: cannot resume with --epochs {epochs}: it has trained {finished} epochs "
            f"(give --epochs {finished} to finish it as it is, or more to train on)"
        )
    saved = read_json(run / "config.json")
    for key in ("train", "model", "store", "labels", "alphabet", "vocabulary"):
        theirs = saved.get(key)
        ours = run_config.get(key)  # "vocabulary" exists only for --target ec
        if key == "train":
            theirs = {**ADDED_SETTINGS, **theirs}
            theirs = {k: v for k, v in theirs.items() if k not in FREE_ON_RESUME}
            ours = {k: v for k, v in ours.items() if k not in FREE_ON_RESUME}
        if key == "store":  # the EC fingerprint: runs made before it existed do not have it
            ec = "ec_fingerprint" in theirs
            theirs = (theirs["fingerprints"], theirs.get("ec_fingerprint"))
            ours = (ours["fingerprints"], ours["ec_fingerprint"] if ec else None)
        if theirs == ours:
            continue
        if key != "train":
            raise RunError(f"{run}: cannot resume, its {key} settings differ from this command's")
        differ = [k for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k)]
        said = ", ".join(f"{k} {theirs.get(k)!r} (this command: {ours.get(k)!r})" for k in differ)
        raise RunError(
            f"{run}: cannot resume, its train settings differ from this command's: {said}; "
            f"continue it with: {resume_command(run_config['store']['path'], run, saved['train'])}"
        )


#: ``train`` flags whose names are not their setting's (``progress`` is free on resume)
_NEGATED_FLAGS = {"bucket": "--no-bucket"}
#: Settings free on resume that say where a run trains, not what it aims at: a resume command
#: leaves them to the machine it runs on (--epochs, --checkpoint-every, --max-time it restates).
_WHERE_IT_RUNS = ("progress", "num_workers", "devices", "num_nodes", "accelerator", "in_memory")


def resume_command(store: str | os.PathLike, run: Path, settings: dict) -> str:
    """The ``ecstream train … --resume`` that continues a run: its store and every training
    setting the run was made with that is not the default (a resume must restate those it
    fixed, and finishes the epochs it was asked for), but the machine's own."""
    defaults = asdict(TrainConfig())
    words = ["ecstream", "train", str(store), "--out", str(run)]
    for key, value in settings.items():
        if key in _WHERE_IT_RUNS or key not in defaults or value == defaults[key]:
            continue
        if key in _NEGATED_FLAGS:
            words.append(_NEGATED_FLAGS[key])
        elif value is True:
            words.append("--" + key.replace("_", "-"))
        elif value is not None and value is not False:
            words += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join([*words, "--resume"])


def _export(run: Path, checkpoint: str, model_config: ModelConfig) -> None:
    """Save the best weights as ``model.pt`` (a plain state dict and the model config)."""
    check_archive(Path(checkpoint))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    write_bytes(
        run / "model.pt", _serialized({"model": model_config.to_dict(), "state_dict": weights})
    )


def _serialized(obj: object) -> bytes:
    """``torch.save`` into memory: the file is then written by :mod:`ecstream.atomic`, so a
    full disk is an ``OSError`` naming the file, not a torch error about a zip offset."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
