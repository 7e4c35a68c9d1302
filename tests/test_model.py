"""The networks: embedding on the device, padding that changes nothing, both presets train, and
the prediction scorer computes the same function."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream import alphabet
from ecstream.model import PRESETS, ECClassifier, Scorer, preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
# the network as ecstream computed it channels first: the benchmark's baseline, shared
from layout import channels_first_forward


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


#: beside the presets, shapes whose padding the scorer must get right: an even stem kernel
#: and even block kernels pad unevenly ("same" puts the odd one right), a kernel of 1 needs no
#: gap, and a network may have no pooling or no blocks
ODD_SHAPES = {
    "even stem, pool 2": {"stem_kernel": 4, "pool": 2},
    "even kernel, dilations 1 and 3": {"kernel": 4, "dilations": (1, 3)},
    "kernel 1, pool 1": {"kernel": 1, "pool": 1},
    "no blocks": {"dilations": ()},
}


@pytest.fixture(scope="module", params=[*PRESETS, *ODD_SHAPES])
def trained_looking(request):
    """A preset (or one of :data:`ODD_SHAPES`) with every weight random (biases and norms
    too, as after training), and the embedding's padding row zero, as training keeps it."""
    torch.manual_seed(1)
    if request.param in PRESETS:
        config = preset(request.param, (7, 40))
    else:
        config = replace(preset("small", (7, 40)), **ODD_SHAPES[request.param])
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


def test_the_scorer_in_bf16_runs_its_products_in_bf16_and_stays_close(trained_looking):
    """Under autocast the scorer casts the blocks' matrix products itself (autocast leaves
    in-place products alone): bfloat16 really runs, every preset's features stay float32,
    and the logits move by about bfloat16's precision, not more."""
    model, scorer = trained_looking
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, alphabet.VOCAB_SIZE, (4, 90), generator=g, dtype=torch.uint8)
    x[1, 50:] = alphabet.PAD
    with torch.inference_mode():
        exact = scorer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = scorer.features(x)
        fast = scorer.classify(features)
    assert features.dtype == torch.float32
    if not model.blocks:  # nothing before the head is a matrix product: nothing changes
        assert torch.equal(fast, exact)
        return
    assert not torch.equal(fast, exact)
    assert ((fast - exact).abs() <= 0.01 * exact.abs() + 0.02).all(), (fast - exact).abs().max()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 4),
    width=st.integers(1, 40),
    channels=st.sampled_from([(3, 5), (8, 8)]),
    kernel=st.integers(1, 9),
    dilation=st.integers(1, 4),
    pool=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_channels_last_layers_are_pytorchs_conv1d_and_max_pool1d(
    rows, width, channels, kernel, dilation, pool, seed
):
    """The network keeps activations [B, L, C] and runs its convolutions as 2-D ones: outputs
    and gradients (of input, weight and bias) are those of ``nn.Conv1d`` on [B, C, L], and its
    pooling is ``max_pool1d`` with ``ceil_mode``, whatever the kernel (even ones pad unevenly),
    dilation and width (shorter than the kernel, not a multiple of the pool). So is the matrix
    product that ``train --compile`` computes on a GPU instead (``conv_as_gemm``)."""
    from ecstream.model import conv_as_gemm, conv_channels_last, max_pool_positions

    torch.manual_seed(seed)
    c_in, c_out = channels
    conv = torch.nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding="same").double()
    h = torch.randn(rows, width, c_in, dtype=torch.float64, requires_grad=True)
    expected = conv(h.transpose(1, 2)).transpose(1, 2)
    g = torch.randn_like(expected)
    theirs = torch.autograd.grad(expected, [h, conv.weight, conv.bias], g, retain_graph=True)
    for way in (conv_channels_last, conv_as_gemm):
        got = way(h, conv)
        assert got.shape == expected.shape and torch.allclose(got, expected), way.__name__
        mine = torch.autograd.grad(got, [h, conv.weight, conv.bias], g)
        assert all(torch.allclose(a, b) for a, b in zip(mine, theirs, strict=True)), way.__name__
    pooled = max_pool_positions(h, pool)
    reference = torch.nn.functional.max_pool1d(h.transpose(1, 2), pool, ceil_mode=True)
    assert torch.equal(pooled, reference.transpose(1, 2))


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_network_computes_what_it_did_channels_first(name):
    torch.manual_seed(2)
    model = ECClassifier(preset(name, (7, 30))).double().eval()
    seqs = ["MKVLAAGIVGLLLAAQPAMAXW", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "M"]
    x = _tokens(seqs, 40)
    got = model(x)
    expected = channels_first_forward(model, x)  # old checkpoints must give the same logits
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), (got - expected).abs().max()


def test_a_compiled_network_compiles_once_for_every_batch_width():
    """``train --compile``: after a width that divides by the pool and one that does not, no
    other width compiles anything new (bucketed batches come in hundreds of widths), and the
    compiled network computes what the plain one does, gradients included."""
    from torch._dynamo.utils import counters

    from ecstream.model import compile_network

    torch.manual_seed(0)
    plain = ECClassifier(preset("small", (7,)))
    compiled = ECClassifier(preset("small", (7,)))
    compiled.load_state_dict(plain.state_dict())
    compile_network(compiled)
    torch._dynamo.reset()
    counters.clear()

    def both(width: int) -> None:
        torch.manual_seed(width)
        x = torch.randint(1, 21, (6, width), dtype=torch.uint8)
        x[1:, width // 2 :] = alphabet.PAD
        a, b = plain(x), compiled(x)
        (a.square().sum() + b.square().sum()).backward()
        assert torch.allclose(a, b, atol=1e-5)
        pairs = zip(plain.parameters(), compiled.parameters(), strict=True)
        assert all(torch.allclose(p.grad, q.grad, atol=1e-4) for p, q in pairs)
        plain.zero_grad()
        compiled.zero_grad()

    try:
        plain.eval()  # no dropout: the two would draw differently
        compiled.eval()
        both(99)
        both(100)
        graphs = counters["stats"]["unique_graphs"]
        for width in (37, 150, 211, 302, 405, 660):
            both(width)
        assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
