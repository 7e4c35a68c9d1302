"""The one lookup table: letters → tokens, padding vs unknown, refusing double encoding."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecstream import alphabet
from ecstream.alphabet import (
    STANDARD,
    UNKNOWN,
    AlreadyEncodedError,
    SequenceError,
    clean_sequence,
    encode,
)


def test_standard_residues_are_1_to_20_in_order():
    assert encode(STANDARD).tolist() == list(range(1, 21))
    assert encode(STANDARD.lower()).tolist() == list(range(1, 21))


@pytest.mark.parametrize("letter", list("XBZUOJ"))
def test_other_letters_are_unknown_never_padding(letter):
    assert encode(letter).tolist() == [UNKNOWN]
    assert encode(letter)[0] != encode(bytes(1))[0]  # differs from what padding encodes to


def test_zero_byte_is_padding_so_a_padded_batch_encodes_in_one_pass():
    letters = np.zeros((2, 5), dtype=np.uint8)
    letters[0, :3] = np.frombuffer(b"ACX", dtype=np.uint8)
    assert encode(letters).tolist() == [[1, 2, UNKNOWN, 0, 0], [0, 0, 0, 0, 0]]


def test_already_encoded_tokens_are_refused():
    tokens = encode("MKV")
    with pytest.raises(AlreadyEncodedError, match="already encoded"):
        encode(tokens)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_one_hot_or_integer_arrays_are_refused(dtype):
    with pytest.raises(AlreadyEncodedError):
        encode(np.eye(21, dtype=dtype))


def test_non_letters_are_refused_with_the_character():
    with pytest.raises(ValueError, match=r"'-' at position 3"):
        encode("AC-D")
    with pytest.raises(ValueError, match=r"b'-' at position 3"):
        encode(b"AC-D")


def test_clean_upper_cases_and_drops_one_stop_codon():
    assert clean_sequence("mkv*") == "MKV"
    assert clean_sequence("  mkv \n") == "MKV"
    for bad, reason, where in (
        ("MK V", "invalid_characters", "' ' at position 3"),
        ("MK1", "invalid_characters", "'1' at position 3"),
        ("MK**", "invalid_characters", "'*' at position 3"),
        ("*", "missing_sequence", "empty"),
        ("", "missing_sequence", "empty"),
    ):
        with pytest.raises(SequenceError, match=where) as error:
            clean_sequence(bad)
        assert error.value.reason == reason


@given(st.text(alphabet=st.characters(min_codepoint=65, max_codepoint=122), max_size=50))
def test_decode_inverts_encode_for_standard_letters(text):
    letters = "".join(c for c in text.upper() if c in STANDARD)
    assert alphabet.decode(encode(letters)) == letters


def test_encode_writes_into_out_for_bytes_as_for_text():
    for data in ("ACDX", b"ACDX", bytearray(b"ACDX")):
        out = np.zeros(4, np.uint8)
        assert encode(data, out=out) is out
        assert out.tolist() == [1, 2, 3, 21]
