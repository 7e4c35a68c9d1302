"""Residues → tokens: the one lookup table of ecstream.

Every decision about how a residue becomes a number lives here. Sequences are kept as their
upper-case letters (one byte each) everywhere on the host; :func:`encode` turns letters into tokens
with a 256-entry table, once, at the moment a batch is assembled.

Tokens: 0 is padding; the 20 standard amino acids are 1–20 in the order ``ACDEFGHIKLMNPQRSTVWY``;
every other letter (X, B, Z, U, O, J, …) is 21, "unknown", so an unknown residue never looks
like padding. Lower-case letters are upper-cased when a record is read (:func:`clean_sequence`).
"""

from __future__ import annotations

import numpy as np

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
PAD = 0
UNKNOWN = len(STANDARD) + 1  # 21
VOCAB_SIZE = UNKNOWN + 1  # 22 tokens: padding, 20 standard, unknown
NAME = "aa20+unknown/v1"


class AlreadyEncodedError(TypeError):
    """Raised when token ids are given to a function that expects residue letters."""


def _build_table() -> np.ndarray:
    table = np.full(256, INVALID, dtype=np.uint8)
    table[0] = PAD  # byte 0 marks padding in an assembled batch of letters
    for code in range(ord("A"), ord("Z") + 1):
        table[code] = UNKNOWN
        table[code + 32] = UNKNOWN
    for token, letter in enumerate(STANDARD, start=1):
        table[ord(letter)] = token
        table[ord(letter.lower())] = token
    table.setflags(write=False)
    return table


INVALID = 255  # table entry for a byte that is neither a letter nor padding
TABLE = _build_table()
_TABLE_BYTES = TABLE.tobytes()  # the same table, for bytes.translate
_INVALID_BYTE = bytes([INVALID])


def spec() -> dict:
    """The alphabet as recorded in a store's manifest and a run's config."""
    return {"name": NAME, "pad": PAD, "standard": STANDARD, "unknown": UNKNOWN}


MISSING_SEQUENCE = "missing_sequence"
INVALID_CHARACTERS = "invalid_characters"


class SequenceError(ValueError):
    """A sequence that cannot be used; ``reason`` is one of the set-aside reasons above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


_SURROUNDING = " \t\r\n"  # what a reader may leave around a field; other control bytes are refused


def clean_sequence(text: str) -> str:
    """The one cleaning of a sequence as read from any input: upper-case letters, or an error.

    Surrounding spaces, tabs and line ends and a single terminal ``*`` (the stop codon of
    translated ORFs) are dropped; any other character that is not an ASCII letter, a stray
    control byte included, raises :class:`SequenceError` naming it and its position (1-based).
    Build, evaluation and prediction all call this.
    """
    sequence = text.strip(_SURROUNDING)
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    if not sequence:
        raise SequenceError(MISSING_SEQUENCE, "empty sequence")
    if not (sequence.isascii() and sequence.isalpha()):
        at, bad = next((k, c) for k, c in enumerate(sequence) if not (c.isascii() and c.isalpha()))
        raise SequenceError(
            INVALID_CHARACTERS, f"character {bad!r} at position {at + 1} is not a residue letter"
        )
    return sequence.upper()


def _letters(data: str | bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, str):
        return np.frombuffer(data.encode("ascii", "replace"), dtype=np.uint8)
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise AlreadyEncodedError(
                f"encode() takes residue letters (str, bytes or uint8 letters), got an array of "
                f"{data.dtype}: it looks already encoded or one-hot; pass the sequence text instead"
            )
        return data
    raise TypeError(f"encode() takes residue letters as str or bytes, got {type(data).__name__}")


def _refuse(letters: np.ndarray, text: str | None = None) -> None:
    """Raise for letters that hold a byte the table does not map, naming it and where it is."""
    # token ids are 1-21 and letters >= 65: only input made of nothing but token ids (and
    # padding) is "already encoded"; text is never tokens, and a stray control byte among
    # letters is just a bad byte
    if text is None and letters.size and int(letters.max()) <= UNKNOWN and np.any(letters > 0):
        raise AlreadyEncodedError(
            "encode() was given token ids (values 1-21), not residue letters: the data is already "
            "encoded; encoding it again would turn every residue into 'unknown'"
        )
    at = int(np.flatnonzero(TABLE[letters] == INVALID)[0])
    bad = repr(text[at]) if text is not None else repr(bytes([letters.reshape(-1)[at]]))
    where = (
        f"position {at + 1}"
        if letters.ndim <= 1
        else f"index {tuple(int(k) for k in np.unravel_index(at, letters.shape))}"
    )
    raise ValueError(f"encode() was given {bad} at {where}, which is not a residue letter")


def encode(data: str | bytes | bytearray | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Residue letters → uint8 tokens. Refuses input that is already tokens.

    Letters are ASCII codes ≥ 65 while tokens are ≤ 21, so encoded input is detected with certainty
    and refused with :class:`AlreadyEncodedError` instead of being encoded a second time. Byte 0 is
    taken as padding (token 0), which lets a zero-filled batch of letters be encoded in one pass.
    Bytes are translated in C (``bytes.translate``); a ``bytearray`` gives a writable array.
    Any other byte that is not a letter (a stray control byte) is a :class:`ValueError` naming
    it and its position.
    """
    if isinstance(data, bytes | bytearray):
        tokens = data.translate(_TABLE_BYTES)
        if _INVALID_BYTE in tokens:
            _refuse(np.frombuffer(data, dtype=np.uint8))
        if out is not None:  # written into, as for text
            out[...] = np.frombuffer(tokens, dtype=np.uint8)
            return out
        return np.frombuffer(tokens, dtype=np.uint8)
    letters = _letters(data)
    tokens = np.take(TABLE, letters, out=out)
    if tokens.size and int(tokens.max()) == INVALID:
        _refuse(letters, data if isinstance(data, str) else None)
    return tokens


def decode(tokens: np.ndarray) -> str:
    """uint8 tokens → letters (padding dropped, unknown shown as ``X``)."""
    letters = np.frombuffer(("\0" + STANDARD + "X").encode(), dtype=np.uint8)
    kept = np.asarray(tokens)
    return letters[kept[kept != PAD]].tobytes().decode()
