"""The networks: embedding on the device, padding that changes nothing, both presets train."""

import pytest
import torch

from ecstream import alphabet
from ecstream.model import PRESETS, ECClassifier, preset


@pytest.fixture(params=list(PRESETS))
def model(request):
    torch.manual_seed(0)
    return ECClassifier(preset(request.param, (7,))).eval()


def _tokens(seqs, width):
    x = torch.zeros((len(seqs), width), dtype=torch.uint8)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(alphabet.encode(s).copy())
    return x


def test_a_sequence_scores_the_same_whatever_its_batch_width(model):
    seqs = ["MKVLAAGIVGLLLAAQPAMAXW", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]
    narrow = model(_tokens(seqs, 32))
    wide = model(_tokens(seqs, 660))
    assert torch.allclose(narrow, wide, atol=1e-5)
    alone = model(_tokens(seqs[:1], 24))  # and whatever else is in the batch
    assert torch.allclose(alone[0], narrow[0], atol=1e-5)


def test_unknown_residues_are_not_padding(model):
    a = model(_tokens(["MKVXXXXXXL"], 16))
    b = model(_tokens(["MKVL"], 16))
    assert not torch.allclose(a, b)


def test_both_presets_learn_a_step(model):
    model.train()
    x = _tokens(["MKVLAAGIVG", "MSTNPKPQRKTK"], 16)
    y = torch.tensor([0, 6])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert torch.nn.functional.cross_entropy(model(x), y).item() < before


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'huge'.*small, large"):
        preset("huge", (7,))
