"""Families of evaluated proteins: the cluster bootstrap (numbers) and the clustering (real
MMseqs2), cached like searches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream.families import MIN_FAMILIES, family_accuracy, family_report, paired_difference
from ecstream.identity import BANDS
from ecstream.mmseqs import cluster
from ecstream.mmseqs.cluster import families_of
from ecstream.records import pairs


def test_one_large_family_widens_the_interval_that_many_small_ones_keep_narrow():
    """400 proteins, 82% right: as 400 families the interval is a few points wide; with 300 of
    them one family (all right), it spans most of what resampling that family in or out can
    give, and the family mean (each family once) sees the 100 others."""
    rng = np.random.default_rng(1)
    right = np.r_[np.ones(300, bool), rng.random(100) < 0.3]
    alone = family_accuracy(right, np.arange(400))
    together = family_accuracy(right, np.r_[np.zeros(300, int), np.arange(1, 101)])
    assert alone["accuracy"] == together["accuracy"] == right.mean()
    assert alone["families"] == 400 and together["families"] == 101
    assert together["largest_family"] == 0.75 and alone["largest_family"] == 1 / 400
    low, high = alone["interval"]
    assert low < right.mean() < high and high - low < 0.1
    low, high = together["interval"]
    assert high - low > 0.4  # with or without the large family: 0.3 to about 0.9
    assert together["family_mean"] == pytest.approx((1 + right[300:].sum()) / 101)
    assert family_accuracy(right, np.r_[np.zeros(300, int), np.arange(1, 101)]) == together


def test_an_empty_selection_has_no_figures_and_the_report_has_every_band():
    empty = family_accuracy(np.zeros(0, bool), np.zeros(0, int))
    assert empty["n"] == empty["families"] == 0 and empty["interval"] is None
    truth, predicted = np.array([2, 2, 0]), np.array([2, 1, 0])
    bands = np.array([BANDS[0], BANDS[0], BANDS[-1]])
    report = family_report(truth, predicted, np.array([5, 5, 9]), bands)
    assert list(report["bands"]) == list(BANDS)
    assert report["bands"][BANDS[0]]["families"] == 1 and report["bands"][BANDS[1]]["n"] == 0
    assert report["all"]["family_mean"] == pytest.approx((0.5 + 1) / 2)
    assert report["all"]["largest_class"]["accuracy"] == pytest.approx(2 / 3)  # class 2
    guess = {"accuracy": 1.0, "family_mean": 1.0, "interval": None}
    assert report["bands"][BANDS[-1]]["largest_class"] == guess
    assert report["all"]["interval"] is None  # two families: too few to resample
    assert "largest_class" not in report["bands"][BANDS[1]]
    assert "bands" not in family_report(truth, predicted, np.array([5, 5, 9]), None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.booleans()), min_size=1, max_size=80))
def test_the_interval_stays_within_the_families_own_accuracies(rows):
    """Any resample is a mix of whole families: its accuracy lies between the worst and the
    best family's; too few families get no interval at all."""
    family = np.array([f for f, _ in rows])
    right = np.array([r for _, r in rows])
    got = family_accuracy(right, family)
    per = [right[family == f].mean() for f in np.unique(family)]
    if len(per) < MIN_FAMILIES:
        assert got["interval"] is None
    else:
        low, high = got["interval"]
        assert min(per) - 1e-12 <= low <= high <= max(per) + 1e-12
    assert got["family_mean"] == pytest.approx(np.mean(per))
    assert got["families"] == len(per) and got["n"] == len(rows)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 15), st.booleans(), st.booleans()), min_size=1, max_size=80)
)
def test_a_paired_difference_stays_within_the_families_own_and_turns_round_with_a_and_b(rows):
    """A resample's difference is a mix of whole families' differences, so it lies between the
    smallest and the largest; B against A is A against B negated; and without families there
    is a difference but no interval."""
    family = np.array([f for f, _, _ in rows])
    a, b = np.array([r for _, r, _ in rows]), np.array([r for _, _, r in rows])
    got = paired_difference(a, b, family)
    assert got["difference"] == pytest.approx(a.mean() - b.mean())
    assert got["accuracy_a"] == pytest.approx(a.mean()) and got["n"] == len(rows)
    per = [a[family == f].mean() - b[family == f].mean() for f in np.unique(family)]
    assert got["families"] == len(per)
    back = paired_difference(b, a, family)
    if len(per) < MIN_FAMILIES:
        assert got["interval"] is None
    else:
        low, high = got["interval"]
        assert min(per) - 1e-12 <= low <= high <= max(per) + 1e-12
        assert back["interval"] == pytest.approx([-high, -low])
    plain = paired_difference(a, b, None)
    assert plain["interval"] is None and plain["families"] is None
    assert plain["difference"] == got["difference"]


def test_a_run_against_itself_differs_by_nothing_and_pairing_sees_what_two_intervals_hide():
    """The same draws for both runs. A run against itself: 0, and an interval of 0. One large
    family both runs get wrong makes each run's own interval wide, so that the two overlap
    although A is right on every singleton B is right on, and on more: the paired interval
    still lies above 0."""
    family = np.r_[np.zeros(300, int), np.arange(1, 41)]
    a = np.r_[np.zeros(300, bool), np.arange(40) % 2 == 0]
    b = np.r_[np.zeros(300, bool), np.arange(40) % 4 == 0]
    same = paired_difference(a, a, family)
    assert same["difference"] == 0 and same["interval"] == [0.0, 0.0]
    own_a, own_b = (family_accuracy(r, family)["interval"] for r in (a, b))
    assert own_a[0] < own_b[1]  # the runs' own intervals overlap
    paired = paired_difference(a, b, family)
    assert 0 < paired["interval"][0] <= paired["difference"] <= paired["interval"][1]
    with pytest.raises(ValueError, match="same proteins"):
        paired_difference(a, b[:-1], family)


def test_families_come_from_mmseqs_numbered_by_first_member_and_are_cached(
    mmseqs, small_store, tmp_path, monkeypatch
):
    """Copies of a protein with a few residues changed fall in its family, unrelated proteins
    in others; a second call reads the cache (MMseqs2 not run), a damaged entry is recomputed."""
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache"))
    queries = list(pairs(small_store.records("test")))[:40]
    seq = bytearray(queries[3][1])
    seq[10:13] = b"WWW" if seq[10:13] != b"WWW" else b"CCC"
    queries.append(("copy-of-3", bytes(seq)))
    family = families_of(queries, tmp_path / "a", threads=2)
    assert family.dtype == np.int64 and len(family) == len(queries)
    assert family[-1] == family[3] and family[0] == 0
    firsts = [int(np.flatnonzero(family == f)[0]) for f in range(family.max() + 1)]
    assert firsts == sorted(firsts)  # numbered by first appearance
    assert len(np.unique(family)) > len(queries) // 2  # the others are not one family

    def refuse(*args, **kwargs):
        raise AssertionError("MMseqs2 ran although the families were cached")

    (entry,) = (tmp_path / "cache" / "families").iterdir()
    whole = entry.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(cluster.MMseqs, "run", refuse)
        assert np.array_equal(families_of(queries, tmp_path / "b", threads=2), family)
    entry.write_bytes(whole[: len(whole) // 2])
    assert np.array_equal(families_of(queries, tmp_path / "c", threads=2), family)
    assert entry.read_bytes() == whole
