"""Residue substitution for training: a regulariser against memorising families.

A share of the residues of each training batch is replaced by another amino acid, drawn the
way homologous proteins differ: from BLOSUM62, whose scores are log-odds in half-bits, so a
substitution a→b is drawn with probability ∝ 2^(score/2) over the 19 other standard residues.
(The background frequencies are left out on purpose: they would add common residues, not
likely substitutions.) Padding and unknown residues are never touched or drawn.

The draws come from a generator keyed by the training step and cover the whole global batch at
the widest possible width, each process taking the rows of its share and the columns of its
batch: a run resumed mid-epoch, bucketed or not, on 1 process or on W, substitutes the same
residues of the same records.
"""

from __future__ import annotations

import functools

import torch

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
    cdf[:, -1] = 1.0  # rounding must not leave a draw of 0.99999… beyond the last token
    return cdf.to(torch.float32)


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
    generator = torch.Generator().manual_seed(key)
    whole = torch.rand((2, total, max(width, cols)), generator=generator)
    draws = whole[:, first : first + rows, :cols]
    cpu = tokens.cpu().long()
    standard = (cpu != alphabet.PAD) & (cpu != alphabet.UNKNOWN)
    hit = standard & (draws[0] < rate)
    cdf = substitution_cdf()[cpu[hit]]  # [hits, VOCAB_SIZE]
    drawn = (draws[1][hit].unsqueeze(1) >= cdf).sum(1)
    out = cpu.clone()
    out[hit] = drawn
    return out.to(device=tokens.device, dtype=tokens.dtype)
