"""The networks: uint8 tokens in, class logits out; embedding happens here, on the device.

One linear head scores every class of every level the run predicts: the seven classes
(``--target class``), or the classes of all four EC levels side by side (``--target ec``;
:class:`~ecstream.labels.ECVocabulary` says which columns belong to which level).

Both presets share one shape, in the spirit of ProteInfer's dilated residual CNN::

    tokens [B, L] ─ embedding ─ stem conv ─ (max-pool) ─ residual dilated conv blocks
                  ─ masked max ⊕ masked mean pooling ─ dropout ─ linear → logits [B, C]

Padding positions are zeroed after every layer and ignored by the pooling, so a sequence gets
the same output whatever the width of its batch (fixed or bucketed padding) when padding is post.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from . import alphabet


@dataclass(frozen=True)
class ModelConfig:
    """Plain data describing a network; stored with every run."""

    heads: tuple[int, ...] = (7,)  # classes per level scored by the head
    embed: int = 32
    channels: int = 128
    stem_kernel: int = 9
    pool: int = 3  # max-pool stride after the stem (1: none)
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2)
    dropout: float = 0.2
    norm: bool = False  # LayerNorm at every position in the blocks (GPU preset); off: CPU speed
    vocab: int = alphabet.VOCAB_SIZE

    @property
    def num_classes(self) -> int:
        """Outputs of the head: all classes of all levels."""
        return sum(self.heads)

    def to_dict(self) -> dict:
        return {**asdict(self), "dilations": list(self.dilations), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "num_classes" in d:  # runs of ecstream 0.1.0: one level
            d["heads"] = [d.pop("num_classes")]
        return cls(**{**d, "dilations": tuple(d["dilations"]), "heads": tuple(d["heads"])})


PRESETS = {
    # trains at a useful speed on 2 CPU cores
    "small": ModelConfig(),
    # for GPUs: wide, no downsampling, five dilated residual blocks (receptive field ~ 70)
    "large": ModelConfig(
        embed=64,
        channels=512,
        stem_kernel=9,
        pool=1,
        kernel=3,
        dilations=(1, 2, 4, 8, 16),
        dropout=0.3,
        norm=True,
    ),
}


def preset(name: str, heads: tuple[int, ...]) -> ModelConfig:
    """A preset network with a head for ``heads`` classes per level."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], heads=tuple(heads))


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (LayerNorm →) ReLU → dilated conv, added back."""

    def __init__(self, channels: int, kernel: int, dilation: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(channels) if norm else None
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding="same")

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.norm(h.transpose(1, 2)).transpose(1, 2) if self.norm is not None else h
        return (h + self.conv(F.relu(z) * mask)) * mask


class ECClassifier(nn.Module):
    """Token batch (uint8 [B, L], 0 = padding) → logits [B, num_classes]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab, c.embed, padding_idx=alphabet.PAD)
        self.stem = nn.Conv1d(c.embed, c.channels, c.stem_kernel, padding="same")
        self.blocks = nn.ModuleList(
            ResidualBlock(c.channels, c.kernel, d, c.norm) for d in c.dilations
        )
        self.norm = nn.LayerNorm(2 * c.channels)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c.channels, c.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != alphabet.PAD).unsqueeze(1).to(self.head.weight.dtype)  # [B, 1, L]
        h = self.embed(tokens.long()).transpose(1, 2)  # [B, E, L]
        h = F.relu(self.stem(h)) * mask
        if self.config.pool > 1:
            h = F.max_pool1d(h, self.config.pool, ceil_mode=True)
            mask = F.max_pool1d(mask, self.config.pool, ceil_mode=True)
        for block in self.blocks:
            h = block(h, mask)
        pooled = masked_pool(F.relu(h), mask)
        return self.head(self.dropout(self.norm(pooled)))


def masked_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max and mean over the positions where ``mask`` is 1, concatenated: [B, 2C]."""
    count = mask.sum(-1).clamp_min(1.0)
    mean = (h * mask).sum(-1) / count
    top = h.masked_fill(mask == 0, torch.finfo(h.dtype).min).amax(-1)
    return torch.cat([top, mean], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_residue(config: ModelConfig) -> int:
    """Forward multiply-adds ×2 per input residue (convolutions and norms; the head excluded)."""
    c = config
    stem = 2 * c.stem_kernel * c.embed * c.channels
    blocks = len(c.dilations) * 2 * c.kernel * c.channels * c.channels
    return int(stem + blocks / c.pool)
