"""Plain-data configuration of training and prediction, with every default stated once.

The CLI reads its defaults from here (and from :class:`~ecstream.build.BuildConfig` and
:class:`~ecstream.plan.BatchSettings`); nothing here imports PyTorch, so ``ecstream --help``
stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kinds import is_real, is_whole
from .plan import BatchSettings

#: Sequences per forward pass when predicting, on CPU and on a GPU. On CPU a small pass keeps
#: its activations in cache, and :class:`~ecstream.model.Scorer` has little per-pass overhead
#: (BENCHMARKS.md, the prediction section's history, compares 256); a GPU wants many rows at once.
PREDICT_BATCH_SIZE = {"cpu": 32, "cuda": 256}
#: Sequences a CNN scores and decodes at a time when predicting: a full-EC run's outputs and
#: their temporaries (3,577 classes a row) stay tens of MB, not hundreds, so the peak memory
#: of a run is that of the model, not of a part's passing spike (BENCHMARKS.md, prediction
#: section). A homolog search takes a whole chunk: each search has a start-up cost.
SCORE_ROWS = 512
#: Parts a CNN's ``predict`` scores at once on CPU, at most: one per PyTorch thread up to this
#: many, each with an equal share of the threads. Every part in flight holds its arrays, so the
#: cap bounds memory on a many-core machine (measured with 2 only: BENCHMARKS.md, prediction).
SCORING_WORKERS = 4
#: Shapes that oneDNN's cache of primitives keeps in ``predict`` and ``evaluate`` (its
#: default: 1,024). Scoring meets a new shape with nearly every pass, and each cached primitive
#: holds memory (BENCHMARKS.md, prediction sections; see ecstream.allocator). Since the
#: scorer's blocks became matrix products, only bfloat16 scoring makes primitives.
SCORING_PRIMITIVE_CACHE = 8
#: How a CNN scores a protein longer than its training length: ``whole`` (the network pools
#: over any length), ``windows`` (overlapping windows of the training length, logits averaged)
#: or ``truncated`` (its first residues); BENCHMARKS.md compares them.
LONG_SEQUENCES = "whole"
#: Number formats a CNN can score in: ``32`` (float32, the default: as the run was trained and
#: calibrated) or ``bf16`` (bfloat16 matrix products, so bfloat16 logits; the residual sums and
#: normalisation stay float32): meant for hardware with bfloat16 units (GPUs; CPUs with
#: AVX512-BF16 or AMX), and its probabilities differ slightly from float32's (BENCHMARKS.md,
#: prediction section, measures speed and metrics of both on an AVX512-BF16 CPU).
SCORING_PRECISIONS = ("32", "bf16")


def scoring_precision(value: str) -> str:
    """``value`` (``32`` may be given as a number) if it is one of :data:`SCORING_PRECISIONS`,
    else a clear error."""
    if is_whole(value):
        value = str(int(value))
    if value not in SCORING_PRECISIONS:
        raise ValueError(
            f"--precision must be one of {', '.join(SCORING_PRECISIONS)}, got {value!r}"
        )
    return value


#: Classes listed in a prediction's ``top_k`` column.
TOP_K = 3
#: The threshold of every level for runs made before runs were calibrated on validation.
UNCALIBRATED_THRESHOLD = 0.5
#: What a CNN run learns to predict.
TARGETS = ("class", "ec")


@dataclass
class TrainConfig:
    """Every choice of a training run; recorded in ``RUN/config.json``."""

    model: str = "small"
    target: str = "class"  # class: the seven EC classes · ec: all four levels (multi-label)
    multi_class: str = "skip"  # class target: rows spanning several classes: skip | first
    epochs: int = 50
    patience: int = 3
    batch_size: int = BatchSettings.batch_size
    max_length: int = BatchSettings.max_length
    lr: float = 2e-3
    weight_decay: float = 1e-2
    bucket: bool = True
    in_memory: bool = False
    seed: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1  # machines, each running `devices` processes (torchrun or SLURM)
    global_batch: bool = False  # batch_size is the batch of all processes together
    drop_last: bool = False  # only full batches
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints (pre-emption)
    shuffle_block: int = 0  # opt-in locality-aware shuffle: records per block (0: whole split)
    precision: str = "auto"
    # torch.compile the network for training (model.compile_network): fuses the elementwise
    # work between convolutions, for GPUs, where a step of `large` is far from the card's peak
    compile: bool = False
    num_workers: int = 0
    limit_train_batches: float | int | None = None
    class_weights: bool = False
    # regularisers against memorising families (BENCHMARKS.md, remote proteins); off by default
    dropout: float | None = None  # before the head; None: the preset's
    label_smoothing: float = 0.0  # share of each level's target spread over all its classes
    substitution: float = 0.0  # share of residues replaced from BLOSUM62 (ecstream.augment)
    crop: int = 0  # longer proteins train on a random window of this many residues (0: off)
    max_time: str | None = None  # DD:HH:MM:SS, e.g. for a demo with a time budget
    progress: bool = True

    def __post_init__(self) -> None:
        # checked here, before a run folder exists: Lightning would run on (epochs -1), stop at
        # an assertion (epochs 2.5) or blame another option, and numpy would name no option
        for name, least, most in (
            ("epochs", 1, None), ("patience", 0, None), ("batch_size", 1, None),
            ("seed", 0, 2**32 - 1),  # numpy's and Lightning's seeding take 32 bits
        ):  # fmt: skip
            value = getattr(self, name)
            if not is_whole(value) or value < least or (most is not None and value > most):
                flag = "--" + name.replace("_", "-")
                within = f"from {least} to {most}" if most is not None else f"at least {least}"
                raise ValueError(f"{flag} must be a whole number {within}; got {value!r}")
            setattr(self, name, int(value))  # numpy's too: config.json is JSON
        limit = self.limit_train_batches
        if is_whole(limit) and limit >= 1:
            self.limit_train_batches = int(limit)
        elif is_real(limit) and not is_whole(limit) and 0 < limit <= 1:
            self.limit_train_batches = float(limit)
        elif limit is not None:
            raise ValueError(
                "--limit-train-batches must be a number of batches (at least 1) or a fraction in "
                f"(0, 1], got {limit!r}"
            )
        if not (is_real(self.lr) and 0 < self.lr < math.inf):
            raise ValueError(f"--lr must be a finite number above 0, got {self.lr!r}")
        self.lr = float(self.lr)
        if not (is_real(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            raise ValueError(
                f"--weight-decay must be a finite number of at least 0, got {self.weight_decay!r}"
            )
        self.weight_decay = float(self.weight_decay)
        if self.max_time is not None:
            check_duration(self.max_time)
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.multi_class not in ("skip", "first"):
            raise ValueError(f"--multi-class must be skip or first, got {self.multi_class!r}")
        for name in ("dropout", "label_smoothing", "substitution"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be at least 0 and below 1, got {value}")
        if self.crop < 0:
            raise ValueError(f"--crop must be a number of residues (0: off), got {self.crop}")
        if self.target == "ec" and self.class_weights:
            raise ValueError("--class-weights applies to --target class runs only")

    def step_records(self, world_size: int) -> int:
        """Records a training step takes: a batch per process, or with ``--global-batch`` the
        batch of all of them."""
        return self.batch_size * (1 if self.global_batch else world_size)

    def on_gpu(self) -> bool:
        """Whether the run trains on a CUDA GPU (``--accelerator`` auto, gpu or cuda, and one
        is there)."""
        import torch  # only when training: the CLI reads these defaults without torch

        return torch.cuda.is_available() and self.accelerator in ("auto", "gpu", "cuda")

    def resolved_precision(self) -> str:
        """``auto``: bf16-mixed on a GPU that supports it, else 32-bit."""
        if self.precision != "auto":
            return self.precision
        import torch

        return "bf16-mixed" if self.on_gpu() and torch.cuda.is_bf16_supported() else "32-true"


def check_duration(text: str) -> str:
    """``text`` if it is ``DD:HH:MM:SS`` (Lightning's ``max_time``) longer than zero."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--max-time must be DD:HH:MM:SS, such as 00:02:30:00, got {text!r}")
    days, hours, minutes, seconds = (int(p) for p in parts)
    if not days * 86400 + hours * 3600 + minutes * 60 + seconds:
        raise ValueError(f"--max-time must be longer than zero, got {text!r}")
    return text
