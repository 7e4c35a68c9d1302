"""EC numbers → classes: parsing, separators, partial numbers, and the label policy."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecstream.labels import (
    INVALID_EC,
    MISSING_EC,
    MULTIPLE_CLASSES,
    UNSPECIFIC_EC,
    ECError,
    LabelPolicy,
    parse_ec,
    parse_ec_number,
)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("3.1.1.4", ("3", "1", "1", "4")),
        ("3.1.-.-", ("3", "1", "-", "-")),
        ("3.1.1.n2", ("3", "1", "1", "n2")),
        ("EC 2.7.7.7", ("2", "7", "7", "7")),
        ("7.-.-.-", ("7", "-", "-", "-")),
    ],
)
def test_parse_complete_partial_and_preliminary_numbers(text, parts):
    assert parse_ec_number(text).parts == parts


@pytest.mark.parametrize(
    "text", ["8.1.1.1", "0.1.1.1", "3.1.x.1", "3.-.1.1", "3.1.n1.1", "3..1.1", "abc", "3.1.1.1.1"]
)
def test_invalid_numbers_raise(text):
    with pytest.raises(ECError, match="not an EC number"):
        parse_ec_number(text)


@pytest.mark.parametrize("field", ["2.7.7.7;3.1.11.1", "2.7.7.7; 3.1.11.1", "2.7.7.7,3.1.11.1"])
def test_several_numbers_per_row(field):
    assert [str(n) for n in parse_ec(field)] == ["2.7.7.7", "3.1.11.1"]


def test_default_policy_maps_to_seven_named_classes():
    policy = LabelPolicy()
    assert policy.classes == tuple("1234567")
    assert policy.names[0] == "Oxidoreductases" and policy.names[6] == "Translocases"
    assert policy.assign("4.2.1.89") == (3, None)
    assert policy.assign("3.1.-.-") == (2, None)
    assert policy.assign("1.1.1.1; 1.2.3.4") == (0, None)


def test_rows_spanning_classes_are_set_aside_by_default_or_take_the_first():
    assert LabelPolicy().assign("1.6.99.5; 7.1.1.2") == (None, MULTIPLE_CLASSES)
    assert LabelPolicy(multi="first").assign("1.6.99.5; 7.1.1.2") == (0, None)


def test_missing_and_invalid_fields_have_reasons():
    policy = LabelPolicy()
    assert policy.assign("") == (None, MISSING_EC)
    assert policy.assign(None) == (None, MISSING_EC)
    assert policy.assign("9.9.9.9") == (None, INVALID_EC)


def test_deeper_levels_use_the_keys_seen_and_refuse_unspecific_numbers():
    policy = LabelPolicy.for_level(2, ["3.1", "1.10", "1.2"])
    assert policy.classes == ("1.2", "1.10", "3.1")  # numeric order, not text order
    assert policy.assign("1.10.3.2") == (1, None)
    assert policy.assign("3.-.-.-") == (None, UNSPECIFIC_EC)
    assert LabelPolicy.from_dict(policy.to_dict()) == policy


level = st.integers(min_value=0, max_value=250).map(str)
numbers = st.tuples(
    st.integers(1, 7).map(str), level, level, level | st.integers(1, 99).map(lambda n: f"n{n}")
)


@given(st.lists(numbers, min_size=1, max_size=4), st.sampled_from([";", "; ", ",", " ; "]))
def test_property_any_valid_numbers_round_trip(parts_list, sep):
    field = sep.join(".".join(p) for p in parts_list)
    parsed = parse_ec(field)
    assert [str(n) for n in parsed] == list(dict.fromkeys(".".join(p) for p in parts_list))
    keys = {p[0] for p in parts_list}
    label, reason = LabelPolicy().assign(field)
    if len(keys) == 1:
        assert label == int(next(iter(keys))) - 1 and reason is None
    else:
        assert label is None and reason == MULTIPLE_CLASSES


@given(st.text(max_size=20))
def test_property_parser_never_crashes_unexpectedly(text):
    label, reason = LabelPolicy().assign(text)
    assert (label is None) != (reason is None)
