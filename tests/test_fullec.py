"""Full EC numbers: multi-label targets, hierarchy-consistent decoding, calibration, metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream.calibrate import (
    expected_calibration_error,
    fit_confidence_map,
    fit_temperature,
    identity_confidence,
    identity_curve,
    precision_thresholds,
    top_prediction,
)
from ecstream.ecmetrics import LevelScores, _counts_at, _hundredths
from ecstream.evaluate import evaluate
from ecstream.hierarchy import (
    Call,
    apply_map,
    calibrated,
    decode,
    level_probabilities,
    stated,
    top_indices,
    top_numbers,
)
from ecstream.labels import ECVocabulary, stated_levels
from ecstream.predict import predict_file, sidecar
from ecstream.predictors import load_model
from ecstream.report import families_table
from ecstream.runs import RunError
from ecstream.train import TrainConfig, level_loss, train

TEXTS = ["1.1.1.1", "1.1.1.2", "1.2.3.4", "2.7.7.7", "2.7.7.7; 3.1.11.1", "3.1.-.-", "6.3.4.6"]


@pytest.fixture(scope="module")
def vocab() -> ECVocabulary:
    return ECVocabulary.from_texts(TEXTS)


@pytest.fixture(scope="module")
def ec_run(small_store, tmp_path_factory):
    """A full-EC CNN trained briefly on the small store (calibrated on its validation split)."""
    out = tmp_path_factory.mktemp("runs") / "ec"
    config = TrainConfig(target="ec", epochs=2, batch_size=32, limit_train_batches=10,
                         progress=False, accelerator="cpu")  # fmt: skip
    return train(small_store.path, out, config).run


# ----------------------------------------------------------------------------- labels


def test_real_multi_ec_rows_give_multi_label_targets(data_path, small_store):
    multi = [
        e for chunk in small_store.records("train") for e in chunk.ecs if ";" in e
    ]  # several numbers within one class: kept by every store
    assert multi, "the first 3,000 real rows hold rows with several EC numbers"
    vocab = small_store.vocabulary()
    targets, known = vocab.targets(multi)
    for text, row, depth in zip(multi, targets, known, strict=True):
        numbers = {n.strip() for n in text.split(";")}
        level4 = [vocab.classes[3][k] for k in np.flatnonzero(row[vocab.offsets[3] :])]
        assert set(level4) == numbers  # every number is a positive at level 4
        assert depth.all()
    assert (targets[:, vocab.offsets[3] :].sum(axis=1) >= 2).all()


def test_partial_numbers_supervise_only_the_levels_they_state(vocab):
    targets, known = vocab.targets(["3.1.-.-", "2.7.7.7; 3.1.-.-", "1.1.1.1"])
    assert known.tolist() == [[True, True, False, False]] * 2 + [[True] * 4]
    assert stated_levels("3.1.-.-") == 2 and stated_levels("1.1.1.1") == 2 + 2
    # the loss does not depend on the logits of levels a record does not state
    logits = torch.randn(3, int(vocab.offsets[-1]))
    y, k = torch.from_numpy(targets), torch.from_numpy(known)
    offsets = vocab.offsets.tolist()
    base = level_loss(logits, y, k, offsets)
    moved = logits.clone()
    moved[:2, offsets[2] :] += torch.randn(2, offsets[-1] - offsets[2]) * 10
    assert torch.allclose(level_loss(moved, y, k, offsets), base)
    moved[2, offsets[3] :] += 5.0 * torch.arange(offsets[-1] - offsets[3])
    assert not torch.allclose(level_loss(moved, y, k, offsets), base)


def test_label_smoothing_spreads_a_share_of_each_level_over_its_classes(vocab):
    targets, known = vocab.targets(["2.7.7.7; 3.1.-.-", "1.1.1.1"])
    logits = torch.randn(2, int(vocab.offsets[-1]))
    y, k, offsets = torch.from_numpy(targets), torch.from_numpy(known), vocab.offsets.tolist()
    expected = []
    for level in range(4):
        rows = k[:, level]
        z = logits[rows, offsets[level] : offsets[level + 1]]
        q = y[rows, offsets[level] : offsets[level + 1]].double()
        q = 0.8 * q / q.sum(1, keepdim=True) + 0.2 / z.shape[1]
        expected.append(-(q * torch.log_softmax(z.double(), 1)).sum(1).mean())
    smoothed = level_loss(logits, y, k, offsets, smoothing=0.2)
    assert torch.isclose(smoothed.double(), torch.stack(expected).mean(), rtol=1e-5)
    assert not torch.isclose(smoothed, level_loss(logits, y, k, offsets))


def test_vocabulary_keeps_rare_numbers_and_its_parents_are_right(vocab):
    assert vocab.classes[0] == tuple("1234567") and vocab.sizes[3] == 6
    # classes with one training record or none: kept, nothing merged, nothing dropped
    assert vocab.rare(below=2) == [4, 2, 3, 5]
    for level in range(1, 4):
        for k, key in enumerate(vocab.classes[level]):
            parent = vocab.classes[level - 1][vocab.parents[level][k]]
            assert key.rsplit(".", 1)[0] == parent
    again = ECVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab


# ----------------------------------------------------------------------------- hierarchy


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
    st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=4, max_size=4),
    st.booleans(),
)
def test_decoded_outputs_are_hierarchy_consistent(rows, seed, thresholds, mapped):
    vocab = ECVocabulary.from_texts(TEXTS)
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(rows, int(vocab.offsets[-1])))
    temps = rng.uniform(0.3, 3, size=4).tolist()
    # random non-decreasing confidence maps, as calibration fits them: deeper levels raised
    maps = [[[0.0, *np.sort(rng.uniform(0, 1, 3)), 1.0], [0.0, *np.sort(rng.uniform(0, 1, 3)), 1.0]]
            for _ in range(4)] if mapped else None  # fmt: skip
    probs = calibrated(level_probabilities(logits, vocab, temps), vocab, maps)
    for level in range(1, 4):  # a child is never more probable than its parent
        assert (probs[level] <= probs[level - 1][:, vocab.parents[level]] + 1e-7).all()
    marks = stated(probs, vocab, thresholds)
    for row, calls in enumerate(decode(probs, vocab, thresholds)):
        numbers = [c.number for c in calls]
        assert len(numbers) == len(set(numbers))
        for call in calls:
            parts = call.number.split(".")
            assert parts[call.depth :] == ["-"] * (4 - call.depth)
            for level in range(call.depth):  # every stated level clears its threshold
                key = ".".join(parts[: level + 1])
                k = vocab.index(level + 1, key)
                assert thresholds[level] is not None and probs[level][row, k] >= thresholds[level]
                assert marks[level][row, k]
            k = vocab.index(call.depth, ".".join(parts[: call.depth]))
            assert call.confidence == pytest.approx(float(probs[call.depth - 1][row, k]))
        # confidence never grows with depth along a number
        assert [c.confidence for c in calls] == sorted((c.confidence for c in calls), reverse=True)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_top_numbers_are_the_most_probable_deepest_classes_in_order(rows, k, seed):
    vocab = ECVocabulary.from_texts(TEXTS)
    deepest = np.random.default_rng(seed).permutation(rows * vocab.sizes[-1]).astype(np.float32)
    deepest = deepest.reshape(rows, -1) / deepest.size  # distinct values: one right answer
    for r, top in enumerate(top_numbers(deepest, vocab, k)):
        expected = np.argsort(-deepest[r])[: min(k, vocab.sizes[-1])]
        assert [key for key, _ in top] == [vocab.classes[3][c] for c in expected]
        assert [p for _, p in top] == [float(deepest[r, c]) for c in expected]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_top_indices_break_ties_by_column_as_a_stable_sort(rows, width, k, seed):
    # few distinct values (many zeros, as after a confidence map): ties across the cut are common
    rng = np.random.default_rng(seed)
    scores = rng.choice(np.array([0, 0, 0, 0.25, 0.5, 1], np.float32), size=(rows, width))
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert top_indices(scores, k).tolist() == expected.tolist()


def test_an_uncertain_protein_gets_a_partial_number_and_several_when_several_clear(vocab):
    probs = [np.zeros((2, n), np.float32) for n in vocab.sizes]
    # row 0: sure of class 2 and of 2.7, split between nothing deeper → 2.7.-.-
    probs[0][0, 1], probs[1][0, vocab.index(2, "2.7")] = 0.97, 0.95
    probs[2][0, vocab.index(3, "2.7.7")] = 0.4
    # row 1: two full numbers both clear every threshold
    for key in ("1.1.1.1", "6.3.4.6"):
        for level in range(1, 5):
            prefix = ".".join(key.split(".")[:level])
            probs[level - 1][1, vocab.index(level, prefix)] = 0.92 if key[0] == "1" else 0.91
    calls = decode(probs, vocab, [0.9, 0.9, 0.9, 0.9])
    assert calls[0] == [Call("2.7.-.-", 2, pytest.approx(0.95))]
    assert [c.number for c in calls[1]] == ["1.1.1.1", "6.3.4.6"]
    assert decode(probs, vocab, [0.9, None, None, None])[0] == [
        Call("2.-.-.-", 1, pytest.approx(0.97))
    ]


# ----------------------------------------------------------------------------- calibration


def test_temperature_scaling_improves_calibration_on_a_held_out_slice():
    rng = np.random.default_rng(0)
    n, c = 6000, 8
    true_logits = rng.normal(0, 1.5, size=(n, c))
    labels = np.array([rng.choice(c, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    logits = 3.0 * true_logits  # an overconfident model: the right ranking, too sharp
    onehot = np.eye(c, dtype=np.uint8)[labels]
    fit, held = slice(0, n // 2), slice(n // 2, n)
    t = fit_temperature(logits[fit], onehot[fit])
    assert 2.5 < t < 3.5

    def ece(temperature: float) -> float:
        z = logits[held] / temperature
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return expected_calibration_error(p.max(1), p.argmax(1) == labels[held])

    assert ece(t) < 0.03 < ece(1.0)


def test_confidence_maps_calibrate_an_underconfident_level_on_a_held_out_slice():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.05, 1.0, size=8000)
    correct = rng.uniform(size=8000) < np.sqrt(confidence)  # right more often than it says
    fit, held = slice(0, 4000), slice(4000, 8000)
    xs, ys = fit_confidence_map(confidence[fit], correct[fit])
    assert xs == sorted(xs) and ys == sorted(ys) and (xs[0], ys[0], xs[-1], ys[-1]) == (0, 0, 1, 1)
    before = expected_calibration_error(confidence[held], correct[held])
    after = expected_calibration_error(np.interp(confidence[held], xs, ys), correct[held])
    assert after < 0.03 < before


def test_a_saturated_confidence_maps_to_its_own_accuracy_not_to_one():
    """float32 softmax saturates at 1.0: a block of such confidences, right 3 times in 4,
    maps 1.0 to 0.75 (the end knot at (1, 1) had sent it to 1.0, above 0.99999994), in maps
    fitted now and in those stored by earlier versions."""
    top = np.array([0.5, 1, 1, 1, 1], np.float32)
    xs, ys = fit_confidence_map(top, np.array([0, 1, 1, 1, 0]))
    assert (xs[-1], ys[-1]) == (1.0, 0.75)
    old = [[0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.75, 1.0]]  # as an earlier version stored it
    for knots in ([xs, ys], old):
        mapped = apply_map(np.array([1.0, 0.99999994], np.float32), *knots)
        assert mapped[0] == pytest.approx(0.75) and mapped[0] >= mapped[1]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([0.0, 0.2, 0.5, 0.5, 0.7, 0.99, 1.0, 1.0]), st.booleans()),
        min_size=1, max_size=40,
    ),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_a_confidence_map_depends_on_the_rows_not_their_order(rows, seed):
    """Equal confidences (a saturated softmax's 1.0) are one point: the map is the same for
    any order of the validation rows, and its knots increase strictly (a map fitted on the
    order of the rows gave 1.0 either 0.75 or 1.0 for the same rows)."""
    confidence, correct = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    order = np.random.default_rng(seed).permutation(len(rows))
    xs, ys = fit_confidence_map(confidence, correct)
    assert [xs, ys] == fit_confidence_map(confidence[order], correct[order])
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0) and (xs[0], xs[-1]) == (0, 1)
    if (confidence == 1.0).any():  # the isotonic fit at the largest x, not the end knot's 1
        best_suffix = max(correct[confidence >= c].mean() for c in np.unique(confidence))
        assert apply_map(np.array([1.0]), xs, ys)[0] == pytest.approx(best_suffix)


def test_rows_without_a_prediction_are_not_right_in_the_calibration_report():
    """A kNN's query without a hit scores zeros: its top 'class' is no prediction, so the
    calibration report's ECE is 0 there, as evaluate's is (it counted them right: ECE 1)."""
    probs = np.zeros((4, 3), np.float32)
    true = np.zeros((4, 3), bool)
    true[:, 0] = True
    conf, right = top_prediction(probs, true)
    assert not right.any() and expected_calibration_error(conf, right) == 0.0


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0, 1), min_size=1, max_size=20),
    wide=st.booleans(),
)
def test_thresholds_count_a_probability_as_a_decoding_compares_it(values, wide):
    """Fmax and the coverage curve count a probability at τ = k/100 exactly when a decoding
    at that threshold states it (``p >= τ`` in the probabilities' dtype): 0.29 in float64 and
    0.53 in float32 were counted one threshold lower."""
    p = np.array([*values, 0.29, 0.53, 0.57, 0.58], dtype=np.float64 if wide else np.float32)
    expected = [max(k for k in range(101) if v >= p.dtype.type(k / 100)) for v in p]
    assert _hundredths(p).tolist() == expected
    counts = [int((p >= p.dtype.type(k / 100)).sum()) for k in range(1, 101)]
    assert _counts_at(p[None, :])[0].tolist() == counts  # Fmax's counts per threshold
    # what is no probability counts at no threshold (NaN was an IndexError)
    assert _hundredths(np.array([np.nan, -0.5, 0.0, 1.0], p.dtype)).tolist() == [0, 0, 0, 100]


def test_lifting_keeps_the_deepest_ranking_and_raises_parents(vocab):
    """A mapped child above its parent raises the parent (bottom-up), not the child capped."""
    probs = [np.zeros((1, n), np.float32) for n in vocab.sizes]
    probs[0][0, 1] = probs[1][0, vocab.index(2, "2.7")] = probs[2][0, vocab.index(3, "2.7.7")] = 0.6
    probs[3][0, vocab.index(4, "2.7.7.7")] = 0.5
    probs[0][0, 0] = probs[1][0, vocab.index(2, "1.1")] = probs[2][0, vocab.index(3, "1.1.1")] = 0.4
    probs[3][0, vocab.index(4, "1.1.1.1")] = 0.3
    lift_deep = [[[0.0, 1.0], [0.0, 1.0]]] * 3 + [[[0.0, 0.5, 1.0], [0.0, 0.9, 1.0]]]
    out = calibrated(probs, vocab, lift_deep)
    deep = out[3][0]
    assert deep[vocab.index(4, "2.7.7.7")] == pytest.approx(0.9)  # mapped, not capped at 0.6
    assert deep.argmax() == vocab.index(4, "2.7.7.7")
    for level, key in ((0, "2"), (1, "2.7"), (2, "2.7.7")):
        k = 1 if level == 0 else vocab.index(level + 1, key)
        assert out[level][0, k] == pytest.approx(0.9)  # raised to its child
    assert out[3][0, vocab.index(4, "1.1.1.1")] == pytest.approx(0.54)  # 0.3 on the map
    assert out[0][0, 0] == pytest.approx(0.54)  # class 1 raised from 0.4 to its number's 0.54


def test_thresholds_reach_the_precision_with_the_best_f1():
    vocab = ECVocabulary.first_level()
    # confidences of the top class with whether it is right: precision ≥ 0.9 down to 0.6
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4])
    right = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    probs = np.zeros((10, 7), np.float32)
    probs[:, 0] = conf
    truth = np.zeros((10, 7), np.uint8)
    truth[right, 0] = 1
    truth[~right, 1] = 1
    known = np.ones((10, 1), bool)
    [t] = precision_thresholds([probs], [truth], known, vocab.parents)
    assert t == pytest.approx(0.6)  # at 0.55 the precision drops to 6/7 < 0.9
    [none] = precision_thresholds([probs], [truth], known, vocab.parents, target=1.01)
    assert none is None
    # precise at every threshold (like a hybrid's homologs): the lowest would state the noise
    # too (18 of 20 right: 0.90); the best F1 among the precise ones leaves it out
    probs[:, 0], truth[:] = 0, 0
    probs[:9, 0], probs[9, 1] = 0.99, 0.01
    truth[:9, 0], truth[9, 0] = 1, 1
    probs = np.concatenate([probs, probs])
    truth = np.concatenate([truth, truth])
    [t] = precision_thresholds([probs], [truth], np.ones((20, 1), bool), vocab.parents)
    assert t == pytest.approx(0.99)


def test_homolog_confidence_is_a_non_decreasing_function_of_identity():
    identity = np.array([0.2, 0.25, 0.35, 0.45, 0.55, 0.95, 0.97, 1.0])
    right = np.array([0, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
    curve = identity_curve(identity, right)
    # below 0.3: 1 of 2 right; 0.3-0.4: 0 of 1 — a violation, pooled to 1 of 3
    assert curve == sorted(curve) and curve[:2] == pytest.approx([1 / 3, 1 / 3])
    conf = identity_confidence(np.array([np.nan, 0.1, 0.96]), curve)
    assert conf[0] == 0.0 and conf[1] == pytest.approx(1 / 3) and conf[2] == 1.0
    # bins without a validation hit are no evidence against a homolog: below the first bin
    # with hits they take its value (2 of 3 right at 0.7-0.8 pool to 2/3), not 0
    curve = identity_curve(np.array([0.72, 0.75, 0.85]), np.array([1, 1, 0], dtype=bool))
    assert curve[:6] == pytest.approx([2 / 3] * 6) and curve == sorted(curve)


# ----------------------------------------------------------------------------- metrics


def test_level_metrics_match_a_hand_computed_example(vocab):
    truth = ["1.1.1.1", "2.7.7.7; 3.1.11.1", "3.1.-.-", "6.3.4.6"]
    calls = [
        [Call("1.1.1.1", 4, 0.9)],  # right to level 4
        [Call("2.7.7.7", 4, 0.8), Call("1.1.-.-", 2, 0.7)],  # one right, one wrong number
        [Call("3.1.11.1", 4, 0.6)],  # right at levels 1-2; levels 3-4 unknown in the truth
        [],  # no prediction
    ]
    l1 = np.zeros((4, 7), np.float32)
    l1[0, 0], l1[1, 1], l1[2, 2], l1[3, 0] = 0.9, 0.8, 0.6, 0.3
    level1 = LevelScores(1, vocab)
    level1.update(truth, l1, calls)
    r = level1.result()
    # level 1 sets: {1}⊂{1}; {2,1} vs {2,3}; {3}={3}; {} vs {6}: TP 3, FP 1, FN 2
    assert r["records"] == 4 and r["predicted_records"] == 3
    assert r["micro"]["precision"] == pytest.approx(3 / 4)
    assert r["micro"]["recall"] == pytest.approx(3 / 5)
    assert r["micro"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    # weighted by support: classes 1 (P 1/2, R 1), 2 (1, 1), 3 (1, 1/2), 6 (0, 0); support 1,1,2,1
    p = (0.5 * 1 + 1 * 1 + 1 * 2 + 0 * 1) / 5
    rec = (1 * 1 + 1 * 1 + 0.5 * 2 + 0 * 1) / 5
    assert r["weighted"]["precision"] == pytest.approx(p)
    assert r["weighted"]["recall"] == pytest.approx(rec)
    # top prediction: classes 1, 2, 3, 1 against {1}, {2,3}, {3}, {6}: 3 of 4
    assert r["top_accuracy"] == pytest.approx(0.75)
    # Fmax: at τ ≤ 0.3 every row predicts its top class: P = 3/4, R = (1 + 1/2 + 1 + 0)/4;
    # at 0.3 < τ ≤ 0.6 the last row predicts nothing: P = 1, R = 0.625 (the maximum)
    assert r["fmax"] == pytest.approx(2 * 1.0 * 0.625 / 1.625)
    assert r["fmax_threshold"] == pytest.approx(0.31)
    level3 = LevelScores(3, vocab)
    level3.update(truth, None, calls)
    # level 3 leaves out the record whose truth stops at level 2
    assert level3.result()["records"] == 3


# ----------------------------------------------------------------------------- runs


def test_a_full_ec_run_predicts_every_level_and_says_so(ec_run, small_store, tmp_path):
    config = json.loads((ec_run / "config.json").read_text())
    calibration = json.loads((ec_run / "calibration.json").read_text())
    vocab = ECVocabulary.from_dict(config["vocabulary"])
    assert config["train"]["target"] == "ec" and vocab.depth == 4
    assert len(calibration["temperatures"]) == 4 and len(calibration["thresholds"]) == 4
    assert len(calibration["confidence_maps"]) == 4
    assert (ec_run / "reliability.png").stat().st_size > 1000
    model = load_model(ec_run)
    first = next(small_store.records("test"))
    texts = [s.decode() for s in first.seqs[:20]]
    calls = model.predict_ec(texts, min_confidence=0.0)
    assert all(c[0].depth == 4 for c in calls)  # at 0 every level is stated
    fasta = tmp_path / "q.fasta"
    long = "M" + "ACDEFGHIKLMNPQRSTVWY" * 250  # 5,001 residues
    fasta.write_text(f">long\n{long}\n" + "".join(f">p{i}\n{t}\n" for i, t in enumerate(texts)))
    out = tmp_path / "p.tsv"
    summary = predict_file(model, fasta, out, min_confidence=0.2)
    assert summary["scored"] == 21 and summary["errors"] == 0
    lines = out.read_text().splitlines()
    header = lines[0].split("\t")
    for column in ("ec_number", "confidence", "depth", "ec_top_k", "ec_class", "p_1", "top_k"):
        assert column in header
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert rows[0]["id"] == "long" and rows[0]["length"] == "5001"
    for row in rows:
        depth = int(row["depth"])
        first_number = row["ec_number"].split(";")[0]
        assert (depth == 0) == (row["ec_number"] == "")
        if depth:
            assert first_number.count("-") == 4 - depth and float(row["confidence"]) >= 0.2
        assert len(row["ec_top_k"].split("; ")) == 3
    meta = json.loads(sidecar(out).read_text())
    assert meta["thresholds"] == [0.2] * 4 and meta["thresholds_from"] == "--min-confidence"
    assert len(meta["model_sha256"]) == 64 and meta["kind"] == "cnn"


def test_bf16_scoring_is_used_when_asked_and_stays_close_to_float32(ec_run, small_store, tmp_path):
    seqs = next(small_store.records("test")).seqs[:64]
    exact, fast = load_model(ec_run), load_model(ec_run, precision="bf16")
    logits32, logits16 = exact.all_logits(seqs), fast.all_logits(seqs)
    assert not np.array_equal(logits32, logits16)  # bfloat16 products really ran
    # bfloat16 keeps 8 bits of mantissa: a logit moves by < 1% of its size, plus a little
    assert (np.abs(logits32 - logits16) <= 0.01 * np.abs(logits32) + 0.05).all()
    # the class: a row whose two best level-1 logits lie further apart than both can move
    # keeps its answer (nearer ones may flip; how near depends on how the run was trained).
    # Not the calibrated probabilities: their maps are steps, whose ties a tiny move can break.
    first32, first16 = logits32[:, :7], logits16[:, :7]
    top2 = np.sort(first32, axis=1)[:, -2:]
    moves = 0.01 * np.abs(top2) + 0.05
    clear = top2[:, 1] - top2[:, 0] > moves.sum(axis=1)
    assert (first32.argmax(1) == first16.argmax(1))[clear].all() and clear.sum() > len(seqs) / 2
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">p{i}\n{s.decode()}\n" for i, s in enumerate(seqs)))
    predict_file(fast, fasta, tmp_path / "p.tsv")
    assert json.loads(sidecar(tmp_path / "p.tsv").read_text())["scoring_precision"] == "bf16"
    result = evaluate(ec_run, small_store.path, tmp_path / "eval", bands=False, precision="bf16")
    assert result["scoring_precision"] == "bf16"
    with pytest.raises(ValueError, match="--precision must be one of 32, bf16"):
        load_model(ec_run, precision="16")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bfloat16_units_is_warned_about(ec_run, monkeypatch, native):
    import warnings

    from ecstream.predictors import cnn

    monkeypatch.setattr(cnn, "native_bf16", lambda device: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(ec_run, precision="bf16")
        load_model(ec_run)  # float32 never warns
    emulated = [w for w in caught if issubclass(w.category, cnn.EmulatedBF16Warning)]
    assert len(emulated) == (0 if native else 1)
    if emulated:  # one line naming the run, saying what to do
        assert emulated[0].filename == str(ec_run) and "float32" in str(emulated[0].message)


def test_a_class_run_fills_the_ec_columns_at_depth_one(cnn_run, tmp_path):
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVGLLLAAQPAMAKKLLLAAAGGHHH\n")
    model = load_model(cnn_run)
    top = float(model.predict(["MKVLAAGIVGLLLAAQPAMAKKLLLAAAGGHHH"]).max())
    predict_file(model, fasta, tmp_path / "p.tsv", min_confidence=top)  # the top class only
    header, row = (line.split("\t") for line in (tmp_path / "p.tsv").read_text().splitlines())
    row = dict(zip(header, row, strict=True))
    assert row["depth"] == "1" and row["ec_number"] == f"{row['ec_class']}.-.-.-"
    assert float(row["confidence"]) == pytest.approx(float(row["probability"]), abs=1e-3)


def test_evaluate_reports_levels_and_keeps_the_level_one_keys(
    ec_run, cnn_run, small_store, tmp_path
):
    result = evaluate_levels(ec_run, small_store, tmp_path / "ec")
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(result)
    assert [level["level"] for level in result["levels"]] == [1, 2, 3, 4]
    for level in result["levels"]:
        assert 0 <= level["micro"]["f1"] <= 1 and 0 <= level["fmax"] <= 1
        assert "ece_uncalibrated" in level and level["identity_bands"]
    assert (tmp_path / "ec" / "precision_coverage.png").is_file()
    classes = evaluate_levels(cnn_run, small_store, tmp_path / "cls")
    assert [level["level"] for level in classes["levels"]] == [1]


def test_records_in_several_classes_are_counted_and_an_evaluation_is_replaced_whole(
    ec_run, cnn_run, small_store, tmp_path
):
    from ecstream.atomic import OutputRefusedError

    records = next(small_store.records("test"))
    seq = records.seqs[0].decode()
    labelled = tmp_path / "several.tsv"
    labelled.write_text(f"Entry\tEC number\tSequence\nm1\t1.1.1.1; 2.7.7.7\t{seq}\n")
    out = tmp_path / "ev"
    result = evaluate(ec_run, labelled, out, bands=False, allow_seen=True, families=True)
    assert result["n"] == 0 and result["several_classes"] == 1  # no class table, no crash
    assert result["families"]["all"]["n"] == 0 and families_table(result) is None
    assert [level["records"] for level in result["levels"]] == [1, 1, 1, 1]
    assert (out / "learning_curves.png").is_file()

    # evaluated again by a run without a training history: the earlier folder goes whole,
    # its learning curves with it (they were the other run's)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ec_run.iterdir():  # as a run from before checksums: nothing says what it lacks
        if f.is_file() and f.name not in ("metrics.csv", "checksums.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    evaluate(bare, labelled, out, bands=False, allow_seen=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.npz", "confusion.png", "metrics.json", "precision_coverage.png",
    ]  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["run"] == str(bare.resolve())

    # through a link to the folder: the folder is replaced, the link stays; the hidden lock
    # and temporary a killed writer of older versions left inside do not stop it
    (out / ".metrics.json.lock").write_text("")
    (out / ".confusion.png.tmp-1-abc").write_text("")
    link = tmp_path / "link"
    link.symlink_to(out)
    evaluate(ec_run, labelled, link, bands=False, allow_seen=True)
    assert link.is_symlink() and not any(p.name.startswith(".") for p in out.iterdir())
    assert json.loads((out / "metrics.json").read_text())["run"] == str(ec_run.resolve())

    # a folder holding anything else is not an evaluation's to replace
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefusedError, match="not an evaluation's"):
        evaluate(ec_run, labelled, out, bands=False, allow_seen=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_families_follow_the_class_rows_when_some_span_several_classes(
    ec_run, small_store, tmp_path, monkeypatch
):
    """A full-EC run scores every row but measures the class on rows of one class: only those
    are clustered, in order. Rows spanning several classes come first here (given family 0,
    were they clustered); each row of one class is a family of its own. A clustering of
    another length (the file changed between passes) is refused."""
    import ecstream.evaluate as ev
    from ecstream.hashing import hash64

    records = next(small_store.records("test"))
    several = [(f"m{i}", "1.1.1.1; 2.7.7.7", records.seqs[i].decode()) for i in range(3)]
    one = [(f"s{i}", e, records.seqs[i].decode()) for i, e in enumerate(records.ecs[3:30], 3)
           if ";" not in e]  # fmt: skip
    labelled = tmp_path / "mixed.tsv"
    rows = [*several, *one]
    labelled.write_text("Entry\tEC number\tSequence\n" + "".join("\t".join(r) + "\n" for r in rows))
    own = {rid: (0 if rid.startswith("m") else k) for k, (rid, _, _) in enumerate(rows, 1)}
    asked: list[str] = []

    def families_of(queries, work):
        ids = [q for q, _ in queries]
        asked.extend(ids)
        return np.array([own[q] for q in ids])

    monkeypatch.setattr(ev, "families_of", families_of)
    result = evaluate(ec_run, labelled, tmp_path / "ev", bands=False, allow_seen=True,
                      families=True)  # fmt: skip
    fam = result["families"]["all"]
    assert asked == [r[0] for r in one]
    assert result["several_classes"] == 3 and result["n"] == len(one)
    assert fam["n"] == fam["families"] == len(one) and fam["largest_family"] == 1 / len(one)
    assert fam["accuracy"] == result["accuracy"] and "bands" not in result["families"]
    with np.load(tmp_path / "ev" / "classes.npz") as kept:  # the class rows, in order
        assert (kept["hash"] == hash64([r[2].encode() for r in one])).all()
        assert (kept["family"] == [own[r[0]] for r in one]).all()
        assert len(kept["true"]) == len(kept["predicted"]) == len(one)
    monkeypatch.setattr(ev, "families_of", lambda queries, work: np.arange(len(list(queries)) + 1))
    with pytest.raises(RunError, match="changed while it was evaluated"):
        evaluate(ec_run, labelled, tmp_path / "ev2", bands=False, allow_seen=True, families=True)
    assert not (tmp_path / "ev2").exists()


def test_a_full_ec_evaluation_gives_families_and_comparisons_per_level(
    ec_run, cnn_run, small_store, tmp_path, mmseqs
):
    """A full-EC run's evaluation keeps each class row's top prediction per level: with
    ``--families`` each level gets its accuracy over families (level 1 is the class accuracy),
    and ``compare`` pairs two full-EC evaluations level by level, not a class run's."""
    import shutil

    from rich.console import Console

    from ecstream.compare import CompareError, compare
    from ecstream.evaluate import in_one_class
    from ecstream.hashing import file_sha256

    ev = tmp_path / "ec"
    result = evaluate(ec_run, small_store.path, ev, split="test", families=True, bands=False)
    levels = result["families"]["levels"]
    assert len(levels) == 4 and levels[0]["accuracy"] == pytest.approx(result["accuracy"])
    chunks = small_store.records("test")
    several = [
        e for r in chunks for e, one in zip(r.ecs, in_one_class(r.ecs), strict=True) if not one
    ]
    for k, (mine, overall) in enumerate(zip(levels, result["levels"], strict=True), 1):
        stating = sum(stated_levels(e) >= k for e in several)  # measured there, not here
        assert mine["n"] == overall["records"] - stating and 0 < mine["families"] <= mine["n"]
    printed = Console(width=200, record=True)
    printed.print(families_table(result))
    assert "level 4, top" in printed.export_text()
    with np.load(ev / "classes.npz") as npz:
        tops, right = npz["level_top"], npz["predicted"] == npz["true"]
    assert tops.shape == (4, result["n"])
    assert ((tops[0] == 1) == right).all()  # level 1's top is the class, protein by protein
    assert [int((t >= 0).sum()) for t in tops] == [lv["n"] for lv in levels]

    itself = compare(ev, ev)["levels"]
    assert [lv["difference"] for lv in itself] == [0.0] * 4
    other = tmp_path / "right-at-level-2"  # B right at level 2 wherever it is measured
    shutil.copytree(ev, other)
    better = tops.copy()
    better[1][better[1] >= 0] = 1
    with np.load(ev / "classes.npz") as npz:
        arrays = dict(npz)
    np.savez(other / "classes.npz", **{**arrays, "level_top": better})
    meta = json.loads((other / "metrics.json").read_text())
    meta["class_rows"]["sha256"] = file_sha256(other / "classes.npz")
    (other / "metrics.json").write_text(json.dumps(meta))
    paired = compare(ev, other)["levels"]
    assert paired[1]["difference"] == pytest.approx(levels[1]["accuracy"] - 1.0)
    assert paired[1]["interval"][1] <= 0 and paired[0]["difference"] == 0
    np.savez(other / "classes.npz", **{**arrays, "level_top": better[:3]})  # a level short
    meta["class_rows"]["sha256"] = file_sha256(other / "classes.npz")
    (other / "metrics.json").write_text(json.dumps(meta))
    with pytest.raises(CompareError, match="'level_top' is not"):
        compare(ev, other)
    kept = {k: v for k, v in arrays.items() if k != "level_top"}  # as evaluated before
    np.savez(other / "classes.npz", **kept)
    meta["class_rows"]["sha256"] = file_sha256(other / "classes.npz")
    (other / "metrics.json").write_text(json.dumps(meta))
    earlier = compare(ev, other)
    assert "levels" not in earlier and "evaluate it again" in earlier["levels_skipped"]
    assert earlier["all"]["difference"] == 0  # the class accuracy is still compared
    class_ev = tmp_path / "class"
    evaluate(cnn_run, small_store.path, class_ev, split="test", bands=False)
    against_class = compare(ev, class_ev)
    assert "levels" not in against_class and "same depth" in against_class["levels_skipped"]


def test_a_damaged_or_foreign_model_file_is_named_in_one_line(ec_run, cnn_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ec_run.iterdir():  # without checksums, which would name the damage first
        if f.is_file() and f.name != "checksums.json":
            (copy / f.name).write_bytes(f.read_bytes())
    weights = (ec_run / "model.pt").read_bytes()
    damaged = {
        "cut": weights[: len(weights) // 2],
        "empty": b"",
        "noise": bytes(range(256)) * 64,
    }
    for what, data in damaged.items():
        (copy / "model.pt").write_bytes(data)
        with pytest.raises(RunError, match=r"model\.pt: damaged, or not an ecstream model") as e:
            load_model(copy)
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value), what
    (copy / "model.pt").write_bytes((cnn_run / "model.pt").read_bytes())  # a class run's
    with pytest.raises(RunError, match=r"classes per level, but its run has .* another run's"):
        load_model(copy)


def test_a_run_missing_its_calibration_or_with_a_damaged_seen_record_says_so(
    ec_run, small_store, tmp_path, capsys
):
    from ecstream.cli import main
    from ecstream.evaluate import SeenRecordsError
    from ecstream.predictors.cnn import CalibrationMissingWarning

    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ec_run.iterdir():  # as a run from before calibration (and checksums)
        if f.is_file() and f.name not in ("calibration.json", "checksums.json"):
            (copy / f.name).write_bytes(f.read_bytes())
    with pytest.warns(CalibrationMissingWarning, match="no calibration.json"):
        model = load_model(copy)
    assert model.level_thresholds() == [0.5] * 4

    (copy / "seen.npz").write_bytes((ec_run / "seen.npz").read_bytes()[:100])  # cut short
    with pytest.raises(SeenRecordsError, match=r"seen\.npz: damaged"):
        evaluate(copy, small_store.path, tmp_path / "ev", bands=False)
    result = evaluate(copy, small_store.path, tmp_path / "ev", bands=False, allow_seen=True)
    assert result["seen"]["checked"] is False and "damaged" in result["seen"]["why"]

    with pytest.raises(SystemExit) as exit_info:  # 0 would list every number of the run
        main(["predict", str(ec_run), "x.faa", "--out", "o.tsv", "--min-confidence", "0"])
    assert exit_info.value.code == 2 and "must be above 0" in capsys.readouterr().err


def test_a_hand_edited_run_config_is_named_in_one_line(ec_run, tmp_path):
    config = json.loads((ec_run / "config.json").read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ec_run.iterdir():  # without checksums, which would name the edit first
        if f.is_file() and f.name != "checksums.json":
            (copy / f.name).write_bytes(f.read_bytes())
    edits = {
        "lacks the entry 'labels'": {k: v for k, v in config.items() if k != "labels"},
        "entry 'train' is not an object": {**config, "train": None},
        "not an ecstream run config": [config],
    }
    for why, edited in edits.items():
        (copy / "config.json").write_text(json.dumps(edited))
        with pytest.raises(RunError, match=why):
            load_model(copy)
    hybrid = tmp_path / "hybrid"  # a hybrid whose CNN run has moved says which run it lacks
    hybrid.mkdir()
    moved = str(tmp_path / "moved")
    hybrid_config = {**config, "kind": "hybrid", "cnn_run": moved, "knn_run": moved}
    (hybrid / "config.json").write_text(json.dumps(hybrid_config))
    with pytest.raises(RunError, match=r"a hybrid of runs that cannot be read: .*moved"):
        load_model(hybrid)


def evaluate_levels(run, store, out):
    from ecstream.evaluate import evaluate

    return evaluate(run, store.path, out, split="test", bands=False)


def test_weighted_metrics_do_not_depend_on_the_hash_seed():
    """Two evaluations of one run give the same metrics.json: the weighted average sums its
    classes in a fixed order, not in the order of a set of strings (the hash seed's)."""
    import subprocess
    import sys

    code = (
        "import random\n"
        "from ecstream.ecmetrics import LevelScores\n"
        "from ecstream.labels import ECVocabulary\n"
        "s = LevelScores(1, ECVocabulary.from_texts(['1.1.1.1']))\n"
        "r = random.Random(0)\n"
        "for c in [f'{a}.{b}' for a in range(1, 8) for b in range(1, 30)]:\n"
        "    s.tp[c], s.fp[c], s.fn[c] = r.randint(0, 50), r.randint(0, 9), r.randint(1, 9)\n"
        "print(repr(s._weighted()))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3", "4")
    }  # fmt: skip
    assert len(outputs) == 1, outputs


def test_multi_class_is_refused_for_a_full_ec_run(small_store, tmp_path):
    """``--multi-class first`` changes nothing in a ``--target ec`` run (it learns every number
    of a row), so a new run is refused rather than recording a setting that did nothing."""
    config = TrainConfig(target="ec", multi_class="first", epochs=1, progress=False)
    with pytest.raises(ValueError, match="--multi-class applies to --target class runs"):
        train(small_store.path, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
