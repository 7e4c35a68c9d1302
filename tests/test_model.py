"""The networks: embedding on the device, padding that changes nothing, both presets train, and
the prediction scorer computes the same function."""

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream import alphabet
from ecstream.model import PRESETS, ECClassifier, Scorer, preset


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
    with pytest.raises(ValueError, match=r"unknown model 'huge'.*small, deep, large"):
        preset("huge", (7,))


@pytest.fixture(scope="module", params=[*PRESETS, "even stem, pool 2"])
def trained_looking(request):
    """A preset (or a net with an even stem kernel, whose "same" padding is uneven, and a pool
    of 2) with every weight random (biases and norms too, as after training), and the
    embedding's padding row zero, as training keeps it."""
    torch.manual_seed(1)
    if request.param in PRESETS:
        config = preset(request.param, (7, 40))
    else:
        config = replace(preset("small", (7, 40)), stem_kernel=4, pool=2)
    model = ECClassifier(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("embed"):
                p.normal_(0, 0.05)
    return model, Scorer(model)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note
@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 70), min_size=1, max_size=6),
    extra=st.integers(0, 9),
    seed=st.integers(0, 2**16),
)
def test_the_scorer_gives_the_networks_logits(trained_looking, lengths, extra, seed):
    """Folding the embedding into the stem's table, and pooling without masks, changes
    nothing but rounding: any lengths (not multiples of the pool, shorter than the kernel),
    unknown residues, and padding to any width."""
    model, scorer = trained_looking
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros((len(lengths), max(lengths) + extra), dtype=torch.uint8)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(1, alphabet.VOCAB_SIZE, (n,), generator=g, dtype=torch.uint8)
    with torch.inference_mode():
        expected, got = model(x), scorer(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()
