"""Training augmentations (ecstream.augment): residue substitution, drawn from BLOSUM62, and
random cropping, both keyed by the step: the same residues (windows) of the same records whatever
share of the global batch a process holds."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream import alphabet
from ecstream.augment import crop, substitute, substitution_cdf

TOKEN = {letter: k for k, letter in enumerate(alphabet.STANDARD, start=1)}


def _probabilities() -> torch.Tensor:
    cdf = substitution_cdf().double()
    return torch.diff(cdf, dim=1, prepend=torch.zeros(len(cdf), 1, dtype=cdf.dtype))


def test_substitutes_follow_blosum62_odds_and_never_repeat_the_residue():
    p = _probabilities()
    assert torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype))
    for token in TOKEN.values():
        assert p[token, token] == 0 and p[token, alphabet.PAD] == 0
        assert p[token, alphabet.UNKNOWN] == 0
    assert p[alphabet.PAD, alphabet.PAD] == 1 and p[alphabet.UNKNOWN, alphabet.UNKNOWN] == 1
    # BLOSUM62: I-V 3, I-L 2, I-D -3 (half-bits): odds 2^1.5, 2^1, 2^-1.5
    i, v, lue, d = TOKEN["I"], TOKEN["V"], TOKEN["L"], TOKEN["D"]
    assert math.isclose(p[i, v] / p[i, lue], 2**0.5, rel_tol=1e-5)
    assert math.isclose(p[i, v] / p[i, d], 2**3, rel_tol=1e-5)
    for a, most_likely in (("I", "V"), ("D", "E"), ("F", "Y"), ("K", "R")):
        assert int(p[TOKEN[a]].argmax()) == TOKEN[most_likely]


def test_drawn_substitutes_have_those_frequencies():
    tokens = torch.full((400, 500), TOKEN["I"], dtype=torch.uint8)
    out = substitute(tokens, 0.2, key=3, width=500)
    changed = out[out != tokens]
    assert abs(len(changed) / tokens.numel() - 0.2) < 0.005
    counts = torch.bincount(changed.long(), minlength=alphabet.VOCAB_SIZE).double()
    expected = _probabilities()[TOKEN["I"]] * len(changed)
    big = expected > 500  # the frequent substitutes, each within 5 standard errors
    assert big.sum() >= 3
    assert ((counts[big] - expected[big]).abs() < 5 * expected[big].sqrt()).all()


def test_padding_and_unknown_residues_stay_and_rate_zero_changes_nothing():
    tokens = torch.randint(1, alphabet.VOCAB_SIZE, (64, 80), dtype=torch.uint8)
    tokens[:, 60:] = alphabet.PAD
    out = substitute(tokens, 0.9, key=1, width=100)
    for kept in (alphabet.PAD, alphabet.UNKNOWN):
        assert torch.equal(out[tokens == kept], tokens[tokens == kept])
    assert out.dtype == tokens.dtype and (out != tokens).float().mean() > 0.5
    assert substitute(tokens, 0.0, key=1, width=100) is tokens
    assert torch.equal(out, substitute(tokens, 0.9, key=1, width=100))  # keyed: repeatable
    assert not torch.equal(out, substitute(tokens, 0.9, key=2, width=100))


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(1, 40),
    data=st.data(),
    width=st.integers(1, 30),
    key=st.integers(0, 2**40),
)
def test_a_share_of_the_global_batch_gets_the_rows_of_the_whole(total, data, width, key):
    """What one process substitutes in its share, at its (bucketed) batch width, is what a
    single process substitutes in those rows of the whole batch."""
    tokens = torch.randint(1, 21, (total, width), dtype=torch.uint8)
    whole = substitute(tokens, 0.3, key, width=30)
    first = data.draw(st.integers(0, total - 1))
    rows = data.draw(st.integers(1, total - first))
    cols = data.draw(st.integers(1, width))
    part = tokens[first : first + rows, :cols].clone()
    share = substitute(part, 0.3, key, width=30, share=(first, total))
    assert torch.equal(share, whole[first : first + rows, :cols])


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_a_rate_outside_zero_to_one_is_refused(rate):
    from ecstream.config import TrainConfig

    with pytest.raises(ValueError, match="--substitution must be at least 0 and below 1"):
        TrainConfig(substitution=rate)


def test_a_batch_wider_than_the_runs_widest_is_refused():
    """The draws are made at the run's widest width: a wider batch would take other draws."""
    with pytest.raises(ValueError, match="wider than the run's widest"):
        substitute(torch.ones((2, 40), dtype=torch.uint8), 0.1, key=0, width=30)


def _rows(lengths: list[int], width: int) -> torch.Tensor:
    """Rows padded at the end whose residue k is the byte k + 1 (not a real token: cropping
    looks only at padding, and distinct values show exactly which window was kept)."""
    out = torch.zeros((len(lengths), width), dtype=torch.uint8)
    for r, n in enumerate(lengths):
        out[r, :n] = torch.arange(1, n + 1)
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    width=st.integers(1, 40),
    length=st.integers(1, 40),
    key=st.integers(0, 2**40),
)
def test_a_crop_is_a_window_of_the_row_moved_to_its_beginning(data, width, length, key):
    lengths = data.draw(st.lists(st.integers(0, width), min_size=1, max_size=8))
    tokens = _rows(lengths, width)
    out = crop(tokens, length, key)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert torch.equal(out, crop(tokens, length, key))  # keyed: repeatable
    for row, before, n in zip(out, tokens, lengths, strict=True):
        kept = min(n, length)
        residues = row[:kept]
        assert int((row != 0).sum()) == kept  # the rest is padding
        if n <= length:
            assert torch.equal(row, before)  # a short row is left as it is
        else:
            start = int(residues[0]) - 1
            assert 0 <= start <= n - kept  # a window of the row, shifted to its beginning
            assert torch.equal(residues, before[start : start + kept])


def test_a_crops_start_is_drawn_over_every_window():
    """A row of 10 residues cut to 3: all 8 starts are drawn, with about equal frequency."""
    tokens = _rows([10] * 4000, 10)
    starts = crop(tokens, 3, key=5)[:, 0].long() - 1  # residue k is token k + 1
    counts = torch.bincount(starts, minlength=8)
    assert len(counts) == 8 and counts.min() > 400  # 500 each expected; 5 s.d. is about 100
    assert not torch.equal(crop(tokens, 3, key=6), crop(tokens, 3, key=5))


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 40), data=st.data(), key=st.integers(0, 2**40))
def test_a_share_of_the_global_batch_gets_the_crops_of_the_whole(total, data, key):
    lengths = data.draw(st.lists(st.integers(0, 30), min_size=total, max_size=total))
    tokens = _rows(lengths, 30)
    whole = crop(tokens, 7, key)
    first = data.draw(st.integers(0, total - 1))
    rows = data.draw(st.integers(1, total - first))
    share = crop(tokens[first : first + rows].clone(), 7, key, share=(first, total))
    assert torch.equal(share, whole[first : first + rows])


def test_a_negative_crop_is_refused():
    from ecstream.config import TrainConfig

    with pytest.raises(ValueError, match="--crop must be a number of residues"):
        TrainConfig(crop=-1)
