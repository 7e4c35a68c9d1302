"""The networks: uint8 tokens in, class logits out; embedding happens here, on the device.

One linear head scores every class of every level the run predicts: the seven classes
(``--target class``), or the classes of all four EC levels side by side (``--target ec``;
:class:`~ecstream.labels.ECVocabulary` says which columns belong to which level).

Both presets share one shape, in the spirit of ProteInfer's dilated residual CNN::

    tokens [B, L] ─ embedding ─ stem conv ─ (max-pool) ─ residual dilated conv blocks
                  ─ masked max ⊕ masked mean pooling ─ dropout ─ linear → logits [B, C]

Padding positions are zeroed after every layer and ignored by the pooling, so a sequence gets
the same output whatever the width of its batch (fixed or bucketed padding) when padding is post.
Activations are ``[B, L, C]`` (channels last, as the embedding makes them), and each Conv1d
runs as a 2-D convolution of that memory: on CPU, oneDNN computes a training step faster
than on ``[B, C, L]``, and no transposes are needed (BENCHMARKS.md, layout). The prediction
:class:`Scorer` computes the same function its own way (its docstring says how and why).
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
    # `small` with five dilated blocks: a receptive field of ~380 residues, most of a protein
    # (ProteInfer's argument for transfer beyond families); about twice small's work
    "deep": ModelConfig(dilations=(1, 2, 4, 8, 16)),
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
        """``h`` [B, L, C], ``mask`` [B, L, 1] → [B, L, C]."""
        z = self.norm(h) if self.norm is not None else h
        return (h + _conv(F.relu(z) * mask, self.conv)) * mask


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
        return self.head(self.dropout(self.norm(self.features(tokens))))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each sequence's pooled features ``[B, 2C]`` (masked max ⊕ mean), before the head."""
        mask = (tokens != alphabet.PAD).unsqueeze(2).to(self.head.weight.dtype)  # [B, L, 1]
        h = self.embed(tokens.long())  # [B, L, E]
        h = F.relu(_conv(h, self.stem)) * mask
        if self.config.pool > 1:
            pool = self.config.pool
            h, mask = max_pool_positions(h, pool), max_pool_positions(mask, pool)
        for block in self.blocks:
            h = block(h, mask)
        return masked_pool(F.relu(h), mask)


def _as_2d(h: torch.Tensor) -> torch.Tensor:
    """[B, L, C] viewed, without a copy, as [B, C, 1, L] in channels-last strides."""
    return h.unsqueeze(1).permute(0, 3, 1, 2)


def _from_2d(y: torch.Tensor) -> torch.Tensor:
    """[B, C, 1, L] back to [B, L, C]: a view when ``y`` is channels last (oneDNN's output for a
    channels-last input), a copy otherwise."""
    rows, channels, _, width = y.shape
    return y.permute(0, 2, 3, 1).reshape(rows, width, channels)


def conv_channels_last(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` of ``h`` [B, L, C] as a 2-D convolution in channels-last layout: [B, L, C'].
    Its weight is viewed as [C', C, 1, K], so gradients reach it."""
    weight = conv.weight.unsqueeze(2)
    y = F.conv2d(_as_2d(h), weight, conv.bias, padding="same", dilation=(1, conv.dilation[0]))
    return _from_2d(y)


def conv_as_gemm(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` of ``h`` [B, L, C] as one matrix product: [B, L, C']. The input's ``K`` taps,
    shifted copies side by side ([B·L, K·C]), times the weight viewed as [K·C, C'], with the
    'same' padding of ``Conv1d`` (the odd position of an even reach on the right)."""
    out_channels, channels, taps = conv.weight.shape
    step, length = conv.dilation[0], h.shape[1]
    reach = step * (taps - 1)
    padded = F.pad(h, (0, 0, reach // 2, reach - reach // 2))
    shifted = torch.cat([padded[:, k * step : k * step + length] for k in range(taps)], dim=2)
    weight = conv.weight.permute(2, 1, 0).reshape(taps * channels, out_channels)
    return torch.addmm(conv.bias, shifted.flatten(0, 1), weight).view(*h.shape[:2], out_channels)


def _compiled_conv(h: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """The convolution of ``train --compile``: in the graphs as a matrix product on a GPU
    (faster than cuDNN's convolutions between graphs, tuned or not: BENCHMARKS.md, GPU);
    outside them on CPU, where the matrix product is slower than oneDNN's convolution and
    inductor's lowering of oneDNN's backward fixes the batch width (every bucket would compile
    anew). A network not being compiled gets the plain convolution, also after another was."""
    if h.is_cuda and torch.compiler.is_compiling():
        return conv_as_gemm(h, conv)
    return _outside_graphs(h, conv)


#: what the layers call for a convolution; :func:`compile_network` swaps in the same function
#: computed for the graphs (eager results agree to rounding), and sets the graph break
_conv = _outside_graphs = conv_channels_last


def compile_network(model: ECClassifier) -> ECClassifier:
    """``model`` compiled in place (``train --compile``), its parameter names unchanged.

    The graphs are dynamic: a new batch width compiles nothing, a batch of one row does, and a
    pooled preset compiles widths that divide by the pool apart from those that do not. The
    convolutions are :func:`_compiled_conv`'s. Done here, not when the module is imported,
    because that import of ``torch._dynamo`` costs prediction seconds of start-up.
    """
    global _conv, _outside_graphs
    if _conv is conv_channels_last:
        _outside_graphs = torch.compiler.disable(conv_channels_last)
        _conv = _compiled_conv
    model.compile(dynamic=True)
    return model


def max_pool_positions(h: torch.Tensor, pool: int) -> torch.Tensor:
    """Max-pooling of ``h`` [B, L, C] over positions, stride ``pool``, the last window partial
    (``ceil_mode``, as ``max_pool1d``): [B, ceil(L / pool), C]."""
    return _from_2d(F.max_pool2d(_as_2d(h), (1, pool), ceil_mode=True))


def masked_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max and mean over the positions (``h`` [B, L, C]) where ``mask`` [B, L, 1] is 1,
    concatenated: [B, 2C]."""
    count = mask.sum(1).clamp_min(1.0)
    mean = (h * mask).sum(1) / count
    top = h.masked_fill(mask == 0, torch.finfo(h.dtype).min).amax(1)
    return torch.cat([top, mean], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_residue(config: ModelConfig) -> int:
    """Forward multiply-adds ×2 per input residue (convolutions and norms; the head excluded)."""
    c = config
    stem = 2 * c.stem_kernel * c.embed * c.channels
    blocks = len(c.dilations) * 2 * c.kernel * c.channels * c.channels
    return int(stem + blocks / c.pool)


class Scorer(nn.Module):
    """A trained classifier's function, computed faster for prediction (no gradients).

    The embedding followed by the stem convolution is linear in the one-hot tokens, so it is
    folded into one table of ``stem_kernel × vocab`` rows (the stem's response to residue v at
    tap k, the bias in the centre tap): a position's stem output is the sum of ``stem_kernel``
    rows instead of ``stem_kernel × embed × channels`` multiply-adds (two fifths of the small
    preset's). A padding position sums a row of -1e30, so after max pooling a ReLU zeroes it
    and no mask is multiplied in at full length.

    The blocks see the batch as one flat sequence ``[rows × (L' + gap), C]``: each sequence's
    positions followed by ``gap`` zero positions, as far as a block's convolution reaches.
    Their convolution of the flat sequence is then every sequence's own, and it is ``kernel``
    matrix products of contiguous slices (one per tap), added up, with no transposes. On
    CPU these products were faster than oneDNN's convolutions of the same blocks, also with
    the gap counted (BENCHMARKS.md, "the scorer's blocks"). Same logits as
    :meth:`ECClassifier.forward` up to float rounding, for sequences of at least one residue.
    The table and weights are a snapshot of the model's when the scorer is made: make a new
    one after changing them (prediction loads them once).
    """

    OUTSIDE = -1  # a token position outside the sequence: the convolution's zero padding
    NEG = -1e30  # the stem's output at a padding position (finite: no inf - inf)

    def __init__(self, model: ECClassifier):
        super().__init__()
        self.model, c = model, model.config
        self.left = (c.stem_kernel - 1) // 2  # PyTorch's "same" padding puts the odd one right
        with torch.no_grad():
            table = torch.einsum("cek,ve->kvc", model.stem.weight, model.embed.weight).clone()
            table[self.left] += model.stem.bias
            ends = table.new_tensor([[0.0], [self.NEG]]).expand(2, c.channels)  # outside, pad
            self.register_buffer("table", torch.cat([table.reshape(-1, c.channels), ends]))
            # each block's weight as [kernel, C_in, C_out]: tap k's matrix is weights[b, k]
            weights = [b.conv.weight.permute(2, 1, 0) for b in model.blocks]
            biases = [b.conv.bias for b in model.blocks]
            empty = table.new_empty(0, c.kernel, c.channels, c.channels)  # a net without blocks
            self.register_buffer("weights", torch.stack(weights) if weights else empty)
            self.register_buffer("biases", torch.stack(biases) if biases else empty[:, 0, 0])
        self.register_buffer("taps", torch.arange(c.stem_kernel) * c.vocab)
        # positions a block reads left and right of a position (PyTorch's "same" padding puts
        # the odd one right): the gap is the furthest right
        self.reach = [d * (c.kernel - 1) // 2 for d in c.dilations]
        self.gap = max((-(-d * (c.kernel - 1) // 2) for d in c.dilations), default=0)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(tokens))

    @torch.inference_mode()
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of pooled features (:meth:`features`, of any number of sequences: the head's
        matrix product is far more efficient on hundreds of rows than on one batch's few)."""
        return self.model.head(self.model.norm(features))

    @torch.inference_mode()
    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each sequence's pooled features ``[B, 2C]``: its max and mean over positions."""
        c, gap = self.model.config, self.gap
        rows, width = tokens.shape
        pooled = -(-width // c.pool)
        extra = pooled * c.pool - width  # positions the ceil-mode pooling reads past L
        t = F.pad(
            tokens.long(), (self.left, c.stem_kernel - 1 - self.left + extra), value=self.OUTSIDE
        )
        at = t.unfold(1, c.stem_kernel, 1)  # [B, L + extra, K]: each position's window
        index = torch.where(at == self.OUTSIDE, len(self.table) - 2, at + self.taps)
        keep = F.pad(tokens != alphabet.PAD, (0, extra))
        index[..., self.left].masked_fill_(~keep, len(self.table) - 1)
        h = F.embedding_bag(index.reshape(-1, c.stem_kernel), self.table, mode="sum")
        h = h.view(rows, pooled, c.pool, c.channels)
        if c.pool > 1:
            h, keep = h.amax(2), keep.view(rows, pooled, c.pool).any(2)
        span, n = pooled + gap, rows * (pooled + gap)
        flat = h.new_zeros(n, c.channels)  # [n, C]: the sequences, each followed by its gap
        torch.clamp_min(h.view(rows, pooled, -1), 0.0, out=flat.view(rows, span, -1)[:, :pooled])
        h = flat
        mask = F.pad(keep, (0, gap)).reshape(n, 1).to(h.dtype)
        # the matrix products in the autocast dtype where one is on (bf16 prediction), cast
        # here: autocast leaves in-place products (addmm_) alone
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            self._blocks(h, mask, dtype)
        h = F.relu_(h).view(rows, span, c.channels)  # ≥ 0 with padding 0: plain max and sum
        count = keep.sum(1, keepdim=True).clamp_min(1).to(h.dtype)
        return torch.cat([h.amax(1), h.sum(1) / count], dim=1)

    def _blocks(self, h: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> None:
        """The residual blocks on the flat sequence ``h`` [n, C] (each sequence followed by
        its gap, 0 where ``mask`` [n, 1] is), in place; matrix products in ``dtype``."""
        c, gap, n = self.model.config, self.gap, len(h)
        weights, biases = self.weights.to(dtype), self.biases.to(dtype)
        # the blocks' input, with gap zeros before the first sequence and after the last; the
        # gaps between them are h's, 0 after every block
        z = h.new_empty(n + 2 * gap, c.channels, dtype=dtype)
        z[:gap], z[gap + n :] = 0.0, 0.0
        for b, (block, dilation) in enumerate(zip(self.model.blocks, c.dilations, strict=True)):
            if block.norm is None:  # h is masked already, and ReLU keeps padding at 0
                z[gap : gap + n].copy_(h).clamp_min_(0.0)
            else:  # a LayerNorm of padding is its bias: mask again
                z[gap : gap + n].copy_(F.relu(block.norm(h))).mul_(mask)
            first = gap - self.reach[b]  # where tap 0 of the first position reads
            y = torch.addmm(biases[b], z[first : first + n], weights[b, 0])
            for k in range(1, c.kernel):
                a = first + k * dilation
                y.addmm_(z[a : a + n], weights[b, k])
            h.add_(y).mul_(mask)
