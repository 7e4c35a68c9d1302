"""Training augmentations, regularisers against memorising families: residue substitution and
random cropping.

A share of the residues of each training batch is replaced by another amino acid, drawn the
way homologous proteins differ: from BLOSUM62, whose scores are log-odds in half-bits, so a
substitution a→b is drawn with probability ∝ 2^(score/2) over the 19 other standard residues.
(The background frequencies are left out on purpose: they would add common residues, not
likely substitutions.) Padding and unknown residues are never touched or drawn.

The draws come from a generator keyed by the training step (apart from dropout's) and cover
the whole global batch at the widest possible width, each process taking the rows of its share
and the columns of its batch: a run resumed mid-epoch substitutes the same residues of the same
records, and with ``--global-batch`` so does a run on any number of processes. Cropping keeps a
window of a long protein's residues, its start drawn the same way (one draw per row of the
global batch).
"""

from __future__ import annotations

import functools

import torch
import xxhash

from . import alphabet


@functools.cache
def substitution_cdf() -> torch.Tensor:
    """[VOCAB_SIZE, VOCAB_SIZE]: row a, the cumulative chance of each token replacing token a
    (padding and unknown rows replace by themselves)."""
    from Bio.Align import substitution_matrices

    blosum = substitution_matrices.load("BLOSUM62")
    v = alphabet.VOCAB_SIZE
    odds = torch.zeros(v, v, dtype=torch.float64)
    for i, a in enumerate(alphabet.STANDARD, start=1):
        for j, b in enumerate(alphabet.STANDARD, start=1):
            if a != b:
                odds[i, j] = 2.0 ** (blosum[a][b] / 2)
    for token in (alphabet.PAD, alphabet.UNKNOWN):
        odds[token, token] = 1.0
    cdf = (odds / odds.sum(1, keepdim=True)).cumsum(1)
    for row, p in enumerate(odds):  # rounding must not let a draw near 1 pass the last token
        cdf[row, int(p.nonzero().max()) :] = 1.0
    return cdf


def _generator(name: bytes, key: int) -> torch.Generator:
    """A generator of the augmentation ``name`` at step ``key``: a stream of its own (seeded with
    the step alone, it would repeat dropout's draws)."""
    return torch.Generator().manual_seed(xxhash.xxh64_intdigest(b"%s:%d" % (name, key)) >> 1)


def substitute(
    tokens: torch.Tensor,
    rate: float,
    key: int,
    width: int,
    share: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``tokens`` [B, L ≤ width] with about ``rate`` of their standard residues replaced.

    ``share`` is where these rows begin in the global batch and the global batch's size
    (default: the rows are the whole batch); ``width`` the widest batch the run can have.
    """
    if rate <= 0:
        return tokens
    first, total = share or (0, len(tokens))
    rows, cols = tokens.shape
    if cols > width:
        raise ValueError(f"a batch {cols} wide: wider than the run's widest ({width})")
    generator = _generator(b"substitute", key)
    whole = torch.rand((2, total, width), generator=generator)
    draws = whole[:, first : first + rows, :cols]
    cpu = tokens.cpu().long()
    standard = (cpu != alphabet.PAD) & (cpu != alphabet.UNKNOWN)
    hit = standard & (draws[0] < rate)
    cdf = substitution_cdf()[cpu[hit]]  # [hits, VOCAB_SIZE]
    drawn = (draws[1][hit].unsqueeze(1) >= cdf).sum(1)
    out = cpu.clone()
    out[hit] = drawn
    return out.to(device=tokens.device, dtype=tokens.dtype)


def crop(
    tokens: torch.Tensor, length: int, key: int, share: tuple[int, int] | None = None
) -> torch.Tensor:
    """``tokens`` [B, L], padded at the end as training batches are, with each row of more than
    ``length`` residues cut to a window of ``length`` of them, its start uniform over the
    possible ones, moved to the row's beginning; shorter rows are unchanged.

    ``share`` is as for :func:`substitute`.
    """
    if length <= 0:
        return tokens
    first, total = share or (0, len(tokens))
    generator = _generator(b"crop", key)
    draws = torch.rand(total, generator=generator, dtype=torch.float64)[first : first + len(tokens)]
    cpu = tokens.cpu()
    n = (cpu != alphabet.PAD).sum(1)
    kept = n.clamp(max=length)
    start = (draws * (n - kept + 1)).long().clamp(max=n - kept)
    columns = torch.arange(cpu.shape[1])
    source = (columns + start[:, None]).clamp(max=cpu.shape[1] - 1)
    out = torch.where(
        columns < kept[:, None], cpu.gather(1, source), torch.zeros((), dtype=cpu.dtype)
    )
    return out.to(device=tokens.device)
